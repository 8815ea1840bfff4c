"""The `@action` registry, and what actions of every resource share: region, tags, lookups, times."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from .. import _catalog
from .._api_errors import ApiError, invalid, missing
from .._model import Instance, SecurityGroup, Vpc, VSwitch, World
from .._params import Params

Handler = Callable[["Context", Params], dict[str, Any]]
ECS_VERSION = "2014-05-26"
VPC_VERSION = "2016-04-28"
# API version -> action name -> handler: the sandbox answers ECS and the VPC product on one endpoint,
# told apart as Alibaba Cloud's gateway tells them apart, by the version the SDK sends.
ACTIONS: dict[str, dict[str, Handler]] = {ECS_VERSION: {}, VPC_VERSION: {}}


class Context:
    def __init__(self, world: World, host_id: str) -> None:
        self.world = world
        self.host_id = host_id


def action(function: Handler, *, name: str | None = None) -> Handler:
    """Registers an ECS action under its function's name, or under `name`."""
    ACTIONS[ECS_VERSION][name or function.__name__] = function
    return function


def vpc_action(function: Handler) -> Handler:
    """Registers an action of the VPC product (2016-04-28) under its function's name."""
    ACTIONS[VPC_VERSION][function.__name__] = function
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


def security_group_of(ctx: Context, group_id: str, region: str | None = None) -> SecurityGroup:
    group = ctx.world.security_groups.get(group_id)
    if group is None or (region is not None and group.region_id != region):
        raise ApiError("InvalidSecurityGroupId.NotFound")
    return group


def vpc_of(ctx: Context, vpc_id: str | None, region: str) -> Vpc:
    return _in_region(ctx.world.vpcs, "VpcId", vpc_id, region,
                      ApiError("InvalidVpcId.NotFound", message=f"Specified VPC {vpc_id} does not exist."))  # fmt: skip


def vswitch_of(ctx: Context, vswitch_id: str | None, region: str) -> VSwitch:
    return _in_region(ctx.world.vswitches, "VSwitchId", vswitch_id, region, ApiError("InvalidVSwitchId.NotFound"))


Regional = TypeVar("Regional", Vpc, VSwitch)


def _in_region(table: dict[str, Regional], name: str, wanted: str | None, region: str,
               absent: ApiError) -> Regional:  # fmt: skip
    """The resource `name` = `wanted` of `region`; MissingParameter if not given, `absent` if not there."""
    if not wanted:
        raise missing(name)
    found = table.get(wanted)
    if found is None or found.region_id != region:
        raise absent
    return found


def vpc_time(epoch: float) -> str:
    """The VPC product's time format, to the second (ECS's own stops at minutes)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def vpc_tags_out(tags: dict[str, str]) -> dict[str, Any]:
    return {"Tag": [{"Key": key, "Value": value} for key, value in tags.items()]}


def idempotent(ctx: Context, name: str, params: Params, create: Callable[[], dict[str, Any]], *,
               processing: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Runs `create` once per ClientToken: a retried request gets the first answer again.

    Within `processing` seconds of the first call, a replay answers IdempotentProcessing instead, as
    ECS does while the first call is still being carried out.
    """
    token = params.text("ClientToken")
    if token is None:
        return create()
    if len(token) > 64 or not token.isascii():
        raise invalid("ClientToken", "must be at most 64 ASCII characters")
    request = {key: value for key, value in params.values.items() if key != "ClientToken"}
    remembered = ctx.world.client_tokens.get((name, token))
    if remembered is not None:
        first_request, answer, made_at = remembered
        if first_request != request:
            raise ApiError("IdempotentParameterMismatch")
        if time.time() - made_at < processing:
            raise ApiError("IdempotentProcessing")
        return answer
    answer = create()
    ctx.world.client_tokens[(name, token)] = (request, answer, time.time())
    return answer
