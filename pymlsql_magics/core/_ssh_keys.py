"""SSH keys as paramiko objects: private key files, and public keys as one-line text."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import SshError

PrivateKey = paramiko.PKey


def load_private_key(path: Path) -> PrivateKey:
    """Reads an unencrypted private key: OpenSSH, PEM or PKCS#8 (as ECS's CreateKeyPair returns).

    Raises SshError when the file is missing, unreadable or not such a key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SshError(
            f"the private key {path} does not exist",
            hint="Pass --key-pair-name for a key in ~/.ssh, or create one with --init-ssh-key true.",
        ) from None
    except PermissionError:
        raise SshError(f"cannot read the private key {path}", hint="Check its owner and mode (600).") from None
    try:
        return private_key_from_bytes(data)
    except ValueError:
        pass
    try:
        return paramiko.PKey.from_path(str(path))
    except (paramiko.SSHException, ValueError):
        raise SshError(
            f"{path} is not an unencrypted private key",
            hint="Use the key file ECS created for the key pair, without a passphrase.",
        ) from None


def private_key_from_bytes(data: bytes) -> PrivateKey:
    """An unencrypted private key in OpenSSH, PEM or PKCS#8 form; raises ValueError otherwise."""
    key: PrivateKeyTypes
    # The key is the user's own, from their private ~/.ssh: checking that an RSA key is well formed
    # guards against keys crafted by others, and costs more than the whole SSH handshake.
    try:
        key = serialization.load_ssh_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("not an unencrypted private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        text = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        return paramiko.Ed25519Key(file_obj=io.StringIO(text.decode()))
    raise ValueError(f"unsupported key type {type(key).__name__}")


def public_key_line(key: paramiko.PKey) -> str:
    """The key as authorized_keys and cloud-config write it: `type base64`."""
    return f"{key.get_name()} {key.get_base64()}"


def parse_public_key(line: str) -> paramiko.PKey:
    """The key of a `type base64 [comment]` line; raises ValueError, IndexError or SSHException if it is none."""
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def fingerprint_of(line: str) -> str | None:
    """The SHA256 fingerprint of a public key line, or None if the line holds no key paramiko knows."""
    try:
        return parse_public_key(line).fingerprint
    except (paramiko.SSHException, ValueError, IndexError):
        return None


def public_line_of_private(text: str) -> str | None:
    """The public key line of an unencrypted private key, or None if `text` is not one."""
    try:
        return public_key_line(private_key_from_bytes(text.encode()))
    except (paramiko.SSHException, ValueError):
        return None
