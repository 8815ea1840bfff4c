"""How many more instances of a type each zone can make: unlimited unless a fault says otherwise."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ALL_ZONES = "*"
_NO_STOCK = re.compile(r"^(?P<type>ecs\.[\w.-]+?)(?:@(?P<zone>[\w-]+))?$")
_STOCK = re.compile(r"^(?P<type>ecs\.[\w.-]+?)@(?P<zone>[\w-]+)=(?P<count>\d+)$")


def parse_no_stock(text: str) -> tuple[str, str]:
    """`TYPE[@ZONE]` as (type, zone or ALL_ZONES); raises ValueError for another shape."""
    found = _NO_STOCK.match(text.strip())
    if found is None:
        raise ValueError(f"must be TYPE or TYPE@ZONE, e.g. ecs.g7.large@cn-hangzhou-h; got {text!r}")
    return found["type"], found["zone"] or ALL_ZONES


def parse_stock(text: str) -> tuple[str, str, int]:
    """`TYPE@ZONE=N` as (type, zone, N); raises ValueError for another shape."""
    found = _STOCK.match(text.strip())
    if found is None:
        raise ValueError(f"must be TYPE@ZONE=N, e.g. ecs.g7.large@cn-hangzhou-h=2; got {text!r}")
    return found["type"], found["zone"], int(found["count"])


@dataclass
class Stock:
    """Instances left per (type, zone); a zone of ALL_ZONES covers every zone it has no entry of its own for."""

    left: dict[tuple[str, str], int] = field(default_factory=dict)

    def limit(self, instance_type: str, zone: str, count: int) -> None:
        if zone == ALL_ZONES:  # the whole region: no zone keeps a limit of its own
            for key in [key for key in self.left if key[0] == instance_type]:
                del self.left[key]
        self.left[(instance_type, zone)] = count

    def available(self, instance_type: str, zone: str) -> int | None:
        """How many more fit, or None for no limit."""
        found = self.left.get((instance_type, zone))
        return found if found is not None else self.left.get((instance_type, ALL_ZONES))

    def take(self, instance_type: str, zone: str, count: int) -> None:
        left = self.available(instance_type, zone)
        if left is not None:
            self.left[(instance_type, zone)] = left - count
