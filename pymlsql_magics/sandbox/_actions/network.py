"""Security groups: CreateSecurityGroup, DescribeSecurityGroups, AuthorizeSecurityGroup."""

from __future__ import annotations

from typing import Any

from .. import _catalog
from .._api_errors import ApiError, invalid, missing
from .._model import ANY_REGION, SecurityGroup, new_id
from .._params import Params, page, token_page
from .registry import Context, action, ecs_time, matches_tags, region_of, security_group_of, tags_out


@action
def CreateSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    name = params.text("SecurityGroupName", "")
    if name and (len(name) < 2 or not name[0].isalpha()):
        raise ApiError("InvalidSecurityGroupName.Malformed")
    group = SecurityGroup(
        security_group_id=new_id("sg-", 20),
        name=name or "",
        description=params.text("Description", "") or "",
        region_id=region,
        vpc_id=params.text("VpcId", _catalog.DEFAULT_VPC) or _catalog.DEFAULT_VPC,
        group_type=params.text("SecurityGroupType", "normal") or "normal",
        tags=params.new_tags(),
    )
    ctx.world.security_groups[group.security_group_id] = group
    return {"SecurityGroupId": group.security_group_id}


@action
def DescribeSecurityGroups(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    ids = params.json_list("SecurityGroupIds")
    one = params.text("SecurityGroupId")
    name = params.text("SecurityGroupName")
    tags = params.tags()
    groups = [
        group
        for group in ctx.world.security_groups.values()
        if group.region_id in (region, ANY_REGION)
        and (ids is None or group.security_group_id in ids)
        and (one is None or group.security_group_id == one)
        and (name is None or group.name == name)
        and matches_tags(group.tags, tags)
    ]
    if params.text("MaxResults") or params.text("NextToken"):
        chunk, paging = token_page(groups, params)
        paging.pop("MaxResults")
    else:
        chunk, paging = page(groups, params)
    return {
        "RegionId": region,
        **paging,
        "SecurityGroups": {"SecurityGroup": [_group_out(ctx, group) for group in chunk]},
    }


@action
def AuthorizeSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region_of(params)
    group = security_group_of(ctx, params.required("SecurityGroupId"))
    rules = []
    index = 1
    while any(key.startswith(f"Permissions.{index}.") for key in params.values):
        prefix = f"Permissions.{index}."
        rules.append({key[len(prefix) :]: value for key, value in params.values.items() if key.startswith(prefix)})
        index += 1
    if not rules and params.text("IpProtocol"):
        legacy = ("IpProtocol", "PortRange", "SourceCidrIp", "Policy", "Priority", "Description")
        rules.append({key: params.values[key] for key in legacy if key in params.values})
    if not rules:
        raise missing("Permissions.1.IpProtocol")
    for rule in rules:
        if not rule.get("IpProtocol"):
            raise missing("IpProtocol")
        if rule["IpProtocol"].upper() not in ("TCP", "UDP", "ICMP", "GRE", "ALL", "ICMPV6"):
            raise invalid("IpProtocol")
        if not rule.get("PortRange"):
            raise missing("PortRange")
    group.permissions.extend(rules)
    return {}


def _group_out(ctx: Context, group: SecurityGroup) -> dict[str, Any]:
    return {
        "SecurityGroupId": group.security_group_id,
        "SecurityGroupName": group.name,
        "Description": group.description,
        "VpcId": group.vpc_id,
        "SecurityGroupType": group.group_type,
        "CreationTime": ecs_time(group.creation_time),
        "RuleCount": len(group.permissions),
        "EcsCount": sum(
            group.security_group_id in instance.security_group_ids for instance in ctx.world.instances.values()
        ),
        "Tags": tags_out(group.tags),
    }
