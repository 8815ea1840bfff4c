"""Security groups and their ingress rules (ECS API): create, describe, authorize, revoke, delete."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from .._api_errors import ApiError, missing
from .._model import Rule, SecurityGroup, new_id
from .._params import Params, page, token_page
from .registry import (
    Context,
    action,
    idempotent,
    matches_tags,
    region_of,
    security_group_of,
    tags_out,
    vpc_of,
    vpc_time,
)

_PROTOCOLS = ("TCP", "UDP", "ICMP", "GRE", "ALL")
_MAX_RULES = 200


@action
def CreateSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)

    def create() -> dict[str, Any]:
        name = params.text("SecurityGroupName", "")
        if name and (len(name) < 2 or not name[0].isalpha()):
            raise ApiError("InvalidSecurityGroupName.Malformed")
        # Without a VpcId ECS makes a classic-network group, which no instance of a VPC can join.
        vpc_id = params.text("VpcId") or ""
        if vpc_id:
            vpc_of(ctx, vpc_id, region)
        group_type = params.text("SecurityGroupType", "normal") or "normal"
        if group_type not in ("normal", "enterprise"):
            raise ApiError("InvalidSecurityGroupType.Malformed", message=f"Unknown security group type {group_type}.")
        group = SecurityGroup(
            security_group_id=new_id("sg-", 20),
            name=name or "",
            description=params.text("Description", "") or "",
            region_id=region,
            vpc_id=vpc_id,
            group_type=group_type,
            tags=params.new_tags(),
        )
        ctx.world.security_groups[group.security_group_id] = group
        return {"SecurityGroupId": group.security_group_id}

    return idempotent(ctx, "CreateSecurityGroup", params, create)


@action
def DescribeSecurityGroups(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    ids = params.json_list("SecurityGroupIds")
    wanted = {
        "security_group_id": params.text("SecurityGroupId"),
        "name": params.text("SecurityGroupName"),
        "vpc_id": params.text("VpcId"),
    }
    tags = params.tags()
    groups = [
        group
        for group in ctx.world.security_groups.values()
        if group.region_id == region
        and (ids is None or group.security_group_id in ids)
        and all(value is None or getattr(group, key) == value for key, value in wanted.items())
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
def DescribeSecurityGroupAttribute(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    group = security_group_of(ctx, params.required("SecurityGroupId"), region)
    direction = (params.text("Direction", "all") or "all").lower()
    if direction not in ("all", "ingress", "egress"):
        raise ApiError("InvalidParameter", message=f"The specified Direction {direction} is not valid.")
    shown = [] if direction == "egress" else sorted(group.rules.items(), key=lambda item: item[1][1])
    return {
        "RegionId": region,
        "SecurityGroupId": group.security_group_id,
        "SecurityGroupName": group.name,
        "Description": group.description,
        "VpcId": group.vpc_id,
        "InnerAccessPolicy": "Accept" if group.group_type == "normal" else "Drop",
        "NextToken": "",
        "Permissions": {"Permission": [_rule_out(rule_id, rule, made) for rule_id, (rule, made) in shown]},
    }


@action
def AuthorizeSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    group = security_group_of(ctx, params.required("SecurityGroupId"), region)
    rules = _rules(params)
    fresh = [rule for rule in rules if rule not in {known for known, _ in group.rules.values()}]
    if len(group.rules) + len(fresh) > _MAX_RULES:
        raise ApiError("AuthorizationLimitExceed", status=403,
                       message=f"A security group holds at most {_MAX_RULES} rules.")  # fmt: skip
    for rule in dict.fromkeys(fresh):  # an identical rule already there succeeds, and is not added twice
        group.rules[new_id("sgr-", 20)] = (rule, time.time())
    ctx.world.rules_changed(group)
    return {}


@action
def RevokeSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    group = security_group_of(ctx, params.required("SecurityGroupId"), region)
    by_id = params.repeated("SecurityGroupRuleId")
    if by_id:
        for rule_id in by_id:
            if rule_id not in group.rules:
                raise ApiError("InvalidSecurityGroupRuleId.NotFound", status=404,
                               message=f"The security group rule {rule_id} does not exist.")  # fmt: skip
        for rule_id in by_id:
            del group.rules[rule_id]
    else:
        gone = set(_rules(params))
        group.rules = {rule_id: entry for rule_id, entry in group.rules.items() if entry[0] not in gone}
    ctx.world.rules_changed(group)
    return {}


@action
def DeleteSecurityGroup(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    group = security_group_of(ctx, params.required("SecurityGroupId"), region)
    if _members(ctx, group):
        raise ApiError("DependencyViolation", status=403,
                       message="There is still instance(s) in the specified security group.")  # fmt: skip
    del ctx.world.security_groups[group.security_group_id]
    return {}


def _members(ctx: Context, group: SecurityGroup) -> int:
    return sum(group.security_group_id in i.security_group_ids for i in ctx.world.instances.values())


def _rules(params: Params) -> list[Rule]:
    """The rules of `Permissions.N.*`, or of the deprecated flat fields, checked as ECS checks them."""
    entries = []
    index = 1
    while any(key.startswith(f"Permissions.{index}.") for key in params.values):
        prefix = f"Permissions.{index}."
        entries.append({key[len(prefix) :]: value for key, value in params.values.items() if key.startswith(prefix)})
        index += 1
    if not entries and params.text("IpProtocol"):
        flat = ("IpProtocol", "PortRange", "SourceCidrIp", "Policy", "Priority", "Description")
        entries.append({key: params.values[key] for key in flat if key in params.values})
    if not entries:
        raise missing("Permissions.1.IpProtocol")
    return [_rule(entry) for entry in entries]


def _rule(entry: dict[str, str]) -> Rule:
    protocol = (entry.get("IpProtocol") or "").upper()
    if not protocol:
        raise missing("IpProtocol")
    if protocol not in _PROTOCOLS:
        raise ApiError("InvalidIpProtocol.ValueNotSupported",
                       message=f"The specified IpProtocol {entry['IpProtocol']} is not supported.")  # fmt: skip
    port_range = entry.get("PortRange")
    if not port_range:
        raise missing("PortRange")
    ports = _ports(protocol, port_range)
    source = entry.get("SourceCidrIp")
    if not source:
        if entry.get("SourceGroupId") or entry.get("SourcePrefixListId"):
            raise ApiError("InvalidParameter", message="The sandbox takes rules with a SourceCidrIp only.")
        raise ApiError("MissingParameter.Source", message="One of SourceCidrIp or SourceGroupId is needed.")
    try:
        network = ipaddress.ip_network(source, strict=False)
    except ValueError:
        raise ApiError("InvalidSourceCidrIp.Malformed",
                       message=f"The specified SourceCidrIp {source} is not valid.") from None  # fmt: skip
    policy = (entry.get("Policy") or "accept").lower()
    if policy not in ("accept", "drop"):
        raise ApiError("InvalidPolicy.Malformed", message=f"The specified Policy {entry['Policy']} is not valid.")
    priority_text = entry.get("Priority") or "1"
    if not priority_text.isdigit() or not 1 <= int(priority_text) <= 100:
        raise ApiError("InvalidPriority.Malformed", message=f"The specified Priority {priority_text} is not valid.")
    return Rule(protocol, ports, str(network), policy, int(priority_text), entry.get("Description") or "")


def _ports(protocol: str, text: str) -> tuple[int, int]:
    low_text, _, high_text = text.partition("/")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ApiError("InvalidPortRange.Malformed", message=f"The specified PortRange {text} is not valid.") from None
    if (low, high) == (-1, -1):
        if protocol in ("TCP", "UDP"):
            raise ApiError("OperationDenied", message=f"{protocol} rules need a PortRange such as 22/22.")
        return low, high
    if protocol not in ("TCP", "UDP") or not 1 <= low <= high <= 65535:
        raise ApiError("InvalidPortRange.Malformed", message=f"The specified PortRange {text} is not valid.")
    return low, high


def _rule_out(rule_id: str, rule: Rule, made: float) -> dict[str, Any]:
    return {
        "SecurityGroupRuleId": rule_id,
        "Direction": "ingress",
        "IpProtocol": rule.protocol,
        "PortRange": f"{rule.ports[0]}/{rule.ports[1]}",
        "SourceCidrIp": rule.source_cidr,
        "SourceGroupId": "",
        "DestCidrIp": "",
        "Policy": rule.policy.capitalize(),
        "Priority": str(rule.priority),
        "NicType": "intranet",
        "Description": rule.description,
        "CreateTime": vpc_time(made),
    }


def _group_out(ctx: Context, group: SecurityGroup) -> dict[str, Any]:
    return {
        "SecurityGroupId": group.security_group_id,
        "SecurityGroupName": group.name,
        "Description": group.description,
        "VpcId": group.vpc_id,
        "SecurityGroupType": group.group_type,
        "CreationTime": vpc_time(group.creation_time),
        "RuleCount": len(group.rules),
        "EcsCount": _members(ctx, group),
        "Tags": tags_out(group.tags),
    }
