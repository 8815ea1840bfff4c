"""A sandbox's state dir: what a running sandbox writes about itself, and the clean-up after a dead one.

`server.json` says where the sandbox serves and which process it is; `credentials.json` holds its
AccessKey, kept across restarts so that shells configured once stay configured.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path

_SERVER = "server.json"
_CREDENTIALS = "credentials.json"


def default_state_dir() -> Path:
    """PYMLSQL_SANDBOX_DIR if set, else ~/.pymlsql/sandbox."""
    configured = os.environ.get("PYMLSQL_SANDBOX_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".pymlsql" / "sandbox"


def state_dir_or_default(state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()


@dataclass(frozen=True)
class SandboxInfo:
    """Where a sandbox serves and how to reach it, as its state dir records it.

    Example: `os.environ.update(info.environment())`, or `print(info.exports(), end="")` for a shell.
    """

    endpoint: str
    region_id: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    state_dir: Path
    pid: int
    port: int
    network: str  # the 127.X.0.0/16 its instances' addresses come from
    full_fidelity: bool  # runs as root: instances have their own users, files and port 22
    started_at: float

    def environment(self) -> dict[str, str]:
        """The variables that point the SDK, the CLI and the magics at this sandbox."""
        return {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": self.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": self.access_key_secret,
            "ALIBABA_CLOUD_REGION_ID": self.region_id,
            "PYMLSQL_ECS_ENDPOINT": self.endpoint,
            # The sandbox's clients run on this machine, "the internet": never ask its metadata service.
            "PYMLSQL_METADATA_ENDPOINT": "off",
        }

    def exports(self) -> str:
        """`export NAME=value` lines of `environment()`, for `eval "$(pymlsql sandbox start)"`."""
        return "".join(f"export {name}={value}\n" for name, value in self.environment().items())

    def record(self) -> dict[str, object]:
        """What `server.json` holds: everything but the state dir (its folder) and the AccessKey."""
        return {
            "pid": self.pid,
            "endpoint": self.endpoint,
            "port": self.port,
            "region_id": self.region_id,
            "network": self.network,
            "full_fidelity": self.full_fidelity,
            "started_at": self.started_at,
        }


def write_info(info: SandboxInfo) -> None:
    _write_private(info.state_dir / _SERVER, json.dumps(info.record()))


def read_info(state_dir: Path) -> SandboxInfo | None:
    """What the running sandbox of `state_dir` wrote about itself, or None if none runs."""
    try:
        server = json.loads((state_dir / _SERVER).read_text())
        credentials = json.loads((state_dir / _CREDENTIALS).read_text())
        info = SandboxInfo(
            endpoint=str(server["endpoint"]),
            region_id=str(server["region_id"]),
            access_key_id=str(credentials["access_key_id"]),
            access_key_secret=str(credentials["access_key_secret"]),
            state_dir=state_dir,
            pid=int(server.get("pid", 0)),
            port=int(server["port"]),
            network=str(server["network"]),
            full_fidelity=bool(server["full_fidelity"]),
            started_at=float(server["started_at"]),
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if info.pid <= 0 or not process_alive(info.pid):
        return None
    return info


def recorded_pid(state_dir: Path) -> int:
    """The process `server.json` names, alive or not; 0 if there is none."""
    try:
        return int(json.loads((state_dir / _SERVER).read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0


def forget_dead(state_dir: Path) -> None:
    """Ends machines a dead sandbox left behind and forgets its instances."""
    from ._hosts import kill_leftovers  # machines' tools, needed only when cleaning up

    kill_leftovers(state_dir)
    shutil.rmtree(state_dir / "instances", ignore_errors=True)
    forget_server(state_dir)


def forget_server(state_dir: Path) -> None:
    (state_dir / _SERVER).unlink(missing_ok=True)


def credentials(state_dir: Path) -> tuple[str, str]:
    """The sandbox's own AccessKey, kept in the state dir so a restart keeps shells configured."""
    path = state_dir / _CREDENTIALS
    if path.exists():
        saved = json.loads(path.read_text())
        return str(saved["access_key_id"]), str(saved["access_key_secret"])
    alphabet = string.ascii_letters + string.digits
    key_id = "LTAI" + "".join(secrets.choice(alphabet) for _ in range(20))
    secret = "".join(secrets.choice(alphabet) for _ in range(30))
    _write_private(path, json.dumps({"access_key_id": key_id, "access_key_secret": secret}))
    return key_id, secret


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
