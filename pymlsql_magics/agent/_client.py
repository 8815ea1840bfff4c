"""The thin client: hands a command to this user's agent, starting it if needed, and waits for
its exit status. It imports nothing heavy: a warm command costs a Python start and a few system
calls here."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from . import _place, _wire

# How long a client waits for a new agent to be ready before it runs the command itself.
_READY_TIMEOUT = 30.0


def through_agent(argv: list[str]) -> int | None:
    """Runs `pymlsql ARGV` through the agent and returns its exit status, or None when it should
    run in this process instead (the agent is off, cannot start, or the command is not one of its)."""
    environ = os.environ
    if not argv or argv[0] not in _place.COMMANDS or not _place.enabled(environ):
        return None
    if any(argument in ("-h", "--help") for argument in argv) or not hasattr(socket, "send_fds"):
        return None  # usage text is printed at once here
    place = _place.private_folder(environ)
    path = _place.socket_path(environ, place) if place is not None else None
    if place is None or path is None:
        return None
    try:
        cwd = os.getcwd()
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return None  # no working directory or a closed standard stream: nothing to hand over
    try:
        connection = _connect(path) or _start(place, path)
    except _Refused as refusal:
        print(f"pymlsql: error: {refusal}", file=sys.stderr)
        return 2
    if connection is None:
        return None
    with connection:
        return _run(connection, argv, cwd, path.with_suffix(".log"))


class _Refused(Exception):
    """The agent refused to start for a reason the user can fix (a bad PYMLSQL_AGENT_IDLE, say)."""


def _connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        return None
    return connection


def _start(place: Path, path: Path) -> socket.socket | None:
    """Starts the agent for this environment (one client at a time does) and connects to it."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect(path)  # another client may have started it meanwhile
        if connection is not None:
            return connection
        try:
            path.unlink()  # a socket left by an agent that was killed
        except FileNotFoundError:
            pass
        if not _spawn(place, path):
            return None
        return _connect(path)


def _spawn(place: Path, path: Path) -> bool:
    """Starts the agent in a session of its own and waits until it listens; False if it did not."""
    ready, ready_writer = os.pipe()
    os.set_inheritable(ready_writer, True)
    log = path.with_suffix(".log")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
    ]
    argv = [sys.executable, "-m", "pymlsql_magics.agent", str(path), str(ready_writer)]
    try:
        os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions, setsid=True)
    except OSError:
        return False
    finally:
        os.close(ready_writer)
    with os.fdopen(ready, "rb") as answer:
        if not select.select([answer], [], [], _READY_TIMEOUT)[0]:
            return False
        said = answer.read()
    if said.startswith(b"E"):
        raise _Refused(said[1:].decode(errors="replace"))
    return said == b"R"


def _run(connection: socket.socket, argv: list[str], cwd: str, log: Path) -> int | None:
    request = {"op": "run", "argv": argv, "cwd": cwd, "umask": _umask(),
               "streams": {name: _describe(getattr(sys, name)) for name in ("stdin", "stdout", "stderr")}}  # fmt: skip
    try:
        _wire.send(connection, request, [0, 1, 2])
        started, _ = _wire.receive(connection)
    except (OSError, EOFError, ValueError):
        return None  # nothing ran: the command can still run here
    if started.get("kind") != _wire.STARTED:
        return None
    with _signals_passed_on(connection):
        try:
            ended, _ = _wire.receive(connection)
        except (OSError, EOFError, ValueError):
            ended = {}
    if ended.get("kind") != _wire.ENDED:
        print(f"pymlsql: error: the agent ended while it ran the command (its log: {log})\n"
              "Hint: run the command again; PYMLSQL_AGENT=0 runs commands without the agent.",
              file=sys.stderr)  # fmt: skip
        return 1
    return int(ended["status"])


class _signals_passed_on:
    """Ctrl-C goes to the command, as if it ran here; a client killed by another signal dies of it,
    after telling the agent, which interrupts the command."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._before: dict[int, Any] = {}

    def __enter__(self) -> None:
        self._before[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        for number in (signal.SIGTERM, signal.SIGHUP):
            self._before[number] = signal.signal(number, self._die)

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._before.items():
            signal.signal(number, handler)

    def _interrupt(self, number: int, frame: FrameType | None) -> None:
        try:
            self._connection.send(_wire.INTERRUPT)
        except OSError:
            pass

    def _die(self, number: int, frame: FrameType | None) -> None:
        self._connection.close()
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        time.sleep(1)  # the signal is on its way


def _describe(stream: Any) -> dict[str, Any]:
    """How this process would write a standard stream, so the agent writes it the same way."""
    return {"encoding": getattr(stream, "encoding", None) or "utf-8", "errors": getattr(stream, "errors", None) or
            "strict", "line_buffering": bool(getattr(stream, "line_buffering", False)),
            "write_through": bool(getattr(stream, "write_through", False))}  # fmt: skip


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

