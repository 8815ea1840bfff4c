"""Fleet: start, exec, copy and stop across ECS instances: what every face calls."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._config import EcsConfig
from ._ecs import EcsClient
from ._errors import ConfigError, FleetError, HostKeyMismatchError, PymlsqlError, SshError, WaitTimeoutError
from ._keys import ensure_key_pair
from ._output import NullSink, OutputSink
from ._results import CopyResult, ExecResult, FleetResult, Instance
from ._ssh import KnownHosts, SshConnection, load_private_key
from ._transfer import download, upload

CREATED_BY = "pymlsql:created-by"
NAME_TAG = "pymlsql:name"
_TOOL = "pymlsql"
_MAX_PER_CALL = 100
Progress = Callable[[str], None]
Watch = Callable[[list[Instance], set[str]], None]


def _quiet(message: str) -> None:
    pass


def _no_watch(instances: list[Instance], ssh_ready: set[str]) -> None:
    pass


class Fleet:
    """A session with ECS and the instances' SSH servers; SSH connections are reused within it.

    Every method raises a PymlsqlError subclass on purpose; any other exception is a bug.
    """

    def __init__(self, config: EcsConfig, *, progress: Progress = _quiet) -> None:
        self.config = config
        self.ecs = EcsClient(config)
        self.known_hosts = KnownHosts(config.known_hosts_path())
        self.progress = progress
        self._connections: dict[tuple[str, bool], SshConnection] = {}
        self._lock = threading.Lock()
        self._watch: Watch = _no_watch

    def __repr__(self) -> str:
        return f"Fleet(region_id={self.config.region_id!r}, endpoint={self.config.endpoint!r})"

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
                hint="Check the id and the region (ALIBABA_CLOUD_REGION_ID); `pymlsql list` shows this tool's ones.",
            )
        return [found[instance_id] for instance_id in instance_ids]

    def find(self, name: str | None = None) -> list[Instance]:
        """Instances this tool created (found by tag), only those of `name` if given."""
        tags = {CREATED_BY: _TOOL}
        if name:
            tags[NAME_TAG] = name
        return self.ecs.describe(tags=tags)

    # -- start -----------------------------------------------------------------------------

    def start(
        self,
        *,
        image_id: str | None = None,
        instance_type: str = "ecs.g7.large",
        count: int = 1,
        name: str | None = None,
        instance_ids: Sequence[str] | None = None,
        key_pair_name: str | None = None,
        init_ssh_key: bool = False,
        need_public_ip: bool = False,
        security_group: str | None = None,
        vswitch: str | None = None,
        zone: str | None = None,
        tags: Mapping[str, str] | None = None,
        user_data: str | None = None,
        spot_strategy: str | None = None,
        system_disk_size: int | None = None,
        system_disk_category: str | None = None,
        ttl: float | None = None,
        keep_on_failure: bool = False,
        wait_for_ssh: bool = True,
        watch: Watch | None = None,
    ) -> list[Instance]:
        """Starts instances and returns them once Running and (with a key) answering SSH.

        Reuses instances by id (starting them if Stopped) or by `name` (a start with a name is
        idempotent: it finds what an earlier start made and creates only what is missing).
        On failure or timeout it releases what it created unless `keep_on_failure`.
        `watch(instances, ssh_ready_ids)` is called after every poll, for live views.
        """
        self._watch = watch or _no_watch
        if count < 1:
            raise ConfigError("count must be at least 1")
        key_path = None
        if key_pair_name:
            key_path = ensure_key_pair(self.ecs, key_pair_name, Path(self.config.key_dir).expanduser(),
                                       create=init_ssh_key)  # fmt: skip
        reused: list[Instance] = []
        if instance_ids:
            reused = self.get(instance_ids)
        elif name:
            reused = [i for i in self.find(name) if i.status not in ("Stopping",)]
            if reused:
                self.progress(f"found {len(reused)} instance(s) named {name}")
        created: list[str] = []
        try:
            stopped = [instance.instance_id for instance in reused if instance.status == "Stopped"]
            if stopped:
                self.progress(f"starting {len(stopped)} stopped instance(s)")
                self.ecs.start(stopped)
            missing = 0 if instance_ids else count - len(reused)
            if missing > 0:
                if not image_id:
                    raise ConfigError("an image id is needed to create instances", hint="Pass --image-id.")
                created = self._create(
                    missing,
                    image_id=image_id,
                    instance_type=instance_type,
                    name=name,
                    key_pair_name=key_pair_name,
                    need_public_ip=need_public_ip,
                    security_group=security_group,
                    vswitch=vswitch,
                    zone=zone,
                    tags=tags,
                    user_data=user_data,
                    spot_strategy=spot_strategy,
                    system_disk_size=system_disk_size,
                    system_disk_category=system_disk_category,
                    ttl=ttl,
                )
            ids = [instance.instance_id for instance in reused] + created
            instances = self._wait_running(ids)
            self._watch(instances, set())
            if wait_for_ssh:
                self._wait_ssh(instances, key_path, public=need_public_ip)
            return instances
        except (PymlsqlError, KeyboardInterrupt):
            if created and not keep_on_failure:
                self.progress(f"releasing the {len(created)} instance(s) this start created")
                self._release_quietly(created)
            raise

    def _create(self, amount: int, *, name: str | None, ttl: float | None, tags: Mapping[str, str] | None,
                need_public_ip: bool, user_data: str | None, **fields: Any) -> list[str]:  # fmt: skip
        all_tags = {CREATED_BY: _TOOL, **({NAME_TAG: name} if name else {}), **(tags or {})}
        request: dict[str, Any] = {
            "image_id": fields["image_id"],
            "instance_type": fields["instance_type"],
            "key_pair_name": fields["key_pair_name"],
            "security_group_id": fields["security_group"],
            "v_switch_id": fields["vswitch"],
            "zone_id": fields["zone"],
            "spot_strategy": fields["spot_strategy"],
            "system_disk_size": fields["system_disk_size"],
            "system_disk_category": fields["system_disk_category"],
            "internet_max_bandwidth_out": 10 if need_public_ip else 0,
            "instance_name": name,
            "user_data": base64.b64encode(user_data.encode()).decode() if user_data else None,
            "auto_release_time": _auto_release(ttl) if ttl else None,
            "tags": all_tags,
        }
        created: list[str] = []
        try:
            while len(created) < amount:
                batch = min(_MAX_PER_CALL, amount - len(created))
                # One token per call: a retried RunInstances never creates twice.
                token = uuid.uuid4().hex
                self.progress(f"creating {batch} instance(s) from {fields['image_id']}")
                created += self.ecs.run_instances(amount=batch, client_token=token, **request)
        except (PymlsqlError, KeyboardInterrupt):
            if created:
                self._release_quietly(created)
            raise
        return created

    def _wait_running(self, ids: list[str]) -> list[Instance]:
        deadline = time.monotonic() + self.config.start_timeout
        interval = 0.5
        last = ""
        while True:
            instances = self.ecs.describe(ids)
            counts: dict[str, int] = {}
            for instance in instances:
                counts[instance.status] = counts.get(instance.status, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            if summary != last:
                self.progress(summary)
                self._watch(instances, set())
                last = summary
            if len(instances) == len(ids) and all(i.status == "Running" for i in instances):
                order = {instance_id: index for index, instance_id in enumerate(ids)}
                return sorted(instances, key=lambda i: order[i.instance_id])
            gone = set(ids) - {instance.instance_id for instance in instances}
            if gone:
                raise PymlsqlError(f"instance(s) {', '.join(sorted(gone))} disappeared while starting")
            if time.monotonic() > deadline:
                raise WaitTimeoutError(
                    f"instances were not Running within {self.config.start_timeout:g} s ({summary})",
                    hint="Raise start_timeout (--start-timeout), or check the instances in the ECS console.",
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 3.0)

    def _wait_ssh(self, instances: list[Instance], key_path: Path | None, *, public: bool) -> None:
        if key_path is None:
            named = {instance.key_pair_name for instance in instances}
            if len(named) != 1 or not next(iter(named)):
                self.progress("no key pair: not waiting for SSH")
                return
            key_path = self.config.key_path(next(iter(named)))
        load_private_key(key_path)  # a missing or unreadable key is no reason to wait: fail now
        deadline = time.monotonic() + self.config.start_timeout
        self.progress(f"waiting for SSH on {len(instances)} instance(s)")
        ready_ids: set[str] = set()
        ready_lock = threading.Lock()

        def ready(instance: Instance) -> None:
            while True:
                try:
                    connection = self._connection(instance, key_path, public=public)
                    status, _ = connection.command("true")
                    if status == 0:
                        with ready_lock:
                            ready_ids.add(instance.instance_id)
                            self._watch(instances, set(ready_ids))
                        return
                except HostKeyMismatchError:
                    raise
                except SshError as error:
                    self._drop(instance, public)
                    if time.monotonic() > deadline:
                        raise WaitTimeoutError(
                            f"SSH on {instance.instance_id} did not accept the key within "
                            f"{self.config.start_timeout:g} s: {str(error).splitlines()[0]}",
                            hint="Check the security group allows port 22, and the key pair.",
                        ) from None
                time.sleep(0.5)

        self._parallel(instances, ready, raise_first=True)

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
        public: bool = False,
        cancel: threading.Event | None = None,
        pty: bool = False,
    ) -> FleetResult:
        """Runs `script` with bash on every instance as `user`, in parallel, streaming to `sink`.

        With `pty` each script runs on a terminal (its stderr then arrives merged into stdout).

        Returns a FleetResult of ExecResult (or the error of an instance that could not run it).
        With `check`, raises FleetError if any instance failed or exited non-zero.
        """
        sink = sink or NullSink()
        cancel = cancel or threading.Event()

        def run_one(instance: Instance) -> ExecResult:
            key = self._key_path(instance, key_pair_name)
            connection = self._connection(instance, key, public=public)
            started = time.monotonic()
            status, stdout, stderr = connection.run(script, user=user, sink=sink, timeout=timeout, cancel=cancel,
                                                    pty=pty)  # fmt: skip
            return ExecResult(instance.instance_id, script, status, stdout, stderr, time.monotonic() - started)

        result = FleetResult(self._parallel(list(instances), run_one, cancel=cancel))
        if check and result.failed:
            raise FleetError(_failure_summary("the script", result), result=result, hint=_first_hint(result))
        return result

    # -- copy ------------------------------------------------------------------------------

    def copy_to(
        self,
        instances: Sequence[Instance],
        source: str,
        target: str,
        *,
        user: str = "root",
        key_pair_name: str | None = None,
        public: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        check: bool = True,
    ) -> FleetResult:
        """Copies a local file or directory to every instance, owned there by `user`.

        `progress(instance_id, bytes_done, bytes_total)` is called as bytes move.
        """

        def copy_one(instance: Instance) -> CopyResult:
            connection, report = self._copy_session(instance, key_pair_name, public, progress)
            return upload(connection, source, target, user=user, progress=report)

        result = FleetResult(self._parallel(list(instances), copy_one))
        if check and result.failed:
            raise FleetError(_failure_summary("the copy", result), result=result, hint=_first_hint(result))
        return result

    def copy_from(
        self,
        instance: Instance,
        source: str,
        target: str,
        *,
        user: str = "root",
        key_pair_name: str | None = None,
        public: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> CopyResult:
        """Copies a file or directory of one instance to the local `target`."""
        connection, report = self._copy_session(instance, key_pair_name, public, progress)
        return download(connection, source, target, user=user, progress=report)

    def _copy_session(
        self,
        instance: Instance,
        key_pair_name: str | None,
        public: bool,
        progress: Callable[[str, int, int], None] | None,
    ) -> tuple[SshConnection, Callable[[int, int], None]]:
        """The instance's connection, and its progress reporter for one copy."""
        connection = self._connection(instance, self._key_path(instance, key_pair_name), public=public)
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
            self._drop(instance, True)
            self._drop(instance, False)
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

    def _release_quietly(self, ids: list[str]) -> None:
        try:
            self.ecs.delete(ids, force=True)
            self.known_hosts.forget(ids)
        except PymlsqlError as error:
            self.progress(f"could not release {', '.join(ids)}: {error}")

    # -- plumbing --------------------------------------------------------------------------

    def _key_path(self, instance: Instance, key_pair_name: str | None) -> Path:
        name = key_pair_name or instance.key_pair_name
        if not name:
            raise ConfigError(
                f"{instance.instance_id} was started without a key pair, so there is no key to log in with",
                hint="Pass --key-pair-name with the key in ~/.ssh to use.",
            )
        return self.config.key_path(name)

    def _connection(self, instance: Instance, key_path: Path, *, public: bool) -> SshConnection:
        slot = (instance.instance_id, public)
        with self._lock:
            connection = self._connections.get(slot)
        if connection is not None and connection.alive:
            return connection
        connection = SshConnection(
            instance,
            load_private_key(key_path),
            self.known_hosts,
            public=public,
            connect_timeout=self.config.ssh_connect_timeout,
        )
        with self._lock:
            self._connections[slot] = connection
        return connection

    def _drop(self, instance: Instance, public: bool) -> None:
        with self._lock:
            connection = self._connections.pop((instance.instance_id, public), None)
        if connection is not None:
            connection.close()

    def _parallel(self, instances: list[Instance], work: Callable[[Instance], Any], *,
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


def _auto_release(ttl: float) -> str:
    when = datetime.fromtimestamp(time.time() + ttl, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_summary(what: str, result: FleetResult) -> str:
    details = [
        f"{instance_id}: exit status {outcome.exit_status}"
        if isinstance(outcome, ExecResult)
        else f"{instance_id}: {str(outcome).splitlines()[0]}"
        for instance_id, outcome in result.failed.items()
    ]
    head = f"{what} failed on {len(details)} of {len(result)} instance(s):"
    if len(details) == 1:
        return f"{head} {details[0]}"
    return "\n".join([head, *(f"  {detail}" for detail in details)])


def _first_hint(result: FleetResult) -> str | None:
    """The hint of the first failure that has one: failures of one operation tend to share a cause."""
    return next((o.hint for o in result.failed.values() if isinstance(o, PymlsqlError) and o.hint), None)
