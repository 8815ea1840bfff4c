"""The sandbox's ECS actions, driven through the official SDK over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pymlsql_magics.sandbox import Sandbox

from .helpers import api_error, create_request, describe, run, shared_network, unique, wait_for, wait_status

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
WEBUSER_IMAGE = "m-sandbox-webuser"


def instances(client: Client, region: str, **fields: Any) -> list[Any]:
    request = ecs.DescribeInstancesRequest(region_id=region, page_size=100, **fields)
    return client.describe_instances(request).body.instances.instance


def ids_of(items: list[Any]) -> set[str]:
    return {item.instance_id for item in items}


def tagged(client: Client, region: str, key: str, value: str | None = None, **fields: Any) -> set[str]:
    tag = [ecs.DescribeInstancesRequestTag(key=key, value=value)]
    return ids_of(instances(client, region, tag=tag, **fields))


def tags_of(instance: Any) -> dict[str, str]:
    return {tag.tag_key: tag.tag_value for tag in instance.tags.tag}


def delete_key_pairs(client: Client, region: str, *names: str) -> None:
    request = ecs.DeleteKeyPairsRequest(region_id=region, key_pair_names=json.dumps(list(names)))
    client.delete_key_pairs(request)


def key_pairs(client: Client, region: str, pattern: str, **fields: Any) -> list[Any]:
    request = ecs.DescribeKeyPairsRequest(region_id=region, key_pair_name=pattern, **fields)
    return client.describe_key_pairs(request).body.key_pairs.key_pair


def ssh_ready(sandbox: Sandbox, instance_id: str) -> bool:
    return any(item["InstanceId"] == instance_id and item["SshReady"] for item in sandbox.status()["instances"])


def running_with_ssh(client: Client, sandbox: Sandbox, region: str, launched: list[str], **fields: Any) -> str:
    (instance_id,) = run(client, region, launched=launched, **fields)
    wait_status(client, region, [instance_id], "Running")
    wait_for(lambda: ssh_ready(sandbox, instance_id), what=f"SSH on {instance_id}")
    return instance_id


def run_command(client: Client, region: str, instance_id: str, script: str, **fields: Any) -> str:
    request = ecs.RunCommandRequest(
        region_id=region,
        type="RunShellScript",
        command_content=script,
        instance_id=[instance_id],
        **fields,
    )
    answer = client.run_command(request).body
    assert answer.invoke_id.startswith("t-") and answer.command_id.startswith("c-")
    return answer.invoke_id


def finished_invocation(client: Client, region: str, invoke_id: str) -> Any:
    def done() -> Any:
        request = ecs.DescribeInvocationsRequest(region_id=region, invoke_id=invoke_id, include_output=True)
        found = client.describe_invocations(request).body.invocations.invocation
        return found[0] if found and found[0].invoke_status == "Finished" else None

    return wait_for(done, timeout=30, interval=0.1, what=f"invocation {invoke_id}")


def invocation_result(client: Client, region: str, invoke_id: str) -> Any:
    request = ecs.DescribeInvocationResultsRequest(region_id=region, invoke_id=invoke_id)
    (result,) = client.describe_invocation_results(request).body.invocation.invocation_results.invocation_result
    return result


def decoded(output: str) -> str:
    return base64.b64decode(output).decode()


# -- catalog -----------------------------------------------------------------------------------


def test_describe_regions_lists_the_sandbox_region(client: Client, region: str) -> None:
    found = client.describe_regions(ecs.DescribeRegionsRequest()).body.regions.region

    by_id = {item.region_id: item for item in found}
    assert region in by_id
    assert {"cn-hangzhou", "cn-beijing"} <= set(by_id)
    assert all(item.status == "available" and item.local_name for item in found)


def test_describe_zones_lists_zones_of_the_region_with_instance_types(client: Client, region: str) -> None:
    zones = client.describe_zones(ecs.DescribeZonesRequest(region_id=region)).body.zones.zone

    assert zones
    assert all(zone.zone_id.startswith(f"{region}-") for zone in zones)
    assert "ecs.g7.large" in zones[0].available_instance_types.instance_types


def test_describe_images_lists_both_sandbox_images(client: Client, region: str) -> None:
    images = client.describe_images(ecs.DescribeImagesRequest(region_id=region)).body.images.image

    by_id = {image.image_id: image for image in images}
    assert {DEBIAN, WEBUSER_IMAGE} <= set(by_id)
    assert by_id[DEBIAN].image_owner_alias == "system"
    assert by_id[WEBUSER_IMAGE].image_owner_alias == "self"
    assert all(image.status == "Available" and image.ostype == "linux" for image in images)


def test_describe_images_filters_by_image_id(client: Client, region: str) -> None:
    request = ecs.DescribeImagesRequest(region_id=region, image_id=WEBUSER_IMAGE)
    body = client.describe_images(request).body

    assert [image.image_id for image in body.images.image] == [WEBUSER_IMAGE]
    assert body.total_count == 1


def test_describe_instance_types_gives_cpu_and_memory(client: Client) -> None:
    found = client.describe_instance_types(ecs.DescribeInstanceTypesRequest()).body.instance_types.instance_type

    by_id = {item.instance_type_id: item for item in found}
    assert {"ecs.g7.large", "ecs.r5.large", "ecs.ic5.large"} <= set(by_id)
    assert (by_id["ecs.g7.large"].cpu_core_count, by_id["ecs.g7.large"].memory_size) == (2, 8.0)
    assert (by_id["ecs.r5.large"].cpu_core_count, by_id["ecs.r5.large"].memory_size) == (2, 16.0)
    assert (by_id["ecs.ic5.large"].cpu_core_count, by_id["ecs.ic5.large"].memory_size) == (2, 2.0)


def test_describe_instance_types_filters_by_names(client: Client) -> None:
    request = ecs.DescribeInstanceTypesRequest(instance_types=["ecs.r5.large", "ecs.ic5.large"])
    found = client.describe_instance_types(request).body.instance_types.instance_type

    assert sorted(item.instance_type_id for item in found) == ["ecs.ic5.large", "ecs.r5.large"]


# -- key pairs ---------------------------------------------------------------------------------


def test_created_key_pair_private_key_matches_its_public_key(
    client: Client, region: str, key_pair: tuple[str, Path]
) -> None:
    name, path = key_pair
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN ")

    private = serialization.load_pem_private_key(pem, password=None)
    derived = (
        private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )
    (listed,) = key_pairs(client, region, name, include_public_key=True)

    assert listed.key_pair_name == name
    assert listed.public_key.split()[:2] == derived.split()[:2]


def test_describe_key_pairs_hides_public_key_unless_asked(
    client: Client, region: str, key_pair: tuple[str, Path]
) -> None:
    name, _ = key_pair

    (listed,) = key_pairs(client, region, name)

    assert listed.public_key is None
    assert listed.key_pair_finger_print


def test_create_key_pair_answers_id_fingerprint_and_pkcs8_key(client: Client, region: str) -> None:
    name = unique("kp")
    body = client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name)).body
    try:
        assert body.key_pair_name == name
        assert body.key_pair_id.startswith("kp-")
        assert body.private_key_body.startswith("-----BEGIN PRIVATE KEY-----")
        (listed,) = key_pairs(client, region, name)
        assert listed.key_pair_finger_print == body.key_pair_finger_print
    finally:
        delete_key_pairs(client, region, name)


def test_import_key_pair_accepts_an_ssh_keygen_key(client: Client, region: str, tmp_path: Path) -> None:
    key = tmp_path / "id_rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "me@host", "-f", str(key)], check=True
    )
    public = key.with_suffix(".pub").read_text().strip()
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-E", "md5", "-f", f"{key}.pub"], check=True, capture_output=True, text=True
    ).stdout
    md5 = listing.split()[1].removeprefix("MD5:")
    name = unique("imported")

    body = client.import_key_pair(
        ecs.ImportKeyPairRequest(region_id=region, key_pair_name=name, public_key_body=public)
    ).body
    try:
        assert body.key_pair_name == name
        assert body.key_pair_finger_print == md5
        (listed,) = key_pairs(client, region, name, include_public_key=True)
        assert listed.public_key.split()[:2] == public.split()[:2]
    finally:
        delete_key_pairs(client, region, name)


def test_import_key_pair_accepts_a_cryptography_key(client: Client, region: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(public.split()[1])
    expected = ":".join(f"{byte:02x}" for byte in hashlib.md5(blob).digest())  # noqa: S324
    name = unique("imported")

    body = client.import_key_pair(
        ecs.ImportKeyPairRequest(region_id=region, key_pair_name=name, public_key_body=public.decode())
    ).body
    try:
        assert body.key_pair_finger_print == expected
    finally:
        delete_key_pairs(client, region, name)


def test_describe_key_pairs_matches_wildcard_names(client: Client, region: str) -> None:
    prefix = unique("wild")
    names = [f"{prefix}-a", f"{prefix}-b", f"x{prefix}"]
    for name in names:
        client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name))
    try:
        assert {item.key_pair_name for item in key_pairs(client, region, f"{prefix}*")} == set(names[:2])
        assert {item.key_pair_name for item in key_pairs(client, region, f"*{prefix}*")} == set(names)
        assert {item.key_pair_name for item in key_pairs(client, region, f"*{prefix}-b")} == {names[1]}
        assert [item.key_pair_name for item in key_pairs(client, region, prefix)] == []
    finally:
        delete_key_pairs(client, region, *names)


def test_delete_key_pairs_removes_them(client: Client, region: str) -> None:
    prefix = unique("gone")
    names = [f"{prefix}-1", f"{prefix}-2"]
    for name in names:
        client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name))
    assert len(key_pairs(client, region, f"{prefix}*")) == 2

    delete_key_pairs(client, region, *names)

    assert key_pairs(client, region, f"{prefix}*") == []


# -- security groups ---------------------------------------------------------------------------


def create_group(client: Client, region: str, **fields: Any) -> str:
    """A group in the tests' VPC, unless `fields` name another."""
    fields.setdefault("vpc_id", shared_network(client, region).vpc_id)
    request = ecs.CreateSecurityGroupRequest(region_id=region, security_group_name=unique("web"), **fields)
    group_id = client.create_security_group(request).body.security_group_id
    assert group_id.startswith("sg-")
    return group_id


