"""The sandbox's network as root: one namespace per instance, one bridge per VPC, public NAT.

Each instance's machine has its own network namespace with one interface, eth0, carrying its
private address (the vSwitch's prefix, and a route to the rest of its VPC). eth0 is one end of
a veth pair whose other end is plugged into its VPC's bridge, which lives in a namespace of its
own: instances of one VPC reach each other on every port, instances of different VPCs have no
link between them, and no namespace has a link to this machine's interfaces. The veth pairs are
made inside the namespaces, so the machine's own network is never touched. Every namespace is
held by a process the sandbox started (or a handle it holds open), so all of it goes away with
the sandbox, however it ends.

Public addresses are the relay's (see _relay.py): the only way in from this machine.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from dataclasses import dataclass, replace

from ._api_door import ApiDoors
from ._errors import HostError
from ._metadata import ADDRESS as METADATA_ADDRESS
from ._metadata import MetadataService
from ._netns import Namespace
from ._relay import Exposure, Gate, PublicAddresses
from ._throttle import Link


@dataclass(frozen=True)
class Attachment:
    """Where an instance's machine is plugged in, as the World knows it."""

    instance_id: str
    vpc_id: str
    private_ip: str
    vswitch_cidr: str
    vpc_cidr: str
    public_ip: str = ""
    bandwidth_out: int = 0  # Mbit/s
    bandwidth_in: int = 0

    def inside_steps(self) -> list[str]:
        """Shell steps the machine runs, in its namespace, once eth0 has been plugged in."""
        prefix = ipaddress.ip_network(self.vswitch_cidr).prefixlen
        batch = [
            "link set lo up",
            f"addr add {self.private_ip}/{prefix} dev eth0",
            "link set eth0 up",
            # 127/8 is loopback only by default: hand all of it but 127.0.0.1 to eth0.
            "route del local 127.0.0.0/8 dev lo table local",
            f"addr add {METADATA_ADDRESS}/32 dev lo",
        ]
        if self.vpc_cidr != self.vswitch_cidr:
            batch.insert(3, f"route add {self.vpc_cidr} dev eth0")
        sysctls = [f"echo 1 > /proc/sys/net/ipv4/conf/{name}/route_localnet" for name in ("all", "default", "eth0")]
        return [*sysctls, "ip -batch - <<'EOF'", *batch, "EOF"]


class _Bridge:
    """One VPC's switch: a bridge in a namespace held by a small process."""

    def __init__(self, vpc_id: str) -> None:
        script = "ip link set lo up && ip link add br0 type bridge && ip link set br0 up && echo ready && read _"
        self.process = subprocess.Popen(
            ["unshare", "--net", "/bin/sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            error = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
            self.close()
            raise HostError(f"cannot make the network of {vpc_id}: {error or 'no bridge'}",
                            hint="the sandbox needs `ip` (iproute2) and root for its networks.")  # fmt: skip

    def plug(self, instance_id: str, machine_pid: int) -> None:
        port = "v" + instance_id[-12:]  # interface names are at most 15 characters
        commands = (
            f"link del {port}\n"  # left over from the machine's previous boot, if any
            f"link add {port} type veth peer name eth0 netns {machine_pid}\n"
            f"link set {port} master br0\n"
            f"link set {port} up\n"
        )
        done = subprocess.run(
            ["nsenter", "-t", str(self.process.pid), "-n", "ip", "-force", "-batch", "-"],
            input=commands, capture_output=True, text=True,
        )  # fmt: skip
        failures = [line for line in done.stderr.splitlines() if "Cannot find device" not in line
                    and "Command failed -:1" not in line]  # fmt: skip
        if done.returncode != 0 and failures:
            raise HostError(f"cannot plug {instance_id} into its VPC: {' '.join(failures)}")

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


class Wire:
    """Plugs machines into their VPC and puts their public addresses on the internet."""

    def __init__(self, gate: Gate, *, bandwidth_caps: bool = True, client_link: tuple[float, float] | None = None,
                 api_doors: ApiDoors | None = None) -> None:  # fmt: skip
        self.bandwidth_caps = bandwidth_caps
        self.api_doors = api_doors
        up, down = (Link(client_link[0]), Link(client_link[1])) if client_link else (None, None)
        self.client_link = (up, down)
        self.public = PublicAddresses(gate, up, down)
        self.metadata = MetadataService(gate.metadata)
        self._bridges: dict[str, _Bridge] = {}
        self._plugged: dict[str, tuple[Attachment, int]] = {}  # instance id -> (attachment, machine PID)
        self._lock = threading.Lock()

    def plug(self, attachment: Attachment, machine_pid: int) -> None:
        with self._lock:
            self._plugged[attachment.instance_id] = (attachment, machine_pid)
            bridge = self._bridges.get(attachment.vpc_id)
            if bridge is None:
                bridge = self._bridges[attachment.vpc_id] = _Bridge(attachment.vpc_id)
        bridge.plug(attachment.instance_id, machine_pid)
        self._expose(attachment, machine_pid)
        namespace = Namespace(machine_pid)
        try:
            self.metadata.serve(attachment.instance_id, namespace)
            if self.api_doors is not None:
                self.api_doors.open(attachment.instance_id, namespace)
        finally:
            namespace.close()  # the listening sockets hold the namespace now

    def _expose(self, attachment: Attachment, machine_pid: int) -> None:
        if attachment.public_ip:
            caps = self.bandwidth_caps
            self.public.expose(
                Exposure(
                    instance_id=attachment.instance_id,
                    public_ip=attachment.public_ip,
                    private_ip=attachment.private_ip,
                    namespace=Namespace(machine_pid),
                    outbound=Link(attachment.bandwidth_out) if caps and attachment.bandwidth_out else None,
                    inbound=Link(attachment.bandwidth_in) if caps and attachment.bandwidth_in else None,
                )
            )

    def readdress(self, instance_id: str, public_ip: str, bandwidth_out: int, bandwidth_in: int) -> None:
        """A running machine's public address changed: the old one stops answering, the new one opens."""
        with self._lock:
            plugged = self._plugged.get(instance_id)
            if plugged is None:
                return  # not running: its next boot takes the new address
            attachment = replace(plugged[0], public_ip=public_ip, bandwidth_out=bandwidth_out,
                                 bandwidth_in=bandwidth_in)  # fmt: skip
            self._plugged[instance_id] = (attachment, plugged[1])
        self.public.withdraw(instance_id)
        self._expose(attachment, plugged[1])

    def unplug(self, instance_id: str) -> None:
        with self._lock:
            self._plugged.pop(instance_id, None)
        self.public.withdraw(instance_id)
        self.metadata.stop(instance_id)
        if self.api_doors is not None:
            self.api_doors.close(instance_id)

    def remove_vpc(self, vpc_id: str) -> None:
        with self._lock:
            bridge = self._bridges.pop(vpc_id, None)
        if bridge is not None:
            bridge.close()

    def close(self) -> None:
        self.public.close()
        self.metadata.close()
        if self.api_doors is not None:
            self.api_doors.close_all()
        with self._lock:
            bridges, self._bridges = list(self._bridges.values()), {}
        for bridge in bridges:
            bridge.close()
