"""Fleet: start, exec, copy and stop across ECS instances: what every face calls."""

from __future__ import annotations

import functools
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ._compression import check_mode
from ._config import EcsConfig
from ._costs import Cost, Price, PriceKey, costs, price_key
from ._errors import ConfigError, FleetError, InstanceStateError, PymlsqlError, WaitTimeoutError
from ._face import PYTHON, Face
from ._forward import Forward, check_port
from ._host_key_sources import console_fingerprints
from ._known_hosts import KnownHosts
from ._launch import LaunchSpec
from ._network import CREATED_BY, TOOL
from ._network_inventory import ToolNetwork, delete_networks, tool_networks
from ._once import done_at, once_key, record
from ._output import NullSink, OutputSink
from ._reclaims import ReclaimWatch
from ._relayed_copy import RelayedCopy
from ._results import CopyResult, ExecResult, FleetResult, Instance
from ._ssh import SshConnection
from ._ssh_keys import PrivateKey, load_private_key
from ._start import NAME_TAG, Start, Watch
from ._transfer import download, upload
from ._whereabouts import Whereabouts, find_whereabouts

if TYPE_CHECKING:
    from ._ecs import EcsClient
    from ._vpc import VpcClient

__all__ = ["CREATED_BY", "NAME_TAG", "Fleet"]
Progress = Callable[[str], None]
CopyProgress = Callable[[str, int, int], None]


def _quiet(message: str) -> None:
    pass


