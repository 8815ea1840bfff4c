"""What the network calls answer: VPCs, vSwitches, security groups and their ingress rules."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class VpcInfo:
    vpc_id: str
    cidr: str
    status: str
    name: str
    created: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class VSwitchInfo:
    vswitch_id: str
    vpc_id: str
    zone_id: str
    cidr: str
    status: str
    free_addresses: int
    created: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class IngressRule:
    protocol: str  # TCP, UDP, ICMP, GRE or ALL
    ports: str  # "22/22", "-1/-1" for all
    source_cidr: str
    policy: str  # accept or drop

    def opens(self, port: int, source_cidr: str) -> bool:
        """Whether this rule lets TCP `port` in from every address of `source_cidr`."""
        if self.policy.lower() != "accept" or self.protocol.upper() not in ("TCP", "ALL") or not self.source_cidr:
            return False
        low, _, high = self.ports.partition("/")
        try:
            ports_ok = (low, high) == ("-1", "-1") or int(low) <= port <= int(high)
            inside = ipaddress.ip_network(source_cidr, strict=False).subnet_of(
                ipaddress.ip_network(self.source_cidr, strict=False)  # type: ignore[arg-type]
            )
        except (ValueError, TypeError):
            return False
        return ports_ok and inside


@dataclass(frozen=True)
class GroupInfo:
    security_group_id: str
    vpc_id: str
    name: str
    created: str
    tags: Mapping[str, str]
