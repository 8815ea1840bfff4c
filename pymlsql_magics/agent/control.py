"""`pymlsql agent status` and `pymlsql agent stop`: the agents of this user, one per environment."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _place, _wire


def run(action: str, say: Callable[[str], None]) -> int:
    place = _place.folder(os.environ)
    agents = [(path, answer) for path in sorted(place.glob("*.sock")) if (answer := _ask(path, "status"))]
    if not agents:
        say("no agent is running" + ("" if _place.enabled(os.environ) else " (PYMLSQL_AGENT=0 turns it off)"))
        return 0
    ours = _place.socket_path(os.environ, place) if _place.private_folder(os.environ) else None
    for path, answer in agents:
        if action == "status":
            print(_line(answer, path == ours))
        else:
            _stop(path, int(answer["pid"]), say)
    return 0


def stop_all(home: Path) -> None:
    """Stops every agent under `home` (the test suite's teardown), quietly."""
    for path in sorted(_place.folder({"HOME": str(home)}).glob("*.sock")):
        answer = _ask(path, "status")
        if answer:
            _stop(path, int(answer["pid"]), lambda message: None)


def _ask(path: Path, op: str) -> dict[str, Any] | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    try:
        connection.connect(str(path))
        _wire.send(connection, {"op": op})
        answer, _ = _wire.receive(connection)
        return answer
    except (OSError, EOFError, ValueError):
        return None
    finally:
        connection.close()


def _stop(path: Path, pid: int, say: Callable[[str], None]) -> None:
    _ask(path, "stop")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    say(f"stopped the agent (pid {pid})" if not _alive(pid) else f"the agent (pid {pid}) is still stopping")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of this process that exited is still there until waited for: not alive.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return waited == 0


def _line(answer: dict[str, Any], ours: bool) -> str:
    workers = answer["workers"]
    busy = sum(1 for worker in workers if worker["busy"])
    commands = answer["commands"]
    return (f"agent {answer['pid']}: {'this environment' if ours else 'another environment'}, up "
            f"{_duration(time.time() - answer['started_at'])}, idle {_duration(answer['idle_for'])} (exits after "
            f"{_duration(answer['idle_timeout'])} idle), {len(workers)} worker(s), {busy} busy, "
            f"{commands} command(s) run")  # fmt: skip


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02}m"
