"""What instances cost: DescribePrice and DescribeSpotPriceHistory over the sandbox's invented price list."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from .. import _catalog, _prices
from .._api_errors import ApiError, invalid, missing
from .._params import Params
from .registry import Context, action, region_of

_SPOT = ("SpotAsPriceGo", "SpotWithPriceLimit")
_HOUR = 3600.0


@action
def DescribePrice(ctx: Context, params: Params) -> dict[str, Any]:
    """The hourly price of `Amount` instances (the total, not each: a choice, see the README)."""
    region = region_of(params)
    resource = params.text("ResourceType", "instance") or "instance"
    if resource != "instance":
        raise invalid("ResourceType", "the sandbox prices instances only")
    instance_type = params.text("InstanceType")
    if instance_type is None:
        raise ApiError("InvalidInstanceType.Missing", status=404, message="The InstanceType is required.")
    if instance_type not in _catalog.INSTANCE_TYPES:
        raise ApiError("InvalidInstanceType.ValueNotSupported")
    zone = params.text("ZoneId")
    if zone is not None and zone not in _catalog.zones(region):
        raise ApiError("InvalidZoneId.NotFound")
    unit = params.text("PriceUnit", "Hour") or "Hour"
    if unit != "Hour" or (params.integer("Period", 1) or 1) != 1:
        raise ApiError("InvalidPeriod", status=400, message="The sandbox prices by the hour, Period 1.")
    amount = params.integer("Amount", 1, low=1, high=1000) or 1
    category = params.text("SystemDisk.Category", "cloud_essd") or "cloud_essd"
    if category not in _catalog.DISK_CATEGORIES:
        raise ApiError("InvalidSystemDiskCategory.ValueNotSupported")
    size = params.integer("SystemDisk.Size", 40, low=20, high=2048) or 40
    charge = params.text("InternetChargeType", "PayByTraffic") or "PayByTraffic"
    if charge not in ("PayByTraffic", "PayByBandwidth"):
        raise ApiError("InvalidInternetChargeType.ValueNotSupported")
    bandwidth = params.integer("InternetMaxBandwidthOut", 0, low=0, high=100) or 0
    spot = params.text("SpotStrategy", "NoSpot") or "NoSpot"
    if spot not in ("NoSpot", *_SPOT):
        raise ApiError("Invalid.SpotStrategy", status=404, message="The specified SpotStrategy is not valid.")

    original = _prices.instance_price(instance_type)
    # Without a zone, a spot price is the dearest of the region's zones: never under what it may cost.
    traded = original if spot == "NoSpot" else max(
        _prices.spot_price(instance_type, each) for each in ([zone] if zone else _catalog.zones(region))
    )
    parts = [
        ("instanceType", original, traded),
        ("systemDisk", _prices.disk_price(category, size), _prices.disk_price(category, size)),
        ("bandwidth", _prices.bandwidth_price(charge, bandwidth), _prices.bandwidth_price(charge, bandwidth)),
    ]
    details: list[dict[str, Any]] = [
        {"Resource": name, "OriginalPrice": round(whole * amount, 4), "TradePrice": round(paid * amount, 4),
         "DiscountPrice": round((whole - paid) * amount, 4), "SubRules": {"Rule": []}}
        for name, whole, paid in parts
    ]  # fmt: skip
    total_original = round(sum(item["OriginalPrice"] for item in details), 4)
    total_trade = round(sum(item["TradePrice"] for item in details), 4)
    return {
        "PriceInfo": {
            "Price": {
                "Currency": _prices.CURRENCY,
                "OriginalPrice": total_original,
                "TradePrice": total_trade,
                "DiscountPrice": round(total_original - total_trade, 4),
                "DetailInfos": {"DetailInfo": details},
            },
            "Rules": {"Rule": []},
        }
    }


@action
def DescribeSpotPriceHistory(ctx: Context, params: Params) -> dict[str, Any]:
    """Hourly spot prices of a type over at most 30 days (default: the last 3 hours), per zone."""
    region = region_of(params)
    instance_type = params.text("InstanceType")
    if instance_type is None:
        raise missing("InstanceType")
    if params.text("NetworkType") is None:
        raise missing("NetworkType")
    if instance_type not in _catalog.INSTANCE_TYPES:
        raise ApiError("InvalidInstanceType.ValueNotSupported")
    zone = params.text("ZoneId")
    if zone is not None and zone not in _catalog.zones(region):
        raise ApiError("InvalidZoneId.NotFound")
    end = _parse_time(params.text("EndTime"), "EndTime") or time.time()
    start = _parse_time(params.text("StartTime"), "StartTime") or end - 3 * _HOUR
    if start > end or end - start > 30 * 24 * _HOUR:
        raise invalid("StartTime", "must be before EndTime, at most 30 days apart")
    hours = range(int(start // _HOUR), int(end // _HOUR) + 1)
    original = _prices.instance_price(instance_type)
    prices = [
        {"ZoneId": each, "InstanceType": instance_type, "IoOptimized": "optimized", "NetworkType": "vpc",
         "OriginPrice": original, "SpotPrice": _prices.spot_price(instance_type, each, hour * _HOUR),
         "Timestamp": datetime.fromtimestamp(hour * _HOUR, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for each in ([zone] if zone else _catalog.zones(region))
        for hour in hours
    ]  # fmt: skip
    return {"Currency": _prices.CURRENCY, "NextOffset": 0, "SpotPrices": {"SpotPriceType": prices}}


def _parse_time(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    for shape in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ"):
        try:
            return datetime.strptime(text, shape).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    raise invalid(name, "must be a UTC time like 2026-12-01T08:00:00Z")
