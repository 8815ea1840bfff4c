"""The sandbox's cloud network through the official SDKs: VPCs, vSwitches, groups and their rules,
refused as Alibaba Cloud refuses them, with loopback addresses only."""

from __future__ import annotations

import ipaddress
from typing import Any

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient

from pymlsql_magics.sandbox import Sandbox

from .helpers import api_error, describe, new_vpc_client, run, sdk_network, unique, wait_for

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"


def vpcs_of(sandbox: Sandbox) -> VpcClient:
    return new_vpc_client(sandbox)


def create_vpc(vpcs: VpcClient, region: str, **fields: Any) -> str:
    return str(vpcs.create_vpc(vpc.CreateVpcRequest(region_id=region, **fields)).body.vpc_id)


def described_vpc(vpcs: VpcClient, region: str, vpc_id: str) -> Any:
    (found,) = vpcs.describe_vpcs(vpc.DescribeVpcsRequest(region_id=region, vpc_id=vpc_id)).body.vpcs.vpc
    return found


def available_vpc(vpcs: VpcClient, region: str, vpc_id: str) -> Any:
    return wait_for(lambda: (v := described_vpc(vpcs, region, vpc_id)).status == "Available" and v,
                    what=f"{vpc_id} to be Available")  # fmt: skip


def create_vswitch(vpcs: VpcClient, region: str, vpc_id: str, cidr: str, zone: str | None = None) -> str:
    request = vpc.CreateVSwitchRequest(region_id=region, vpc_id=vpc_id, zone_id=zone or f"{region}-h", cidr_block=cidr)
    vswitch_id = vpcs.create_vswitch(request).body.v_switch_id

    def ready() -> bool:
        found = vpcs.describe_vswitches(vpc.DescribeVSwitchesRequest(region_id=region, v_switch_id=vswitch_id))
        return found.body.v_switches.v_switch[0].status == "Available"

    wait_for(ready, what=f"{vswitch_id} to be Available")
    return str(vswitch_id)


def create_group(client: Client, region: str, vpc_id: str) -> str:
    request = ecs.CreateSecurityGroupRequest(region_id=region, vpc_id=vpc_id, security_group_name=unique("grp"))
    return str(client.create_security_group(request).body.security_group_id)


def code_of(call: Any) -> tuple[str, int, str]:
    error = api_error(call)
    return error.code, error.status_code, error.data["Message"]


def test_a_vpc_without_a_cidr_gets_a_free_loopback_block_and_becomes_available(sandbox: Sandbox) -> None:
    vpcs, region = vpcs_of(sandbox), sandbox.region_id
    tag = vpc.CreateVpcRequestTag(key="team", value="net")
    first, second = create_vpc(vpcs, region, vpc_name="one", tag=[tag]), create_vpc(vpcs, region)

    assert described_vpc(vpcs, region, first).status == "Pending"
    one, two = available_vpc(vpcs, region, first), available_vpc(vpcs, region, second)

    blocks = [ipaddress.ip_network(item.cidr_block) for item in (one, two)]
    assert all(block.prefixlen == 16 and block.subnet_of(ipaddress.ip_network("127.0.0.0/8")) for block in blocks)
    assert blocks[0] != blocks[1]
    assert ipaddress.ip_network(sandbox.info.network) not in blocks  # the public addresses have their own
    assert (one.vpc_name, [(t.key, t.value) for t in one.tags.tag]) == ("one", [("team", "net")])
    tagged = vpcs.describe_vpcs(vpc.DescribeVpcsRequest(
        region_id=region, tag=[vpc.DescribeVpcsRequestTag(key="team", value="net")])).body.vpcs.vpc  # fmt: skip
    assert first in [item.vpc_id for item in tagged] and second not in [item.vpc_id for item in tagged]
    for vpc_id in (first, second):
        vpcs.delete_vpc(vpc.DeleteVpcRequest(region_id=region, vpc_id=vpc_id))