def groups(client: Client, region: str, **fields: Any) -> list[Any]:
    request = ecs.DescribeSecurityGroupsRequest(region_id=region, **fields)
    return client.describe_security_groups(request).body.security_groups.security_group


def test_created_security_group_is_described_by_id(client: Client, region: str) -> None:
    group_id = create_group(client, region, description="for the web")

    (found,) = groups(client, region, security_group_id=group_id)

    assert found.security_group_id == group_id
    assert found.description == "for the web"
    assert found.security_group_type == "normal"
    assert found.rule_count == 0


def test_describe_security_groups_accepts_a_json_array_of_ids(client: Client, region: str) -> None:
    first, second, third, fourth = (create_group(client, region) for _ in range(4))

    found = groups(client, region, security_group_ids=json.dumps([first, third, fourth]))

    assert {group.security_group_id for group in found} == {first, third, fourth}
    assert second not in {group.security_group_id for group in found}


def test_authorize_security_group_records_every_permission(client: Client, region: str) -> None:
    group_id = create_group(client, region)
    permissions = [
        ecs.AuthorizeSecurityGroupRequestPermissions(
            ip_protocol="TCP", port_range="22/22", source_cidr_ip="0.0.0.0/0", priority="1"
        ),
        ecs.AuthorizeSecurityGroupRequestPermissions(
            ip_protocol="tcp", port_range="8888/8890", source_cidr_ip="10.0.0.0/8", description="jupyter"
        ),
    ]

    client.authorize_security_group(
        ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id, permissions=permissions)
    )

    rules = group_rules(client, region, group_id)
    assert [(rule.ip_protocol, rule.port_range, rule.source_cidr_ip, rule.policy) for rule in rules] == [
        ("TCP", "22/22", "0.0.0.0/0", "Accept"),
        ("TCP", "8888/8890", "10.0.0.0/8", "Accept"),
    ]
    assert rules[1].description == "jupyter"
    assert all(rule.security_group_rule_id.startswith("sgr-") and rule.direction == "ingress" for rule in rules)
    assert groups(client, region, security_group_id=group_id)[0].rule_count == 2


