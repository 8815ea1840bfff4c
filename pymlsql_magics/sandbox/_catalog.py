"""What the sandbox offers: regions, zones, images and instance types."""

from __future__ import annotations

from dataclasses import dataclass

REGIONS = {
    "cn-hangzhou": "华东1（杭州）",
    "cn-shanghai": "华东2（上海）",
    "cn-beijing": "华北2（北京）",
    "ap-southeast-1": "新加坡",
}
ZONE_SUFFIXES = ("h", "i", "k")
DEFAULT_REGION = "cn-hangzhou"


def zones(region_id: str) -> list[str]:
    return [f"{region_id}-{suffix}" for suffix in ZONE_SUFFIXES]


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    cpu: int
    memory_gib: float


INSTANCE_TYPES = {
    item.name: item
    for item in (
        InstanceType("ecs.g7.large", "ecs.g7", 2, 8.0),
        InstanceType("ecs.g7.xlarge", "ecs.g7", 4, 16.0),
        InstanceType("ecs.g7.2xlarge", "ecs.g7", 8, 32.0),
        InstanceType("ecs.r5.large", "ecs.r5", 2, 16.0),
        InstanceType("ecs.r5.xlarge", "ecs.r5", 4, 32.0),
        InstanceType("ecs.ic5.large", "ecs.ic5", 2, 2.0),
        InstanceType("ecs.c7.large", "ecs.c7", 2, 4.0),
        InstanceType("ecs.t6-c1m1.large", "ecs.t6", 2, 2.0),
    )
}
DISK_CATEGORIES = ("cloud_efficiency", "cloud_ssd", "cloud_essd", "cloud_auto", "cloud_essd_entry")


@dataclass(frozen=True)
class Image:
    image_id: str
    name: str
    owner_alias: str  # "system" for public images, "self" for custom ones
    description: str
    users: tuple[str, ...]  # login users besides root, created at first boot
    size_gib: int = 20


IMAGES = {
    image.image_id: image
    for image in (
        Image(
            "debian_12_x64_20G_alibase_20240101.vhd",
            "debian_12_x64_20G_alibase_20240101.vhd",
            "system",
            "Debian 12 64 bit (root only)",
            (),
        ),
        # Public images named as on Alibaba Cloud, so scripts and runbooks carry real ids.
        Image(
            "ubuntu_22_04_x64_20G_alibase_20240926.vhd",
            "ubuntu_22_04_x64_20G_alibase_20240926.vhd",
            "system",
            "Ubuntu 22.04 64 bit (in the sandbox: its Debian, root only)",
            (),
        ),
        Image(
            "aliyun_3_x64_20G_alibase_20240819.vhd",
            "aliyun_3_x64_20G_alibase_20240819.vhd",
            "system",
            "Alibaba Cloud Linux 3 64 bit (in the sandbox: its Debian, root only)",
            (),
        ),
        Image(
            "m-sandbox-webuser",
            "sandbox-webuser",
            "self",
            "Debian 12 with the user webuser (home /home/webuser)",
            ("webuser",),
        ),
    )
}
DEFAULT_SECURITY_GROUP = "sg-sandbox-default"
DEFAULT_VSWITCH = "vsw-sandbox-default"
DEFAULT_VPC = "vpc-sandbox-default"
