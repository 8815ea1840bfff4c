"""The network a start puts its instances in: given and checked, or found, or made once per region.

Without --vswitch-id / --security-group a start uses what this tool made earlier in the region
(tagged pymlsql:created-by=pymlsql): one VPC, a vSwitch per zone, one security group that lets
SSH in from `ssh_source_cidr`. What is missing is made, each with its own ClientToken so a retried
call never makes two; when two clients race, both keep the oldest of what exists and the other
deletes its own. A client on an ECS instance starts new instances beside itself instead: in its
own vSwitch and security group. Everything given is checked before anything is made.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from ._errors import ConfigError, EcsApiError, PymlsqlError, WaitTimeoutError
from ._network_resources import GroupInfo, VpcInfo, VSwitchInfo
from ._whereabouts import Whereabouts

if TYPE_CHECKING:
    from ._ecs import EcsClient
    from ._vpc import VpcClient

CREATED_BY = "pymlsql:created-by"
TOOL = "pymlsql"
TOOL_TAGS = {CREATED_BY: TOOL}
SSH_PORT = 22
_NAME = "pymlsql"
_VSWITCH_PREFIX = 20  # 4,092 addresses per zone: room for clusters of any size this tool starts
_CREATE_ATTEMPTS = 3
_RACED = ("InvalidCidrBlock.Overlapped", "IdempotentParameterMismatch")

Resource = TypeVar("Resource", VpcInfo, VSwitchInfo, GroupInfo)
Settling = TypeVar("Settling", VpcInfo, VSwitchInfo)  # Pending first, then Available


class NoZoneLeft(ConfigError):
    """No zone of the region (but those already tried) can make the instance type now."""


@dataclass(frozen=True)
class Network:
    """Where new instances go."""

    vpc_id: str
    vswitch_id: str
    security_group_id: str
    zone_id: str


class NetworkPlanner:
    """Finds, checks or makes the network of one start."""

    def __init__(self, ecs: EcsClient, vpc: VpcClient, *, progress: Callable[[str], None], timeout: float) -> None:
        self.ecs, self.vpc, self.progress, self.timeout = ecs, vpc, progress, timeout

    def network_for(self, instance_type: str, *, vswitch_id: str | None, security_group: str | None,
                    zone: str | None, ssh_source_cidr: str, home: Whereabouts | None = None,
                    avoid: Collection[str] = ()) -> Network:  # fmt: skip
        """The network to create `instance_type` in; ConfigError names a given value that cannot work.

        `home` is where this client runs: inside a VPC, new instances go beside it unless told
        otherwise. What is given is checked before anything is made: a bad value leaves nothing behind.
        A zone in `avoid` (one that just refused the type) is not chosen; NoZoneLeft says none is left.
        """
        offered = [item for item in self.ecs.zones_offering(instance_type) if item not in avoid]
        given_group = self._given_group(security_group) if security_group else None
        if vswitch_id:
            vswitch = self._given_vswitch(vswitch_id, zone, instance_type, offered)
        elif given_group is not None:
            vswitch = self._vswitch_of_given_vpc(given_group, zone, instance_type, offered, failing_over=bool(avoid))
        elif home is not None and home.vpc_id:
            return self._beside(home, instance_type, zone, offered, ssh_source_cidr)
        else:
            zone = self._zone(instance_type, zone, offered)  # checked before anything is made
            vswitch = self._own_vswitch(self._own_vpc().vpc_id, zone)
        if given_group is not None:
            if given_group.vpc_id != vswitch.vpc_id:
                raise ConfigError(
                    f"the security group {security_group} is in {given_group.vpc_id or 'the classic network'}, "
                    f"the vSwitch {vswitch.vswitch_id} in {vswitch.vpc_id}",
                    hint="Pass a group and a vSwitch of one VPC, or leave --security-group out to use this tool's.",
                )
            self._check_opens_ssh(given_group.security_group_id, ssh_source_cidr)
        group = given_group or self._own_group(vswitch.vpc_id, ssh_source_cidr)
        return Network(vswitch.vpc_id, vswitch.vswitch_id, group.security_group_id, vswitch.zone_id)

    def _beside(self, home: Whereabouts, instance_type: str, zone: str | None, offered: list[str],
                ssh_source_cidr: str) -> Network:  # fmt: skip
        """This client's own vSwitch and security group: as a master launching its workers, the new
        instances reach it and each other by private address on every port the group lets in."""
        found = self.vpc.vswitches(vswitch_id=home.vswitch_id) if home.vswitch_id else []
        if not found:
            raise ConfigError(
                f"this client runs in {home.vpc_id} (vSwitch {home.vswitch_id or 'unknown'}), which region "
                f"{self.vpc.region_id} does not show to these credentials",
                hint="Pass --region of this instance, or --vswitch-id and --security-group of the network to use.",
            )
        vswitch = found[0]
        if zone and zone != vswitch.zone_id:
            raise ConfigError(
                f"this client runs in {vswitch.zone_id} (vSwitch {vswitch.vswitch_id}), not in the zone {zone} given",
                hint=f"Leave --zone out to start beside it, or pass --vswitch-id of a vSwitch of {home.vpc_id} "
                f"in {zone}.",
            )
        if vswitch.zone_id not in offered:
            raise ConfigError(
                f"{instance_type} cannot be created in {vswitch.zone_id}, the zone of this client's vSwitch "
                f"{vswitch.vswitch_id}",
                hint=_zones_hint(instance_type, offered) + f" Pass --vswitch-id of {home.vpc_id} in one of them.",
            )
        mine = self.ecs.describe([home.instance_id]) if home.instance_id else []
        groups = mine[0].security_group_ids if mine else ()
        if groups:
            group_id = groups[0]
            self.progress(f"network: beside this client ({home.instance_id}), in its vSwitch and group")
        else:
            group_id = self._own_group(vswitch.vpc_id, ssh_source_cidr).security_group_id
        return Network(vswitch.vpc_id, vswitch.vswitch_id, group_id, vswitch.zone_id)

    # -- what the user gave ----------------------------------------------------------------

    def _given_vswitch(self, vswitch_id: str, zone: str | None, instance_type: str, offered: list[str]) -> VSwitchInfo:
        found = self.vpc.vswitches(vswitch_id=vswitch_id)
        if not found:
            raise ConfigError(
                f"the vSwitch {vswitch_id} does not exist in {self.vpc.region_id}",
                hint="Check --vswitch-id and the region, or leave --vswitch-id out to use the network this tool "
                "makes (`pymlsql network list` shows it).",
            )
        vswitch = found[0]
        if zone and zone != vswitch.zone_id:
            raise ConfigError(
                f"the vSwitch {vswitch_id} is in {vswitch.zone_id}, not in the zone {zone} given",
                hint=f"Leave --zone out, or pass a vSwitch of {zone}.",
            )
        if vswitch.zone_id not in offered:
            raise ConfigError(
                f"{instance_type} cannot be created in {vswitch.zone_id}, the zone of the vSwitch {vswitch_id}",
                hint=_zones_hint(instance_type, offered),
            )
        return vswitch

    def _given_group(self, group_id: str) -> GroupInfo:
        found = self.ecs.security_groups(group_id=group_id)
        if not found:
            raise ConfigError(
                f"the security group {group_id} does not exist in {self.ecs.region_id}",
                hint="Check --security-group and the region, or leave it out to use the group this tool makes.",
            )
        return found[0]

    def _check_opens_ssh(self, group_id: str, source_cidr: str) -> None:
        if not any(rule.opens(SSH_PORT, source_cidr) for rule in self.ecs.ingress_rules(group_id)):
            raise ConfigError(
                f"the security group {group_id} does not let TCP {SSH_PORT} in from {source_cidr}, "
                "so SSH could never reach the instances",
                hint=f"Add an ingress rule TCP {SSH_PORT}/{SSH_PORT} from {source_cidr} to it, set --ssh-cidr to a "
                "source it opens, or leave --security-group out to use the group this tool makes.",
            )

    def _vswitch_of_given_vpc(self, group: GroupInfo, zone: str | None, instance_type: str,
                              offered: list[str], *, failing_over: bool = False) -> VSwitchInfo:  # fmt: skip
        """The roomiest vSwitch of the group's VPC in the zone given, or in any zone offering the type."""
        zones = [zone] if zone else offered
        candidates = [v for v in self.vpc.vswitches(vpc_id=group.vpc_id) if v.zone_id in zones] if group.vpc_id else []
        if zone and zone not in offered:
            raise ConfigError(f"{instance_type} cannot be created in the zone {zone} now",
                              hint=_zones_hint(instance_type, offered))  # fmt: skip
        if not candidates:
            where = zone or f"a zone offering {instance_type} ({', '.join(offered) or 'none now'})"
            raise (NoZoneLeft if not zone and (failing_over or not offered) else ConfigError)(
                f"the VPC {group.vpc_id or '(classic network)'} of the security group {group.security_group_id} "
                f"has no vSwitch in {where}",
                hint="Pass --vswitch-id of that VPC too, or leave --security-group out to use this tool's network.",
            )
        return max(candidates, key=lambda vswitch: vswitch.free_addresses)

    def _zone(self, instance_type: str, zone: str | None, offered: list[str]) -> str:
        if zone:
            if zone not in offered:
                raise ConfigError(f"{instance_type} cannot be created in the zone {zone} now",
                                  hint=_zones_hint(instance_type, offered))  # fmt: skip
            return zone
        if not offered:
            raise NoZoneLeft(
                f"no zone of {self.ecs.region_id} offers the instance type {instance_type} now",
                hint="Check --instance-type (DescribeInstanceTypes lists the types), or pick another type or region.",
            )
        # A zone where this tool already has a vSwitch keeps a cluster together across starts.
        own = {v.zone_id for v in self.vpc.vswitches(tags=TOOL_TAGS)}
        return next((item for item in offered if item in own), offered[0])

    # -- what this tool makes --------------------------------------------------------------

    def _own_vpc(self) -> VpcInfo:
        def create(token: str) -> str:
            return self.vpc.create_vpc(name=_NAME, tags=TOOL_TAGS, client_token=token)

        def delete(vpc_id: str) -> None:  # only an Available VPC can be deleted
            self._until_available("VPC", vpc_id, lambda: self.vpc.vpcs(vpc_ids=(vpc_id,)))
            self.vpc.delete_vpc(vpc_id)

        vpc = self._find_or_make("VPC", f"vpc {self.vpc.region_id}", lambda: self.vpc.vpcs(tags=TOOL_TAGS), create,
                                 delete)  # fmt: skip
        if vpc.status != "Available":
            vpc = self._until_available("VPC", vpc.vpc_id, lambda: self.vpc.vpcs(vpc_ids=(vpc.vpc_id,)))
        return vpc

    def _own_vswitch(self, vpc_id: str, zone: str) -> VSwitchInfo:
        def listed() -> list[VSwitchInfo]:
            return [v for v in self.vpc.vswitches(vpc_id=vpc_id, tags=TOOL_TAGS) if v.zone_id == zone]

        def create(token: str) -> str:
            (vpc,) = self.vpc.vpcs(vpc_ids=(vpc_id,))
            # Racing clients carve the same block from the same listing, so their requests, and
            # their tokens, are the same: ECS makes one vSwitch for both.
            cidr = _free_block(vpc.cidr, [v.cidr for v in self.vpc.vswitches(vpc_id=vpc_id)])
            return self.vpc.create_vswitch(vpc_id=vpc_id, zone_id=zone, cidr=cidr, name=f"{_NAME}-{zone}",
                                           tags=TOOL_TAGS, client_token=token)  # fmt: skip

        def delete(vswitch_id: str) -> None:  # only an Available vSwitch can be deleted
            self._until_available("vSwitch", vswitch_id, lambda: self.vpc.vswitches(vswitch_id=vswitch_id))
            self.vpc.delete_vswitch(vswitch_id)

        vswitch = self._find_or_make(f"vSwitch in {zone}", f"vswitch {vpc_id} {zone}", listed, create, delete)
        if vswitch.status != "Available":
            vswitch = self._until_available(
                "vSwitch", vswitch.vswitch_id, lambda: self.vpc.vswitches(vswitch_id=vswitch.vswitch_id)
            )
        return vswitch

    def _own_group(self, vpc_id: str, source_cidr: str) -> GroupInfo:
        def create(token: str) -> str:
            return self.ecs.create_security_group(vpc_id=vpc_id, name=_NAME, tags=TOOL_TAGS, client_token=token)

        group = self._find_or_make(
            "security group", f"group {vpc_id}", lambda: self.ecs.security_groups(vpc_id=vpc_id, tags=TOOL_TAGS),
            create, self.ecs.delete_security_group,
        )  # fmt: skip
        if not any(rule.opens(SSH_PORT, source_cidr) for rule in self.ecs.ingress_rules(group.security_group_id)):
            self.progress(f"network: letting SSH into {group.security_group_id} from {source_cidr}")
            self.ecs.authorize_tcp(group.security_group_id, SSH_PORT, source_cidr, "SSH for pymlsql")
        return group

    def _find_or_make(self, what: str, scope: str, listed: Callable[[], Sequence[Resource]],
                      create: Callable[[str], str], delete: Callable[[str], None]) -> Resource:  # fmt: skip
        """The oldest of what `listed` finds; else one made now, shared with a client racing for it.

        Racing clients send the same ClientToken (it names what is made and the hour), so ECS makes
        one and answers both with it. Should two be made anyway (across an hour's end), both keep the
        oldest and each deletes its own other one.
        """
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            found = sorted(listed(), key=_age)
            if found:
                self.progress(f"network: found {what} {_identity(found[0])}")
                return found[0]
            try:
                made = create(_shared_token(scope) if attempt == 1 else uuid.uuid4().hex)
            except EcsApiError as error:
                # Two clients carved the same block at once: the next look finds the other's.
                if error.code not in _RACED or attempt == _CREATE_ATTEMPTS:
                    raise
                continue
            found = sorted(listed(), key=_age)
            if not any(_identity(item) == made for item in found):
                continue  # the token answered with one deleted since: make a new one with a token of its own
            winner = found[0]
            if _identity(winner) != made:
                self.progress(f"network: another client made {what} {_identity(winner)} too; keeping it")
                _quietly(delete, made)
                return winner
            self.progress(f"network: created {what} {made}")
            return winner
        raise PymlsqlError(f"could not make the {what}: it vanished right after it was made",
                           hint="Try the start again; `pymlsql network list` shows what there is.")  # fmt: skip

    def _until_available(self, what: str, resource_id: str, listed: Callable[[], Sequence[Settling]]) -> Settling:
        deadline = time.monotonic() + self.timeout
        while True:
            found = listed()
            if found and found[0].status == "Available":
                return found[0]
            if time.monotonic() > deadline:
                raise WaitTimeoutError(
                    f"the {what} {resource_id} was not Available within {self.timeout:g} s",
                    hint="Try the start again in a minute; it goes on with what is there.",
                )
            time.sleep(0.3)


