"""Server-side check of the ACS3-HMAC-SHA256 signature, computed as the official SDK computes it.

The SDK signs the canonical request built from the method, the path, the sorted RFC 3986-encoded
query, every header it sent (named in SignedHeaders) and the SHA-256 of the body; the key is the
AccessKey secret itself. Every `x-acs-*` header must be signed and a nonce is required, so a
request can be neither replayed nor altered.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import quote

from ._api_errors import ApiError, missing

ALGORITHM = "ACS3-HMAC-SHA256"
_CLOCK_SKEW = 15 * 60


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(
        f"{quote(key, safe='~')}={quote(value, safe='~')}" for key, value in sorted(params.items())
    )


def verify(
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
    seen_nonces: dict[str, float],
    now: float | None = None,
) -> str:
    """Returns the AccessKey id of a correctly signed request; raises ApiError otherwise.

    `headers` must be keyed by lower-case names. `seen_nonces` maps each nonce to the time it
    was seen, so a replayed request is refused; entries older than the clock window are dropped.
    """
    now = time.time() if now is None else now
    authorization = headers.get("authorization", "")
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise ApiError("IncompleteSignature")
    try:
        fields = dict(part.split("=", 1) for part in rest.split(","))
        key_id, signed_names, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
    except (KeyError, ValueError):
        raise ApiError("IncompleteSignature") from None
    secret = secrets.get(key_id)
    if secret is None:
        raise ApiError("InvalidAccessKeyId.NotFound")

    payload_hash = hashlib.sha256(body).hexdigest()
    if headers.get("x-acs-content-sha256", payload_hash) != payload_hash:
        raise ApiError("SignatureDoesNotMatch")
    names = signed_names.split(";")
    if any(name.startswith("x-acs-") and name not in names for name in headers):
        raise ApiError("IncompleteSignature")
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in names)
    canonical_request = "\n".join(
        [method, path or "/", canonical_query(query), canonical_headers, signed_names, payload_hash]
    )
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise ApiError(
            "SignatureDoesNotMatch",
            message=(
                "Specified signature does not match our calculation. "
                f"server StringToSign is [{string_to_sign}]"
            ),
        )

    _check_date(headers.get("x-acs-date"), now)
    nonce = headers.get("x-acs-signature-nonce")
    if not nonce:
        raise missing("x-acs-signature-nonce")
    for old, seen_at in list(seen_nonces.items()):
        if now - seen_at > _CLOCK_SKEW:
            del seen_nonces[old]
    if nonce in seen_nonces:
        raise ApiError("SignatureNonceUsed")
    seen_nonces[nonce] = now
    return key_id


def _check_date(value: str | None, now: float) -> None:
    if not value:
        raise missing("x-acs-date")
    try:
        sent = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ApiError("InvalidTimeStamp.Format") from None
    if abs(sent.timestamp() - now) > _CLOCK_SKEW:
        raise ApiError("InvalidTimeStamp.Expired")

