"""Where an instance's host keys are known from before the first connection: its console, its cloud-config."""

from __future__ import annotations

import re

import yaml

from ._ssh_keys import fingerprint_of, public_line_of_private

# What cloud-init prints on the serial console at first boot, and ECS's GetInstanceConsoleOutput returns.
_CONSOLE_FINGERPRINTS = re.compile(
    r"-----BEGIN SSH HOST KEY FINGERPRINTS-----(.*?)-----END SSH HOST KEY FINGERPRINTS-----", re.S
)
_CONSOLE_KEYS = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)
_FINGERPRINT = re.compile(r"\bSHA256:[A-Za-z0-9+/]{43}\b")


def console_fingerprints(console: str) -> set[str] | None:
    """The SHA256 fingerprints of the host keys the console shows, or None if it shows none.

    The last block counts: a re-created instance prints its new keys after the old ones.
    """
    found: set[str] | None = None
    for block in _CONSOLE_FINGERPRINTS.findall(console)[-1:]:
        found = set(_FINGERPRINT.findall(block))
    for block in _CONSOLE_KEYS.findall(console)[-1:]:
        for line in block.strip().splitlines():
            if (fingerprint := fingerprint_of(line)) is not None:
                found = (found or set()) | {fingerprint}
    return found or None


def host_keys_in_cloud_config(user_data: str | None) -> list[str]:
    """Public host key lines a `#cloud-config` sets through ssh_keys (derived from private keys if need be)."""
    if not user_data or not user_data.lstrip().startswith("#cloud-config"):
        return []
    try:
        config = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return []
    keys = config.get("ssh_keys") if isinstance(config, dict) else None
    if not isinstance(keys, dict):
        return []
    lines = []
    for name, value in keys.items():
        if not isinstance(value, str):
            continue
        if name.endswith("_public"):
            lines.append(value.strip())
        elif name.endswith("_private") and f"{name[: -len('_private')]}_public" not in keys:
            if (line := public_line_of_private(value)) is not None:
                lines.append(line)
    return lines
