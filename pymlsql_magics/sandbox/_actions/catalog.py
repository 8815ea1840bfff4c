"""What the sandbox offers: regions, zones, images, instance types, and where each type can be made."""

from __future__ import annotations

from typing import Any

from .. import _catalog
from .._api_errors import ApiError
from .._params import Params, page, token_page
from .registry import Context, action, region_of


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
    region = region_of(params)
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
def DescribeAvailableResource(ctx: Context, params: Params) -> dict[str, Any]:
    """Instance types by zone, and whether each has stock there (see `pymlsql sandbox fault --no-stock`)."""
    region = region_of(params)
    destination = params.required("DestinationResource")
    if destination not in ("Zone", "InstanceType"):
        raise ApiError("Invalid.DestinationResource", status=404,
                       message="The sandbox answers DestinationResource Zone and InstanceType.")  # fmt: skip
    wanted_zone = params.text("ZoneId")
    if wanted_zone is not None and wanted_zone not in _catalog.zones(region):
        raise ApiError("InvalidZoneId.NotFound")
    wanted_type = params.text("InstanceType")
    # A type ECS does not have is offered nowhere: no zone is answered, not an error.
    types = [wanted_type] if wanted_type else sorted(_catalog.INSTANCE_TYPES)
    types = [kind for kind in types if kind in _catalog.INSTANCE_TYPES]
    zones = ([wanted_zone] if wanted_zone else _catalog.zones(region)) if types else []

    def state(kinds: list[str], zone: str) -> dict[str, str]:
        # ECS: SoldOut once nothing is left; ClosedWithStock while some is left that is not replenished.
        left = [ctx.world.stock.available(kind, zone) for kind in kinds]
        if all(count == 0 for count in left):
            return {"Status": "SoldOut", "StatusCategory": "WithoutStock"}
        if all(count is not None for count in left):
            return {"Status": "Available", "StatusCategory": "ClosedWithStock"}
        return {"Status": "Available", "StatusCategory": "WithStock"}

    def resources(zone: str) -> dict[str, Any]:
        if destination == "Zone":
            offered = [{"Value": zone, **state(types, zone)}]
        else:
            offered = [{"Value": kind, **state([kind], zone)} for kind in types]
        return {"AvailableResource": [{"Type": destination, "SupportedResources": {"SupportedResource": offered}}]}

    return {
        "AvailableZones": {
            "AvailableZone": [
                {"RegionId": region, "ZoneId": zone, **state(types, zone), "AvailableResources": resources(zone)}
                for zone in zones
            ]
        }
    }


@action
def DescribeImages(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
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
    return {"RegionId": region, **paging, "Images": {"Image": [_image_out(image) for image in chunk]}}


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


def _image_out(image: _catalog.Image) -> dict[str, Any]:
    return {
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
