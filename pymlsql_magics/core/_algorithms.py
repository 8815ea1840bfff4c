"""The SSH algorithms this tool asks for, one policy for paramiko's transport and the OpenSSH client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SshAlgorithms:
    """Ciphers in order of preference, and whether to compress.

    AES-GCM first: paramiko moves output and copies markedly faster with it than with AES-CTR, and
    so does the OpenSSH client. Compression only costs CPU on the links these streams take.
    """

    ciphers: tuple[str, ...] = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
    )
    compression: bool = False

    def paramiko_ciphers(self, available: Sequence[str]) -> list[str]:
        """paramiko's `available` ciphers with these first; the rest stay as fallbacks, in its order."""
        preferred = [cipher for cipher in self.ciphers if cipher in available]
        return preferred + [cipher for cipher in available if cipher not in preferred]

    def openssh_options(self) -> dict[str, str]:
        """The same policy as OpenSSH client options (`-o NAME=VALUE`); it gets exactly these ciphers."""
        return {"Ciphers": ",".join(self.ciphers), "Compression": "yes" if self.compression else "no"}


DEFAULT_ALGORITHMS = SshAlgorithms()