def test_a_vpc_outside_loopback_or_on_a_held_block_is_refused(sandbox: Sandbox) -> None:
    vpcs, region = vpcs_of(sandbox), sandbox.region_id

    code, status, message = code_of(lambda: create_vpc(vpcs, region, cidr_block="172.16.0.0/12"))
    assert (code, status) == ("InvalidCidrBlock.Malformed", 400) and "loopback" in message

    held = sandbox.info.network  # the sandbox's own block of public addresses
    code, _, message = code_of(lambda: create_vpc(vpcs, region, cidr_block=held))
    assert code == "InvalidCidrBlock.Malformed" and "used by another VPC or sandbox" in message


def test_vswitches_must_lie_inside_their_vpc_without_overlapping(sandbox: Sandbox) -> None:
    vpcs, region = vpcs_of(sandbox), sandbox.region_id
    vpc_id = create_vpc(vpcs, region)
    cidr = ipaddress.ip_network(available_vpc(vpcs, region, vpc_id).cidr_block)
    first = next(cidr.subnets(new_prefix=24))
    vswitch_id = create_vswitch(vpcs, region, vpc_id, str(first))

    def make(block: str, zone: str = f"{region}-h") -> Any:
        return lambda: vpcs.create_vswitch(vpc.CreateVSwitchRequest(region_id=region, vpc_id=vpc_id, zone_id=zone,
                                                                    cidr_block=block))  # fmt: skip

    second = list(cidr.subnets(new_prefix=24))[1]
    assert code_of(make("10.0.0.0/24"))[0] == "InvalidParameter"
    assert code_of(make(str(next(first.subnets(new_prefix=26)))))[0] == "InvalidCidrBlock.Overlapped"
    assert code_of(make(str(next(second.subnets(new_prefix=30)))))[0] == "InvalidCidrBlock.Malformed"  # /16-/29 only
    assert code_of(make(str(second), zone="cn-hangzhou-z"))[0] == "InvalidZoneId.NotFound"
    assert code_of(lambda: vpcs.delete_vpc(vpc.DeleteVpcRequest(region_id=region, vpc_id=vpc_id)))[0] == (
        "DependencyViolation.VSwitch")  # fmt: skip

    vpcs.delete_vswitch(vpc.DeleteVSwitchRequest(region_id=region, v_switch_id=vswitch_id))
    vpcs.delete_vpc(vpc.DeleteVpcRequest(region_id=region, vpc_id=vpc_id))
    # Its block is free again: a VPC may ask for it by name.
    again = create_vpc(vpcs, region, cidr_block=str(cidr))
    assert available_vpc(vpcs, region, again).cidr_block == str(cidr)
    vpcs.delete_vpc(vpc.DeleteVpcRequest(region_id=region, vpc_id=again))


def test_run_instances_needs_a_vswitch_and_a_group_of_its_vpc_in_its_zone(sandbox: Sandbox, client: Client) -> None:
    region = sandbox.region_id
    network = sdk_network(sandbox)
    base = {"region_id": region, "image_id": DEBIAN, "instance_type": "ecs.g7.large"}

    def refused(**fields: Any) -> tuple[str, int, str]:
        return code_of(lambda: client.run_instances(ecs.RunInstancesRequest(**base, **fields)))

    code, status, message = refused(security_group_id=network.security_group_id)
    assert (code, status) == ("MissingParameter", 400) and '"VSwitchId"' in message
    code, _, message = refused(v_switch_id=network.vswitch_id)
    assert code == "MissingParameter" and '"SecurityGroupId"' in message
    assert refused(v_switch_id="vsw-nosuchswitch", security_group_id=network.security_group_id)[:2] == (
        "InvalidVSwitchId.NotFound", 404)  # fmt: skip
    vpcs = new_vpc_client(sandbox)
    other_vpc = create_vpc(vpcs, region)
    available_vpc(vpcs, region, other_vpc)
    foreign = create_group(client, region, other_vpc)
    code, _, message = refused(v_switch_id=network.vswitch_id, security_group_id=foreign)
    assert code == "InvalidParameter.Mismatch" and "same VPC" in message
    code, _, message = refused(v_switch_id=network.vswitch_id, security_group_id=network.security_group_id,
                               zone_id=f"{region}-k")  # fmt: skip
    assert code == "InvalidParameter.Mismatch" and "zone" in message
    client.delete_security_group(ecs.DeleteSecurityGroupRequest(region_id=region, security_group_id=foreign))
    vpcs.delete_vpc(vpc.DeleteVpcRequest(region_id=region, vpc_id=other_vpc))


