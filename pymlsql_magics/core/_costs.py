"""What instances cost: hourly prices as DescribePrice gives them, and what a fleet has cost so far."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from ._results import Instance


@dataclass(frozen=True)
class Price:
    """The hourly price of `amount` instances of one kind, as ECS quotes it (TradePrice)."""

    per_hour: float
    currency: str
    amount: int = 1

    @property
    def each(self) -> float:
        return self.per_hour / self.amount

    def __str__(self) -> str:
        return f"{self.per_hour:.3f} {self.currency}/hour"


@dataclass(frozen=True)
class Cost:
    """One instance's hourly price and what it has cost since it was created."""

    per_hour: float
    so_far: float
    currency: str

    def __str__(self) -> str:
        return f"{self.per_hour:.3f} {self.currency}/h  {self.so_far:.3f} {self.currency} so far"


PriceKey = tuple[str, str, str]  # instance type, zone, spot strategy


def price_key(instance: Instance) -> PriceKey:
    return instance.instance_type, instance.zone_id, instance.spot_strategy or "NoSpot"


def costs(instances: Iterable[Instance], prices: Mapping[PriceKey, Price]) -> dict[str, Cost]:
    """Each instance's hourly price and cost since its creation (billed by the second, as ECS bills)."""
    now = time.time()
    found = {}
    for instance in instances:
        price = prices.get(price_key(instance))
        if price is None:
            continue
        hours = max(0.0, now - created_at(instance)) / 3600
        found[instance.instance_id] = Cost(price.each, price.each * hours, price.currency)
    return found


def created_at(instance: Instance) -> float:
    """ECS's CreationTime (`2026-12-03T08:15Z`, to the minute) as seconds since the epoch."""
    for shape in ("%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(instance.creation_time, shape).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return time.time()
