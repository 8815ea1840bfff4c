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
from ._errors import (
    ConfigError,
    FleetError,
    HostKeyMismatchError,
    InstanceStateError,
    PymlsqlError,
    SshError,
    WaitTimeoutError,
)
from ._host_key_sources import console_fingerprints, host_keys_in_cloud_config
from ._keys import ensure_key_pair
from ._known_hosts import KnownHosts
from ._output import NullSink, OutputSink
from ._results import CopyResult, ExecResult, FleetResult, Instance
from ._ssh import SshConnection
from ._ssh_keys import PrivateKey, load_private_key
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
        # Parsing an RSA key checks it, which costs tens of milliseconds: once per file, not per connection.
        self._keys: dict[Path, tuple[int, PrivateKey]] = {}
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
                hint="Check the id and the region (--region, ALIBABA_CLOUD_REGION_ID); `pymlsql list` or %ecs_list "
                "shows this tool's instances.",
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
            raise ConfigError(f"count must be at least 1, got {count}", hint="Pass --count 1 or more.")
        _check_tags({CREATED_BY: _TOOL, **({NAME_TAG: name} if name else {})}, tags or {})
        # Instances to reuse are checked before a key pair is made, so a bad id leaves nothing behind.
        reused: list[Instance] = []
        if instance_ids:
            reused = self.get(instance_ids)
            _check_startable(reused)
        elif name:
            reused = [i for i in self.find(name) if i.status not in ("Stopping",)]
            if reused:
                self.progress(f"found {len(reused)} instance(s) named {name}")
        key_path = None
        if key_pair_name:
            key_path = ensure_key_pair(self.ecs, key_pair_name, Path(self.config.key_dir).expanduser(),
                                       create=init_ssh_key)  # fmt: skip
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
        except (PymlsqlError, KeyboardInterrupt) as error:
            if created and not keep_on_failure:
                self.progress(f"releasing the {len(created)} instance(s) this start created")
                released = self._release_quietly(created)
                if isinstance(error, PymlsqlError) and released:
                    error.add_outcome(f"released the {len(created)} instance(s) this start created")
            elif created and isinstance(error, PymlsqlError):
                error.add_outcome(f"kept the instance(s) it created: {', '.join(created)}")
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
                made, interrupted = _to_completion(
                    lambda b=batch, t=token: self.ecs.run_instances(amount=b, client_token=t, **request)
                )
                created += made
                if interrupted:
                    raise KeyboardInterrupt
            # Host keys the cloud-config gives the instances are known now: pinned before any contact.
            known = host_keys_in_cloud_config(user_data)
            for instance_id in created if known else []:
                self.known_hosts.pin(instance_id, known)
        except (PymlsqlError, KeyboardInterrupt) as error:
            if created:
                self.progress(f"releasing the {len(created)} instance(s) this start created")
                if self._release_quietly(created) and isinstance(error, PymlsqlError):
                    error.add_outcome(f"released the {len(created)} instance(s) this start created")
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
                late = [i for i in instances if i.status != "Running"]
                named = ", ".join(f"{i.instance_id} (stuck in {i.status})" for i in late[:5])
                more = f" and {len(late) - 5} more" if len(late) > 5 else ""
                raise WaitTimeoutError(
                    f"{named}{more}: not Running within {self.config.start_timeout:g} s",
                    hint="Raise the start timeout (--start-timeout of pymlsql start, --timeout of %ecs_start), "
                    "or check the instances in the ECS console.",
                )
            # Capped at 1 s: every poll is one call for all the instances, and SSH is tried as
            # soon as they are seen Running.
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

    def _wait_ssh(self, instances: list[Instance], key_path: Path | None, *, public: bool) -> None:
        if key_path is None:
            named = {instance.key_pair_name for instance in instances}
            if len(named) != 1 or not next(iter(named)):
                self.progress("no key pair: not waiting for SSH")
                return
            key_path = self.config.key_path(next(iter(named)))
        self._private_key(key_path)  # a missing or unreadable key is no reason to wait: fail now
        deadline = time.monotonic() + self.config.start_timeout
        self.progress(f"waiting for SSH on {len(instances)} instance(s)")
        ready_ids: set[str] = set()
        ready_lock = threading.Lock()

        def ready(instance: Instance) -> None:
            while True:
                try:
                    connection = self._connection(instance, key_path, public=public, probing=True)
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
                # A refused connect costs next to nothing, and the start returns as soon as the
                # last instance answers.
                time.sleep(0.1)

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
            _require_running(instance)
            key = self._key_path(instance, key_pair_name)
            connection = self._connection(instance, key, public=public)
            started = time.monotonic()
            status, stdout, stderr, truncated = connection.run(
                script, user=user, sink=sink, timeout=timeout, cancel=cancel, pty=pty,
                keep=self.config.exec_output_limit,
            )  # fmt: skip
            return ExecResult(instance.instance_id, script, status, stdout, stderr, time.monotonic() - started,
                              truncated=truncated)  # fmt: skip

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
        cancel: threading.Event | None = None,
    ) -> FleetResult:
        """Copies a local file or directory to every instance, owned there by `user`.

        `progress(instance_id, bytes_done, bytes_total)` is called as bytes move. Setting `cancel`,
        or Ctrl-C, stops every copy; nothing partial is left at any target.
        """

        cancel = cancel or threading.Event()

        def copy_one(instance: Instance) -> CopyResult:
            connection, report = self._copy_session(instance, key_pair_name, public, progress)
            return upload(connection, source, target, user=user, progress=report, cancel=cancel)

        result = FleetResult(self._parallel(list(instances), copy_one, cancel=cancel))
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
        cancel: threading.Event | None = None,
    ) -> CopyResult:
        """Copies a file or directory of one instance to the local `target`.

        Setting `cancel` (from another thread) stops it; nothing partial is left behind.
        """
        connection, report = self._copy_session(instance, key_pair_name, public, progress)
        return download(connection, source, target, user=user, progress=report, cancel=cancel)

    def _copy_session(
        self,
        instance: Instance,
        key_pair_name: str | None,
        public: bool,
        progress: Callable[[str, int, int], None] | None,
    ) -> tuple[SshConnection, Callable[[int, int], None]]:
        """The instance's connection, and its progress reporter for one copy."""
        _require_running(instance)
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

    def _release_quietly(self, ids: list[str]) -> bool:
        try:
            self.ecs.delete(ids, force=True)
            self.known_hosts.forget(ids)
            return True
        except PymlsqlError as error:
            self.progress(f"could not release {', '.join(ids)}: {error}")
            return False

    # -- plumbing --------------------------------------------------------------------------

    def _key_path(self, instance: Instance, key_pair_name: str | None) -> Path:
        name = key_pair_name or instance.key_pair_name
        if not name:
            raise ConfigError(
                f"{instance.instance_id} was started without a key pair, so there is no key to log in with",
                hint="Pass --key-pair-name with the key in ~/.ssh to use.",
            )
        return self.config.key_path(name)

    def _connection(self, instance: Instance, key_path: Path, *, public: bool, probing: bool = False) -> SshConnection:
        slot = (instance.instance_id, public)
        with self._lock:
            connection = self._connections.get(slot)
        if connection is not None and connection.alive:
            return connection
        connection = SshConnection(
            instance,
            self._private_key(key_path),
            self.known_hosts,
            public=public,
            connect_timeout=self.config.ssh_connect_timeout,
            keepalive=self.config.keepalive_interval,
            expected_host_keys=lambda: self._console_host_keys(instance.instance_id),
            # While an instance boots its SYNs may go unanswered: try again soon rather than wait.
            tcp_timeout=min(self.config.ssh_connect_timeout, 2.0) if probing else None,
            key_path=key_path,
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

    def _private_key(self, path: Path) -> PrivateKey:
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


def _to_completion(call: Callable[[], list[str]]) -> tuple[list[str], bool]:
    """Runs a call that creates instances to its end even if Ctrl-C comes meanwhile, so their ids
    are known and can be released; returns (its result, whether it was interrupted)."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = error
        finally:
            done.set()

    # An Event, not Thread.join: a join interrupted by Ctrl-C can report a live thread as ended.
    threading.Thread(target=run, name="pymlsql-create", daemon=True).start()
    interrupted = False
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt:
            interrupted = True
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], interrupted


_MAX_TAGS = 20  # per instance, the tool's own included


def _check_tags(own: Mapping[str, str], tags: Mapping[str, str]) -> None:
    """Refuses tags ECS would refuse, before anything is created (ECS checks them only at RunInstances)."""
    for key, value in tags.items():
        if not key:
            problem = "is empty"
        elif key.startswith(("aliyun", "acs:")):
            problem = "starts with aliyun or acs:, which ECS reserves for its own tags"
        elif "http://" in key or "https://" in key:
            problem = "contains http:// or https://, which ECS refuses"
        elif len(key) > 128:
            problem = "is longer than the 128 characters ECS allows"
        elif value.startswith("acs:") or "http://" in value or "https://" in value or len(value) > 128:
            raise ConfigError(
                f"the value of the tag {key!r} is not allowed by ECS",
                hint="Tag values have at most 128 characters, do not start with acs: and contain no http(s)://.",
            )
        else:
            continue
        raise ConfigError(f"the tag key {key!r} {problem}", hint="Pick another key for --tag KEY=VALUE.")
    if len({**own, **tags}) > _MAX_TAGS:
        raise ConfigError(
            f"ECS allows {_MAX_TAGS} tags per instance; with the {len(own)} this tool adds, {len(tags)} are too many",
            hint="Pass fewer --tag flags.",
        )


def _check_startable(instances: Sequence[Instance]) -> None:
    """A Stopping instance can neither be started nor become Running: refuse it rather than wait."""
    stopping = [instance.instance_id for instance in instances if instance.status == "Stopping"]
    if stopping:
        raise InstanceStateError(
            f"{', '.join(stopping)} {'is' if len(stopping) == 1 else 'are'} Stopping, so cannot be started now",
            code="IncorrectInstanceStatus",
            hint="Wait until it is Stopped (pymlsql list or %ecs_list shows the status), then start it again.",
        )


def _require_running(instance: Instance) -> None:
    """Only a Running instance can be logged in to; saying so beats a refused or timed-out SSH connect."""
    if instance.status == "Running":
        return
    instance_id, status = instance.instance_id, instance.status
    if status == "Stopped":
        hint = f"Start it first: pymlsql start --instance-id {instance_id}, or %ecs_start --instance-id {instance_id}."
    elif status == "Stopping":
        hint = "Wait until it is Stopped, then start it again with start --instance-id."
    else:
        hint = "Wait until it is Running (pymlsql list or %ecs_list shows the status), then try again."
    raise InstanceStateError(f"{instance_id} is {status}, not Running", code="IncorrectInstanceStatus", hint=hint)


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