def test_an_instance_gets_its_private_address_from_its_vswitch(
    sandbox: Sandbox, client: Client, launched: list[str]
) -> None:
    network = sdk_network(sandbox)
    ids = run(client, sandbox.region_id, launched=launched, amount=2, internet_max_bandwidth_out=5)

    items = describe(client, sandbox.region_id, ids)
    request = vpc.DescribeVSwitchesRequest(region_id=sandbox.region_id, v_switch_id=network.vswitch_id)
    (vswitch,) = new_vpc_client(sandbox).describe_vswitches(request).body.v_switches.v_switch
    privates = [item.vpc_attributes.private_ip_address.ip_address[0] for item in items]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(vswitch.cidr_block) for ip in privates)
    assert len(set(privates)) == 2
    assert {(i.vpc_attributes.vpc_id, i.vpc_attributes.v_switch_id, i.zone_id) for i in items} == {
        (network.vpc_id, network.vswitch_id, network.zone_id)
    }
    publics = [item.public_ip_address.ip_address[0] for item in items]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(sandbox.info.network) for ip in publics)


def test_groups_and_vswitches_in_use_cannot_be_deleted(sandbox: Sandbox, client: Client, launched: list[str]) -> None:
    network, region = sdk_network(sandbox), sandbox.region_id
    run(client, region, launched=launched)

    request = ecs.DeleteSecurityGroupRequest(region_id=region, security_group_id=network.security_group_id)
    assert code_of(lambda: client.delete_security_group(request))[:2] == ("DependencyViolation", 403)
    delete = vpc.DeleteVSwitchRequest(region_id=region, v_switch_id=network.vswitch_id)
    assert code_of(lambda: new_vpc_client(sandbox).delete_vswitch(delete))[0] == "DependencyViolation"


def test_rules_are_described_revoked_and_never_doubled(sandbox: Sandbox, client: Client) -> None:
    region = sandbox.region_id
    group_id = create_group(client, region, sdk_network(sandbox).vpc_id)
    ssh = ecs.AuthorizeSecurityGroupRequestPermissions(ip_protocol="tcp", port_range="22/22",
                                                        source_cidr_ip="203.0.113.0/24")  # fmt: skip
    web = ecs.AuthorizeSecurityGroupRequestPermissions(ip_protocol="TCP", port_range="8000/8100",
                                                        source_cidr_ip="0.0.0.0/0")  # fmt: skip
    authorize = ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id, permissions=[ssh])

    def rules() -> list[tuple[str, str, str]]:
        request = ecs.DescribeSecurityGroupAttributeRequest(region_id=region, security_group_id=group_id)
        found = client.describe_security_group_attribute(request).body.permissions.permission
        return [(rule.ip_protocol, rule.port_range, rule.source_cidr_ip) for rule in found]

    assert rules() == []  # a new group lets nothing in
    client.authorize_security_group(authorize)
    client.authorize_security_group(authorize)
    client.authorize_security_group(
        ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id, permissions=[web])
    )
    assert rules() == [("TCP", "22/22", "203.0.113.0/24"), ("TCP", "8000/8100", "0.0.0.0/0")]

    client.revoke_security_group(ecs.RevokeSecurityGroupRequest(
        region_id=region, security_group_id=group_id, permissions=[ecs.RevokeSecurityGroupRequestPermissions(
            ip_protocol="TCP", port_range="22/22", source_cidr_ip="203.0.113.0/24")]))  # fmt: skip
    assert rules() == [("TCP", "8000/8100", "0.0.0.0/0")]
    bad = ecs.AuthorizeSecurityGroupRequestPermissions(ip_protocol="TCP", port_range="22/22", source_cidr_ip="nowhere")
    refused = ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id, permissions=[bad])
    assert code_of(lambda: client.authorize_security_group(refused))[0] == "InvalidSourceCidrIp.Malformed"
    client.delete_security_group(ecs.DeleteSecurityGroupRequest(region_id=region, security_group_id=group_id))
    assert code_of(lambda: rules())[:2] == ("InvalidSecurityGroupId.NotFound", 404)
