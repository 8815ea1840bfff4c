"""The in-process sandbox's lifecycle: start, serve, close, and the clean-up after a killed one."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import _faults, _http, _state
from ._api_door import ApiDoors
from ._blocks import Blocks
from ._catalog import DEFAULT_REGION
from ._errors import SandboxBusyError
from ._faults import FaultOrder
from ._hosts import Hosts, full_fidelity
from ._model import World
from ._state import SandboxInfo, default_state_dir
from ._timings import Timings
from ._wire import Wire

DEGRADED_NETWORK = (
    "the sandbox is not running as root: network rules are not enforced (private addresses are "
    "reachable from this machine, security groups and bandwidth caps are not applied)."
)


class SandboxWarning(UserWarning):
    """The sandbox runs, but less faithfully than it could."""


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
        bandwidth_caps: bool = True,
        client_link: tuple[float, float] | None = None,
    ) -> None:
        """`bandwidth_caps=False` lifts the instances' public bandwidth caps (benchmarks of tools);
        `client_link=(up, down)` in Mbit/s models this machine's own link to public addresses."""
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.bandwidth_caps = bandwidth_caps
        self.client_link = client_link
        self.requested_port = port
        self.region_id = region_id
        self.timings = timings or Timings()
        self.access_key_id = ""
        self.access_key_secret = ""
        self.world: World | None = None
        self._http: ThreadingHTTPServer | None = None
        self._started_at = 0.0
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

    @property
    def info(self) -> SandboxInfo:
        """Where this sandbox serves and its AccessKey, as a background one records them."""
        return SandboxInfo(
            endpoint=self.endpoint,
            region_id=self.region_id,
            access_key_id=self.access_key_id,
            access_key_secret=self.access_key_secret,
            state_dir=self.state_dir,
            pid=os.getpid(),
            port=self.port,
            network=f"127.{self.world.network}.0.0/16" if self.world else "",
            full_fidelity=self.world.hosts.full if self.world else full_fidelity(),
            started_at=self._started_at,
        )

    def environment(self) -> dict[str, str]:
        """The variables that point the SDK, the CLI and the magics at this sandbox."""
        return self.info.environment()

    def start(self) -> Sandbox:
        """Starts serving; raises SandboxBusyError if another sandbox runs for the same state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self._forget_dead_sandbox()
        self.access_key_id, self.access_key_secret = _state.credentials(self.state_dir)
        hosts = Hosts(self.state_dir, on_ssh_ready=self._ssh_ready)
        self.world = World(hosts, Blocks(), self.timings)
        self._http = _http.serve(self, self.requested_port)
        if hosts.full:
            doors = ApiDoors(self._http, self.port)
            hosts.wire = Wire(self.world, bandwidth_caps=self.bandwidth_caps, client_link=self.client_link,
                              api_doors=doors)  # fmt: skip
        else:
            warnings.warn(DEGRADED_NETWORK, SandboxWarning, stacklevel=2)
        self._started_at = time.time()
        _state.write_info(self.info)
        return self

    def _ssh_ready(self, instance_id: str, generation: int) -> None:
        assert self.world is not None
        self.world.ssh_ready(instance_id, generation)

    def _forget_dead_sandbox(self) -> None:
        pid = _state.recorded_pid(self.state_dir)
        if pid and pid != os.getpid() and _state.process_alive(pid):
            raise SandboxBusyError(
                f"a sandbox (pid {pid}) already runs for {self.state_dir}.",
                hint="stop it with `pymlsql sandbox stop`, or use another state dir.",
            )
        # Machines a killed sandbox left behind, and instances it never released.
        _state.forget_dead(self.state_dir)

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
        _state.forget_server(self.state_dir)
        self._finished.set()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the control endpoints answer ---------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Where it serves and each instance's status and addresses (`pymlsql sandbox status`)."""
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
        """Every API request, each instance's event times (rules: DescribeSecurityGroupAttribute),
        and with a client link, the bytes it carried each way (`client_link`: `up`, `down`)."""
        assert self.world is not None
        wire = self.world.hosts.wire
        with self.world.lock:
            events = {**self.world.released}
            events.update({i.instance_id: dict(i.events) for i in self.world.instances.values()})
            log: dict[str, Any] = {"requests": list(self.world.requests), "instances": events}
        up, down = wire.client_link if wire is not None else (None, None)
        if up is not None and down is not None:
            log["client_link"] = {"up": up.carried, "down": down.carried}
        return log

    def fault(self, order: FaultOrder | Mapping[str, Any]) -> None:
        """Applies one fault order, given as a FaultOrder or as its JSON object.

        Raises ValueError for an order that names no Running instance or an unknown status.
        Example: `sandbox.fault(FaultOrder(stuck="Pending"))`, `sandbox.fault({"clear": True})`.
        """
        assert self.world is not None
        _faults.apply(self.world, order if isinstance(order, FaultOrder) else FaultOrder.from_json(order))
