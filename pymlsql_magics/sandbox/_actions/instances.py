"""Instances: launching, starting, stopping, rebooting, deleting and describing them."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from .. import _catalog
from .._api_errors import ApiError, invalid, missing
from .._model import Eip, Instance, VSwitch, World, new_id
from .._params import Params, page, token_page
from .registry import (
    Context,
    action,
    ecs_time,
    idempotent,
    instance_of,
    matches_tags,
    region_of,
    security_group_of,
    tags_out,
    vswitch_of,
)

_MAX_USER_DATA = 32 * 1024
Operation = Callable[[World, Instance], None]


def _launch_settings(ctx: Context, params: Params, region: str) -> dict[str, Any]:
    """Checks what RunInstances and CreateInstance share, in the order ECS reports problems."""
    image_id = params.required("ImageId")
    instance_type = params.required("InstanceType")
    if image_id not in _catalog.IMAGES:
        raise ApiError("InvalidImageId.NotFound")
    if instance_type not in _catalog.INSTANCE_TYPES:
        raise ApiError("InvalidInstanceType.ValueNotSupported")
    zone, vswitch, group_ids = _network_settings(ctx, params, region)
    key_pair_name = params.text("KeyPairName", "") or ""
    if key_pair_name and (region, key_pair_name) not in ctx.world.key_pairs:
        raise ApiError("InvalidKeyPairName.NotFound")
    user_data = _user_data(params.text("UserData"))
    ram_role = params.text("RamRoleName", "") or ""
    if len(ram_role) > 64:
        raise invalid("RamRoleName", "must be at most 64 characters")
    bandwidth = params.integer("InternetMaxBandwidthOut", 0, low=0, high=100) or 0
    # ECS: 1-10 Mbit/s (default 10) while the outbound cap is at most 10, else 1 up to the outbound
    # cap (default: the outbound cap).
    inbound_limit = max(10, bandwidth)
    bandwidth_in = params.integer("InternetMaxBandwidthIn", inbound_limit, low=1, high=inbound_limit) or 10
    category = params.text("SystemDisk.Category", "cloud_essd") or "cloud_essd"
    if category not in _catalog.DISK_CATEGORIES:
        raise invalid("SystemDisk.Category")
    image = _catalog.IMAGES[image_id]
    size = params.integer("SystemDisk.Size", max(40, image.size_gib), low=20, high=2048)
    spot = params.text("SpotStrategy", "NoSpot") or "NoSpot"
    if spot not in ("NoSpot", "SpotWithPriceLimit", "SpotAsPriceGo"):
        raise ApiError("InvalidSpotStrategy", message="The specified SpotStrategy is not valid.")
    limit_text = params.text("SpotPriceLimit")
    limit = 0.0
    if limit_text is not None:
        try:
            limit = float(limit_text)
        except ValueError:
            limit = -1.0
        if spot != "SpotWithPriceLimit" or limit <= 0 or round(limit, 3) != limit:
            raise ApiError("InvalidSpotPriceLimit", message="The specified SpotPriceLimit is not valid: a price "
                           "with at most 3 decimals, and only with SpotStrategy SpotWithPriceLimit.")  # fmt: skip
    duration = params.integer("SpotDuration", 1)
    if duration not in (0, 1) or (params.text("SpotDuration") is not None and spot == "NoSpot"):
        raise ApiError("InvalidSpotDuration", message="The specified SpotDuration is not valid: 0 or 1, for spot.")
    charge = params.text("InstanceChargeType", "PostPaid") or "PostPaid"
    if charge not in ("PostPaid", "PrePaid"):
        raise invalid("InstanceChargeType")
    hostname = params.text("HostName")
    if hostname is not None and not 2 <= len(hostname) <= 64:
        raise invalid("HostName", "must be 2 to 64 characters")
    name = params.text("InstanceName")
    if name is not None and not 2 <= len(name) <= 128:
        raise invalid("InstanceName", "must be 2 to 128 characters")
    return {
        "image_id": image_id,
        "instance_type": instance_type,
        "zone_id": zone,
        "security_group_ids": group_ids,
        "vswitch": vswitch,
        "key_pair_name": key_pair_name,
        "user_data": user_data,
        "bandwidth_out": bandwidth,
        "bandwidth_in": bandwidth_in,
        "ram_role": ram_role,
        "system_disk_category": category,
        "system_disk_size": size,
        "spot_strategy": spot,
        "spot_price_limit": limit,
        "spot_duration": duration,
        "charge_type": charge,
        "hostname": hostname,
        "name": name,
        "description": params.text("Description", "") or "",
        "auto_release_time": _auto_release_time(ctx, params.text("AutoReleaseTime")),
        "tags": params.new_tags(),
    }


def _network_settings(ctx: Context, params: Params, region: str) -> tuple[str, VSwitch, list[str]]:
    """The zone, vSwitch and groups of new instances, refused as ECS refuses a network that cannot be."""
    zone = params.text("ZoneId")
    if zone is not None and zone not in _catalog.zones(region):
        raise ApiError("InvalidZoneId.NotFound")
    vswitch = vswitch_of(ctx, params.text("VSwitchId"), region)
    if vswitch.status != "Available":
        raise ApiError("IncorrectVSwitchStatus", message=f"The vSwitch {vswitch.vswitch_id} is {vswitch.status}.")
    if zone is not None and zone != vswitch.zone_id:
        raise ApiError("InvalidParameter.Mismatch", message="Specified virtual switch is not in the specified zone.")
    group_ids = params.repeated("SecurityGroupIds")
    single_group = params.text("SecurityGroupId")
    if group_ids and single_group:
        raise invalid("SecurityGroupId", "cannot be given together with SecurityGroupIds")
    group_ids = group_ids or ([single_group] if single_group else [])
    if not group_ids:
        raise missing("SecurityGroupId")
    for group_id in group_ids:
        if security_group_of(ctx, group_id, region).vpc_id != vswitch.vpc_id:
            raise ApiError("InvalidParameter.Mismatch",
                           message="Specified security group and virtual switch are not in the same VPC.")  # fmt: skip
    return vswitch.zone_id, vswitch, group_ids


def _user_data(encoded: str | None) -> bytes | None:
    if encoded is None:
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("InvalidUserData.Base64FormatInvalid") from None
    if len(data) > _MAX_USER_DATA:
        raise ApiError("InvalidUserData.SizeExceeded")
    return data


def _auto_release_time(ctx: Context, value: str | None) -> float | None:
    if value is None:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ"):
        try:
            when = datetime.strptime(value, layout).replace(tzinfo=timezone.utc).timestamp()
            break
        except ValueError:
            continue
    else:
        raise ApiError(
            "InvalidAutoReleaseTime.Malformed",
            message="The specified AutoReleaseTime is not in yyyy-MM-ddTHH:mm:ssZ format (UTC).",
        )
    lead = ctx.world.timings.auto_release_lead
    if when < time.time() + lead:
        raise ApiError(
            "InvalidAutoReleaseTime.Malformed",
            message=f"The specified AutoReleaseTime must be at least {lead:g} seconds from now.",
        )
    return when


def _new_instance(ctx: Context, region: str, settings: dict[str, Any], index: int, unique: bool) -> Instance:
    instance_id = new_id("i-", 20)
    hostname = settings["hostname"] or f"iZ{instance_id[2:]}Z"
    hostname = hostname.replace("${instance_id}", instance_id)
    name = settings["name"] or instance_id
    if unique:
        hostname, name = f"{hostname}{index:03d}", f"{name}{index:03d}"
    vswitch: VSwitch = settings["vswitch"]
    private_ip = ctx.world.allocate_private_ip(vswitch)
    if private_ip is None:
        raise ApiError("QuotaExceeded.PrivateIpAddress", message="Don't have enough private IPs in this switch")
    instance = Instance(
        instance_id=instance_id,
        region_id=region,
        zone_id=settings["zone_id"],
        name=name,
        hostname=hostname,
        description=settings["description"],
        image_id=settings["image_id"],
        instance_type=settings["instance_type"],
        security_group_ids=list(settings["security_group_ids"]),
        vpc_id=vswitch.vpc_id,
        vswitch_id=vswitch.vswitch_id,
        key_pair_name=settings["key_pair_name"],
        private_ip=private_ip,
        bandwidth_out=settings["bandwidth_out"],
        bandwidth_in=settings["bandwidth_in"],
        ram_role=settings["ram_role"],
        ssh_port=22 if ctx.world.hosts.full else _free_port(private_ip),
        user_data=settings["user_data"],
        spot_strategy=settings["spot_strategy"],
        spot_price_limit=settings["spot_price_limit"],
        spot_duration=settings["spot_duration"],
        charge_type=settings["charge_type"],
        system_disk_category=settings["system_disk_category"],
        system_disk_size=settings["system_disk_size"],
        tags=dict(settings["tags"]),
        auto_release_time=settings["auto_release_time"],
    )
    if not ctx.world.hosts.full:
        # Degraded: sshd runs as the sandbox's own user on a high port; clients honour these.
        instance.tags["pymlsql:ssh-port"] = str(instance.ssh_port)
        instance.tags["pymlsql:ssh-user"] = getpass.getuser()
    return instance


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _in_stock(ctx: Context, settings: dict[str, Any], amount: int, minimum: int) -> int:
    """How many of `amount` the zone can make (at least `minimum`, else NoStock), taken from its stock."""
    instance_type, zone = settings["instance_type"], settings["zone_id"]
    left = ctx.world.stock.available(instance_type, zone)
    if left is not None:
        if left < minimum:
            raise ApiError("OperationDenied.NoStock")
        amount = min(amount, left)
    ctx.world.stock.take(instance_type, zone, amount)
    return amount


@action
def RunInstances(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def create() -> dict[str, Any]:
        amount = params.integer("Amount", 1, low=1, high=100) or 1
        minimum = params.integer("MinAmount", amount, low=1, high=100) or amount
        if minimum > amount:
            raise invalid("MinAmount", "must not be greater than Amount")
        settings = _launch_settings(ctx, params, region)
        unique = params.flag("UniqueSuffix") and amount > 1
        if params.flag("DryRun"):
            raise ApiError("DryRunOperation", message="Request validation has been passed with DryRun flag set.")
        amount = _in_stock(ctx, settings, amount, minimum)
        ids = []
        for index in range(1, amount + 1):
            instance = _new_instance(ctx, region, settings, index, unique)
            if instance.bandwidth_out > 0:
                instance.public_ip = ctx.world.allocate_public_ip()
            ctx.world.add(instance, start=True)
            ids.append(instance.instance_id)
        return {"InstanceIdSets": {"InstanceIdSet": ids}}

    return idempotent(ctx, "RunInstances", params, create, processing=ctx.world.quirks.idempotent_processing)


@action
def CreateInstance(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def create() -> dict[str, Any]:
        settings = _launch_settings(ctx, params, region)
        _in_stock(ctx, settings, 1, 1)
        instance = _new_instance(ctx, region, settings, 1, False)
        ctx.world.add(instance, start=False)
        return {"InstanceId": instance.instance_id}

    return idempotent(ctx, "CreateInstance", params, create, processing=ctx.world.quirks.idempotent_processing)


@action
def AllocatePublicIpAddress(ctx: Context, params: Params) -> dict[str, Any]:
    instance = instance_of(ctx, params.text("InstanceId"))
    if instance.public_ip or ctx.world.eip_of(instance) is not None:
        raise ApiError("AllocatedAlready")
    if instance.bandwidth_out <= 0:
        raise ApiError("AllocateIpInvalidInstanceBandwidth")
    if instance.status not in ("Running", "Stopped"):
        raise ApiError("IncorrectInstanceStatus")
    instance.public_ip = ctx.world.allocate_public_ip()
    if instance.status == "Running":
        # The running sshd must also answer on the new address: reboot its machine quietly.
        instance_id = instance.instance_id
        ctx.world.workers.submit(lambda: ctx.world.drop_ssh(instance_id, new_host_keys=False))
    return {"IpAddress": instance.public_ip}


def _require_status(instance: Instance, *allowed: str) -> None:
    if instance.status not in allowed:
        raise ApiError(
            "IncorrectInstanceStatus",
            message=(
                "The current status of the resource does not support this operation. "
                f"({instance.instance_id} is {instance.status})"
            ),
        )


def _single(ctx: Context, params: Params, *, needed: str, operate: Operation) -> dict[str, Any]:
    instance = instance_of(ctx, params.text("InstanceId"))
    _require_status(instance, needed)
    operate(ctx.world, instance)
    return {}


def _batch(ctx: Context, params: Params, *, needed: str, operate: Operation) -> dict[str, Any]:
    region_of(params)
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    all_together = (params.text("BatchOptimization", "AllTogether") or "AllTogether") == "AllTogether"
    if all_together:
        for instance_id in ids:
            _require_status(instance_of(ctx, instance_id), needed)
    responses = []
    for instance_id in ids:
        instance = ctx.world.instances.get(instance_id)
        if instance is None:
            responses.append(_batch_item(instance_id, "InvalidInstanceId.NotFound", "", ""))
            continue
        previous = instance.status
        if previous != needed:
            responses.append(_batch_item(instance_id, "IncorrectInstanceStatus", previous, previous))
            continue
        operate(ctx.world, instance)
        responses.append(_batch_item(instance_id, "200", previous, instance.status))
    return {"InstanceResponses": {"InstanceResponse": responses}}


def _batch_item(instance_id: str, code: str, previous: str, current: str) -> dict[str, str]:
    return {
        "InstanceId": instance_id,
        "Code": code,
        "Message": "success" if code == "200" else code,
        "PreviousStatus": previous,
        "CurrentStatus": current,
    }


# ECS offers each of these for one instance (StartInstance) and for many (StartInstances): the
# status an instance needs first, and what the world does to it.
_OPERATIONS: tuple[tuple[str, str, Operation], ...] = (
    ("Start", "Stopped", World.start),
    ("Stop", "Running", World.stop),
    ("Reboot", "Running", World.reboot),
)
for _verb, _needed, _operate in _OPERATIONS:
    action(partial(_single, needed=_needed, operate=_operate), name=f"{_verb}Instance")
    action(partial(_batch, needed=_needed, operate=_operate), name=f"{_verb}Instances")


def _deletable(ctx: Context, instance: Instance, force: bool) -> None:
    if time.time() - instance.creation_time < ctx.world.quirks.initializing:
        raise ApiError("IncorrectInstanceStatus.Initializing")
    if not force and instance.status != "Stopped":
        raise ApiError(
            "IncorrectInstanceStatus",
            message=(
                "The current status of the resource does not support this operation. "
                f"({instance.instance_id} is {instance.status}; stop it first or set Force=true)"
            ),
        )


@action
def DeleteInstance(ctx: Context, params: Params) -> dict[str, Any]:
    instance = instance_of(ctx, params.text("InstanceId"))
    force = params.flag("Force")
    _deletable(ctx, instance, force)
    ctx.world.release(instance)
    return {}


@action
def DeleteInstances(ctx: Context, params: Params) -> dict[str, Any]:
    region_of(params)
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    force = params.flag("Force")
    instances = [instance_of(ctx, instance_id) for instance_id in ids]
    for instance in instances:
        _deletable(ctx, instance, force)
    for instance in instances:
        ctx.world.release(instance)
    return {}


def _instance_out(instance: Instance, eip: Eip | None) -> dict[str, Any]:
    kind = _catalog.INSTANCE_TYPES[instance.instance_type]
    image = _catalog.IMAGES[instance.image_id]
    return {
        "InstanceId": instance.instance_id,
        "InstanceName": instance.name,
        "Description": instance.description,
        "HostName": instance.hostname,
        "RegionId": instance.region_id,
        "ZoneId": instance.zone_id,
        "InstanceType": instance.instance_type,
        "InstanceTypeFamily": kind.family,
        "Cpu": kind.cpu,
        "Memory": int(kind.memory_gib * 1024),
        "GPUAmount": 0,
        "ImageId": instance.image_id,
        "OSName": "Debian  12 64位",
        "OSNameEn": "Debian  12 64 bit",
        "OSType": "linux",
        "KeyPairName": instance.key_pair_name,
        "SerialNumber": instance.instance_id[2:],
        "IoOptimized": True,
        "DeletionProtection": False,
        "Status": instance.status,
        "StoppedMode": "KeepCharging" if instance.status == "Stopped" else "Not-applicable",
        "CreationTime": ecs_time(instance.creation_time),
        "StartTime": ecs_time(instance.start_time),
        "ExpiredTime": "2099-12-31T15:59Z",
        "AutoReleaseTime": ecs_time(instance.auto_release_time),
        "OperationLocks": {"LockReason": _locks(instance)},
        "InstanceChargeType": instance.charge_type,
        "SpotStrategy": instance.spot_strategy,
        "SpotPriceLimit": instance.spot_price_limit,
        "SpotDuration": instance.spot_duration if instance.spot_strategy != "NoSpot" else 0,
        "InternetChargeType": "PayByTraffic",
        "InternetMaxBandwidthIn": instance.bandwidth_in,
        "InternetMaxBandwidthOut": instance.bandwidth_out,
        "InstanceNetworkType": "vpc",
        "PublicIpAddress": {"IpAddress": [instance.public_ip] if instance.public_ip else []},
        "InnerIpAddress": {"IpAddress": []},
        "EipAddress": _eip_address_out(eip),
        "VpcAttributes": {
            "VpcId": instance.vpc_id,
            "VSwitchId": instance.vswitch_id,
            "NatIpAddress": "",
            "PrivateIpAddress": {"IpAddress": [instance.private_ip]},
        },
        "NetworkInterfaces": {
            "NetworkInterface": [
                {
                    "NetworkInterfaceId": "eni-" + instance.instance_id[2:],
                    "Type": "Primary",
                    "MacAddress": _mac(instance.instance_id),
                    "PrimaryIpAddress": instance.private_ip,
                    "PrivateIpSets": {"PrivateIpSet": [{"PrivateIpAddress": instance.private_ip, "Primary": True}]},
                }
            ]
        },
        "SecurityGroupIds": {"SecurityGroupId": list(instance.security_group_ids)},
        "Tags": tags_out(instance.tags),
        "ImageOptions": {"LoginAsNonRoot": False},
        "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "optional"},
        "LocalStorageAmount": 0,
        "DeviceAvailable": True,
        "Recyclable": False,
        "ResourceGroupId": "",
        "VlanId": "",
        "SystemDiskSize": instance.system_disk_size,
        "Platform": image.owner_alias,
    }


def _locks(instance: Instance) -> list[dict[str, str]]:
    if instance.reclaim_at is None:
        return []
    return [{"LockReason": "Recycling", "LockMsg": "The spot instance is to be reclaimed at "
             + datetime.fromtimestamp(instance.reclaim_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}]  # fmt: skip


def _mac(instance_id: str) -> str:
    digest = hashlib.sha256(instance_id.encode()).hexdigest()
    return "00:16:3e:" + ":".join(digest[i : i + 2] for i in range(0, 6, 2))


@action
def DescribeInstances(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    ids = params.json_list("InstanceIds")
    private = params.json_list("PrivateIpAddresses")
    public = params.json_list("PublicIpAddresses")
    name = params.text("InstanceName")
    filters = {
        "status": params.text("Status"),
        "zone_id": params.text("ZoneId"),
        "instance_type": params.text("InstanceType"),
        "image_id": params.text("ImageId"),
        "key_pair_name": params.text("KeyPairName"),
        "vswitch_id": params.text("VSwitchId"),
        "vpc_id": params.text("VpcId"),
    }
    group = params.text("SecurityGroupId")
    tags = params.tags()
    # A new instance shows up only after the describe lag, as ECS's listing can trail its creation.
    listed_since = time.time() - ctx.world.quirks.describe_lag
    found = [
        instance
        for instance in ctx.world.instances.values()
        if instance.region_id == region
        and instance.creation_time <= listed_since
        and (ids is None or instance.instance_id in ids)
        and (private is None or instance.private_ip in private)
        and (public is None or instance.public_ip in public)
        and (name is None or fnmatchcase(instance.name, name))
        and all(value is None or getattr(instance, field) == value for field, value in filters.items())
        and (group is None or group in instance.security_group_ids)
        and matches_tags(instance.tags, tags)
    ]
    found.sort(key=lambda instance: (instance.creation_time, instance.instance_id))
    if params.text("MaxResults") is not None or params.text("NextToken") is not None:
        chunk, paging = token_page(found, params)
        paging = {"NextToken": paging["NextToken"], "TotalCount": paging["TotalCount"],
                  "PageNumber": 1, "PageSize": paging["MaxResults"]}  # fmt: skip
    else:
        chunk, paging = page(found, params)
        paging["NextToken"] = ""
    shown = [_instance_out(instance, ctx.world.eip_of(instance)) for instance in chunk]
    return {**paging, "Instances": {"Instance": shown}}


@action
def DescribeInstanceStatus(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    ids = params.repeated("InstanceId")
    zone = params.text("ZoneId")
    found = [
        instance
        for instance in ctx.world.instances.values()
        if instance.region_id == region
        and (not ids or instance.instance_id in ids)
        and (zone is None or instance.zone_id == zone)
    ]
    found.sort(key=lambda instance: (instance.creation_time, instance.instance_id))
    chunk, paging = page(found, params, max_size=50)
    return {
        **paging,
        "InstanceStatuses": {
            "InstanceStatus": [{"InstanceId": instance.instance_id, "Status": instance.status} for instance in chunk]
        },
    }


@action
def GetInstanceConsoleOutput(ctx: Context, params: Params) -> dict[str, Any]:
    region_of(params)
    instance = instance_of(ctx, params.text("InstanceId"))
    first_ran = instance.events.get("first_running_at")
    # ECS fills the console output some time after the first boot: empty until then.
    late = first_ran is None or time.time() - first_ran < ctx.world.quirks.console_lag
    output = b"" if late else ctx.world.hosts.console(instance.instance_id)
    updated = datetime.fromtimestamp(time.time() + 8 * 3600, timezone.utc)
    return {
        "InstanceId": instance.instance_id,
        "ConsoleOutput": base64.b64encode(output).decode(),
        "LastUpdateTime": updated.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _eip_address_out(eip: Eip | None) -> dict[str, Any]:
    if eip is None or eip.status != "InUse":
        return {"IpAddress": "", "AllocationId": "", "Bandwidth": 0}
    return {"IpAddress": eip.ip_address, "AllocationId": eip.allocation_id, "Bandwidth": eip.bandwidth,
            "InternetChargeType": eip.charge_type, "IsSupportUnassociate": True}  # fmt: skip