def group_rules(client: Client, region: str, group_id: str) -> list[Any]:
    request = ecs.DescribeSecurityGroupAttributeRequest(region_id=region, security_group_id=group_id)
    return client.describe_security_group_attribute(request).body.permissions.permission


def test_instance_joins_the_security_group_it_is_launched_in(client: Client, region: str, launched: list[str]) -> None:
    group_id = create_group(client, region)

    (instance_id,) = run(client, region, launched=launched, security_group_id=group_id)

    (instance,) = describe(client, region, [instance_id])
    assert instance.security_group_ids.security_group_id == [group_id]
    assert [i.instance_id for i in instances(client, region, security_group_id=group_id)] == [instance_id]
    assert groups(client, region, security_group_id=group_id)[0].ecs_count == 1


# -- RunInstances / CreateInstance ---------------------------------------------------------------


def test_run_instances_creates_amount_tagged_instances_with_public_ips(
    client: Client, region: str, launched: list[str]
) -> None:
    group = unique("grp")
    tags = [ecs.RunInstancesRequestTag(key="group", value=group), ecs.RunInstancesRequestTag(key="role", value="")]

    ids = run(client, region, launched=launched, amount=2, tag=tags, internet_max_bandwidth_out=5)

    assert len(ids) == 2 and len(set(ids)) == 2
    found = wait_status(client, region, ids, "Running")
    for instance in found:
        assert {"group": group, "role": ""}.items() <= tags_of(instance).items()
        assert instance.internet_max_bandwidth_out == 5
        assert len(instance.public_ip_address.ip_address) == 1
        assert instance.instance_type == "ecs.g7.large"
        assert (instance.cpu, instance.memory) == (2, 8192)
    publics = {instance.public_ip_address.ip_address[0] for instance in found}
    privates = {instance.vpc_attributes.private_ip_address.ip_address[0] for instance in found}
    assert len(publics) == 2 and not publics & privates