def _free_block(vpc_cidr: str, taken: list[str]) -> str:
    """The first /20 (or the VPC itself, when smaller) of `vpc_cidr` that overlaps no taken block."""
    network = ipaddress.ip_network(vpc_cidr)
    prefix = max(network.prefixlen, _VSWITCH_PREFIX)
    used = [ipaddress.ip_network(block) for block in taken]
    for candidate in network.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(block) for block in used):
            return str(candidate)
    raise ConfigError(f"the VPC {vpc_cidr} has no free /{prefix} left for a vSwitch",
                      hint="Delete a vSwitch of it, or pass --vswitch-id.")  # fmt: skip


def _shared_token(scope: str) -> str:
    """The ClientToken every client uses to make `scope`'s resource within this hour (UTC)."""
    hour = datetime.now(timezone.utc).strftime("%Y%m%d%H")
    return "pymlsql-" + hashlib.sha256(f"{scope} {hour}".encode()).hexdigest()[:32]


def _zones_hint(instance_type: str, offered: list[str]) -> str:
    if offered:
        return f"Zones that offer {instance_type} now: {', '.join(offered)} (--zone)."
    return "No zone of the region offers it now: pick another instance type or region."


def _age(resource: VpcInfo | VSwitchInfo | GroupInfo) -> tuple[str, str]:
    return resource.created, _identity(resource)


def _identity(resource: VpcInfo | VSwitchInfo | GroupInfo) -> str:
    if isinstance(resource, VpcInfo):
        return resource.vpc_id
    if isinstance(resource, VSwitchInfo):
        return resource.vswitch_id
    return resource.security_group_id


def _quietly(delete: Callable[[str], None], resource_id: str) -> None:
    try:
        delete(resource_id)
    except PymlsqlError:
        pass  # the loser of a race is unused and costs nothing; `pymlsql network delete` finds it later
