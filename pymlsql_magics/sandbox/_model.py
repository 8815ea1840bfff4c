"""The sandbox's resources and their timed lifecycle.

Every state change that takes time on Alibaba Cloud takes time here too: a scheduler thread
moves instances Pending -> Starting -> Running and Running -> Stopping -> Stopped after the
configured delays, boots the instance's machine when it reaches Running and halts it when it
starts stopping. One lock guards all resources; machines are booted and halted outside it.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import secrets
import string
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._blocks import Blocks
from ._catalog import IMAGES
from ._faults import Fault, Quirks
from ._hosts import BootSpec, Hosts
from ._relay import Gate
from ._stock import Stock
from ._sts import RoleCredentialStore
from ._timings import Timings
from ._wire import Attachment


@dataclass
class Instance:
    instance_id: str
    region_id: str
    zone_id: str
    name: str
    hostname: str
    description: str
    image_id: str
    instance_type: str
    security_group_ids: list[str]
    vpc_id: str
    vswitch_id: str
    key_pair_name: str
    private_ip: str
    bandwidth_out: int
    bandwidth_in: int
    ssh_port: int
    user_data: bytes | None
    spot_strategy: str
    charge_type: str
    system_disk_category: str
    system_disk_size: int
    tags: dict[str, str]
    status: str = "Pending"
    public_ip: str = ""
    ram_role: str = ""
    creation_time: float = field(default_factory=time.time)
    start_time: float | None = None
    auto_release_time: float | None = None
    boot_delay: float = 1.0
    stuck: str | None = None
    spot_price_limit: float = 0.0
    spot_duration: int = 1
    # When ECS reclaims this spot instance (epoch seconds); None while no reclaim is scheduled.
    reclaim_at: float | None = None
    # Bumped on every operation so a transition scheduled by an older one is ignored.
    operation: int = 0
    new_host_keys: bool = False
    events: dict[str, float] = field(default_factory=dict)


@dataclass
class KeyPair:
    name: str
    key_pair_id: str
    fingerprint: str
    public_key: str
    region_id: str
    creation_time: float = field(default_factory=time.time)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One ingress rule of a security group, its fields as AuthorizeSecurityGroup takes them."""

    protocol: str  # TCP, UDP, ICMP, GRE or ALL, upper case
    ports: tuple[int, int]  # (-1, -1) for every port
    source_cidr: str
    policy: str = "accept"
    priority: int = 1
    description: str = ""

    def allows(self, protocol: str, port: int, source: str) -> bool:
        """Whether this rule accepts a connection to `port` from `source` (a policy aside)."""
        if self.protocol not in ("ALL", protocol):
            return False
        low, high = self.ports
        in_range = (low, high) == (-1, -1) or low <= port <= high
        return in_range and ipaddress.ip_address(source) in ipaddress.ip_network(self.source_cidr)


@dataclass
class SecurityGroup:
    security_group_id: str
    name: str
    description: str
    region_id: str
    vpc_id: str  # "" for a classic-network group, which no VPC instance can join
    group_type: str = "normal"
    creation_time: float = field(default_factory=time.time)
    tags: dict[str, str] = field(default_factory=dict)
    # rule id -> (rule, creation time)
    rules: dict[str, tuple[Rule, float]] = field(default_factory=dict)


@dataclass
class Vpc:
    vpc_id: str
    region_id: str
    cidr: str
    block: int  # the 127.X of the loopback block this VPC holds
    name: str = ""
    description: str = ""
    status: str = "Pending"
    creation_time: float = field(default_factory=time.time)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class VSwitch:
    vswitch_id: str
    vpc_id: str
    region_id: str
    zone_id: str
    cidr: str
    name: str = ""
    description: str = ""
    status: str = "Pending"
    creation_time: float = field(default_factory=time.time)
    tags: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def usable(self) -> Iterator[str]:
        """Addresses instances may get: ECS keeps the first and the last three of every vSwitch."""
        network = ipaddress.ip_network(self.cidr)
        return (str(network[i]) for i in range(1, network.num_addresses - 3))

    def free_count(self) -> int:
        return ipaddress.ip_network(self.cidr).num_addresses - 4 - len(self.used)


@dataclass
class Eip:
    """An elastic IP address: a public address of the sandbox's block, held apart from instances."""

    allocation_id: str
    region_id: str
    ip_address: str
    bandwidth: int  # Mbit/s, its own cap while associated
    charge_type: str
    status: str = "Available"  # Associating, InUse, Unassociating, Available
    instance_id: str = ""
    creation_time: float = field(default_factory=time.time)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Invocation:
    invoke_id: str
    command_id: str
    name: str
    command_type: str
    content: str
    region_id: str
    timeout: int
    workdir: str
    username: str
    creation_time: float = field(default_factory=time.time)
    # instance id -> {"status", "exit_code", "output", "start", "finish", "error_code", "error_info"}
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def new_id(prefix: str, length: int = 20) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


