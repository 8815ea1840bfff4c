"""One start: reuse or create instances, wait until Running and SSH, release what it made on failure."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._errors import (
    ConfigError,
    EcsApiError,
    HostKeyMismatchError,
    InstanceStateError,
    PymlsqlError,
    SshError,
    WaitTimeoutError,
)
from ._host_key_sources import host_keys_in_cloud_config
from ._keys import ensure_key_pair
from ._launch import SPOT_MARKETS, LaunchSpec, check_tags
from ._network import CREATED_BY, TOOL, NetworkPlanner, NoZoneLeft
from ._results import Instance

if TYPE_CHECKING:
    from ._fleet import Fleet

NAME_TAG = "pymlsql:name"
_MAX_PER_CALL = 100
_LISTING_PATIENCE = 60.0  # seconds a created id may be missing from DescribeInstances
Watch = Callable[[list[Instance], set[str]], None]
Result = TypeVar("Result")
# Refusals of a type in one zone, not of the request: the start moves on to the next zone or type.
_ZONE_REFUSALS = ("OperationDenied.NoStock", "Zone.NotOnSale", "Zone.NotOpen", "InvalidResourceType.NotSupported",
                  "InvalidInstanceType.ZoneNotSupported", "InstanceType.Offline")  # fmt: skip


class Refusal(NamedTuple):
    """A type a zone would not make, and ECS's code for why."""

    instance_type: str
    zone: str
    code: str


def _no_watch(instances: list[Instance], ssh_ready: set[str]) -> None:
    pass


