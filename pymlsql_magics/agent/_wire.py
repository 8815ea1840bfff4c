"""Messages between the client, the agent and its workers: a length, a JSON object, and
descriptors riding along with the first bytes (SCM_RIGHTS)."""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")
_MAX_FDS = 4

# What a worker sends its client: the command started (before it, nothing has run, so the client
# may still run it itself), and how it ended.
STARTED = "started"
ENDED = "ended"
# What a client sends its worker while the command runs: one byte per Ctrl-C.
INTERRUPT = b"\x03"


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    data = _LENGTH.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        if sent < len(data):  # an empty send would fail if the peer is done and gone already
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with it; raises EOFError if the peer left."""
    head, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, _MAX_FDS)
    try:
        head += _exactly(sock, _LENGTH.size - len(head))
        (length,) = _LENGTH.unpack(head)
        message = json.loads(_exactly(sock, length))
    except BaseException:
        for fd in fds:
            _close(fd)
        raise
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message, fds


def _exactly(sock: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(left)
        if not part:
            raise EOFError("the peer closed the connection")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