class Fleet:
    """A session with ECS and the instances' SSH servers; SSH connections are reused within it.

    Every method raises a PymlsqlError subclass on purpose; any other exception is a bug.
    """

    def __init__(self, config: EcsConfig, *, progress: Progress = _quiet, face: Face = PYTHON) -> None:
        self.config = config
        self.face = face
        self.known_hosts = KnownHosts(config.known_hosts_path())
        self.progress = progress
        self._connections: dict[tuple[str, bool], SshConnection] = {}
        self._forwards: list[Forward] = []
        self._lock = threading.Lock()
        # Parsing an RSA key checks it, which costs tens of milliseconds: once per file, not per connection.
        self._keys: dict[Path, tuple[int, PrivateKey]] = {}

    def __repr__(self) -> str:
        return f"Fleet(region_id={self.config.region_id!r}, endpoint={self.config.endpoint!r})"

    @functools.cached_property
    def ecs(self) -> EcsClient:
        """The ECS client, loaded on first use: a command that finds what it needs without asking ECS
        (see pymlsql_magics.agent) never pays for loading the SDK."""
        from ._ecs import EcsClient

        return EcsClient(self.config)

    @functools.cached_property
    def vpc(self) -> VpcClient:
        """The VPC product's client, loaded only when a network is looked for: its SDK takes a second."""
        from ._vpc import VpcClient

        return VpcClient(self.config)

    @functools.cached_property
    def whereabouts(self) -> Whereabouts:
        """Where this client runs, which decides the address each instance is reached at."""
        return find_whereabouts(self.config.metadata_endpoint)

    def reach(self, instance: Instance) -> str:
        """How this client reaches `instance`: "public", "private", or "none" (outside, no public IP)."""
        if self.whereabouts.inside(instance.vpc_id):
            return "private"
        return "public" if instance.public_ip else "none"

    def dials_public(self, instance: Instance, public: bool | None = None) -> bool:
        """Whether to reach `instance` at its public address: as forced, else when outside its VPC."""
        if public is None:
            public = not self.whereabouts.inside(instance.vpc_id)
        if public and not instance.public_ip:
            outside = "" if self.whereabouts.vpc_id is None else f" ({self.whereabouts.describe()})"
            raise ConfigError(
                f"{instance.instance_id} has no public address, and this client{outside} reaches it by no other",
                hint="Start it with --need-public-ip true (or give it an EIP), or run this from an ECS instance "
                "in its VPC.",
            )
        return public

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            forwards, self._forwards = self._forwards, []
        for forward in forwards:
            forward.close()
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()

    # -- finding ---------------------------------------------------------------------------

    def get(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these ids, in that order; raises ConfigError naming any unknown id."""
        found = {instance.instance_id: instance for instance in self.ecs.describe(list(instance_ids))}
        missing = [instance_id for instance_id in instance_ids if instance_id not in found]
        if missing:
            raise ConfigError(
                f"no instance {', '.join(missing)} in region {self.config.region_id}",
                hint=f"Check the id and the region (--region, ALIBABA_CLOUD_REGION_ID); {self.face.list} "
                "shows this tool's instances.",
            )
        return [found[instance_id] for instance_id in instance_ids]

    def find(self, name: str | None = None) -> list[Instance]:
        """Instances this tool created (found by tag), only those of `name` if given."""
        tags = {CREATED_BY: TOOL}
        if name:
            tags[NAME_TAG] = name
        return self.ecs.describe(tags=tags)

    def costs(self, instances: Sequence[Instance]) -> dict[str, Cost]:
        """Each instance's hourly price and its cost since creation: one DescribePrice per kind of
        instance (type, zone, spot), not per instance. Prices ECS will not quote are left out."""
        prices: dict[PriceKey, Price] = {}
        for key in dict.fromkeys(price_key(instance) for instance in instances):
            instance_type, zone, spot = key
            try:
                prices[key] = self.ecs.price(instance_type, zone=zone or None, spot_strategy=spot)
            except PymlsqlError as error:
                self.progress(f"no price for {instance_type} in {zone}: {str(error).splitlines()[0]}")
        return costs(instances, prices)

    # -- start -----------------------------------------------------------------------------

    def start(self, spec: LaunchSpec | None = None, /, *, watch: Watch | None = None, wait_for_ssh: bool = True,
              **settings: Any) -> list[Instance]:  # fmt: skip
        """Starts instances and returns them once Running and (with a key) answering SSH.

        `spec` (or the LaunchSpec fields given as keywords, over it) says what to start. Reuses
        instances by id (starting them if Stopped) or by `name` (a start with a name is
        idempotent: it finds what an earlier start made and creates only what is missing).
        On failure or timeout it releases what it created unless `keep_on_failure`.
        `watch(instances, ssh_ready_ids)` is called after every poll, for live views.
        """
        spec = replace(spec or LaunchSpec(), **settings)
        return Start(self, spec, watch=watch).run(wait_for_ssh=wait_for_ssh)

    # -- the network this tool made -------------------------------------------------------

    def networks(self) -> list[ToolNetwork]:
        """The VPCs with something this tool made in them, and the instances in each."""
        return tool_networks(self.ecs, self.vpc, self.ecs.describe())

    def delete_networks(self, vpc_id: str | None = None) -> list[str]:
        """Deletes what this tool made (in `vpc_id` only, if given); refused while instances use it.

        Returns the ids deleted; raises ConfigError, before deleting anything, if an instance uses it.
        """
        networks = self.networks()
        if vpc_id is not None:
            networks = [network for network in networks if network.vpc_id == vpc_id]
            if not networks:
                raise ConfigError(f"this tool made nothing in {vpc_id} in {self.config.region_id}",
                                  hint=f"{self.face.networks} shows what it made.")  # fmt: skip
        return delete_networks(self.ecs, self.vpc, networks, list_command=self.face.list, progress=self.progress)

    # -- exec ------------------------------------------------------------------------------

    def exec(
        self,
        instances: Sequence[Instance],
        script: str,
        *,
        user: str = "root",
        sink: OutputSink | None = None,
        timeout: float | None = None,
        check: bool = True,
        key_pair_name: str | None = None,
        public: bool | None = None,
        cancel: threading.Event | None = None,
        pty: bool = False,
        env: Mapping[str, str] | None = None,
        once: bool = False,
        force: bool = False,
    ) -> FleetResult[ExecResult]:
        """Runs `script` with bash on every instance as `user`, in parallel, streaming to `sink`.

        `public` forces the address to dial (None: the public one from outside the instance's VPC).
        With `pty` each script runs on a terminal (its stderr then arrives merged into stdout).
        `env` variables are exported to the script (sshd would refuse most of them as SSH's own
        environment requests).
        With `once`, an instance where this exact script (with its user and env) already succeeded
        skips it (its ExecResult says `done_at`); `force` runs it anyway. Either records a success.

        Returns a FleetResult of ExecResult (or the error of an instance that could not run it).
        With `check`, raises FleetError if any instance failed or exited non-zero.
        """
        sink = sink or NullSink()
        cancel = cancel or threading.Event()
        sent = _exports(env or {}) + script
        recorded = once_key(script, user, env or {}) if once or force else None

        def run_one(instance: Instance) -> ExecResult:
            self.require_running(instance)
            key = self.key_path(instance, key_pair_name)
            connection = self.connection(instance, key, public=public)
            if recorded and not force:
                when = done_at(connection, recorded, user)
                if when:
                    return ExecResult(instance.instance_id, script, 0, "", "", 0.0, done_at=when)
            started = time.monotonic()
            status, stdout, stderr, truncated = connection.run(
                sent, user=user, sink=sink, timeout=timeout, cancel=cancel, pty=pty,
                keep=self.config.exec_output_limit,
            )  # fmt: skip
            if recorded and status == 0:
                record(connection, recorded, user)
            return ExecResult(instance.instance_id, script, status, stdout, stderr, time.monotonic() - started,
                              truncated=truncated)  # fmt: skip

        with ReclaimWatch(lambda: self.ecs, instances, sink=sink) as reclaims:
            result = FleetResult(self.parallel(list(instances), reclaims.guarded(run_one), cancel=cancel))
        if check and result.failed:
            raise FleetError(result.summary("the script"), result=result, hint=result.first_hint)
        return result

    # -- forward ---------------------------------------------------------------------------

    def forward(self, instance: Instance, remote_port: int, local_port: int | None = None, *,
                remote_host: str = "127.0.0.1", key_pair_name: str | None = None,
                public: bool | None = None) -> Forward:  # fmt: skip
        """Carries 127.0.0.1:`local_port` (default: a free port) to `remote_host:remote_port` as seen
        from `instance` (default: the instance itself; a peer's private address reaches that peer),
        through the instance's SSH connection. Raises SshError if nothing listens there.

        The forward lives until its `.close()`, or this Fleet's close().
        """
        check_port(remote_port, "the remote port")
        if local_port is not None:
            check_port(local_port, "the local port")
        self.require_running(instance)
        key = self.key_path(instance, key_pair_name)
        forward = Forward(instance.instance_id, remote_host, remote_port,
                          lambda: self.connection(instance, key, public=public), local_port or 0)  # fmt: skip
        with self._lock:
            self._forwards.append(forward)
        return forward

    def forwards(self) -> list[Forward]:
        """The forwards open now, oldest first."""
        with self._lock:
            self._forwards = [f for f in self._forwards if not f.closed]
            return list(self._forwards)

    # -- copy ------------------------------------------------------------------------------

    def copy_to(
        self,
        instances: Sequence[Instance],
        source: str,
        target: str,
        *,
        user: str = "root",
        key_pair_name: str | None = None,
        public: bool | None = None,
        progress: CopyProgress | None = None,
        check: bool = True,
        cancel: threading.Event | None = None,
        relay: bool = True,
        compress: str = "auto",
    ) -> FleetResult[CopyResult]:
        """Copies a local file or directory to every instance, owned there by `user`.

        To several instances of one VPC the bytes leave this machine once, with `relay`: one
        instance passes them on to the others over the private network (see _fanout; each
        CopyResult's `via` says from where). An instance the relay could not reach is copied to
        directly, and `progress` of the Fleet says so.
        `progress(instance_id, bytes_done, bytes_total)` is called as bytes move. Setting `cancel`,
        or Ctrl-C, stops every copy; nothing partial is left at any target. `compress` is auto
        (compress what shrinks, see _compression), on or off.
        """
        check_mode(compress)
        cancel = cancel or threading.Event()

        def copy_one(instance: Instance) -> CopyResult:
            connection, report = self._copy_session(instance, key_pair_name, public, progress)
            return upload(connection, source, target, user=user, progress=report, cancel=cancel, compress=compress)

        with ReclaimWatch(lambda: self.ecs, instances) as reclaims:
            direct = reclaims.guarded(copy_one)
            if relay and len(instances) > 1:
                copies = RelayedCopy(self, source, target, user=user, key_pair_name=key_pair_name, public=public,
                                     progress=progress, cancel=cancel, compress=compress)  # fmt: skip
                outcomes = copies.run(list(instances), direct, reclaims.guarded)
            else:
                outcomes = self.parallel(list(instances), direct, cancel=cancel)
            result = FleetResult(outcomes)
        if check and result.failed:
            raise FleetError(result.summary("the copy"), result=result, hint=result.first_hint)
        return result

    @overload
    def copy_from(self, instances: Instance, source: str, target: str, *, user: str = ...,
                  key_pair_name: str | None = ..., public: bool | None = ..., progress: CopyProgress | None = ...,
                  cancel: threading.Event | None = ..., check: bool = ...,
                  compress: str = ...) -> CopyResult: ...  # fmt: skip

    @overload
    def copy_from(self, instances: Sequence[Instance], source: str, target: str, *, user: str = ...,
                  key_pair_name: str | None = ..., public: bool | None = ..., progress: CopyProgress | None = ...,
                  cancel: threading.Event | None = ..., check: bool = ...,
                  compress: str = ...) -> FleetResult[CopyResult]: ...  # fmt: skip

    def copy_from(
        self,
        instances: Instance | Sequence[Instance],
        source: str,
        target: str,
        *,
        user: str = "root",
        key_pair_name: str | None = None,
        public: bool | None = None,
        progress: CopyProgress | None = None,
        cancel: threading.Event | None = None,
        check: bool = True,
        compress: str = "auto",
    ) -> CopyResult | FleetResult[CopyResult]:
        """Copies a file or directory of one instance, or of several in parallel, to the local `target`.

        From one instance it returns its CopyResult (and raises its error); from several, each
        lands in `target/INSTANCE_ID/` and a FleetResult says how each went (with `check`, raises
        FleetError if any failed). Setting `cancel`, or Ctrl-C, stops every copy; nothing partial
        is left behind. `compress` is auto (compress what shrinks), on or off.
        """
        check_mode(compress)
        cancel = cancel or threading.Event()

        def copy_one(instance: Instance, destination: str) -> CopyResult:
            connection, report = self._copy_session(instance, key_pair_name, public, progress)
            return download(connection, source, destination, user=user, progress=report, cancel=cancel,
                            compress=compress)  # fmt: skip

        if isinstance(instances, Instance):
            with ReclaimWatch(lambda: self.ecs, [instances]) as reclaims:
                return reclaims.guarded(lambda i: copy_one(i, target))(instances)

        def into_own_folder(instance: Instance) -> CopyResult:
            folder = Path(target).expanduser() / instance.instance_id
            folder.mkdir(parents=True, exist_ok=True)
            return copy_one(instance, str(folder))

        several = len(instances) > 1
        with ReclaimWatch(lambda: self.ecs, instances) as reclaims:
            work = reclaims.guarded(into_own_folder if several else lambda i: copy_one(i, target))
            result: FleetResult[CopyResult] = FleetResult(self.parallel(list(instances), work, cancel=cancel))
        if check and result.failed:
            raise FleetError(result.summary("the copy"), result=result, hint=result.first_hint)
        return result

    def _copy_session(
        self,
        instance: Instance,
        key_pair_name: str | None,
        public: bool | None,
        progress: CopyProgress | None,
    ) -> tuple[SshConnection, Callable[[int, int], None]]:
        """The instance's connection, and its progress reporter for one copy."""
        self.require_running(instance)
        connection = self.connection(instance, self.key_path(instance, key_pair_name), public=public)
        if progress is None:
            return connection, _no_progress
        return connection, lambda done, total: progress(instance.instance_id, done, total)

    # -- stop ------------------------------------------------------------------------------

    def stop(self, instances: Sequence[Instance], *, keep_disk: bool = False, wait: bool = True) -> None:
        """Releases the instances (or, with `keep_disk`, only stops them) and waits until done."""
        ids = [instance.instance_id for instance in instances]
        if not ids:
            return
        for instance in instances:
            self.drop(instance, True)
            self.drop(instance, False)
        if keep_disk:
            running = [i.instance_id for i in instances if i.status == "Running"]
            if running:
                self.ecs.stop(running)
            if wait:
                self._wait_status(ids, "Stopped")
            return
        self.ecs.delete(ids, force=True)
        self.known_hosts.forget(ids)
        if wait:
            self._wait_status(ids, None)

    def _wait_status(self, ids: list[str], status: str | None) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            found = self.ecs.describe(ids)
            if (status is None and not found) or (
                status is not None and len(found) == len(ids) and all(i.status == status for i in found)
            ):
                return
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"instances did not reach {status or 'released'} in time")
            time.sleep(0.5)

    def release_quietly(self, ids: list[str]) -> PymlsqlError | None:
        """Releases the instances; what went wrong, if anything, is returned rather than raised."""
        try:
            self.ecs.delete(ids, force=True)
            self.known_hosts.forget(ids)
            return None
        except PymlsqlError as error:
            return error

    # -- plumbing --------------------------------------------------------------------------

    def require_running(self, instance: Instance) -> None:
        """Only a Running instance can be logged in to; saying so beats a refused or timed-out SSH connect."""
        if instance.status == "Running":
            return
        instance_id, status = instance.instance_id, instance.status
        if status == "Stopped":
            hint = f"Start it first: {self.face.reuse_hint(instance_id)}."
        elif status == "Stopping":
            hint = f"Wait until it is Stopped, then start it again: {self.face.reuse_hint(instance_id)}."
        else:
            hint = f"Wait until it is Running ({self.face.list} shows the status), then try again."
        raise InstanceStateError(f"{instance_id} is {status}, not Running", code="IncorrectInstanceStatus", hint=hint)

    def key_path(self, instance: Instance, key_pair_name: str | None) -> Path:
        name = key_pair_name or instance.key_pair_name
        if not name:
            raise ConfigError(
                f"{instance.instance_id} was started without a key pair, so there is no key to log in with",
                hint="Pass --key-pair-name with the key in ~/.ssh to use.",
            )
        return self.config.key_path(name)

    def connection(self, instance: Instance, key_path: Path, *, public: bool | None = None,
                   probing: bool = False) -> SshConnection:  # fmt: skip
        public = self.dials_public(instance, public)
        slot = (instance.instance_id, public)
        key = self.private_key(key_path)
        with self._lock:
            connection = self._connections.get(slot)
        # Reused only as it would be made now: a long-lived Fleet (the agent's) may hold a connection
        # made with another key, or to an address the instance no longer has.
        if connection is not None and connection.alive and connection.serves(instance, public, key):
            return connection
        connection = SshConnection(
            instance,
            key,
            self.known_hosts,
            public=public,
            connect_timeout=self.config.ssh_connect_timeout,
            keepalive=self.config.keepalive_interval,
            expected_host_keys=lambda: self._console_host_keys(instance.instance_id),
            # While an instance boots its SYNs may go unanswered: try again soon rather than wait.
            tcp_timeout=min(self.config.ssh_connect_timeout, 2.0) if probing else None,
            key_path=key_path,
            face=self.face,
        )
        with self._lock:
            self._connections[slot] = connection
        return connection

    def _console_host_keys(self, instance_id: str) -> set[str] | None:
        """Fingerprints of the host keys the instance printed on its console at first boot."""
        try:
            shown = console_fingerprints(self.ecs.console_output(instance_id))
        except PymlsqlError as error:
            self.progress(f"cannot read the console of {instance_id} ({str(error).splitlines()[0]})")
            shown = None
        if shown is None:
            self.progress(f"the console of {instance_id} shows no host keys: pinning the one it offers")
        return shown

    def private_key(self, path: Path) -> PrivateKey:
        try:
            version = path.stat().st_mtime_ns
        except OSError:
            version = -1  # load_private_key says what is wrong with it
        with self._lock:
            cached = self._keys.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        key = load_private_key(path)
        with self._lock:
            self._keys[path] = (version, key)
        return key

    def drop(self, instance: Instance, public: bool | None = None) -> None:
        """Closes the connection to the instance at that address (None: at either)."""
        addresses = (True, False) if public is None else (public,)
        with self._lock:
            dropped = [self._connections.pop((instance.instance_id, each), None) for each in addresses]
        for connection in dropped:
            if connection is not None:
                connection.close()

    def parallel(self, instances: list[Instance], work: Callable[[Instance], Any], *,
                  raise_first: bool = False, cancel: threading.Event | None = None) -> dict[str, Any]:  # fmt: skip
        """Runs `work` on each instance with bounded concurrency; one failure never loses the others.

        On Ctrl-C, `cancel` is set before waiting for the workers, so they stop their remote work.
        """
        outcomes: dict[str, Any] = {}
        workers = max(1, min(self.config.max_parallel, len(instances)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pymlsql") as pool:
            futures = {instance.instance_id: pool.submit(work, instance) for instance in instances}
            try:
                for instance_id, future in futures.items():
                    try:
                        outcomes[instance_id] = future.result()
                    except PymlsqlError as error:
                        if raise_first:
                            raise
                        outcomes[instance_id] = error
            except BaseException:
                for other in futures.values():
                    other.cancel()
                if cancel is not None:
                    cancel.set()
                raise
        return outcomes


def _no_progress(done: int, total: int) -> None:
    pass


_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _exports(env: Mapping[str, str]) -> str:
    """`export` lines that set `env` in the script's own shell, each value quoted for the shell."""
    for key in env:
        if not _VARIABLE.match(key):
            raise ConfigError(f"{key!r} is not a valid environment variable name",
                              hint="Names have letters, digits and _, and do not start with a digit.")  # fmt: skip
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