class Start:
    """The state of one `Fleet.start` call: what it reuses, what it created, its deadline."""

    def __init__(self, fleet: Fleet, spec: LaunchSpec, *, watch: Watch | None = None) -> None:
        self.fleet = fleet
        self.spec = spec
        self.requested = spec  # as given: where a failover looks again from
        self.forced_public = spec.need_public_ip
        self.watch = watch or _no_watch
        self.timeout = spec.start_timeout or fleet.config.start_timeout
        self.created: list[str] = []
        self.price_each: float | None = None  # what one instance of the current type costs per hour
        self.own_tags = {CREATED_BY: TOOL, **({NAME_TAG: spec.name} if spec.name else {})}

    def run(self, *, wait_for_ssh: bool = True) -> list[Instance]:
        spec, fleet = self.spec, self.fleet
        check_tags(self.own_tags, spec.tags)
        self._check_reachable()
        # What a start reuses and where it creates are checked before a key pair is made, so a bad
        # id, vSwitch or group leaves nothing behind.
        reused = self._reused()
        missing = 0 if spec.instance_ids else spec.count - len(reused)
        if missing > 0:
            if not spec.image_id:
                raise ConfigError("an image id is needed to create instances", hint="Pass --image-id.")
            self._priced(spec.instance_types[0], missing)  # a start over its price limit makes nothing
            self.spec = spec = self._placed(spec)
        key_path = None
        if spec.key_pair_name:
            key_path = ensure_key_pair(fleet.ecs, spec.key_pair_name, Path(fleet.config.key_dir).expanduser(),
                                       create=spec.init_ssh_key)  # fmt: skip
        try:
            stopped = [instance.instance_id for instance in reused if instance.status == "Stopped"]
            if stopped:
                fleet.progress(f"starting {len(stopped)} stopped instance(s)")
                fleet.ecs.start(stopped)
            if missing > 0:
                self._create(missing)
            instances = self._wait_running([instance.instance_id for instance in reused] + self.created)
            self.watch(instances, set())
            if wait_for_ssh:
                self._wait_ssh(instances, key_path)
            return instances
        except (PymlsqlError, KeyboardInterrupt) as error:
            self._undo(error)
            raise

    def _check_reachable(self) -> None:
        """From outside any VPC only public addresses reach instances: refuse a start without them."""
        where = self.fleet.whereabouts
        if self.spec.need_public_ip is False and where.vpc_id is None:
            raise ConfigError(
                "--need-public-ip is false, but this client runs outside any VPC, from where only public "
                "addresses reach instances: SSH could never get in",
                hint="Leave --need-public-ip out (or pass true), or run the start from an ECS instance in the "
                "instances' VPC, where their private addresses reach them.",
            )

    def _placed(self, spec: LaunchSpec, refused: Sequence[Refusal] = (),
                error: EcsApiError | None = None) -> LaunchSpec:  # fmt: skip
        """The spec with its network found, checked or made, and whether it gets public addresses.

        Types are tried in their order, each in the zones that offer it, but those in `refused`
        (which answered the error that made this start look again); a zone or vSwitch given pins
        the zone, so only the next type is tried there.
        """
        fleet, requested = self.fleet, self.requested
        public = spec.need_public_ip
        if public is None:
            public = spec.bandwidth is not None or fleet.whereabouts.vpc_id is None
        planner = NetworkPlanner(fleet.ecs, fleet.vpc, progress=fleet.progress, timeout=self.timeout)
        pinned = bool(requested.zone or requested.vswitch_id) or (
            fleet.whereabouts.vpc_id is not None and not requested.security_group
        )
        unoffered: list[NoZoneLeft] = []
        for instance_type in requested.instance_types:
            avoid = {item.zone for item in refused if item.instance_type == instance_type}
            if avoid and pinned:
                continue
            try:
                network = planner.network_for(
                    instance_type, vswitch_id=requested.vswitch_id, security_group=requested.security_group,
                    zone=requested.zone, ssh_source_cidr=requested.ssh_source_cidr or fleet.config.ssh_source_cidr,
                    home=fleet.whereabouts, avoid=avoid,
                )  # fmt: skip
            except NoZoneLeft as nothing:
                unoffered.append(nothing)
                continue
            addresses = "public" if public else "private"
            fleet.progress(f"network: {network.vswitch_id} in {network.zone_id} of {network.vpc_id}, "
                           f"group {network.security_group_id}, {addresses} addresses")  # fmt: skip
            return replace(spec, instance_type=instance_type, vswitch_id=network.vswitch_id,
                           security_group=network.security_group_id, zone=network.zone_id,
                           need_public_ip=public)  # fmt: skip
        raise self._nowhere(refused, unoffered, error)

    def _priced(self, instance_type: str, amount: int) -> None:
        """Says what `amount` more instances of the type cost per hour (one DescribePrice), and refuses
        them when the start's total would pass --max-price-per-hour."""
        spec, fleet = self.requested, self.fleet
        already = len(self.created) * (self.price_each or 0.0)
        try:
            price = fleet.ecs.price(instance_type, zone=spec.zone, spot_strategy=spec.spot_mode, amount=amount,
                                    system_disk_category=spec.system_disk_category,
                                    system_disk_size=spec.system_disk_size)  # fmt: skip
        except PymlsqlError as error:
            if spec.max_price_per_hour is not None:
                error.add_outcome("so --max-price-per-hour could not be checked; nothing was created for it")
                raise
            fleet.progress(f"price: unknown ({str(error).splitlines()[0]})")
            return
        self.price_each = price.each
        spot = " spot" if spec.spot_mode in SPOT_MARKETS else ""
        fleet.progress(f"price: {amount} x {instance_type}{spot}: {price} ({price.each:.3f} each)")
        total = already + price.per_hour
        limit = spec.max_price_per_hour
        if limit is not None and total > limit:
            raise ConfigError(
                f"{len(self.created) + amount} x {instance_type}{spot} would cost {total:.3f} {price.currency}/hour, "
                f"over --max-price-per-hour {limit:g}",
                hint="Start fewer or smaller instances, add --spot, or raise --max-price-per-hour.",
            )

    def _nowhere(self, refused: Sequence[Refusal], unoffered: list[NoZoneLeft],
                 error: EcsApiError | None) -> PymlsqlError:  # fmt: skip
        """The one error of a start no zone and no type can make, naming each place tried and why."""
        types = self.requested.instance_types
        if error is not None and len(refused) == 1 and len(types) == 1:
            return error  # one place was all there was to try: ECS's own words, with the values
        if not refused and len(unoffered) == 1:
            return unoffered[0]
        region = self.fleet.ecs.region_id
        hint = ("Pick another instance type (--instance-type A,B tries several in order) or another region "
                "(--region); stock comes back over time.")  # fmt: skip
        if not refused:
            return ConfigError(f"no zone of {region} offers any of the instance types {', '.join(types)} now",
                               hint=hint)  # fmt: skip
        tried = ", ".join(f"{item.instance_type} in {item.zone} ({item.code})" for item in refused)
        missing = self.requested.count - len(self.created)
        return EcsApiError(
            f"no zone of {region} could make the {missing} instance(s) still missing; tried {tried}",
            code=refused[-1].code, hint=hint,
        )  # fmt: skip

    def _reused(self) -> list[Instance]:
        if self.spec.instance_ids:
            reused = self.fleet.get(self.spec.instance_ids)
            self._check_startable(reused)
            return reused
        if not self.spec.name:
            return []
        reused = [i for i in self.fleet.find(self.spec.name) if i.status != "Stopping"]
        if reused:
            self.fleet.progress(f"found {len(reused)} instance(s) named {self.spec.name}")
        return reused

    def _undo(self, error: BaseException) -> None:
        """Releases what this start created, unless asked to keep it; the error says which it did."""
        if not self.created:
            return
        if not self.spec.keep_on_failure:
            self._release(error)
        elif isinstance(error, PymlsqlError):
            error.add_outcome(f"kept the instance(s) it created: {', '.join(self.created)}")

    def _release(self, error: BaseException) -> None:
        created, self.created = self.created, []
        if not created:
            return
        fleet = self.fleet
        fleet.progress(f"releasing the {len(created)} instance(s) this start created")
        # Carried to its end through a second Ctrl-C: an interrupted release is a leak.
        failure, _ = _to_completion(lambda: fleet.release_quietly(created))
        if failure is None:
            outcome = f"released the {len(created)} instance(s) this start created"
        else:
            outcome = (f"could not release {', '.join(created)} ({str(failure).splitlines()[0]}); "
                       f"release them with: {fleet.face.release_hint(created)}")  # fmt: skip
            fleet.progress(outcome)
        if isinstance(error, PymlsqlError):
            error.add_outcome(outcome)

    def _create(self, amount: int) -> None:
        ecs, tags = self.fleet.ecs, {**self.own_tags, **self.spec.tags}
        refused: list[Refusal] = []
        try:
            while len(self.created) < amount:
                spec = self.spec
                batch = min(_MAX_PER_CALL, amount - len(self.created))
                # One token per call: a retried RunInstances never creates twice.
                token = uuid.uuid4().hex
                self.fleet.progress(f"creating {batch} instance(s) of {spec.instance_type} in {spec.zone} "
                                    f"from {spec.image_id}")  # fmt: skip
                try:
                    # MinAmount 1: a zone with stock for fewer makes those, and only the rest moves on.
                    made, interrupted = _to_completion(partial(ecs.run_instances, spec, amount=batch, min_amount=1,
                                                               client_token=token, tags=tags))  # fmt: skip
                except EcsApiError as error:
                    if error.code not in _ZONE_REFUSALS:
                        raise
                    refused.append(Refusal(spec.instance_type, spec.zone or "", error.code))
                    self.fleet.progress(f"{error.code}: no {spec.instance_type} in {spec.zone} now; looking elsewhere")
                    self.spec = self._placed(spec, refused, error)
                    if self.spec.instance_type != spec.instance_type:
                        self._priced(self.spec.instance_type, amount - len(self.created))
                    continue
                self.created += made
                if len(made) < batch:
                    self.fleet.progress(f"{spec.zone} had stock for {len(made)} of {batch}")
                if interrupted:
                    raise KeyboardInterrupt
        except (PymlsqlError, KeyboardInterrupt) as error:
            # A create cut short is released even with keep_on_failure: nothing of it was ever usable.
            self._release(error)
            raise
        # Host keys the cloud-config gives the instances are known now: pinned before any contact.
        known = host_keys_in_cloud_config(self.spec.user_data)
        for instance_id in self.created if known else []:
            self.fleet.known_hosts.pin(instance_id, known)

    def _wait_running(self, ids: list[str]) -> list[Instance]:
        deadline = time.monotonic() + self.timeout
        # ECS may list a new instance only a while after RunInstances answered with its id.
        unlisted_until = time.monotonic() + _LISTING_PATIENCE
        interval = 0.5
        last = ""
        while True:
            instances = self.fleet.ecs.describe(ids)
            counts: dict[str, int] = {}
            for instance in instances:
                counts[instance.status] = counts.get(instance.status, 0) + 1
            gone = set(ids) - {instance.instance_id for instance in instances}
            not_yet = gone & set(self.created) if time.monotonic() < unlisted_until else set()
            if gone - not_yet:
                raise PymlsqlError(f"instance(s) {', '.join(sorted(gone - not_yet))} disappeared while starting")
            if not_yet:
                counts["not listed by ECS yet"] = len(not_yet)
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            if summary != last:
                self.fleet.progress(summary)
                self.watch(instances, set())
                last = summary
            if not gone and all(i.status == "Running" for i in instances):
                order = {instance_id: index for index, instance_id in enumerate(ids)}
                return sorted(instances, key=lambda i: order[i.instance_id])
            if time.monotonic() > deadline:
                raise self._late(instances)
            # Capped at 1 s: every poll is one call for all the instances, and SSH is tried as
            # soon as they are seen Running.
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

    def _late(self, instances: list[Instance]) -> WaitTimeoutError:
        late = [i for i in instances if i.status != "Running"]
        named = ", ".join(f"{i.instance_id} (stuck in {i.status})" for i in late[:5])
        more = f" and {len(late) - 5} more" if len(late) > 5 else ""
        return WaitTimeoutError(
            f"{named}{more}: not Running within {self.timeout:g} s",
            hint="Raise the start timeout (--start-timeout), or check the instances in the ECS console.",
        )

    def _wait_ssh(self, instances: list[Instance], key_path: Path | None) -> None:
        # The address each instance is reached at follows where this client runs, unless forced.
        fleet, public = self.fleet, self.forced_public
        if key_path is None:
            named = {instance.key_pair_name for instance in instances}
            if len(named) != 1 or not next(iter(named)):
                fleet.progress("no key pair: not waiting for SSH")
                return
            key_path = fleet.config.key_path(next(iter(named)))
        fleet.private_key(key_path)  # a missing or unreadable key is no reason to wait: fail now
        deadline = time.monotonic() + self.timeout
        fleet.progress(f"waiting for SSH on {len(instances)} instance(s)")
        ready_ids: set[str] = set()
        ready_lock = threading.Lock()
        interrupted = threading.Event()  # set by `parallel` on Ctrl-C: every probe loop ends

        def ready(instance: Instance) -> None:
            while not interrupted.is_set():
                try:
                    connection = fleet.connection(instance, key_path, public=public, probing=True)
                    status, _ = connection.command("true")
                    if status == 0:
                        with ready_lock:
                            ready_ids.add(instance.instance_id)
                            self.watch(instances, set(ready_ids))
                        return
                except HostKeyMismatchError:
                    raise
                except SshError as error:
                    fleet.drop(instance, public)
                    if time.monotonic() > deadline:
                        raise WaitTimeoutError(
                            f"SSH on {instance.instance_id} did not accept the key within "
                            f"{self.timeout:g} s: {str(error).splitlines()[0]}",
                            hint="Check the security group allows port 22, and the key pair.",
                        ) from None
                # A refused connect costs next to nothing, and the start returns as soon as the
                # last instance answers.
                interrupted.wait(0.1)

        fleet.parallel(instances, ready, raise_first=True, cancel=interrupted)

    def _check_startable(self, instances: Sequence[Instance]) -> None:
        """A Stopping instance can neither be started nor become Running: refuse it rather than wait."""
        stopping = [instance.instance_id for instance in instances if instance.status == "Stopping"]
        if stopping:
            raise InstanceStateError(
                f"{', '.join(stopping)} {'is' if len(stopping) == 1 else 'are'} Stopping, so cannot be started now",
                code="IncorrectInstanceStatus",
                hint=f"Wait until it is Stopped ({self.fleet.face.list} shows the status), then start it again.",
            )


def _to_completion(call: Callable[[], Result]) -> tuple[Result, bool]:
    """Runs a call that creates or releases instances to its end even if Ctrl-C comes meanwhile,
    so their ids are known and can be released; returns (its result, whether it was interrupted)."""
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
    threading.Thread(target=run, name="pymlsql-to-completion", daemon=True).start()
    interrupted = False
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt:
            interrupted = True
    if "error" in outcome:
        raise outcome["error"]
    value: Result = outcome["value"]
    return value, interrupted
