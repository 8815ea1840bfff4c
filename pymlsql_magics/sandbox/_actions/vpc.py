"""VPCs and vSwitches through the VPC product's API (2016-04-28), as Terraform calls them.

Every address is loopback, so nothing the sandbox hands out can ever be a packet on a real
network: a VPC holds a free block 127.X.0.0/16 (the default when CreateVpc names no CidrBlock),
its vSwitches are blocks inside it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .. import _catalog
from .._api_errors import ApiError, invalid
from .._blocks import FIRST, LAST, BlockTaken
from .._model import Vpc, VSwitch, new_id
from .._params import Params, page
from .registry import (
    Context,
    idempotent,
    matches_tags,
    region_of,
    vpc_action,
    vpc_of,
    vpc_tags_out,
    vpc_time,
    vswitch_of,
)

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def _cidr_error(cidr: str, why: str) -> ApiError:
    return ApiError("InvalidCidrBlock.Malformed", message=f"Specified CIDR block {cidr} is not valid: {why}.")


@vpc_action
def CreateVpc(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def create() -> dict[str, Any]:
        name = params.text("VpcName", "") or ""
        if name and not 1 <= len(name) <= 128:
            raise ApiError("InvalidVpcName.Malformed", message="The VpcName must be 1 to 128 characters.")
        tags = params.new_tags()
        given = params.text("CidrBlock")
        block = _claim(ctx, given)  # the last check: nothing after it can fail and leave the block held
        vpc = Vpc(
            vpc_id=new_id("vpc-", 20),
            region_id=region,
            cidr=str(ipaddress.ip_network(given, strict=False)) if given else f"127.{block}.0.0/16",
            block=block,
            name=name,
            description=params.text("Description", "") or "",
            tags=tags,
        )
        ctx.world.vpcs[vpc.vpc_id] = vpc
        ctx.world.settle(vpc)
        return {
            "VpcId": vpc.vpc_id,
            "VRouterId": "vrt-" + vpc.vpc_id[4:],
            "RouteTableId": "vtb-" + vpc.vpc_id[4:],
            "ResourceGroupId": "rg-sandbox",
        }

    return idempotent(ctx, "CreateVpc", params, create)


def _claim(ctx: Context, given: str | None) -> int:
    """The loopback block a new VPC holds: the one its CidrBlock lies in, or a free one."""
    if given is None:
        return ctx.world.blocks.claim()
    try:
        network = ipaddress.IPv4Network(given, strict=False)
    except ValueError:
        raise _cidr_error(given, "not an IPv4 CIDR block") from None
    second = int(str(network.network_address).split(".")[1])
    if not network.subnet_of(_LOOPBACK) or network.prefixlen < 16:
        raise _cidr_error(given, f"the sandbox's addresses are loopback: give a block of 127.{FIRST}-{LAST}.0.0/16, "
                          "or none for a free one")  # fmt: skip
    if not FIRST <= second <= LAST:
        raise _cidr_error(given, f"the sandbox uses 127.{FIRST}.0.0 to 127.{LAST}.255.255 only")
    try:
        return ctx.world.blocks.claim(second)
    except BlockTaken:
        raise _cidr_error(given, f"127.{second}.0.0/16 is used by another VPC or sandbox on this machine") from None


@vpc_action
def DescribeVpcs(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    ids = [item for item in (params.text("VpcId") or "").split(",") if item]
    name = params.text("VpcName")
    tags = params.tags()
    found = sorted(
        (
            vpc
            for vpc in ctx.world.vpcs.values()
            if vpc.region_id == region
            and (not ids or vpc.vpc_id in ids)
            and (name is None or vpc.name == name)
            and matches_tags(vpc.tags, tags)
        ),
        key=lambda vpc: (vpc.creation_time, vpc.vpc_id),
    )
    chunk, paging = page(found, params, max_size=50)
    return {**paging, "Vpcs": {"Vpc": [_vpc_out(ctx, vpc) for vpc in chunk]}}


@vpc_action
def DeleteVpc(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    vpc = vpc_of(ctx, params.text("VpcId"), region)
    if vpc.status != "Available":
        raise ApiError("IncorrectVpcStatus", message=f"The VPC {vpc.vpc_id} is {vpc.status}.")
    if any(vswitch.vpc_id == vpc.vpc_id for vswitch in ctx.world.vswitches.values()):
        raise ApiError("DependencyViolation.VSwitch", message="Specified VPC has vSwitches; delete them first.")
    if any(group.vpc_id == vpc.vpc_id for group in ctx.world.security_groups.values()):
        raise ApiError("DependencyViolation.SecurityGroup",
                       message="Specified VPC has security groups; delete them first.")  # fmt: skip
    ctx.world.remove_vpc(vpc)
    return {}


@vpc_action
def CreateVSwitch(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def create() -> dict[str, Any]:
        vpc = vpc_of(ctx, params.required("VpcId"), region)
        zone = params.required("ZoneId")
        if zone not in _catalog.zones(region):
            raise ApiError("InvalidZoneId.NotFound")
        given = params.required("CidrBlock")
        try:
            network = ipaddress.ip_network(given)
        except ValueError:
            raise _cidr_error(given, "not a CIDR block, or host bits are set") from None
        if not network.subnet_of(ipaddress.ip_network(vpc.cidr)):  # type: ignore[arg-type]
            raise ApiError("InvalidParameter", message=f"Specified CIDR block {given} is not valid in VPC {vpc.cidr}.")
        if not 16 <= network.prefixlen <= 29:
            raise _cidr_error(given, "a vSwitch's mask is /16 to /29")
        for other in ctx.world.vswitches.values():
            if other.vpc_id == vpc.vpc_id and network.overlaps(ipaddress.ip_network(other.cidr)):
                overlap = f"Specified CIDR block {given} overlaps {other.vswitch_id} ({other.cidr})."
                raise ApiError("InvalidCidrBlock.Overlapped", message=overlap)
        if vpc.status != "Available":
            raise ApiError("IncorrectVpcStatus", message=f"The VPC {vpc.vpc_id} is {vpc.status}.")
        name = params.text("VSwitchName", "") or ""
        if name and not 1 <= len(name) <= 128:
            raise invalid("VSwitchName", "must be 1 to 128 characters")
        vswitch = VSwitch(
            vswitch_id=new_id("vsw-", 20),
            vpc_id=vpc.vpc_id,
            region_id=region,
            zone_id=zone,
            cidr=str(network),
            name=name,
            description=params.text("Description", "") or "",
            tags=params.new_tags(),
        )
        ctx.world.vswitches[vswitch.vswitch_id] = vswitch
        ctx.world.settle(vswitch)
        return {"VSwitchId": vswitch.vswitch_id}

    return idempotent(ctx, "CreateVSwitch", params, create)


@vpc_action
def DescribeVSwitches(ctx: Context, params: Params) -> dict[str, Any]:
    region = params.text("RegionId")
    ids = [item for item in (params.text("VSwitchId") or "").split(",") if item]
    wanted = {"vpc_id": params.text("VpcId"), "zone_id": params.text("ZoneId"), "name": params.text("VSwitchName")}
    if region is None and wanted["vpc_id"] is None and not ids:
        region = region_of(params)  # one of the three is needed: say RegionId is missing
    tags = params.tags()
    found = sorted(
        (
            vswitch
            for vswitch in ctx.world.vswitches.values()
            if (region is None or vswitch.region_id == region)
            and (not ids or vswitch.vswitch_id in ids)
            and all(value is None or getattr(vswitch, key) == value for key, value in wanted.items())
            and matches_tags(vswitch.tags, tags)
        ),
        key=lambda vswitch: (vswitch.creation_time, vswitch.vswitch_id),
    )
    chunk, paging = page(found, params, max_size=50)
    return {**paging, "VSwitches": {"VSwitch": [_vswitch_out(vswitch) for vswitch in chunk]}}


@vpc_action
def DeleteVSwitch(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    vswitch = vswitch_of(ctx, params.text("VSwitchId"), region)
    if any(instance.vswitch_id == vswitch.vswitch_id for instance in ctx.world.instances.values()):
        raise ApiError("DependencyViolation", message="Specified object has dependent resources.")
    if vswitch.status != "Available":
        raise ApiError("IncorrectVSwitchStatus", message=f"The vSwitch {vswitch.vswitch_id} is {vswitch.status}.")
    del ctx.world.vswitches[vswitch.vswitch_id]
    return {}


def _vpc_out(ctx: Context, vpc: Vpc) -> dict[str, Any]:
    vswitches = [v.vswitch_id for v in ctx.world.vswitches.values() if v.vpc_id == vpc.vpc_id]
    return {
        "VpcId": vpc.vpc_id,
        "RegionId": vpc.region_id,
        "Status": vpc.status,
        "VpcName": vpc.name,
        "Description": vpc.description,
        "CidrBlock": vpc.cidr,
        "VRouterId": "vrt-" + vpc.vpc_id[4:],
        "IsDefault": False,
        "CreationTime": vpc_time(vpc.creation_time),
        "VSwitchIds": {"VSwitchId": vswitches},
        "UserCidrs": {"UserCidr": []},
        "ResourceGroupId": "rg-sandbox",
        "Tags": vpc_tags_out(vpc.tags),
    }


def _vswitch_out(vswitch: VSwitch) -> dict[str, Any]:
    return {
        "VSwitchId": vswitch.vswitch_id,
        "VpcId": vswitch.vpc_id,
        "ZoneId": vswitch.zone_id,
        "Status": vswitch.status,
        "CidrBlock": vswitch.cidr,
        "AvailableIpAddressCount": vswitch.free_count(),
        "VSwitchName": vswitch.name,
        "Description": vswitch.description,
        "IsDefault": False,
        "CreationTime": vpc_time(vswitch.creation_time),
        "ResourceGroupId": "rg-sandbox",
        "Tags": vpc_tags_out(vswitch.tags),
    }
