"""Loopback blocks 127.X.0.0/16, each held machine-wide by one sandbox through a file lock.

A sandbox holds one block for the public addresses it hands out, and one more for each VPC,
so two sandboxes on one machine, or two VPCs of one sandbox, never share an address. The locks
are flocks: a killed sandbox's blocks are free again the moment its process is gone.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

from ._errors import SandboxBusyError

FIRST, LAST = 101, 254  # 127.0-100.* stay free for the machine's own use of loopback


class BlockTaken(Exception):
    """The block asked for is held by another VPC or sandbox."""


class Blocks:
    """The blocks one sandbox holds; `close` lets every one of them go."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder or Path(tempfile.gettempdir()) / "pymlsql-sandbox-networks"
        self._held: dict[int, IO[str]] = {}
        self._lock = threading.Lock()

    def claim(self, second: int | None = None) -> int:
        """Holds 127.`second`.0.0/16, or the first free block; raises BlockTaken or SandboxBusyError."""
        self._folder.mkdir(exist_ok=True)
        try:
            self._folder.chmod(0o1777)
        except PermissionError:
            pass
        with self._lock:
            for candidate in [second] if second is not None else range(FIRST, LAST + 1):
                if candidate in self._held or not self._take(candidate):
                    continue
                return candidate
        if second is not None:
            raise BlockTaken(f"127.{second}.0.0/16")
        raise SandboxBusyError(
            f"every sandbox network 127.{FIRST}-{LAST}.0.0/16 is in use",
            hint="stop a sandbox, or delete VPCs a sandbox no longer needs.",
        )

    def _take(self, second: int) -> bool:
        # Read-only is enough for flock, and lets users share lock files another user created.
        fd = os.open(self._folder / f"127.{second}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        handle = os.fdopen(fd)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._held[second] = handle
        return True

    def free(self, second: int) -> None:
        with self._lock:
            handle = self._held.pop(second, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        with self._lock:
            held, self._held = self._held, {}
        for handle in held.values():
            handle.close()
