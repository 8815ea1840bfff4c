"""ECS 2014-05-26 and VPC 2016-04-28 actions: parameters and fields as the SDKs' models name them.

Each resource's actions live in a module of their own and register themselves with `@action`
(ECS) or `@vpc_action` (the VPC product: VPCs, vSwitches, EIPs).
"""

from . import assistant, catalog, eips, instances, key_pairs, prices, security_groups, tags, vpc
from .registry import ACTIONS, ECS_VERSION, VPC_VERSION, Context, Handler, action, vpc_action

__all__ = [
    "ACTIONS",
    "ECS_VERSION",
    "VPC_VERSION",
    "Context",
    "Handler",
    "action",
    "assistant",
    "catalog",
    "eips",
    "instances",
    "key_pairs",
    "prices",
    "security_groups",
    "tags",
    "vpc",
    "vpc_action",
]
