"""A command's byte streams over an exec channel of a connection already open (see _streams)."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, BinaryIO, TypeVar, cast

from ._ssh_errors import session_errors

if TYPE_CHECKING:  # the channel comes from _ssh, the one place that opens connections
    import paramiko

T = TypeVar("T")

STREAM_WINDOW = 16 << 20
STREAM_PACKET = 32768
_ERRORS_KEPT = 65536


class ChannelStream:
    """A command on an exec channel with a wide window, for bulk data in either direction.

    Its methods raise SshError when the connection breaks; `check_alive` is called after each
    silence of `keepalive` seconds, and raises SshError if the server no longer answers.
    """

    def __init__(self, channel: paramiko.Channel, command: str, *, where: str, keepalive: float,
                 check_alive: Callable[[], None]) -> None:  # fmt: skip
        self._channel, self._where, self._check_alive = channel, where, check_alive
        with self._broken():
            self._channel.settimeout(keepalive)
            self._channel.exec_command(command)

    def _broken(self) -> AbstractContextManager[None]:
        return session_errors(self._where, cleanup=self._channel.close)

    def _patiently(self, step: Callable[[], T]) -> T:
        """Runs a blocking step; after each silence of a keepalive interval, checks the server answers."""
        with self._broken():
            while True:
                try:
                    return step()
                except socket.timeout:
                    self._check_alive()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        # Slices of one packet each: paramiko's sendall would copy the remainder after every packet.
        for start in range(0, len(view), STREAM_PACKET):
            piece = view[start : start + STREAM_PACKET]
            sent = 0
            while sent < len(piece):
                # paramiko sends any buffer; its stubs name only bytes.
                sent += self._patiently(partial(self._channel.send, cast(bytes, piece[sent:])))

    def pour(self, source: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := cast(io.BufferedReader, source).read1(STREAM_WINDOW // 16):
            self.write(chunk)
            count(len(chunk))

    def close_input(self) -> None:
        if not self._channel.closed:
            with self._broken():
                self._channel.shutdown_write()

    def read(self, size: int) -> bytes:
        return self._patiently(lambda: self._channel.recv(size))

    def drain(self, target: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := self.read(STREAM_WINDOW // 16):
            target.write(chunk)
            count(len(chunk))

    def finish(self, timeout: float) -> tuple[int, str]:
        if not self._channel.status_event.wait(timeout):
            self._channel.close()
            return -1, f"no exit status within {timeout:g} s"
        errors = bytearray()
        while self._channel.recv_stderr_ready() and len(errors) < _ERRORS_KEPT:
            errors += self._channel.recv_stderr(_ERRORS_KEPT)
        status = self._channel.recv_exit_status()
        self._channel.close()
        return status, errors.decode(errors="replace")

    def abort(self) -> None:
        self._channel.close()
