"""The sandbox's HTTP server: the ECS RPC API on `/`, its own controls under `/_sandbox/`."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import string
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from . import _signature
from ._actions import ACTIONS, Context
from ._errors import ApiError
from ._hosts import HostError, Hosts, kill_leftovers
from ._model import ANY_REGION, Fault, SecurityGroup, Timings, World
from ._params import Params

API_VERSION = "2014-05-26"
CONTROL_KEY_HEADER = "x-sandbox-key"
DEFAULT_REGION = "cn-hangzhou"


class SandboxBusyError(RuntimeError):
    """Another sandbox already runs for this state dir."""


def default_state_dir() -> Path:
    """PYMLSQL_SANDBOX_DIR if set, else ~/.pymlsql/sandbox."""
    configured = os.environ.get("PYMLSQL_SANDBOX_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".pymlsql" / "sandbox"


class Sandbox:
    """A local ECS endpoint whose instances are real OpenSSH servers.

    Use it in-process (a test fixture) or through `pymlsql sandbox start|serve|stop`:

        with Sandbox(tmp_path).start() as sandbox:
            os.environ.update(sandbox.environment())
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        region_id: str = DEFAULT_REGION,
        timings: Timings | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.requested_port = port
        self.region_id = region_id
        self.timings = timings or Timings()
        self.access_key_id = ""
        self.access_key_secret = ""
        self.world: World | None = None
        self._http: ThreadingHTTPServer | None = None
        self._network_lock: IO[str] | None = None
        self._closed = threading.Event()
        self._finished = threading.Event()

    def __repr__(self) -> str:
        return f"Sandbox(state_dir={str(self.state_dir)!r}, endpoint={self.endpoint!r})"

    @property
    def port(self) -> int:
        return self._http.server_address[1] if self._http else 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self._http else ""

    def environment(self) -> dict[str, str]:
        return {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": self.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": self.access_key_secret,
            "ALIBABA_CLOUD_REGION_ID": self.region_id,
            "PYMLSQL_ECS_ENDPOINT": self.endpoint,
        }

    def start(self) -> Sandbox:
        """Starts serving; raises SandboxBusyError if another sandbox runs for the same state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self._forget_dead_sandbox()
        self.access_key_id, self.access_key_secret = _credentials(self.state_dir)
        network, self._network_lock = _claim_network()
        hosts = Hosts(self.state_dir, on_ssh_ready=lambda *args: self.world.ssh_ready(*args))  # type: ignore[union-attr]
        self.world = World(hosts, network, self.timings)
        self.world.security_groups["sg-sandbox-default"] = SecurityGroup(
            "sg-sandbox-default", "sandbox-default", "Default group of the sandbox", ANY_REGION,
            "vpc-sandbox-default",
        )  # fmt: skip
        self._http = ThreadingHTTPServer(("127.0.0.1", self.requested_port), _handler_for(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="sandbox-http", daemon=True).start()
        _write_private(
            self.state_dir / "server.json",
            json.dumps(
                {
                    "pid": os.getpid(),
                    "endpoint": self.endpoint,
                    "port": self.port,
                    "region_id": self.region_id,
                    "network": f"127.{network}.0.0/16",
                    "full_fidelity": hosts.full,
                    "started_at": time.time(),
                }
            ),
        )
        return self

    def _forget_dead_sandbox(self) -> None:
        try:
            pid = int(json.loads((self.state_dir / "server.json").read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError):
            pid = 0
        if pid and pid != os.getpid() and process_alive(pid):
            raise SandboxBusyError(
                f"a sandbox (pid {pid}) already runs for {self.state_dir}.\n"
                "Hint: stop it with `pymlsql sandbox stop`, or use another state dir."
            )
        # Machines a killed sandbox left behind, and instances it never released.
        kill_leftovers(self.state_dir)
        shutil.rmtree(self.state_dir / "instances", ignore_errors=True)
        (self.state_dir / "server.json").unlink(missing_ok=True)

    def wait(self) -> None:
        """Blocks until close() is called (from a signal handler or `/_sandbox/shutdown`)."""
        while not self._finished.wait(0.5):
            pass

    def close(self) -> None:
        """Releases every instance, ends every process the sandbox started, and stops serving."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        if self.world:
            self.world.close()
        (self.state_dir / "server.json").unlink(missing_ok=True)
        if self._network_lock:
            self._network_lock.close()
        self._finished.set()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.world is not None
        with self.world.lock:
            instances = [
                {
                    "InstanceId": instance.instance_id,
                    "Status": instance.status,
                    "PrivateIpAddress": instance.private_ip,
                    "PublicIpAddress": instance.public_ip,
                    "SshPort": instance.ssh_port,
                    "SshReady": "ssh_ready_at" in instance.events,
                }
                for instance in self.world.instances.values()
            ]
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "region_id": self.region_id,
            "state_dir": str(self.state_dir),
            "full_fidelity": self.world.hosts.full,
            "instances": instances,
        }

    def log(self) -> dict[str, Any]:
        assert self.world is not None
        with self.world.lock:
            events = {**self.world.released}
            events.update({i.instance_id: dict(i.events) for i in self.world.instances.values()})
            return {
                "requests": list(self.world.requests),
                "instances": events,
                "security_groups": {
                    group_id: group.permissions
                    for group_id, group in self.world.security_groups.items()
                },
            }

    def fault(self, order: dict[str, Any]) -> dict[str, Any]:
        """Applies one fault order; see `pymlsql sandbox fault --help`."""
        world = self.world
        assert world is not None
        if order.get("clear"):
            with world.lock:
                world.faults.clear()
                world.ssh_delay = 0.0
                world.stuck = None
        if order.get("action"):
            fault = Fault(
                code=str(order.get("code") or "ServiceUnavailable"),
                status=int(order.get("status") or 503),
                count=int(order.get("count") or 1),
                message=order.get("message"),
                lose_response=bool(order.get("lose_response")),
            )
            with world.lock:
                world.faults.setdefault(str(order["action"]), []).append(fault)
        if order.get("ssh_delay") is not None:
            with world.lock:
                world.ssh_delay = float(order["ssh_delay"])
        if order.get("stuck") is not None:
            status = str(order["stuck"])
            if status not in ("Pending", "Starting", "Stopping", ""):
                raise ValueError("stuck must be Pending, Starting or Stopping")
            with world.lock:
                world.stuck = status or None
        for key in ("kill_ssh", "rotate_host_key", "freeze", "thaw"):
            instance_id = order.get(key)
            if not instance_id:
                continue
            with world.lock:
                instance = world.instances.get(instance_id)
                if instance is None or instance.status != "Running":
                    raise ValueError(f"{instance_id} is not a Running instance of this sandbox")
            if key in ("kill_ssh", "rotate_host_key"):
                world.drop_ssh(instance_id, new_host_keys=key == "rotate_host_key")
                continue
            try:
                world.hosts.freeze(instance_id, key == "freeze")
            except HostError as error:
                raise ValueError(str(error)) from None
        return {"ok": True}

    # -- the ECS API -----------------------------------------------------------------------

    def handle_api(
        self, method: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        world = self.world
        assert world is not None
        request_id = str(uuid.uuid4()).upper()
        action = headers.get("x-acs-action") or query.get("Action") or ""
        host = headers.get("host", "")
        started = time.time()
        params = dict(query)
        try:
            if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                params.update(parse_qsl(body.decode(), keep_blank_values=True))
            with world.lock:
                _signature.verify(
                    method=method,
                    path="/",
                    query=query,
                    headers=headers,
                    body=body,
                    secrets={self.access_key_id: self.access_key_secret},
                    seen_nonces=world.nonces,
                )
            version = headers.get("x-acs-version") or query.get("Version")
            if version and version != API_VERSION:
                raise ApiError("InvalidVersion", message=f"Specified version {version} is not valid.")
            handler = ACTIONS.get(action)
            if handler is None:
                raise ApiError("InvalidAction.NotFound")
            fault = world.take_fault(action)
            if fault is not None and not fault.lose_response:
                raise ApiError(fault.code, status=fault.status, message=fault.message)
            with world.lock:
                try:
                    answer = handler(Context(world, host), Params(params))
                except ApiError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a sandbox bug still answers as ECS would
                    traceback.print_exc()
                    raise ApiError("InternalError") from exc
            status, body_out = 200, {"RequestId": request_id, **answer}
            code = "OK"
            if fault is not None:
                status, code = LOST, "OK, answer dropped"
        except ApiError as error:
            status, code = error.status, error.code
            body_out = {
                "RequestId": request_id,
                "HostId": host,
                "Code": error.code,
                "Message": error.message,
                "Recommend": (
                    f"https://api.aliyun.com/troubleshoot?q={error.code}&product=Ecs"
                    f"&requestId={request_id}"
                ),
            }
        with world.lock:
            world.requests.append(
                {
                    "time": started,
                    "action": action,
                    "code": code,
                    "http_status": status,
                    "request_id": request_id,
                    "instance_ids": _mentioned_instances(params),
                }
            )
        return status, body_out


LOST = 0  # the status handle_api gives an answer that must never reach the caller


def _mentioned_instances(params: dict[str, str]) -> list[str]:
    ids = [value for key, value in params.items() if key == "InstanceId" or key.startswith("InstanceId.")]
    if params.get("InstanceIds"):
        try:
            ids += [str(item) for item in json.loads(params["InstanceIds"])]
        except ValueError:
            pass
    return ids


def _handler_for(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pymlsql-sandbox"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the request log is served by /_sandbox/log

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            if parts.path.startswith("/_sandbox/"):
                self._control(parts.path[len("/_sandbox/") :], headers, body)
                return
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            if parts.path not in ("", "/"):
                # RPC actions live on "/" only: any other path names no action.
                headers["x-acs-action"] = ""
                query.pop("Action", None)
            status, answer = sandbox.handle_api(self.command, query, headers, body)
            if status == LOST:
                self.close_connection = True  # done, but the caller never hears of it
                return
            self._send(status, answer)

        def _control(self, name: str, headers: dict[str, str], body: bytes) -> None:
            given = headers.get(CONTROL_KEY_HEADER, "")
            if not secrets.compare_digest(given.encode(), sandbox.access_key_secret.encode()):
                self._send(403, {"error": "the sandbox's control key is missing or wrong"})
                return
            try:
                order = json.loads(body or b"{}")
                if name == "status":
                    self._send(200, sandbox.status())
                elif name == "log":
                    self._send(200, sandbox.log())
                elif name == "fault":
                    self._send(200, sandbox.fault(order))
                elif name == "shutdown":
                    self._send(200, {"ok": True})
                    threading.Thread(target=sandbox.close, daemon=True).start()
                else:
                    self._send(404, {"error": f"no control named {name!r}"})
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": str(exc)})

        def _send(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _credentials(state_dir: Path) -> tuple[str, str]:
    """The sandbox's own AccessKey, kept in the state dir so a restart keeps shells configured."""
    path = state_dir / "credentials.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["access_key_id"], saved["access_key_secret"]
    alphabet = string.ascii_letters + string.digits
    key_id = "LTAI" + "".join(secrets.choice(alphabet) for _ in range(20))
    secret = "".join(secrets.choice(alphabet) for _ in range(30))
    _write_private(path, json.dumps({"access_key_id": key_id, "access_key_secret": secret}))
    return key_id, secret


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _claim_network() -> tuple[int, IO[str]]:
    """Picks 127.X.0.0/16 for this sandbox's addresses, held by a lock for its lifetime."""
    folder = Path(tempfile.gettempdir()) / "pymlsql-sandbox-networks"
    folder.mkdir(exist_ok=True)
    try:
        folder.chmod(0o1777)
    except PermissionError:
        pass
    for network in range(101, 255):
        # Read-only is enough for flock, and lets users share lock files another user created.
        fd = os.open(folder / f"127.{network}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        handle = os.fdopen(fd)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return network, handle
    raise RuntimeError("every sandbox network 127.101-254.0.0/16 is in use; stop a sandbox first")


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