class Scheduler:
    """Runs callbacks at given monotonic times on one thread, in time order."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._counter), callback))
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._wake.wait(timeout)
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._queue)
            try:
                callback()
            except Exception:  # noqa: BLE001 - one bad transition must not stop the clock
                traceback.print_exc()


class World(Gate):
    """All resources of one sandbox, and the lifecycle that moves them."""

    def __init__(self, hosts: Hosts, blocks: Blocks, timings: Timings) -> None:
        self.hosts = hosts
        self.blocks = blocks
        # The sandbox's own block: the public addresses of its instances ("the internet").
        self.network = blocks.claim()
        self.timings = timings
        self.lock = threading.RLock()
        self.instances: dict[str, Instance] = {}
        self.key_pairs: dict[tuple[str, str], KeyPair] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.vpcs: dict[str, Vpc] = {}
        self.vswitches: dict[str, VSwitch] = {}
        self.public_ips: set[str] = set()
        self.eips: dict[str, Eip] = {}
        self.invocations: dict[str, Invocation] = {}
        # (action, ClientToken) -> (the request without its token, the answer, when it was first made)
        self.client_tokens: dict[tuple[str, str], tuple[dict[str, str], dict[str, Any], float]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.nonces: dict[str, float] = {}
        self.role_credentials = RoleCredentialStore()
        self.ssh_delay = 0.0
        self.stuck: str | None = None
        self.quirks = Quirks()
        self.stock = Stock()
        self.requests: list[dict[str, Any]] = []
        self.released: dict[str, dict[str, float]] = {}
        self.scheduler = Scheduler()
        self.workers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sandbox-host")

    # -- addresses -------------------------------------------------------------------------

    def allocate_private_ip(self, vswitch: VSwitch) -> str | None:
        """The vSwitch's lowest free address, or None when it has none left."""
        for address in vswitch.usable():
            if address not in vswitch.used:
                vswitch.used.add(address)
                return address
        return None

    def allocate_public_ip(self) -> str:
        for n in range(254 * 256):
            address = f"127.{self.network}.{n // 254}.{n % 254 + 1}"
            if address not in self.public_ips:
                self.public_ips.add(address)
                return address
        raise RuntimeError("the sandbox has handed out every public address it has")

    def eip_of(self, instance: Instance) -> Eip | None:
        return next((e for e in self.eips.values() if e.instance_id == instance.instance_id), None)

    def public_address(self, instance: Instance) -> tuple[str, int, int]:
        """(address, outbound Mbit/s, inbound Mbit/s) this machine reaches the instance at: its EIP's,
        else its own public IP's, else ("", 0, 0)."""
        eip = self.eip_of(instance)
        if eip is not None and eip.status == "InUse":
            return eip.ip_address, eip.bandwidth, max(10, eip.bandwidth)
        if instance.public_ip:
            return instance.public_ip, instance.bandwidth_out, instance.bandwidth_in
        return "", 0, 0

    def readdressed(self, instance: Instance) -> None:
        """The instance's public address changed (an EIP came or went): the NAT follows at once."""
        wire = self.hosts.wire
        if wire is not None:
            address, out, inbound = self.public_address(instance)
            instance_id = instance.instance_id
            self._outside_lock(lambda: wire.readdress(instance_id, address, out, inbound))

    def remove_vpc(self, vpc: Vpc) -> None:
        del self.vpcs[vpc.vpc_id]
        self.blocks.free(vpc.block)
        wire = self.hosts.wire
        if wire is not None:
            self._outside_lock(lambda: wire.remove_vpc(vpc.vpc_id))

    # -- what the security groups let in (the Gate of the public addresses) ----------------

    def _ingress(self, instance_id: str) -> list[Rule]:
        """The instance's rules in the order ECS applies them: priority 1 first, drop before accept."""
        with self.lock:
            instance = self.instances.get(instance_id)
            groups = [self.security_groups.get(g) for g in instance.security_group_ids] if instance else []
            rules = [rule for group in groups if group for rule, _ in group.rules.values()]
        return sorted(rules, key=lambda rule: (rule.priority, rule.policy != "drop"))

    def open_ranges(self, instance_id: str) -> list[tuple[int, int]]:
        return [r.ports for r in self._ingress(instance_id) if r.policy == "accept" and r.protocol in ("TCP", "ALL")]

    def admits(self, instance_id: str, port: int, source: str) -> bool:
        for rule in self._ingress(instance_id):
            if rule.allows("TCP", port, source):
                return rule.policy == "accept"
        return False

    def metadata(self, instance_id: str, key: str) -> str | None:
        key = key.strip("/")
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None:
                return None
            values = {
                "instance-id": instance.instance_id,
                "region-id": instance.region_id,
                "zone-id": instance.zone_id,
                "vpc-id": instance.vpc_id,
                "vswitch-id": instance.vswitch_id,
                "private-ipv4": instance.private_ip,
                "eipv4": self.public_address(instance)[0],  # "" (a 404) without a public address
                "hostname": instance.hostname,
                "image-id": instance.image_id,
                "instance/instance-type": instance.instance_type,
            }
            if instance.reclaim_at is not None:  # 404 until a reclaim is scheduled, as on ECS
                values["instance/spot/termination-time"] = datetime.fromtimestamp(
                    instance.reclaim_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # fmt: skip
            role = instance.ram_role
            if role:
                values["ram/security-credentials"] = role
                if key == f"ram/security-credentials/{role}":
                    return self.role_credentials.for_instance(instance_id, role).as_metadata()
        if not key:
            return "\n".join(sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in values}))
        return values.get(key) or None

    def rules_changed(self, group: SecurityGroup) -> None:
        wire = self.hosts.wire
        if wire is not None:
            group_id = group.security_group_id
            members = [i.instance_id for i in self.instances.values() if group_id in i.security_group_ids]
            if members:
                wire.public.refresh(*members)

    def settle(self, resource: Vpc | VSwitch) -> None:
        """A new VPC or vSwitch becomes Available after the pending delay, as on Alibaba Cloud."""

        def available() -> None:
            with self.lock:
                resource.status = "Available"

        self.scheduler.after(self.timings.pending, available)

    # -- lifecycle -------------------------------------------------------------------------

    def add(self, instance: Instance, *, start: bool) -> None:
        """Registers a new instance in Pending; it then starts, or stops if `start` is false."""
        instance.boot_delay = self.timings.boot + self.ssh_delay
        instance.stuck = self.stuck
        instance.events["created_at"] = instance.creation_time
        self.instances[instance.instance_id] = instance
        after_pending = "Starting" if start else "Stopped"
        self._schedule(instance, self.timings.pending, "Pending", after_pending)
        if instance.auto_release_time is not None:
            delay = max(0.0, instance.auto_release_time - time.time())
            self.scheduler.after(delay, lambda: self._auto_release(instance.instance_id))

    def start(self, instance: Instance) -> None:
        self._enter(instance, "Starting")
        instance.boot_delay = self.timings.boot + self.ssh_delay
        self._schedule(instance, self.timings.starting, "Starting", "Running")

    def stop(self, instance: Instance) -> None:
        self._enter(instance, "Stopping")
        self._outside_lock(lambda: self.hosts.halt(instance.instance_id))
        self._schedule(instance, self.timings.stopping, "Stopping", "Stopped")

    def reboot(self, instance: Instance) -> None:
        self._enter(instance, "Starting")
        self._outside_lock(lambda: self.hosts.halt(instance.instance_id))
        self._schedule(instance, self.timings.starting, "Starting", "Running")

    def release(self, instance: Instance) -> None:
        instance.operation += 1
        instance.events["released_at"] = time.time()
        self.released[instance.instance_id] = dict(instance.events)
        del self.instances[instance.instance_id]
        vswitch = self.vswitches.get(instance.vswitch_id)
        if vswitch is not None:
            vswitch.used.discard(instance.private_ip)
        self.public_ips.discard(instance.public_ip)
        eip = self.eip_of(instance)
        if eip is not None:  # an EIP outlives its instance, free to associate again
            eip.instance_id, eip.status = "", "Available"
        self._outside_lock(lambda: self.hosts.destroy(instance.instance_id))

    def drop_ssh(self, instance_id: str, *, new_host_keys: bool) -> None:
        """Kills the machine (every session dies) and boots it again after the boot delay.

        Call without holding the lock: it returns once the old sessions are dead.
        """
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None:
                return
            instance.operation += 1
            instance.new_host_keys = new_host_keys
            instance.events.pop("ssh_ready_at", None)
            operation = instance.operation
        self.hosts.halt(instance_id)
        with self.lock:
            instance.events["ssh_dropped_at"] = time.time()
        self._outside_lock(lambda: self._boot_if_current(instance_id, operation))

    def _enter(self, instance: Instance, status: str) -> None:
        instance.operation += 1
        instance.status = status
        instance.events[f"{status.lower()}_at"] = time.time()

    def _schedule(self, instance: Instance, delay: float, expected: str, following: str) -> None:
        if instance.stuck == expected:
            return
        operation = instance.operation
        instance_id = instance.instance_id

        def advance() -> None:
            with self.lock:
                current = self.instances.get(instance_id)
                if current is None or current.operation != operation or current.status != expected:
                    return
                self._enter(current, following)
                if following == "Starting":
                    self._schedule(current, self.timings.starting, "Starting", "Running")
                elif following == "Running":
                    current.start_time = time.time()
                    current.events.setdefault("first_running_at", current.start_time)
                    operation_now = current.operation
                else:
                    return
            if following == "Running":
                self._outside_lock(lambda: self._boot_if_current(instance_id, operation_now))

        self.scheduler.after(delay, advance)

    def _boot_if_current(self, instance_id: str, operation: int) -> None:
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.operation != operation or instance.status != "Running":
                return
            addresses = [instance.private_ip] + ([instance.public_ip] if instance.public_ip else [])
            key = self.key_pairs.get((instance.region_id, instance.key_pair_name))
            vswitch, vpc = self.vswitches.get(instance.vswitch_id), self.vpcs.get(instance.vpc_id)
            network = None
            public = self.public_address(instance)
            if vswitch is not None and vpc is not None:
                network = Attachment(
                    instance_id=instance_id,
                    vpc_id=vpc.vpc_id,
                    private_ip=instance.private_ip,
                    vswitch_cidr=vswitch.cidr,
                    vpc_cidr=vpc.cidr,
                    public_ip=public[0],
                    bandwidth_out=public[1],
                    bandwidth_in=public[2],
                )
            spec = BootSpec(
                instance_id=instance_id,
                hostname=instance.hostname,
                addresses=addresses,
                ssh_port=instance.ssh_port,
                image_users=IMAGES[instance.image_id].users,
                authorized_key=key.public_key if key else None,
                user_data=instance.user_data,
                boot_delay=instance.boot_delay,
                new_host_keys=instance.new_host_keys,
                network=network,
            )
            instance.new_host_keys = False
        try:
            self.hosts.boot(spec)
        except Exception as exc:  # noqa: BLE001 - the console tells the user what went wrong
            with open(self.hosts.disk(instance_id) / "console.log", "a") as console:
                console.write(f"[sandbox] boot failed: {exc}\n")
            raise

    def ssh_ready(self, instance_id: str, generation: int) -> None:
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is not None and self.hosts.generation(instance_id) == generation:
                instance.events["ssh_ready_at"] = time.time()
        if self.hosts.wire is not None:
            self.hosts.wire.public.refresh(instance_id)  # its public port 22 opens now, not at the next tick

    def reclaim(self, instance_id: str, notice: float) -> None:
        """Gives a spot instance ECS's reclaim notice, and releases it when the notice is over."""
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.status != "Running":
                raise ValueError(f"{instance_id} is not a Running instance of this sandbox")
            if instance.spot_strategy == "NoSpot":
                raise ValueError(f"{instance_id} is not a spot instance: ECS reclaims only spot instances")
            instance.reclaim_at = time.time() + notice
            instance.events["reclaim_notice_at"] = time.time()
        self.scheduler.after(notice, lambda: self._reclaimed(instance_id))

    def _reclaimed(self, instance_id: str) -> None:
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is not None and instance.reclaim_at is not None:
                self.release(instance)

    def _auto_release(self, instance_id: str) -> None:
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is not None and instance.auto_release_time is not None:
                if instance.auto_release_time <= time.time() + 0.01:
                    self.release(instance)

    def _outside_lock(self, action: Callable[[], None]) -> None:
        # Booting and halting machines take tens of milliseconds each: worker threads do it, so
        # API calls stay fast and a hundred instances of one RunInstances boot together.
        # Hosts serializes the operations on any one instance.
        def guarded() -> None:
            try:
                action()
            except Exception:  # noqa: BLE001 - reported on the console and the server log
                traceback.print_exc()

        self.workers.submit(guarded)

    # -- faults ----------------------------------------------------------------------------

    def take_fault(self, action: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(action) or self.faults.get("*")
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.pop(0)
            return fault

    def close(self) -> None:
        with self.lock:
            ids = list(self.instances)
            for instance_id in ids:
                self.instances[instance_id].operation += 1
        self.scheduler.close()
        self.workers.shutdown(wait=True, cancel_futures=True)
        for instance_id in ids:
            self.hosts.destroy(instance_id)
        self.hosts.halt_all()
        if self.hosts.wire is not None:
            self.hosts.wire.close()
        self.blocks.close()
