"""Where this client runs: on a laptop ("the internet"), or on an ECS instance inside some VPC.

It decides which address reaches an instance: from inside the instance's VPC its private one,
from anywhere else only its public one. The metadata service is asked only where DMI says this
is an ECS instance (as cloud-init's ds-identify checks), or where PYMLSQL_METADATA_ENDPOINT
names it; elsewhere no packet goes to 100.100.100.200.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ECS_PRODUCT_NAME = "Alibaba Cloud ECS"
DMI_PRODUCT_NAME = Path("/sys/class/dmi/id/product_name")
METADATA_ENDPOINT = "http://100.100.100.200"
_NEVER = ("off", "none", "false", "0")
_TIMEOUT = 1.0


@dataclass(frozen=True)
class Whereabouts:
    """The VPC this client runs in (and its own instance, vSwitch and zone there), or None outside any."""

    vpc_id: str | None = None
    instance_id: str | None = None
    vswitch_id: str | None = None
    zone_id: str | None = None

    def inside(self, vpc_id: str) -> bool:
        return bool(vpc_id) and self.vpc_id == vpc_id

    def describe(self) -> str:
        return f"inside {self.vpc_id}" if self.vpc_id else "outside any VPC"


def metadata_base(setting: str | None, dmi: Path = DMI_PRODUCT_NAME) -> str | None:
    """The metadata service to ask, or None where asking would send a packet off an ECS-less machine."""
    if setting:
        return None if setting.strip().lower() in _NEVER else setting.rstrip("/")
    try:
        on_ecs = dmi.read_text().strip() == ECS_PRODUCT_NAME
    except OSError:
        on_ecs = False
    return METADATA_ENDPOINT if on_ecs else None


def metadata_value(base: str, key: str) -> str | None:
    """One value of the metadata service under /latest/meta-data/, or None when it has none."""
    import urllib.request  # only on an ECS instance: the command line starts without it

    try:
        # No proxy: the metadata service answers only on the instance's own link.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{base}/latest/meta-data/{key}", timeout=_TIMEOUT) as answer:
            return answer.read().decode().strip() or None
    except OSError:
        return None


def find_whereabouts(setting: str | None, dmi: Path = DMI_PRODUCT_NAME) -> Whereabouts:
    base = metadata_base(setting, dmi)
    vpc_id = metadata_value(base, "vpc-id") if base else None
    if base is None or vpc_id is None:
        return Whereabouts()
    return Whereabouts(vpc_id, *(metadata_value(base, key) for key in ("instance-id", "vswitch-id", "zone-id")))
