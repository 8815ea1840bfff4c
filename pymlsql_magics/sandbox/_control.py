"""Running a sandbox in the background and talking to it: what `pymlsql sandbox ...` does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ._hosts import kill_leftovers
from ._server import CONTROL_KEY_HEADER, default_state_dir, process_alive

_LAUNCHER = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
    " start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


class SandboxControlError(RuntimeError):
    """A sandbox command could not be carried out; the message says what to do."""


def state_dir_or_default(state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()


def read_server(state_dir: Path) -> dict[str, Any] | None:
    """What the running sandbox of `state_dir` wrote about itself, or None if none runs."""
    try:
        info = json.loads((state_dir / "server.json").read_text())
        credentials = json.loads((state_dir / "credentials.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = int(info.get("pid", 0))
    if pid <= 0 or not process_alive(pid):
        return None
    return {**info, **credentials}


def exports(info: dict[str, Any]) -> str:
    values = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": info["access_key_id"],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": info["access_key_secret"],
        "ALIBABA_CLOUD_REGION_ID": info["region_id"],
        "PYMLSQL_ECS_ENDPOINT": info["endpoint"],
    }
    return "".join(f"export {name}={value}\n" for name, value in values.items())


def start(
    state_dir: Path,
    *,
    port: int = 0,
    serve_args: list[str] | None = None,
    timeout: float = 30.0,
) -> tuple[dict[str, Any], bool]:
    """Starts a background sandbox for `state_dir` unless one runs; returns (info, started)."""
    running = read_server(state_dir)
    if running is not None:
        return running, False
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    command = [sys.executable, "-m", "pymlsql_magics.sandbox", "serve", "--state-dir", str(state_dir),
               "--port", str(port), *(serve_args or [])]  # fmt: skip
    with open(state_dir / "server.log", "ab") as log:
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
        raise SandboxControlError("the sandbox did not start:\n" + _tail(state_dir / "server.log")) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_server(state_dir)
        if info is not None and info.get("pid") == pid:
            return info, True
        if not process_alive(pid):
            raise SandboxControlError("the sandbox did not start:\n" + _tail(state_dir / "server.log"))
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise SandboxControlError(f"the sandbox did not start within {timeout:g} s; see {state_dir / 'server.log'}")


def stop(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stops the sandbox of `state_dir`, releasing its instances; False if none was running."""
    info = read_server(state_dir)
    if info is None:
        cleanup(state_dir)
        return False
    pid = int(info["pid"])
    try:
        call(info, "shutdown")
    except SandboxControlError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    cleanup(state_dir)
    return True


def cleanup(state_dir: Path) -> None:
    """Ends machines a dead sandbox left behind and forgets its instances."""
    kill_leftovers(state_dir)
    shutil.rmtree(state_dir / "instances", ignore_errors=True)
    (state_dir / "server.json").unlink(missing_ok=True)


def call(info: dict[str, Any], name: str, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """Calls a control endpoint of a running sandbox."""
    data = json.dumps(order or {}).encode()
    request = urllib.request.Request(
        f"{info['endpoint']}/_sandbox/{name}",
        data=data,
        method="POST",
        headers={CONTROL_KEY_HEADER: info["access_key_secret"], "Content-Type": "application/json"},
    )
    # The sandbox is on loopback: never send this through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read()).get("error", "")
        except ValueError:
            detail = ""
        raise SandboxControlError(f"the sandbox refused {name}: {detail or error}") from None
    except OSError as error:
        raise SandboxControlError(f"the sandbox at {info['endpoint']} did not answer: {error}") from None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
