"""Host keys of sandbox instances, made and described here rather than by ssh-keygen in each boot.

ssh-keygen takes tens of milliseconds per key and per fingerprint; a hundred instances booting at
once would spend seconds of CPU on it. The files written are what ssh-keygen writes (OpenSSH
private key 0600, `.pub` with a `root@HOST` comment), and the console lines are what cloud-init
prints with `ssh-keygen -l`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

GENERATED = ("ecdsa", "ed25519")  # RSA takes about a second of CPU; a supplied RSA key is served
KINDS = ("ecdsa", "ed25519", "rsa")  # in the order `ssh_host_*_key.pub` globs them


def generate(folder: Path, kind: str, comment: str) -> str:
    """Writes ssh_host_KIND_key and its .pub in `folder`; returns the public line."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {comment}"
    path = folder / f"ssh_host_{kind}_key"
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private)
    (folder / f"ssh_host_{kind}_key.pub").write_text(line + "\n")
    return line


def public_of(folder: Path, kind: str) -> str | None:
    """The public line of ssh_host_KIND_key in `folder`, from its .pub or else from the private key."""
    public, private = folder / f"ssh_host_{kind}_key.pub", folder / f"ssh_host_{kind}_key"
    if public.is_file():
        return public.read_text().strip() or None
    if not private.is_file():
        return None
    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(private.read_bytes(), password=None)  # type: ignore[assignment]
        except (ValueError, TypeError):
            return None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint_line(public_line: str) -> str:
    """What `ssh-keygen -l -f KEY.pub` prints: bits, SHA256 fingerprint, comment, type."""
    kind, blob, *comment = public_line.split(maxsplit=2)
    key = serialization.load_ssh_public_key(f"{kind} {blob}".encode())
    if isinstance(key, ec.EllipticCurvePublicKey):
        bits, label = key.curve.key_size, "ECDSA"
    elif isinstance(key, rsa.RSAPublicKey):
        bits, label = key.key_size, "RSA"
    else:
        bits, label = 256, "ED25519"
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
    return f"{bits} SHA256:{digest} {comment[0] if comment else 'no comment'} ({label})"


def console_text(public_lines: list[str]) -> str:
    """The blocks cloud-init prints on the serial console, so that the keys can be checked."""
    return "".join(
        [
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n",
            *(fingerprint_line(line) + "\n" for line in public_lines),
            "-----END SSH HOST KEY FINGERPRINTS-----\n",
            "-----BEGIN SSH HOST KEY KEYS-----\n",
            *(line + "\n" for line in public_lines),
            "-----END SSH HOST KEY KEYS-----\n",
        ]
    )
