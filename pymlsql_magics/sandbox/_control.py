"""Where the sandbox's own controls live on its HTTP server, and the header that unlocks them."""

CONTROL_KEY_HEADER = "x-sandbox-key"
CONTROL_PREFIX = "/_sandbox/"
