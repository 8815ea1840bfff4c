"""What instances cost here: an invented price list, shaped as DescribePrice and DescribeSpotPriceHistory answer.

Prices are in CNY per hour and made up (see the README): a type costs by its vCPUs and memory, a
system disk by its GiB, a public address paid by traffic nothing per hour. A spot instance costs
a share of that which moves from hour to hour and differs by zone, between 10 % and 25 %.
"""

from __future__ import annotations

import hashlib
import time

from . import _catalog

CURRENCY = "CNY"
_PER_VCPU = 0.11
_PER_GIB_MEMORY = 0.035
_DISK_PER_GIB = {"cloud_essd": 0.001, "cloud_ssd": 0.0014, "cloud_efficiency": 0.0005, "cloud_auto": 0.001}
_BANDWIDTH_PER_MBIT = 0.063  # PayByBandwidth only; PayByTraffic is billed per GB, not per hour


def instance_price(instance_type: str) -> float:
    kind = _catalog.INSTANCE_TYPES[instance_type]
    return round(kind.cpu * _PER_VCPU + kind.memory_gib * _PER_GIB_MEMORY, 3)


def disk_price(category: str, size_gib: int) -> float:
    return round(_DISK_PER_GIB.get(category, 0.001) * size_gib, 4)


def bandwidth_price(charge_type: str, mbit: int) -> float:
    return round(_BANDWIDTH_PER_MBIT * mbit, 3) if charge_type == "PayByBandwidth" else 0.0


def spot_share(instance_type: str, zone_id: str, hour: int) -> float:
    """The spot price's share of the pay-as-you-go price in that zone during that hour (since the epoch)."""
    digest = hashlib.sha256(f"{instance_type}|{zone_id}|{hour}".encode()).digest()
    return 0.10 + 0.15 * digest[0] / 255


def spot_price(instance_type: str, zone_id: str, when: float | None = None) -> float:
    hour = int((time.time() if when is None else when) // 3600)
    return round(instance_price(instance_type) * spot_share(instance_type, zone_id, hour), 3)
