"""Running a sandbox in the background and talking to it: what `pymlsql sandbox ...` and the faces do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeAlias

from . import _state
from ._control import CONTROL_KEY_HEADER, CONTROL_PREFIX
from ._errors import SandboxControlError
from ._faults import FaultOrder
from ._state import SandboxInfo

_LAUNCHER = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
    " start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)

StateDir: TypeAlias = "str | os.PathLike[str] | None"


def read_info(state_dir: StateDir = None) -> SandboxInfo | None:
    """What the sandbox running for `state_dir` (default: `default_state_dir()`) wrote, or None if none runs."""
    return _state.read_info(_given(state_dir))


def ensure_running(
    state_dir: StateDir = None,
    *,
    port: int = 0,
    serve_args: list[str] | None = None,
    timeout: float = 30.0,
) -> tuple[SandboxInfo, bool]:
    """Starts a background sandbox for `state_dir` unless one runs; returns (info, started).

    `serve_args` are more flags of `pymlsql sandbox serve` (e.g. `["--boot-delay", "0.3"]`).
    Raises SandboxControlError if it does not start within `timeout` seconds, or OSError if the
    state dir cannot be made.
    """
    folder = _given(state_dir)
    running = _state.read_info(folder)
    if running is not None:
        return running, False
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    command = [sys.executable, "-m", "pymlsql_magics.sandbox", "serve", "--state-dir", str(folder),
               "--port", str(port), *(serve_args or [])]  # fmt: skip
    with open(folder / "server.log", "ab") as log:
        # A short-lived launcher starts the server and exits, so the server is nobody's child
        # here: it outlives this process, and no Popen is left that was never waited for.
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            close_fds=True,
            check=False,
        )
    try:
        pid = int(launcher.stdout)
    except ValueError:
        raise SandboxControlError("the sandbox did not start:\n" + _tail(folder / "server.log")) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _state.read_info(folder)
        if info is not None and info.pid == pid:
            return info, True
        if not _state.process_alive(pid):
            raise SandboxControlError("the sandbox did not start:\n" + _tail(folder / "server.log"))
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise SandboxControlError(f"the sandbox did not start within {timeout:g} s; see {folder / 'server.log'}")


def stop(state_dir: StateDir = None, *, timeout: float = 30.0) -> bool:
    """Stops the sandbox of `state_dir`, releasing its instances; False if none was running.

    A sandbox that died without releasing them has its machines ended here too.
    """
    folder = _given(state_dir)
    info = _state.read_info(folder)
    if info is None:
        _state.forget_dead(folder)
        return False
    try:
        call(info, "shutdown")
    except SandboxControlError:
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _state.process_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _state.process_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    _state.forget_dead(folder)
    return True


def status(info: SandboxInfo) -> dict[str, Any]:
    """The running sandbox's `Sandbox.status()`: endpoint, pid, region and each instance.

    Raises SandboxControlError if it does not answer.
    """
    return call(info, "status")


def log(info: SandboxInfo) -> dict[str, Any]:
    """The running sandbox's `Sandbox.log()`: every API request and each instance's event times."""
    return call(info, "log")


def fault(info: SandboxInfo, order: FaultOrder) -> None:
    """Injects `order` into the running sandbox; raises SandboxControlError if it refuses."""
    call(info, "fault", order.to_json())


def call(info: SandboxInfo, name: str, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """Calls a control endpoint of a running sandbox."""
    data = json.dumps(order or {}).encode()
    request = urllib.request.Request(
        f"{info.endpoint}{CONTROL_PREFIX}{name}",
        data=data,
        method="POST",
        headers={CONTROL_KEY_HEADER: info.access_key_secret, "Content-Type": "application/json"},
    )
    # The sandbox is on loopback: never send this through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read()).get("error", "")
        except ValueError:
            detail = ""
        raise SandboxControlError(f"the sandbox refused {name}: {detail or error}") from None
    except OSError as error:
        raise SandboxControlError(f"the sandbox at {info.endpoint} did not answer: {error}") from None


def _given(state_dir: StateDir) -> Path:
    # A folder passed in is used as given, as the faces always did; only the CLI resolves its flag.
    return Path(state_dir) if state_dir is not None else _state.default_state_dir()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
