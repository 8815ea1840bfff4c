"""What this tool made of the network in a region, and removing it once no instance uses it.

A network costs nothing while idle, so stopping instances leaves it; `pymlsql network delete`
and `%ecs_network delete` remove it: the groups and vSwitches this tool made, then its VPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import ConfigError
from ._network import TOOL_TAGS
from ._network_resources import GroupInfo, VpcInfo, VSwitchInfo
from ._results import Instance

if TYPE_CHECKING:  # the clients come from the Fleet; the VPC SDK loads only when one is made
    from ._ecs import EcsClient
    from ._vpc import VpcClient


@dataclass(frozen=True)
class ToolNetwork:
    """One VPC holding what this tool made; `vpc` is None when the VPC itself is the user's."""

    vpc_id: str
    vpc: VpcInfo | None
    vswitches: tuple[VSwitchInfo, ...]
    groups: tuple[GroupInfo, ...]
    instances: tuple[str, ...]  # ids of the instances in it, whoever made them

    @property
    def resource_ids(self) -> list[str]:
        return [g.security_group_id for g in self.groups] + [v.vswitch_id for v in self.vswitches] + (
            [self.vpc_id] if self.vpc else []
        )


def network_line(network: ToolNetwork) -> str:
    """One line of `network list`: the VPC, its vSwitches by zone, its groups, its instances."""
    vpc = f"{network.vpc_id} {network.vpc.cidr}" if network.vpc else f"{network.vpc_id} (yours)"
    vswitches = ", ".join(f"{v.vswitch_id} {v.zone_id} {v.cidr}" for v in network.vswitches) or "-"
    groups = ", ".join(g.security_group_id for g in network.groups) or "-"
    return f"{vpc}  vswitches: {vswitches}  groups: {groups}  instances: {len(network.instances)}"


def network_as_json(network: ToolNetwork) -> dict[str, object]:
    return {
        "vpc_id": network.vpc_id,
        "cidr": network.vpc.cidr if network.vpc else None,
        "made_by_this_tool": network.vpc is not None,
        "vswitches": [{"vswitch_id": v.vswitch_id, "zone_id": v.zone_id, "cidr": v.cidr} for v in network.vswitches],
        "security_groups": [g.security_group_id for g in network.groups],
        "instances": list(network.instances),
    }


def tool_networks(ecs: EcsClient, vpc: VpcClient, instances: Sequence[Instance]) -> list[ToolNetwork]:
    """Every VPC of the region with something this tool made in it, oldest first."""
    vpcs = {item.vpc_id: item for item in vpc.vpcs(tags=TOOL_TAGS)}
    vswitches = vpc.vswitches(tags=TOOL_TAGS)
    groups = ecs.security_groups(tags=TOOL_TAGS)
    ids = sorted({*vpcs, *(v.vpc_id for v in vswitches), *(g.vpc_id for g in groups if g.vpc_id)},
                 key=lambda vpc_id: (vpcs[vpc_id].created if vpc_id in vpcs else "", vpc_id))  # fmt: skip
    return [
        ToolNetwork(
            vpc_id,
            vpcs.get(vpc_id),
            tuple(v for v in vswitches if v.vpc_id == vpc_id),
            tuple(g for g in groups if g.vpc_id == vpc_id),
            tuple(i.instance_id for i in instances if _uses(i, vpc_id, vpcs, vswitches, groups)),
        )
        for vpc_id in ids
    ]


def _uses(instance: Instance, vpc_id: str, vpcs: dict[str, VpcInfo], vswitches: list[VSwitchInfo],
          groups: list[GroupInfo]) -> bool:  # fmt: skip
    """Whether `instance` stands on something of `vpc_id` this tool would delete."""
    if instance.vpc_id != vpc_id:
        return False
    own_vswitches = {v.vswitch_id for v in vswitches if v.vpc_id == vpc_id}
    own_groups = {g.security_group_id for g in groups if g.vpc_id == vpc_id}
    return vpc_id in vpcs or instance.vswitch_id in own_vswitches or bool(own_groups & set(instance.security_group_ids))


def delete_networks(ecs: EcsClient, vpc: VpcClient, networks: Sequence[ToolNetwork], *,
                    list_command: str, progress: Callable[[str], None]) -> list[str]:  # fmt: skip
    """Deletes what this tool made in `networks`; refuses, before deleting any, while instances use one."""
    busy = [network for network in networks if network.instances]
    if busy:
        used = "; ".join(f"{n.vpc_id} by {', '.join(n.instances[:5])}{' ...' if len(n.instances) > 5 else ''}"
                         for n in busy)  # fmt: skip
        raise ConfigError(
            f"the network is still used: {used}",
            hint=f"Release those instances first ({list_command} shows this tool's), then delete the network.",
        )
    deleted: list[str] = []
    for network in networks:
        for group in network.groups:
            ecs.delete_security_group(group.security_group_id)
            deleted.append(group.security_group_id)
        for vswitch in network.vswitches:
            vpc.delete_vswitch(vswitch.vswitch_id)
            deleted.append(vswitch.vswitch_id)
        if network.vpc is not None:
            vpc.delete_vpc(network.vpc_id)
            deleted.append(network.vpc_id)
        progress(f"network: deleted {', '.join(network.resource_ids)}")
    return deleted
