"""The `@action` registry, and what actions of every resource share: region, tags, lookups, times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .. import _catalog
from .._api_errors import ApiError, missing
from .._model import Instance, SecurityGroup, World
from .._params import Params

Handler = Callable[["Context", Params], dict[str, Any]]
ACTIONS: dict[str, Handler] = {}


class Context:
    def __init__(self, world: World, host_id: str) -> None:
        self.world = world
        self.host_id = host_id


def action(function: Handler, *, name: str | None = None) -> Handler:
    """Registers an ECS action under its function's name, or under `name`."""
    ACTIONS[name or function.__name__] = function
    return function


def ecs_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def region_of(params: Params) -> str:
    """The request's RegionId, which every action but DescribeRegions needs."""
    given = params.text("RegionId")
    if given is None:
        raise missing("RegionId")
    if given not in _catalog.REGIONS:
        raise ApiError("InvalidRegionId.NotFound")
    return given


def tags_out(tags: dict[str, str]) -> dict[str, Any]:
    return {"Tag": [{"TagKey": key, "TagValue": value} for key, value in tags.items()]}


def matches_tags(tags: dict[str, str], wanted: list[tuple[str, str | None]]) -> bool:
    return all(key in tags and (value is None or tags[key] == value) for key, value in wanted)


def instance_of(ctx: Context, instance_id: str | None) -> Instance:
    if not instance_id:
        raise missing("InstanceId")
    found = ctx.world.instances.get(instance_id)
    if found is None:
        raise ApiError("InvalidInstanceId.NotFound")
    return found


def security_group_of(ctx: Context, group_id: str) -> SecurityGroup:
    group = ctx.world.security_groups.get(group_id)
    if group is None:
        raise ApiError("InvalidSecurityGroupId.NotFound")
    return group
