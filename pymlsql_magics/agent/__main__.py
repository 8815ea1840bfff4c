"""`python -m pymlsql_magics.agent SOCKET READY_FD`: the agent, as a client starts it.

It loads everything a command needs, listens on SOCKET, then writes `R` on READY_FD (or `E` and a
message the client shows, when a setting is wrong) and serves until idle.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import traceback
from pathlib import Path

from ._dispatcher import Dispatcher

# What the commands import as they run, loaded once here so that every worker forked from the
# agent has it: paramiko and the core. Not the SDKs: each worker loads them itself, in the
# background, after a first command that may not need them (see _memory).
_PRELOADED = ("pymlsql_magics.cli", "pymlsql_magics._embedded", "pymlsql_magics.core._fleet",
              "pymlsql_magics.sandbox._background", "pymlsql_magics.agent._worker")  # fmt: skip


class _Refusal(Exception):
    pass


def main(argv: list[str]) -> int:
    path, ready = Path(argv[0]), int(argv[1])
    try:
        idle = _idle_setting()
        for name in _PRELOADED:
            importlib.import_module(name)
        listener = _listen(path)
    except _Refusal as refusal:
        os.write(ready, b"E" + str(refusal).encode())
        return 2
    except Exception:  # the client then runs the command itself; the reason stays in the log
        traceback.print_exc()
        return 1
    os.write(ready, b"R")
    os.close(ready)
    Dispatcher(listener, path, idle).serve()
    return 0


def _idle_setting() -> float:
    from ..core import ConfigError, parse_duration

    text = os.environ.get("PYMLSQL_AGENT_IDLE", "").strip()
    if not text:
        return 600.0
    try:
        return parse_duration(text)
    except ConfigError as error:
        raise _Refusal(f"PYMLSQL_AGENT_IDLE: {error}\nHint: set it to how long the agent waits for work, such "
                       "as 10m or 1h, or unset it (10m).") from None  # fmt: skip


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o177)  # the socket file is the user's alone from the start
    try:
        listener.bind(str(path))
    finally:
        os.umask(mask)
    listener.listen(64)
    return listener


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