def test_run_instances_without_bandwidth_gives_no_public_ip(client: Client, region: str, launched: list[str]) -> None:
    ids = run(client, region, launched=launched, internet_max_bandwidth_out=0)

    (instance,) = describe(client, region, ids)
    assert instance.public_ip_address.ip_address == []
    assert instance.internet_max_bandwidth_out == 0
    assert len(instance.vpc_attributes.private_ip_address.ip_address) == 1


def test_run_instances_passes_through_pending_and_starting_to_running(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    started = time.monotonic()
    ids = run(client, region, launched=launched)
    first = describe(client, region, ids)[0].status
    if time.monotonic() - started < sandbox.timings.pending:
        assert first == "Pending"

    wait_status(client, region, ids, "Running")
    events = sandbox.log()["instances"][ids[0]]
    assert events["starting_at"] - events["created_at"] >= sandbox.timings.pending - 0.01
    assert events["running_at"] - events["starting_at"] >= sandbox.timings.starting - 0.01


def test_client_token_makes_run_instances_idempotent(client: Client, region: str, launched: list[str]) -> None:
    group = unique("idem")
    token = unique("token")
    fields = {"amount": 2, "client_token": token, "tag": [ecs.RunInstancesRequestTag(key="idem", value=group)]}

    first = run(client, region, launched=launched, **fields)
    second = run(client, region, launched=launched, **fields)

    assert first == second
    assert tagged(client, region, "idem", group) == set(first)


def test_client_token_reused_with_other_parameters_is_refused(client: Client, region: str, launched: list[str]) -> None:
    group = unique("idem")
    token = unique("token")
    tag = [ecs.RunInstancesRequestTag(key="idem", value=group)]
    first = run(client, region, launched=launched, client_token=token, tag=tag)

    error = api_error(lambda: run(client, region, launched=launched, client_token=token, tag=tag, amount=2))

    assert error.code == "IdempotentParameterMismatch"
    assert error.status_code == 400
    assert tagged(client, region, "idem", group) == set(first)


def test_client_token_does_not_link_different_tokens(client: Client, region: str, launched: list[str]) -> None:
    group = unique("idem")
    tag = [ecs.RunInstancesRequestTag(key="idem", value=group)]

    first = run(client, region, launched=launched, client_token=unique("token"), tag=tag)
    second = run(client, region, launched=launched, client_token=unique("token"), tag=tag)

    assert first != second
    assert tagged(client, region, "idem", group) == set(first + second)


def test_create_instance_ends_stopped_after_pending(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.r5.large")
    started = time.monotonic()
    instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    first = describe(client, region, [instance_id])[0].status
    if time.monotonic() - started < sandbox.timings.pending:
        assert first == "Pending"

    (instance,) = wait_status(client, region, [instance_id], "Stopped")
    assert instance.instance_type == "ecs.r5.large"
    assert instance.public_ip_address.ip_address == []
    events = sandbox.log()["instances"][instance_id]
    assert events["stopped_at"] - events["created_at"] >= sandbox.timings.pending - 0.01
    assert "running_at" not in events and "starting_at" not in events


def test_create_instance_honours_client_token(client: Client, region: str, launched: list[str]) -> None:
    token = unique("token")
    request = create_request(
        client, region, image_id=DEBIAN, instance_type="ecs.g7.large", client_token=token
    )

    first = client.create_instance(request).body.instance_id
    launched.append(first)
    second = client.create_instance(request).body.instance_id
    launched.append(second)

    assert first == second


def test_allocate_public_ip_address_gives_a_created_instance_an_address(
    client: Client, region: str, launched: list[str]
) -> None:
    request = create_request(
        client, region, image_id=DEBIAN, instance_type="ecs.g7.large", internet_max_bandwidth_out=10
    )
    instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    wait_status(client, region, [instance_id], "Stopped")

    allocate = ecs.AllocatePublicIpAddressRequest(instance_id=instance_id)
    address = client.allocate_public_ip_address(allocate).body.ip_address

    (instance,) = describe(client, region, [instance_id])
    assert instance.public_ip_address.ip_address == [address]
    assert address != instance.vpc_attributes.private_ip_address.ip_address[0]
    again = api_error(lambda: client.allocate_public_ip_address(allocate))
    assert (again.code, again.status_code) == ("AllocatedAlready", 403)


def test_allocate_public_ip_address_needs_outbound_bandwidth(client: Client, region: str, launched: list[str]) -> None:
    request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large")
    instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    wait_status(client, region, [instance_id], "Stopped")

    error = api_error(
        lambda: client.allocate_public_ip_address(ecs.AllocatePublicIpAddressRequest(instance_id=instance_id))
    )

    assert error.code == "AllocateIpInvalidInstanceBandwidth"
    assert describe(client, region, [instance_id])[0].public_ip_address.ip_address == []


# -- DescribeInstances filters and paging ---------------------------------------------------------


def test_describe_instances_filters(client: Client, region: str, launched: list[str]) -> None:
    group = unique("flt")
    web = run(
        client,
        region,
        launched=launched,
        amount=2,
        instance_name=f"web-{group}",
        unique_suffix=True,
        tag=[
            ecs.RunInstancesRequestTag(key="group", value=group),
            ecs.RunInstancesRequestTag(key=f"web-{group}", value="anything"),
        ],
    )
    create = create_request(
        client, region,
        image_id=DEBIAN,
        instance_type="ecs.ic5.large",
        instance_name=f"db-{group}",
        tag=[
            ecs.CreateInstanceRequestTag(key="group", value=group),
            ecs.CreateInstanceRequestTag(key="role", value="db"),
        ],
    )
    db = client.create_instance(create).body.instance_id
    launched.append(db)
    wait_status(client, region, web, "Running")
    wait_status(client, region, [db], "Stopped")
    everything = set(web) | {db}

    # InstanceIds: a JSON array; an empty one matches nothing.
    assert ids_of(instances(client, region, instance_ids=json.dumps([]))) == set()
    assert ids_of(instances(client, region, instance_ids=json.dumps([db, web[0]]))) == {db, web[0]}
    assert ids_of(instances(client, region, instance_ids=json.dumps(["i-doesnotexist000000000"]))) == set()
    # Tags: key and value, key only, several together.
    assert tagged(client, region, "group", group) == everything
    assert tagged(client, region, f"web-{group}") == set(web)
    assert tagged(client, region, "group", "another-group") == set()
    both = [
        ecs.DescribeInstancesRequestTag(key="group", value=group),
        ecs.DescribeInstancesRequestTag(key="role", value="db"),
    ]
    assert ids_of(instances(client, region, tag=both)) == {db}
    # Status, with the other filters.
    assert tagged(client, region, "group", group, status="Running") == set(web)
    assert tagged(client, region, "group", group, status="Stopped") == {db}
    assert tagged(client, region, "group", group, instance_type="ecs.ic5.large") == {db}
    # InstanceName: `*` is a wildcard, otherwise the name must match exactly.
    assert ids_of(instances(client, region, instance_name=f"web-{group}*")) == set(web)
    assert ids_of(instances(client, region, instance_name=f"*-{group}*")) == everything
    assert ids_of(instances(client, region, instance_name=f"db-{group}")) == {db}
    assert ids_of(instances(client, region, instance_name=f"web-{group}")) == set()
    names = sorted(item.instance_name for item in instances(client, region, instance_name=f"web-{group}*"))
    assert names == [f"web-{group}001", f"web-{group}002"]


def test_describe_instances_pages_by_page_number_and_by_next_token(
    client: Client, region: str, launched: list[str]
) -> None:
    group = unique("page")
    tag = [ecs.RunInstancesRequestTag(key="page", value=group)]
    created = run(client, region, launched=launched, amount=12, tag=tag)
    assert len(set(created)) == 12
    wanted = [ecs.DescribeInstancesRequestTag(key="page", value=group)]

    by_number: list[str] = []
    sizes = []
    for number in (1, 2, 3, 4):
        request = ecs.DescribeInstancesRequest(region_id=region, tag=wanted, page_number=number, page_size=5)
        body = client.describe_instances(request).body
        assert (body.total_count, body.page_number, body.page_size) == (12, number, 5)
        sizes.append(len(body.instances.instance))
        by_number += [item.instance_id for item in body.instances.instance]
    assert sizes == [5, 5, 2, 0]
    assert sorted(by_number) == sorted(created)

    by_token: list[str] = []
    token = None
    calls = 0
    while True:
        request = ecs.DescribeInstancesRequest(region_id=region, tag=wanted, max_results=10, next_token=token)
        body = client.describe_instances(request).body
        calls += 1
        by_token += [item.instance_id for item in body.instances.instance]
        token = body.next_token
        if not token:
            break
        assert calls < 5, "NextToken never ran out"
    assert calls == 2
    assert sorted(by_token) == sorted(created)
    assert by_token == by_number, "both kinds of paging list the instances in the same order"


def test_describe_instance_status_reports_each_instance(client: Client, region: str, launched: list[str]) -> None:
    ids = run(client, region, launched=launched, amount=2)
    create = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large")
    stopped = client.create_instance(create).body.instance_id
    launched.append(stopped)
    wait_status(client, region, ids, "Running")
    wait_status(client, region, [stopped], "Stopped")

    request = ecs.DescribeInstanceStatusRequest(region_id=region, instance_id=[*ids, stopped])
    body = client.describe_instance_status(request).body

    found = {item.instance_id: item.status for item in body.instance_statuses.instance_status}
    assert found == {ids[0]: "Running", ids[1]: "Running", stopped: "Stopped"}
    assert body.total_count == 3


# -- tags --------------------------------------------------------------------------------------


def listed_tags(client: Client, region: str, resource_type: str, resource_id: str) -> dict[str, str]:
    request = ecs.ListTagResourcesRequest(region_id=region, resource_type=resource_type, resource_id=[resource_id])
    rows = client.list_tag_resources(request).body.tag_resources.tag_resource
    assert all(row.resource_id == resource_id for row in rows)
    return {row.tag_key: row.tag_value for row in rows if not row.tag_key.startswith("pymlsql:")}


def test_tag_untag_and_list_tag_resources_on_an_instance(client: Client, region: str, launched: list[str]) -> None:
    (instance_id,) = run(client, region, launched=launched, tag=[ecs.RunInstancesRequestTag(key="born", value="yes")])

    client.tag_resources(
        ecs.TagResourcesRequest(
            region_id=region,
            resource_type="instance",
            resource_id=[instance_id],
            tag=[
                ecs.TagResourcesRequestTag(key="team", value="ml"),
                ecs.TagResourcesRequestTag(key="env", value="dev"),
            ],
        )
    )
    assert listed_tags(client, region, "instance", instance_id) == {"born": "yes", "team": "ml", "env": "dev"}
    assert {"team": "ml", "env": "dev"}.items() <= tags_of(describe(client, region, [instance_id])[0]).items()

    client.untag_resources(
        ecs.UntagResourcesRequest(
            region_id=region,
            resource_type="instance",
            resource_id=[instance_id],
            tag_key=["team"],
        )
    )
    assert listed_tags(client, region, "instance", instance_id) == {"born": "yes", "env": "dev"}

    client.untag_resources(
        ecs.UntagResourcesRequest(
            region_id=region,
            resource_type="instance",
            resource_id=[instance_id],
            all=True,
        )
    )
    assert listed_tags(client, region, "instance", instance_id) == {}


def test_list_tag_resources_filters_by_tag(client: Client, region: str, launched: list[str]) -> None:
    marker = unique("mark")
    first, second = run(client, region, launched=launched, amount=2)
    client.tag_resources(
        ecs.TagResourcesRequest(
            region_id=region,
            resource_type="instance",
            resource_id=[first],
            tag=[ecs.TagResourcesRequestTag(key="mark", value=marker)],
        )
    )

    request = ecs.ListTagResourcesRequest(
        region_id=region, resource_type="instance", tag=[ecs.ListTagResourcesRequestTag(key="mark", value=marker)]
    )
    rows = client.list_tag_resources(request).body.tag_resources.tag_resource

    assert {row.resource_id for row in rows} == {first}
    assert ("mark", marker) in {(row.tag_key, row.tag_value) for row in rows}
    assert all(row.resource_type == "instance" for row in rows)


def test_tag_resources_on_a_security_group(client: Client, region: str) -> None:
    group_id = create_group(client, region)

    client.tag_resources(
        ecs.TagResourcesRequest(
            region_id=region,
            resource_type="securitygroup",
            resource_id=[group_id],
            tag=[ecs.TagResourcesRequestTag(key="owner", value="notebook")],
        )
    )

    assert listed_tags(client, region, "securitygroup", group_id) == {"owner": "notebook"}
    tag = [ecs.DescribeSecurityGroupsRequestTag(key="owner", value="notebook")]
    assert group_id in {group.security_group_id for group in groups(client, region, tag=tag)}


# -- AutoReleaseTime ---------------------------------------------------------------------------


def test_auto_release_time_releases_the_instance(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)

    (instance_id,) = run(client, region, launched=launched, auto_release_time=when.strftime("%Y-%m-%dT%H:%M:%SZ"))

    (instance,) = describe(client, region, [instance_id])
    assert instance.auto_release_time.startswith(when.strftime("%Y-%m-%dT%H:%M"))
    assert instance.auto_release_time.endswith("Z")
    wait_for(lambda: describe(client, region, [instance_id]) == [], timeout=20, what="auto release")
    released_at = sandbox.log()["instances"][instance_id]["released_at"]
    assert released_at >= when.timestamp() - 0.05


def test_instance_without_auto_release_time_shows_none(client: Client, region: str, launched: list[str]) -> None:
    ids = run(client, region, launched=launched)

    assert describe(client, region, ids)[0].auto_release_time == ""


# -- Cloud Assistant ---------------------------------------------------------------------------


def test_run_command_output_and_exit_code(sandbox: Sandbox, client: Client, region: str, launched: list[str]) -> None:
    instance_id = running_with_ssh(client, sandbox, region, launched)

    invoke_id = run_command(client, region, instance_id, "echo hello from $(hostname)\nid -un\npwd")

    invocation = finished_invocation(client, region, invoke_id)
    (target,) = invocation.invoke_instances.invoke_instance
    output = decoded(target.output)
    assert invocation.invocation_status == "Success", output
    assert invocation.command_type == "RunShellScript"
    assert (target.instance_id, target.invocation_status, target.exit_code) == (instance_id, "Success", 0)
    result = invocation_result(client, region, invoke_id)
    assert (result.instance_id, result.invocation_status, result.exit_code) == (instance_id, "Success", 0)
    assert decoded(result.output) == output
    lines = output.splitlines()
    assert lines[0].startswith("hello from "), output
    if sandbox.status()["full_fidelity"]:
        assert lines == [f"hello from {describe(client, region, [instance_id])[0].host_name}", "root", "/root"]

    # A failing command: its exit code and what it printed on stderr.
    failing = run_command(client, region, instance_id, "echo broken >&2\nexit 3")
    assert finished_invocation(client, region, failing).invocation_status == "Failed"
    result = invocation_result(client, region, failing)
    assert (result.invocation_status, result.exit_code) == ("Failed", 3), decoded(result.output)
    assert decoded(result.output) == "broken\n"

    # Base64 content, and output asked for as plain text.
    script = base64.b64encode(b"printf 'a b\\n'; exit 0").decode()
    plain = run_command(client, region, instance_id, script, content_encoding="Base64")
    finished_invocation(client, region, plain)
    request = ecs.DescribeInvocationResultsRequest(region_id=region, invoke_id=plain, content_encoding="PlainText")
    (result,) = client.describe_invocation_results(request).body.invocation.invocation_results.invocation_result
    assert result.output == "a b\n"


def test_run_command_as_webuser_on_the_webuser_image(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    instance_id = running_with_ssh(client, sandbox, region, launched, image_id=WEBUSER_IMAGE)

    script = "id -un\necho $HOME\nstat -c %U /home/webuser"
    invoke_id = run_command(client, region, instance_id, script, username="webuser")

    invocation = finished_invocation(client, region, invoke_id)
    assert invocation.invocation_status == "Success", decoded(invocation.invoke_instances.invoke_instance[0].output)
    assert invocation.username == "webuser"
    result = invocation_result(client, region, invoke_id)
    assert (result.username, result.exit_code) == ("webuser", 0)
    if sandbox.status()["full_fidelity"]:
        assert decoded(result.output).splitlines() == ["webuser", "/home/webuser", "webuser"]


def test_run_command_working_dir_is_the_instance_directory(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    if not sandbox.status()["full_fidelity"]:
        pytest.skip("only a full-fidelity instance has its own file system")
    instance_id = running_with_ssh(client, sandbox, region, launched, image_id=WEBUSER_IMAGE)
    same_dir = 'test "$(stat -c %d:%i .)" = "$(stat -c %d:%i "$1")" || { echo "cwd is not $1"; exit 7; }'

    # The default working dir is root's home inside the instance, not the sandbox host's.
    as_root = run_command(client, region, instance_id, f"set -- /root\n{same_dir}")
    as_webuser = run_command(
        client,
        region,
        instance_id,
        f"set -- /home/webuser\n{same_dir}",
        username="webuser",
        working_dir="/home/webuser",
    )

    for invoke_id in (as_root, as_webuser):
        finished_invocation(client, region, invoke_id)
        result = invocation_result(client, region, invoke_id)
        assert (result.invocation_status, result.exit_code) == ("Success", 0), decoded(result.output)
