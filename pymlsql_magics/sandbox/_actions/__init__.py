"""ECS 2014-05-26 actions: request parameters and response fields as the SDK's models name them.

Each resource's actions live in a module of their own and register themselves with `@action`.
"""

from . import assistant, catalog, instances, key_pairs, network, tags
from .registry import ACTIONS, Context, Handler, action

__all__ = [
    "ACTIONS",
    "Context",
    "Handler",
    "action",
    "assistant",
    "catalog",
    "instances",
    "key_pairs",
    "network",
    "tags",
]
