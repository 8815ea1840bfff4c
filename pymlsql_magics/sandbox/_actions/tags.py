"""Tags of instances, security groups and key pairs: TagResources, UntagResources, ListTagResources."""

from __future__ import annotations

from typing import Any

from .._api_errors import ApiError, invalid, missing
from .._params import Params, token_page
from .registry import Context, action, matches_tags, region_of


def _taggable(ctx: Context, region: str, resource_type: str, resource_id: str) -> dict[str, str]:
    kind = resource_type.lower()
    if kind == "instance":
        instance = ctx.world.instances.get(resource_id)
        if instance is None or instance.region_id != region:
            raise ApiError("InvalidInstanceId.NotFound")
        return instance.tags
    if kind == "securitygroup":
        group = ctx.world.security_groups.get(resource_id)
        if group is None:
            raise ApiError("InvalidSecurityGroupId.NotFound")
        return group.tags
    if kind == "keypair":
        for pair in ctx.world.key_pairs.values():
            if pair.region_id == region and resource_id in (pair.name, pair.key_pair_id):
                return pair.tags
        raise ApiError("InvalidKeyPairName.NotFound")
    raise invalid("ResourceType", "must be instance, securitygroup or keypair in the sandbox")


def _all_taggable(ctx: Context, region: str, resource_type: str) -> list[tuple[str, dict[str, str]]]:
    kind = resource_type.lower()
    if kind == "instance":
        return [(i.instance_id, i.tags) for i in ctx.world.instances.values() if i.region_id == region]
    if kind == "securitygroup":
        return [
            (g.security_group_id, g.tags)
            for g in ctx.world.security_groups.values()
            if g.region_id == region
        ]
    if kind == "keypair":
        return [(p.name, p.tags) for p in ctx.world.key_pairs.values() if p.region_id == region]
    raise invalid("ResourceType", "must be instance, securitygroup or keypair in the sandbox")


def _named_resources(params: Params) -> tuple[str, str, list[str]]:
    """RegionId, ResourceType and the ResourceId.N (at least one) of TagResources and UntagResources."""
    region = region_of(params)
    resource_type = params.required("ResourceType")
    ids = params.repeated("ResourceId", limit=50)
    if not ids:
        raise missing("ResourceId.1")
    return region, resource_type, ids


@action
def TagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region, resource_type, ids = _named_resources(params)
    tags = params.new_tags()
    if not tags:
        raise missing("Tag.1.Key")
    targets = [_taggable(ctx, region, resource_type, resource_id) for resource_id in ids]
    for target in targets:
        target.update(tags)
    return {}


@action
def UntagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region, resource_type, ids = _named_resources(params)
    keys = params.repeated("TagKey", limit=20)
    every = params.flag("All")
    targets = [_taggable(ctx, region, resource_type, resource_id) for resource_id in ids]
    for target in targets:
        for key in list(target) if every else keys:
            target.pop(key, None)
    return {}


@action
def ListTagResources(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    resource_type = params.required("ResourceType")
    ids = params.repeated("ResourceId", limit=50)
    wanted = params.tags()
    for key, value in wanted:
        if not key and value:
            raise ApiError("InvalidParameter.TagValue")
    rows = []
    for resource_id, tags in _all_taggable(ctx, region, resource_type):
        if ids and resource_id not in ids:
            continue
        if wanted and not matches_tags(tags, wanted):
            continue
        rows += [
            {"ResourceId": resource_id, "ResourceType": resource_type, "TagKey": key, "TagValue": value}
            for key, value in tags.items()
        ]
    chunk, paging = token_page(rows, params, default_size=50, max_size=1000)
    return {"NextToken": paging["NextToken"], "TagResources": {"TagResource": chunk}}
