"""Elastic IP addresses through the VPC product's API (2016-04-28), as Terraform and Packer call it.

An EIP is a public address of the sandbox's own block with its own bandwidth cap. Associating it
with a VPC instance (Associating, then InUse) makes it the address this machine reaches the
instance at; unassociating (Unassociating, then Available) takes it away; only an Available EIP
can be released. Releasing the instance unassociates it.
"""

from __future__ import annotations

from typing import Any

from .._api_errors import ApiError, invalid
from .._model import Eip, new_id
from .._params import Params, page
from .registry import Context, idempotent, instance_of, region_of, vpc_action, vpc_tags_out, vpc_time

_CHARGE_TYPES = ("PayByBandwidth", "PayByTraffic")


@vpc_action
def AllocateEipAddress(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def allocate() -> dict[str, Any]:
        bandwidth = params.integer("Bandwidth", 5, low=1, high=200)
        charge = params.text("InternetChargeType", "PayByBandwidth") or "PayByBandwidth"
        if charge not in _CHARGE_TYPES:
            raise invalid("InternetChargeType")
        assert bandwidth is not None
        eip = Eip(new_id("eip-", 20), region, ctx.world.allocate_public_ip(), bandwidth, charge,
                  tags=params.new_tags())  # fmt: skip
        ctx.world.eips[eip.allocation_id] = eip
        return {"AllocationId": eip.allocation_id, "EipAddress": eip.ip_address}

    return idempotent(ctx, "AllocateEipAddress", params, allocate)


@vpc_action
def AssociateEipAddress(ctx: Context, params: Params) -> dict[str, Any]:
    eip = _eip_of(ctx, params)
    kind = params.text("InstanceType", "EcsInstance") or "EcsInstance"
    if kind != "EcsInstance":
        raise invalid("InstanceType", "the sandbox associates EIPs with ECS instances only")
    instance = instance_of(ctx, params.text("InstanceId"))
    if instance.region_id != eip.region_id:
        raise ApiError("InvalidInstanceId.NotFound")
    if eip.status != "Available":
        raise _status_error(eip)
    if instance.public_ip:
        raise ApiError("InvalidAssociation.Duplicated", status=400,
                       message=f"The instance {instance.instance_id} already has a public IP address.")  # fmt: skip
    if ctx.world.eip_of(instance) is not None:
        raise ApiError("InvalidAssociation.Duplicated", status=400,
                       message=f"The instance {instance.instance_id} already has an EIP.")  # fmt: skip
    eip.status, eip.instance_id = "Associating", instance.instance_id
    _settle(ctx, eip, "Associating", "InUse")
    return {}


@vpc_action
def UnassociateEipAddress(ctx: Context, params: Params) -> dict[str, Any]:
    eip = _eip_of(ctx, params)
    given = params.text("InstanceId")
    if eip.status != "InUse" or (given and given != eip.instance_id):
        raise _status_error(eip)
    eip.status = "Unassociating"
    _settle(ctx, eip, "Unassociating", "Available")
    instance = ctx.world.instances.get(eip.instance_id)
    if instance is not None:
        ctx.world.readdressed(instance)  # it stops answering at once, as the NAT entry goes
    return {}


@vpc_action
def ReleaseEipAddress(ctx: Context, params: Params) -> dict[str, Any]:
    eip = _eip_of(ctx, params)
    if eip.status != "Available":
        raise _status_error(eip)
    del ctx.world.eips[eip.allocation_id]
    ctx.world.public_ips.discard(eip.ip_address)
    return {}


@vpc_action
def DescribeEipAddresses(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    wanted_id, address, status = params.text("AllocationId"), params.text("EipAddress"), params.text("Status")
    found = sorted(
        (
            eip
            for eip in ctx.world.eips.values()
            if eip.region_id == region
            and (not wanted_id or eip.allocation_id in wanted_id.split(","))
            and (not address or eip.ip_address in address.split(","))
            and (not status or eip.status == status)
        ),
        key=lambda eip: (eip.creation_time, eip.allocation_id),
    )
    chunk, paging = page(found, params, max_size=100)
    return {**paging, "EipAddresses": {"EipAddress": [_eip_out(eip) for eip in chunk]}}


def _eip_out(eip: Eip) -> dict[str, Any]:
    return {
        "AllocationId": eip.allocation_id,
        "IpAddress": eip.ip_address,
        "RegionId": eip.region_id,
        "Status": eip.status,
        "InstanceId": eip.instance_id,
        "InstanceType": "EcsInstance" if eip.instance_id else "",
        "Bandwidth": str(eip.bandwidth),
        "InternetChargeType": eip.charge_type,
        "ChargeType": "PostPaid",
        "ISP": "BGP",
        "AllocationTime": vpc_time(eip.creation_time),
        "Tags": vpc_tags_out(eip.tags),
    }


def _eip_of(ctx: Context, params: Params) -> Eip:
    region = region_of(params)
    allocation_id = params.required("AllocationId")
    eip = ctx.world.eips.get(allocation_id)
    if eip is None or eip.region_id != region:
        raise ApiError("InvalidAllocationId.NotFound", status=404,
                       message=f"Specified allocation id {allocation_id} does not exist.")  # fmt: skip
    return eip


def _status_error(eip: Eip) -> ApiError:
    return ApiError("IncorrectEipStatus", status=400,
                    message=f"The EIP {eip.allocation_id} is {eip.status}, which this operation does not allow.")


def _settle(ctx: Context, eip: Eip, expected: str, following: str) -> None:
    """Associating and unassociating take a moment, as on Alibaba Cloud (the pending delay)."""
    world = ctx.world

    def done() -> None:
        with world.lock:
            if world.eips.get(eip.allocation_id) is not eip or eip.status != expected:
                return
            eip.status = following
            instance = world.instances.get(eip.instance_id)
            if following == "Available":
                eip.instance_id = ""
            if instance is not None and following == "InUse":
                world.readdressed(instance)

    world.scheduler.after(world.timings.pending, done)
