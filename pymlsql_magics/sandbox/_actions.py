"""ECS 2014-05-26 actions: request parameters and response fields as the SDK's models name them."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _catalog
from ._errors import ApiError, invalid, missing
from ._hosts import HostError
from ._model import ANY_REGION, Instance, Invocation, KeyPair, SecurityGroup, World, new_id
from ._params import Params, page, token_page

Handler = Callable[["Context", Params], dict[str, Any]]
ACTIONS: dict[str, Handler] = {}
_MAX_USER_DATA = 32 * 1024


class Context:
    def __init__(self, world: World, host_id: str) -> None:
        self.world = world
        self.host_id = host_id


def action(function: Handler) -> Handler:
    ACTIONS[function.__name__] = function
    return function


def ecs_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _region(ctx: Context, params: Params, *, required: bool = True) -> str:
    region = params.text("RegionId")
    if region is None:
        if required:
            raise missing("RegionId")
        return ""
    if region not in _catalog.REGIONS:
        raise ApiError("InvalidRegionId.NotFound")
    return region


def _tags_out(tags: dict[str, str]) -> dict[str, Any]:
    return {"Tag": [{"TagKey": key, "TagValue": value} for key, value in tags.items()]}


def _matches_tags(tags: dict[str, str], wanted: list[tuple[str, str | None]]) -> bool:
    return all(key in tags and (value is None or tags[key] == value) for key, value in wanted)


def _instance(ctx: Context, instance_id: str | None) -> Instance:
    if not instance_id:
        raise missing("InstanceId")
    found = ctx.world.instances.get(instance_id)
    if found is None:
        raise ApiError("InvalidInstanceId.NotFound")
    return found


# -- catalog ---------------------------------------------------------------------------------


@action
def DescribeRegions(ctx: Context, params: Params) -> dict[str, Any]:
    return {
        "Regions": {
            "Region": [
                {
                    "RegionId": region,
                    "LocalName": local,
                    "RegionEndpoint": ctx.host_id,
                    "Status": "available",
                }
                for region, local in _catalog.REGIONS.items()
            ]
        }
    }


@action
def DescribeZones(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    types = sorted(_catalog.INSTANCE_TYPES)
    return {
        "Zones": {
            "Zone": [
                {
                    "ZoneId": zone,
                    "LocalName": zone,
                    "ZoneType": "AvailabilityZone",
                    "AvailableInstanceTypes": {"InstanceTypes": types},
                    "AvailableResourceCreation": {"ResourceTypes": ["Instance", "Disk", "VSwitch"]},
                    "AvailableDiskCategories": {"DiskCategories": list(_catalog.DISK_CATEGORIES)},
                }
                for zone in _catalog.zones(region)
            ]
        }
    }


@action
def DescribeImages(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    wanted_id = params.text("ImageId")
    wanted_name = params.text("ImageName")
    owner = params.text("ImageOwnerAlias")
    images = [
        image
        for image in _catalog.IMAGES.values()
        if (wanted_id is None or image.image_id in wanted_id.split(","))
        and (wanted_name is None or wanted_name in image.name)
        and (owner is None or image.owner_alias == owner)
    ]
    chunk, paging = page(images, params)
    return {
        "RegionId": region,
        **paging,
        "Images": {
            "Image": [
                {
                    "ImageId": image.image_id,
                    "ImageName": image.name,
                    "ImageFamily": "debian_12",
                    "Description": image.description,
                    "OSName": "Debian  12 64位",
                    "OSNameEn": "Debian  12 64 bit",
                    "OSType": "linux",
                    "Platform": "Debian",
                    "Architecture": "x86_64",
                    "Status": "Available",
                    "Size": image.size_gib,
                    "IsSupportCloudinit": True,
                    "ImageOwnerAlias": image.owner_alias,
                    "IsPublic": image.owner_alias == "system",
                    "CreationTime": "2024-01-01T00:00:00Z",
                    "Usage": "none",
                }
                for image in chunk
            ]
        },
    }


@action
def DescribeInstanceTypes(ctx: Context, params: Params) -> dict[str, Any]:
    wanted = params.repeated("InstanceTypes")
    family = params.text("InstanceTypeFamily")
    items = [
        item
        for item in _catalog.INSTANCE_TYPES.values()
        if (not wanted or item.name in wanted) and (family is None or item.family == family)
    ]
    chunk, paging = token_page(items, params, default_size=100, max_size=1600)
    return {
        "NextToken": paging["NextToken"],
        "InstanceTypes": {
            "InstanceType": [
                {
                    "InstanceTypeId": item.name,
                    "InstanceTypeFamily": item.family,
                    "CpuCoreCount": item.cpu,
                    "MemorySize": item.memory_gib,
                    "CpuArchitecture": "X86",
                    "InstanceCategory": "General-purpose",
                    "GPUAmount": 0,
                    "EniQuantity": 3,
                }
                for item in chunk
            ]
        },
    }


# -- security groups -------------------------------------------------------------------------


@action
def CreateSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    name = params.text("SecurityGroupName", "")
    if name and (len(name) < 2 or not name[0].isalpha()):
        raise ApiError("InvalidSecurityGroupName.Malformed")
    group = SecurityGroup(
        security_group_id=new_id("sg-", 20),
        name=name or "",
        description=params.text("Description", "") or "",
        region_id=region,
        vpc_id=params.text("VpcId", _catalog.DEFAULT_VPC) or _catalog.DEFAULT_VPC,
        group_type=params.text("SecurityGroupType", "normal") or "normal",
        tags=params.new_tags(),
    )
    ctx.world.security_groups[group.security_group_id] = group
    return {"SecurityGroupId": group.security_group_id}


@action
def DescribeSecurityGroups(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    ids = params.json_list("SecurityGroupIds")
    one = params.text("SecurityGroupId")
    name = params.text("SecurityGroupName")
    tags = params.tags()
    groups = [
        group
        for group in ctx.world.security_groups.values()
        if group.region_id in (region, ANY_REGION)
        and (ids is None or group.security_group_id in ids)
        and (one is None or group.security_group_id == one)
        and (name is None or group.name == name)
        and _matches_tags(group.tags, tags)
    ]
    if params.text("MaxResults") or params.text("NextToken"):
        chunk, paging = token_page(groups, params)
        paging.pop("MaxResults")
    else:
        chunk, paging = page(groups, params)
    return {
        "RegionId": region,
        **paging,
        "SecurityGroups": {
            "SecurityGroup": [
                {
                    "SecurityGroupId": group.security_group_id,
                    "SecurityGroupName": group.name,
                    "Description": group.description,
                    "VpcId": group.vpc_id,
                    "SecurityGroupType": group.group_type,
                    "CreationTime": ecs_time(group.creation_time),
                    "RuleCount": len(group.permissions),
                    "EcsCount": sum(
                        group.security_group_id in instance.security_group_ids
                        for instance in ctx.world.instances.values()
                    ),
                    "Tags": _tags_out(group.tags),
                }
                for group in chunk
            ]
        },
    }


@action
def AuthorizeSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    _region(ctx, params)
    group = _security_group(ctx, params.required("SecurityGroupId"))
    rules = []
    index = 1
    while any(key.startswith(f"Permissions.{index}.") for key in params.values):
        prefix = f"Permissions.{index}."
        rules.append({key[len(prefix):]: value for key, value in params.values.items() if key.startswith(prefix)})
        index += 1
    if not rules and params.text("IpProtocol"):
        legacy = ("IpProtocol", "PortRange", "SourceCidrIp", "Policy", "Priority", "Description")
        rules.append({key: params.values[key] for key in legacy if key in params.values})
    if not rules:
        raise missing("Permissions.1.IpProtocol")
    for rule in rules:
        if not rule.get("IpProtocol"):
            raise missing("IpProtocol")
        if rule["IpProtocol"].upper() not in ("TCP", "UDP", "ICMP", "GRE", "ALL", "ICMPV6"):
            raise invalid("IpProtocol")
        if not rule.get("PortRange"):
            raise missing("PortRange")
    group.permissions.extend(rules)
    return {}


def _security_group(ctx: Context, group_id: str) -> SecurityGroup:
    group = ctx.world.security_groups.get(group_id)
    if group is None:
        raise ApiError("InvalidSecurityGroupId.NotFound")
    return group


# -- key pairs -------------------------------------------------------------------------------


def _fingerprint(public_key_line: str) -> str:
    blob = base64.b64decode(public_key_line.split()[1])
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - a fingerprint, as ECS shows it
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _check_key_pair_name(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-.")
    if (
        not 2 <= len(name) <= 128
        or not name[0].isalpha()
        or name.startswith(("http://", "https://"))
        or not set(name) <= allowed
    ):
        raise ApiError("InvalidKeyPairName.Malformed")


def _add_key_pair(ctx: Context, region: str, name: str, public_key: str, params: Params) -> KeyPair:
    _check_key_pair_name(name)
    if (region, name) in ctx.world.key_pairs:
        raise ApiError("KeyPair.AlreadyExist")
    pair = KeyPair(
        name=name,
        key_pair_id=new_id("kp-", 20),
        fingerprint=_fingerprint(public_key),
        public_key=public_key,
        region_id=region,
        tags=params.new_tags(),
    )
    ctx.world.key_pairs[(region, name)] = pair
    return pair


@action
def CreateKeyPair(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    name = params.required("KeyPairName")
    _check_key_pair_name(name)
    if (region, name) in ctx.world.key_pairs:
        raise ApiError("KeyPair.AlreadyExist")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    pair = _add_key_pair(ctx, region, name, public, params)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "KeyPairName": pair.name,
        "KeyPairId": pair.key_pair_id,
        "KeyPairFingerPrint": pair.fingerprint,
        "PrivateKeyBody": private,
    }


@action
def ImportKeyPair(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    name = params.required("KeyPairName")
    body = params.required("PublicKeyBody").strip()
    parts = body.split()
    kinds = ("ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521")  # fmt: skip
    try:
        serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
        well_formed = parts[0] in kinds
    except (ValueError, IndexError, binascii.Error, TypeError, UnsupportedAlgorithm):
        well_formed = False
    if not well_formed:
        raise ApiError("InvalidPublicKeyBody.Malformed")
    pair = _add_key_pair(ctx, region, name, body, params)
    return {"KeyPairName": pair.name, "KeyPairFingerPrint": pair.fingerprint}


@action
def DescribeKeyPairs(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    pattern = params.text("KeyPairName")
    fingerprint = params.text("KeyPairFingerPrint")
    include_public = params.flag("IncludePublicKey")
    tags = params.tags()
    pairs = [
        pair
        for (pair_region, name), pair in sorted(ctx.world.key_pairs.items())
        if pair_region == region
        and (pattern is None or fnmatchcase(name, pattern))
        and (fingerprint is None or pair.fingerprint == fingerprint)
        and _matches_tags(pair.tags, tags)
    ]
    chunk, paging = page(pairs, params, max_size=50)
    items = []
    for pair in chunk:
        item = {
            "KeyPairName": pair.name,
            "KeyPairFingerPrint": pair.fingerprint,
            "CreationTime": ecs_time(pair.creation_time),
            "ResourceGroupId": "",
            "Tags": _tags_out(pair.tags),
        }
        if include_public:
            item["PublicKey"] = pair.public_key
        items.append(item)
    return {**paging, "KeyPairs": {"KeyPair": items}}


@action
def DeleteKeyPairs(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    names = params.json_list("KeyPairNames")
    if not names:
        raise missing("KeyPairNames")
    for name in names:
        ctx.world.key_pairs.pop((region, name), None)
    return {}


# -- instances -------------------------------------------------------------------------------


def _launch_settings(ctx: Context, params: Params, region: str) -> dict[str, Any]:
    """Checks what RunInstances and CreateInstance share, in the order ECS reports problems."""
    image_id = params.required("ImageId")
    instance_type = params.required("InstanceType")
    if image_id not in _catalog.IMAGES:
        raise ApiError("InvalidImageId.NotFound")
    if instance_type not in _catalog.INSTANCE_TYPES:
        raise ApiError("InvalidInstanceType.ValueNotSupported")
    zone = params.text("ZoneId") or _catalog.zones(region)[0]
    if zone not in _catalog.zones(region):
        raise ApiError("InvalidZoneId.NotFound")
    group_ids = params.repeated("SecurityGroupIds")
    single_group = params.text("SecurityGroupId")
    if group_ids and single_group:
        raise invalid("SecurityGroupId", "cannot be given together with SecurityGroupIds")
    group_ids = group_ids or [single_group or _catalog.DEFAULT_SECURITY_GROUP]
    for group_id in group_ids:
        group = _security_group(ctx, group_id)
        if group.region_id not in (region, ANY_REGION):
            raise ApiError("InvalidSecurityGroupId.NotFound")
    vswitch = params.text("VSwitchId") or _catalog.DEFAULT_VSWITCH
    if vswitch != _catalog.DEFAULT_VSWITCH:
        raise ApiError("InvalidVSwitchId.NotFound")
    key_pair_name = params.text("KeyPairName", "") or ""
    if key_pair_name and (region, key_pair_name) not in ctx.world.key_pairs:
        raise ApiError("InvalidKeyPairName.NotFound")
    user_data = _user_data(params.text("UserData"))
    bandwidth = params.integer("InternetMaxBandwidthOut", 0, low=0, high=100) or 0
    category = params.text("SystemDisk.Category", "cloud_essd") or "cloud_essd"
    if category not in _catalog.DISK_CATEGORIES:
        raise invalid("SystemDisk.Category")
    image = _catalog.IMAGES[image_id]
    size = params.integer("SystemDisk.Size", max(40, image.size_gib), low=20, high=2048)
    spot = params.text("SpotStrategy", "NoSpot") or "NoSpot"
    if spot not in ("NoSpot", "SpotWithPriceLimit", "SpotAsPriceGo"):
        raise invalid("SpotStrategy")
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
        "vswitch_id": vswitch,
        "key_pair_name": key_pair_name,
        "user_data": user_data,
        "bandwidth_out": bandwidth,
        "system_disk_category": category,
        "system_disk_size": size,
        "spot_strategy": spot,
        "charge_type": charge,
        "hostname": hostname,
        "name": name,
        "description": params.text("Description", "") or "",
        "auto_release_time": _auto_release_time(ctx, params.text("AutoReleaseTime")),
        "tags": params.new_tags(),
    }


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
    private_ip = ctx.world.allocate_private_ip()
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
        vswitch_id=settings["vswitch_id"],
        key_pair_name=settings["key_pair_name"],
        private_ip=private_ip,
        bandwidth_out=settings["bandwidth_out"],
        ssh_port=22 if ctx.world.hosts.full else _free_port(private_ip),
        user_data=settings["user_data"],
        spot_strategy=settings["spot_strategy"],
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


def _idempotent(ctx: Context, name: str, params: Params, create: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    token = params.text("ClientToken")
    if token is None:
        return create()
    if len(token) > 64 or not token.isascii():
        raise invalid("ClientToken", "must be at most 64 ASCII characters")
    request = {key: value for key, value in params.values.items() if key != "ClientToken"}
    remembered = ctx.world.client_tokens.get((name, token))
    if remembered is not None:
        if remembered[0] != request:
            raise ApiError("IdempotentParameterMismatch")
        return remembered[1]
    answer = create()
    ctx.world.client_tokens[(name, token)] = (request, answer)
    return answer


@action
def RunInstances(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)

    def create() -> dict[str, Any]:
        amount = params.integer("Amount", 1, low=1, high=100) or 1
        minimum = params.integer("MinAmount", amount, low=1, high=100) or amount
        if minimum > amount:
            raise invalid("MinAmount", "must not be greater than Amount")
        settings = _launch_settings(ctx, params, region)
        unique = params.flag("UniqueSuffix") and amount > 1
        if params.flag("DryRun"):
            raise ApiError("DryRunOperation", message="Request validation has been passed with DryRun flag set.")
        ids = []
        for index in range(1, amount + 1):
            instance = _new_instance(ctx, region, settings, index, unique)
            if instance.bandwidth_out > 0:
                instance.public_ip = ctx.world.public_ip_for(instance.private_ip)
            ctx.world.add(instance, start=True)
            ids.append(instance.instance_id)
        return {"InstanceIdSets": {"InstanceIdSet": ids}}

    return _idempotent(ctx, "RunInstances", params, create)


@action
def CreateInstance(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)

    def create() -> dict[str, Any]:
        settings = _launch_settings(ctx, params, region)
        instance = _new_instance(ctx, region, settings, 1, False)
        ctx.world.add(instance, start=False)
        return {"InstanceId": instance.instance_id}

    return _idempotent(ctx, "CreateInstance", params, create)


@action
def AllocatePublicIpAddress(ctx: Context, params: Params) -> dict[str, Any]:
    instance = _instance(ctx, params.text("InstanceId"))
    if instance.public_ip:
        raise ApiError("AllocatedAlready")
    if instance.bandwidth_out <= 0:
        raise ApiError("AllocateIpInvalidInstanceBandwidth")
    if instance.status not in ("Running", "Stopped"):
        raise ApiError("IncorrectInstanceStatus")
    instance.public_ip = ctx.world.public_ip_for(instance.private_ip)
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


@action
def StartInstance(ctx: Context, params: Params) -> dict[str, Any]:
    instance = _instance(ctx, params.text("InstanceId"))
    _require_status(instance, "Stopped")
    ctx.world.start(instance)
    return {}


@action
def StopInstance(ctx: Context, params: Params) -> dict[str, Any]:
    instance = _instance(ctx, params.text("InstanceId"))
    _require_status(instance, "Running")
    ctx.world.stop(instance)
    return {}


@action
def RebootInstance(ctx: Context, params: Params) -> dict[str, Any]:
    instance = _instance(ctx, params.text("InstanceId"))
    _require_status(instance, "Running")
    ctx.world.reboot(instance)
    return {}


def _batch(ctx: Context, params: Params, needed: str, operate: Callable[[Instance], None]) -> dict[str, Any]:
    _region(ctx, params)
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    all_together = (params.text("BatchOptimization", "AllTogether") or "AllTogether") == "AllTogether"
    if all_together:
        for instance_id in ids:
            _require_status(_instance(ctx, instance_id), needed)
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
        operate(instance)
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


@action
def StartInstances(ctx: Context, params: Params) -> dict[str, Any]:
    return _batch(ctx, params, "Stopped", ctx.world.start)


@action
def StopInstances(ctx: Context, params: Params) -> dict[str, Any]:
    return _batch(ctx, params, "Running", ctx.world.stop)


@action
def RebootInstances(ctx: Context, params: Params) -> dict[str, Any]:
    return _batch(ctx, params, "Running", ctx.world.reboot)


def _deletable(instance: Instance, force: bool) -> None:
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
    instance = _instance(ctx, params.text("InstanceId"))
    force = params.flag("Force")
    _deletable(instance, force)
    ctx.world.release(instance)
    return {}


@action
def DeleteInstances(ctx: Context, params: Params) -> dict[str, Any]:
    _region(ctx, params)
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    force = params.flag("Force")
    instances = [_instance(ctx, instance_id) for instance_id in ids]
    for instance in instances:
        _deletable(instance, force)
    for instance in instances:
        ctx.world.release(instance)
    return {}


def _instance_out(instance: Instance) -> dict[str, Any]:
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
        "OperationLocks": {"LockReason": []},
        "InstanceChargeType": instance.charge_type,
        "SpotStrategy": instance.spot_strategy,
        "InternetChargeType": "PayByTraffic",
        "InternetMaxBandwidthIn": 100,
        "InternetMaxBandwidthOut": instance.bandwidth_out,
        "InstanceNetworkType": "vpc",
        "PublicIpAddress": {"IpAddress": [instance.public_ip] if instance.public_ip else []},
        "InnerIpAddress": {"IpAddress": []},
        "EipAddress": {"IpAddress": "", "AllocationId": "", "Bandwidth": 0},
        "VpcAttributes": {
            "VpcId": _catalog.DEFAULT_VPC,
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
                    "PrivateIpSets": {
                        "PrivateIpSet": [{"PrivateIpAddress": instance.private_ip, "Primary": True}]
                    },
                }
            ]
        },
        "SecurityGroupIds": {"SecurityGroupId": list(instance.security_group_ids)},
        "Tags": _tags_out(instance.tags),
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


def _mac(instance_id: str) -> str:
    digest = hashlib.sha256(instance_id.encode()).hexdigest()
    return "00:16:3e:" + ":".join(digest[i : i + 2] for i in range(0, 6, 2))


@action
def DescribeInstances(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
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
    }
    group = params.text("SecurityGroupId")
    tags = params.tags()
    found = [
        instance
        for instance in ctx.world.instances.values()
        if instance.region_id == region
        and (ids is None or instance.instance_id in ids)
        and (private is None or instance.private_ip in private)
        and (public is None or instance.public_ip in public)
        and (name is None or fnmatchcase(instance.name, name))
        and all(value is None or getattr(instance, field) == value for field, value in filters.items())
        and (group is None or group in instance.security_group_ids)
        and _matches_tags(instance.tags, tags)
    ]
    found.sort(key=lambda instance: (instance.creation_time, instance.instance_id))
    if params.text("MaxResults") is not None or params.text("NextToken") is not None:
        chunk, paging = token_page(found, params)
        paging = {"NextToken": paging["NextToken"], "TotalCount": paging["TotalCount"],
                  "PageNumber": 1, "PageSize": paging["MaxResults"]}  # fmt: skip
    else:
        chunk, paging = page(found, params)
        paging["NextToken"] = ""
    return {**paging, "Instances": {"Instance": [_instance_out(instance) for instance in chunk]}}


@action
def DescribeInstanceStatus(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
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
            "InstanceStatus": [
                {"InstanceId": instance.instance_id, "Status": instance.status} for instance in chunk
            ]
        },
    }


@action
def GetInstanceConsoleOutput(ctx: Context, params: Params) -> dict[str, Any]:
    _region(ctx, params)
    instance = _instance(ctx, params.text("InstanceId"))
    output = ctx.world.hosts.console(instance.instance_id)
    updated = datetime.fromtimestamp(time.time() + 8 * 3600, timezone.utc)
    return {
        "InstanceId": instance.instance_id,
        "ConsoleOutput": base64.b64encode(output).decode(),
        "LastUpdateTime": updated.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- tags ------------------------------------------------------------------------------------


def _taggable(ctx: Context, region: str, resource_type: str, resource_id: str) -> dict[str, str]:
    kind = resource_type.lower()
    if kind == "instance":
        instance = ctx.world.instances.get(resource_id)
        if instance is None or instance.region_id != region:
            raise ApiError("InvalidInstanceId.NotFound")
        return instance.tags
    if kind == "securitygroup":
        group = ctx.world.security_groups.get(resource_id)
        if group is None:
            raise ApiError("InvalidSecurityGroupId.NotFound")
        return group.tags
    if kind == "keypair":
        for pair in ctx.world.key_pairs.values():
            if pair.region_id == region and resource_id in (pair.name, pair.key_pair_id):
                return pair.tags
        raise ApiError("InvalidKeyPairName.NotFound")
    raise invalid("ResourceType", "must be instance, securitygroup or keypair in the sandbox")


def _all_taggable(ctx: Context, region: str, resource_type: str) -> list[tuple[str, dict[str, str]]]:
    kind = resource_type.lower()
    if kind == "instance":
        return [(i.instance_id, i.tags) for i in ctx.world.instances.values() if i.region_id == region]
    if kind == "securitygroup":
        return [
            (g.security_group_id, g.tags)
            for g in ctx.world.security_groups.values()
            if g.region_id in (region, ANY_REGION)
        ]
    if kind == "keypair":
        return [(p.name, p.tags) for p in ctx.world.key_pairs.values() if p.region_id == region]
    raise invalid("ResourceType", "must be instance, securitygroup or keypair in the sandbox")


@action
def TagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    resource_type = params.required("ResourceType")
    ids = params.repeated("ResourceId", limit=50)
    if not ids:
        raise missing("ResourceId.1")
    tags = params.new_tags()
    if not tags:
        raise missing("Tag.1.Key")
    targets = [_taggable(ctx, region, resource_type, resource_id) for resource_id in ids]
    for target in targets:
        target.update(tags)
    return {}


@action
def UntagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    resource_type = params.required("ResourceType")
    ids = params.repeated("ResourceId", limit=50)
    if not ids:
        raise missing("ResourceId.1")
    keys = params.repeated("TagKey", limit=20)
    every = params.flag("All")
    targets = [_taggable(ctx, region, resource_type, resource_id) for resource_id in ids]
    for target in targets:
        for key in list(target) if every else keys:
            target.pop(key, None)
    return {}


@action
def ListTagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    resource_type = params.required("ResourceType")
    ids = params.repeated("ResourceId", limit=50)
    wanted = params.tags()
    for key, value in wanted:
        if not key and value:
            raise ApiError("InvalidParameter.TagValue")
    rows = []
    for resource_id, tags in _all_taggable(ctx, region, resource_type):
        if ids and resource_id not in ids:
            continue
        if wanted and not _matches_tags(tags, wanted):
            continue
        rows += [
            {"ResourceId": resource_id, "ResourceType": resource_type, "TagKey": key, "TagValue": value}
            for key, value in tags.items()
        ]
    chunk, paging = token_page(rows, params, default_size=50, max_size=1000)
    return {"NextToken": paging["NextToken"], "TagResources": {"TagResource": chunk}}


# -- Cloud Assistant -------------------------------------------------------------------------


@action
def RunCommand(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    command_type = params.required("Type")
    if command_type != "RunShellScript":
        raise ApiError("InvalidCommandType.NotSupported")
    content = params.required("CommandContent")
    if (params.text("ContentEncoding", "PlainText") or "").lower() == "base64":
        try:
            content = base64.b64decode(content, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise invalid("CommandContent", "is not valid Base64") from None
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    instances = [_instance(ctx, instance_id) for instance_id in ids]
    for instance in instances:
        if instance.status != "Running" or "ssh_ready_at" not in instance.events:
            raise ApiError(
                "InstanceNotRunning",
                message=f"The Cloud Assistant agent on {instance.instance_id} is not running yet.",
            )
    username = params.text("Username", "root") or "root"
    invocation = Invocation(
        invoke_id=new_id("t-", 20),
        command_id=new_id("c-", 20),
        name=params.text("Name", "") or "",
        command_type=command_type,
        content=content,
        region_id=region,
        timeout=params.integer("Timeout", 60, low=1, high=86400) or 60,
        workdir=params.text("WorkingDir") or ("/root" if username == "root" else f"/home/{username}"),
        username=username,
    )
    for instance in instances:
        invocation.results[instance.instance_id] = {"status": "Running", "start": time.time()}
    ctx.world.invocations[invocation.invoke_id] = invocation
    for instance in instances:
        threading.Thread(
            target=_invoke, args=(ctx.world, invocation, instance.instance_id), daemon=True
        ).start()
    return {"CommandId": invocation.command_id, "InvokeId": invocation.invoke_id}


def _invoke(world: World, invocation: Invocation, instance_id: str) -> None:
    try:
        code, output, timed_out = world.hosts.run(
            instance_id,
            invocation.content,
            user=invocation.username,
            workdir=invocation.workdir,
            timeout=invocation.timeout,
        )
        error = ("InvocationTimeout", "the command timed out") if timed_out else ("", "")
    except HostError as exc:
        code, output, timed_out, error = None, b"", False, ("InstanceNotRunning", str(exc))
    status = "Timeout" if timed_out else ("Success" if code == 0 else "Failed")
    with world.lock:
        invocation.results[instance_id].update(
            status=status,
            exit_code=code if code is not None else -1,
            output=output,
            finish=time.time(),
            error_code=error[0],
            error_info=error[1],
        )


def _overall_status(invocation: Invocation) -> str:
    states = {result["status"] for result in invocation.results.values()}
    if "Running" in states:
        return "Running"
    if states == {"Success"}:
        return "Success"
    if "Success" in states:
        return "PartialFailed"
    return "Failed"


def _encode_output(output: bytes, encoding: str) -> str:
    if encoding.lower() == "plaintext":
        return output.decode(errors="replace")
    return base64.b64encode(output).decode()


@action
def DescribeInvocations(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    invoke_id = params.text("InvokeId")
    instance_id = params.text("InstanceId")
    include_output = params.flag("IncludeOutput")
    encoding = params.text("ContentEncoding", "Base64") or "Base64"
    found = [
        invocation
        for invocation in ctx.world.invocations.values()
        if invocation.region_id == region
        and (invoke_id is None or invocation.invoke_id == invoke_id)
        and (instance_id is None or instance_id in invocation.results)
    ]
    found.sort(key=lambda invocation: -invocation.creation_time)
    chunk, paging = token_page(found, params, max_size=50)
    items = []
    for invocation in chunk:
        overall = _overall_status(invocation)
        instances = []
        for target, result in invocation.results.items():
            entry = {
                "InstanceId": target,
                "InvocationStatus": result["status"],
                "InstanceInvokeStatus": "Finished" if result["status"] != "Running" else "Running",
                "ExitCode": result.get("exit_code"),
                "ErrorCode": result.get("error_code", ""),
                "ErrorInfo": result.get("error_info", ""),
                "StartTime": _iso(result.get("start")),
                "FinishTime": _iso(result.get("finish")),
            }
            if include_output:
                entry["Output"] = _encode_output(result.get("output", b""), encoding)
            instances.append(entry)
        items.append(
            {
                "InvokeId": invocation.invoke_id,
                "CommandId": invocation.command_id,
                "CommandName": invocation.name,
                "CommandType": invocation.command_type,
                "CommandContent": base64.b64encode(invocation.content.encode()).decode(),
                "InvocationStatus": overall,
                "InvokeStatus": "Finished" if overall != "Running" else "Running",
                "CreationTime": _iso(invocation.creation_time),
                "Timeout": invocation.timeout,
                "WorkingDir": invocation.workdir,
                "Username": invocation.username,
                "RepeatMode": "Once",
                "InvokeInstances": {"InvokeInstance": instances},
            }
        )
    return {
        "TotalCount": paging["TotalCount"],
        "PageSize": paging["MaxResults"],
        "PageNumber": 1,
        "NextToken": paging["NextToken"],
        "Invocations": {"Invocation": items},
    }


@action
def DescribeInvocationResults(ctx: Context, params: Params) -> dict[str, Any]:
    region = _region(ctx, params)
    invoke_id = params.text("InvokeId")
    instance_id = params.text("InstanceId")
    encoding = params.text("ContentEncoding", "Base64") or "Base64"
    if invoke_id is not None and invoke_id not in ctx.world.invocations:
        raise ApiError("InvalidInvokeId.NotFound")
    rows = []
    for invocation in ctx.world.invocations.values():
        if invocation.region_id != region or (invoke_id is not None and invocation.invoke_id != invoke_id):
            continue
        for target, result in invocation.results.items():
            if instance_id is not None and target != instance_id:
                continue
            rows.append(
                {
                    "InvokeId": invocation.invoke_id,
                    "InstanceId": target,
                    "CommandId": invocation.command_id,
                    "InvocationStatus": result["status"],
                    "InvokeRecordStatus": "Finished" if result["status"] != "Running" else "Running",
                    "ExitCode": result.get("exit_code"),
                    "Output": _encode_output(result.get("output", b""), encoding),
                    "ErrorCode": result.get("error_code", ""),
                    "ErrorInfo": result.get("error_info", ""),
                    "StartTime": _iso(result.get("start")),
                    "FinishedTime": _iso(result.get("finish")),
                    "Username": invocation.username,
                }
            )
    chunk, paging = token_page(rows, params, max_size=50)
    return {
        "Invocation": {
            "TotalCount": paging["TotalCount"],
            "PageSize": paging["MaxResults"],
            "PageNumber": 1,
            "NextToken": paging["NextToken"],
            "InvocationResults": {"InvocationResult": chunk},
        }
    }


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
