"""Network namespaces the sandbox made: a handle that keeps one alive, and sockets inside it.

Python 3.11 has no `os.setns`, so the thread that needs a socket in an instance's namespace
enters it through libc, makes the socket and comes back; the socket stays in that namespace
whichever thread uses it later.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_home_lock = threading.Lock()
_home_fd: int | None = None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _home() -> int:
    """The namespace this process started in (the machine's own), opened once."""
    global _home_fd
    with _home_lock:
        if _home_fd is None:
            _home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return _home_fd


class Namespace:
    """The network namespace of process `pid`, held open: it outlives the process while held."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def __repr__(self) -> str:
        return f"Namespace(pid={self.pid})"

    def socket(self) -> socket.socket:
        """A new TCP socket that lives in this namespace."""
        home = _home()
        _setns(self._fd)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(home)

    def listening_ports(self, address: str) -> set[int]:
        """The TCP ports something in the namespace listens on at `address` (or at every address)."""
        try:
            found = listening_sockets(f"/proc/{self.pid}/net/tcp")
        except OSError:
            return set()
        wanted = {listen_key(address, 0)[:9], listen_key("0.0.0.0", 0)[:9]}  # "HEXADDR:"
        return {int(key[9:], 16) for key in found if key[:9] in wanted}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def listen_key(address: str, port: int) -> str:
    """How /proc/net/tcp writes ADDRESS:PORT: the address as a host-order 32-bit hex number."""
    packed = socket.inet_aton(address)
    return f"{int.from_bytes(packed, sys.byteorder):08X}:{port:04X}"


def listening_sockets(table: str) -> set[str]:
    """Every IPv4 address:port a socket listens on (state 0A), in /proc/net/tcp's notation."""
    found = set()
    with open(table) as lines:
        next(lines)
        for line in lines:
            fields = line.split(None, 4)
            if fields[3] == "0A":
                found.add(fields[1])
    return found

