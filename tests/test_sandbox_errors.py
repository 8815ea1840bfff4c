"""The sandbox answers wrong requests with the error code and HTTP status ECS answers them with."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from cryptography.hazmat.primitives import serialization

from pymlsql_magics.sandbox import Sandbox

from .helpers import api_error, create_request, describe, placed, run, unique, wait_status

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
ERROR_FIELDS = {"RequestId", "HostId", "Code", "Message", "Recommend"}


def assert_error(error: object, code: str, status: int) -> None:
    assert (error.code, error.status_code) == (code, status), error  # type: ignore[attr-defined]
    assert set(error.data) - {"statusCode"} == ERROR_FIELDS  # type: ignore[attr-defined]
    assert error.data["Code"] == code  # type: ignore[attr-defined]
    assert error.data["Message"]  # type: ignore[attr-defined]


def run_request(client: Client, region: str, **fields: object) -> ecs.RunInstancesRequest:
    """RunInstances in the tests' network, with `fields` over the rest."""
    values: dict[str, object] = {"image_id": DEBIAN, "instance_type": "ecs.g7.large", **fields}
    return ecs.RunInstancesRequest(region_id=region, **placed(client, region, values))


def created_stopped(client: Client, region: str, launched: list[str]) -> str:
    request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large")
    instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    wait_status(client, region, [instance_id], "Stopped")
    return instance_id


@contextmanager
def held_in_pending(sandbox: Sandbox) -> Iterator[None]:
    """Instances created inside stay Pending, so a check on a Pending one does not race the clock."""
    sandbox.fault({"stuck": "Pending"})
    try:
        yield
    finally:
        sandbox.fault({"stuck": ""})


# -- instances ---------------------------------------------------------------------------------


def test_unknown_instance_id_is_not_found(client: Client, region: str) -> None:
    missing = "i-doesnotexist0000000"

    for call in (
        lambda: client.start_instance(ecs.StartInstanceRequest(instance_id=missing)),
        lambda: client.stop_instance(ecs.StopInstanceRequest(instance_id=missing)),
        lambda: client.reboot_instance(ecs.RebootInstanceRequest(instance_id=missing)),
        lambda: client.delete_instance(ecs.DeleteInstanceRequest(instance_id=missing, force=True)),
        lambda: client.allocate_public_ip_address(ecs.AllocatePublicIpAddressRequest(instance_id=missing)),
    ):
        assert_error(api_error(call), "InvalidInstanceId.NotFound", 404)


def test_stop_instance_on_a_stopped_instance_is_incorrect_status(
    client: Client, region: str, launched: list[str]
) -> None:
    instance_id = created_stopped(client, region, launched)

    error = api_error(lambda: client.stop_instance(ecs.StopInstanceRequest(instance_id=instance_id)))

    assert_error(error, "IncorrectInstanceStatus", 403)
    assert describe(client, region, [instance_id])[0].status == "Stopped"


def test_start_instance_on_a_running_instance_is_incorrect_status(
    client: Client, region: str, launched: list[str]
) -> None:
    ids = run(client, region, launched=launched)
    wait_status(client, region, ids, "Running")

    error = api_error(lambda: client.start_instance(ecs.StartInstanceRequest(instance_id=ids[0])))

    assert_error(error, "IncorrectInstanceStatus", 403)
    assert describe(client, region, ids)[0].status == "Running"


def test_start_instance_while_pending_is_incorrect_status(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large")
    with held_in_pending(sandbox):
        instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    assert describe(client, region, [instance_id])[0].status == "Pending"

    error = api_error(lambda: client.start_instance(ecs.StartInstanceRequest(instance_id=instance_id)))

    assert_error(error, "IncorrectInstanceStatus", 403)


def test_delete_running_instance_needs_force(client: Client, region: str, launched: list[str]) -> None:
    ids = run(client, region, launched=launched)
    wait_status(client, region, ids, "Running")

    error = api_error(lambda: client.delete_instance(ecs.DeleteInstanceRequest(instance_id=ids[0])))
    assert_error(error, "IncorrectInstanceStatus", 403)
    assert describe(client, region, ids)[0].status == "Running"

    client.delete_instance(ecs.DeleteInstanceRequest(instance_id=ids[0], force=True))
    assert describe(client, region, ids) == []


def test_delete_stopped_instance_works_without_force(client: Client, region: str, launched: list[str]) -> None:
    instance_id = created_stopped(client, region, launched)

    client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id))

    assert describe(client, region, [instance_id]) == []
    error = api_error(lambda: client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id)))
    assert_error(error, "InvalidInstanceId.NotFound", 404)


def test_force_delete_works_while_pending(sandbox: Sandbox, client: Client, region: str, launched: list[str]) -> None:
    with held_in_pending(sandbox):
        ids = run(client, region, launched=launched)
    assert describe(client, region, ids)[0].status == "Pending"

    client.delete_instance(ecs.DeleteInstanceRequest(instance_id=ids[0], force=True))

    assert describe(client, region, ids) == []


def test_unknown_image_is_not_found(client: Client, region: str) -> None:
    error = api_error(lambda: client.run_instances(run_request(client, region, image_id="m-nosuchimage")))

    assert_error(error, "InvalidImageId.NotFound", 404)


def test_unknown_instance_type_is_not_supported(client: Client, region: str) -> None:
    error = api_error(lambda: client.run_instances(run_request(client, region, instance_type="ecs.g99.huge")))

    assert_error(error, "InvalidInstanceType.ValueNotSupported", 400)


def test_unknown_key_pair_name_is_not_found(client: Client, region: str) -> None:
    request = run_request(client, region, key_pair_name=unique("nokey"))

    assert_error(api_error(lambda: client.run_instances(request)), "InvalidKeyPairName.NotFound", 404)


def test_missing_image_id_is_missing_parameter(client: Client, region: str) -> None:
    error = api_error(lambda: client.run_instances(run_request(client, region, image_id=None)))

    assert_error(error, "MissingParameter", 400)
    assert "ImageId" in error.data["Message"]


def test_missing_region_id_is_missing_parameter(client: Client) -> None:
    error = api_error(lambda: client.describe_instances(ecs.DescribeInstancesRequest()))

    assert_error(error, "MissingParameter", 400)
    assert "RegionId" in error.data["Message"]


def test_amount_above_100_is_invalid_parameter(client: Client, region: str) -> None:
    error = api_error(lambda: client.run_instances(run_request(client, region, amount=101)))

    assert_error(error, "InvalidParameter", 400)
    assert "Amount" in error.data["Message"]


def test_amount_zero_is_invalid_parameter(client: Client, region: str) -> None:
    error = api_error(lambda: client.run_instances(run_request(client, region, amount=0)))

    assert_error(error, "InvalidParameter", 400)


def test_refused_run_instances_creates_nothing(client: Client, region: str) -> None:
    group = unique("none")
    tag = [ecs.RunInstancesRequestTag(key="refused", value=group)]

    api_error(lambda: client.run_instances(run_request(client, region, amount=2, tag=tag, security_group_id="sg-nope")))

    wanted = [ecs.DescribeInstancesRequestTag(key="refused", value=group)]
    request = ecs.DescribeInstancesRequest(region_id=region, tag=wanted)
    assert client.describe_instances(request).body.instances.instance == []


def test_unknown_security_group_is_not_found(client: Client, region: str) -> None:
    request = run_request(client, region, security_group_id="sg-doesnotexist000000")

    assert_error(api_error(lambda: client.run_instances(request)), "InvalidSecurityGroupId.NotFound", 404)


def test_authorize_unknown_security_group_is_not_found(client: Client, region: str) -> None:
    permission = ecs.AuthorizeSecurityGroupRequestPermissions(
        ip_protocol="TCP", port_range="22/22", source_cidr_ip="0.0.0.0/0"
    )
    request = ecs.AuthorizeSecurityGroupRequest(
        region_id=region, security_group_id="sg-doesnotexist000000", permissions=[permission]
    )

    error = api_error(lambda: client.authorize_security_group(request))

    assert_error(error, "InvalidSecurityGroupId.NotFound", 404)


def test_user_data_that_is_not_base64_is_refused(client: Client, region: str) -> None:
    request = run_request(client, region, user_data="#!/bin/sh\necho not encoded")

    assert_error(api_error(lambda: client.run_instances(request)), "InvalidUserData.Base64FormatInvalid", 400)


def test_user_data_over_32_kib_is_refused(client: Client, region: str) -> None:
    request = run_request(client, region, user_data=base64.b64encode(b"#" * (32 * 1024 + 1)).decode())

    assert_error(api_error(lambda: client.run_instances(request)), "InvalidUserData.SizeExceeded", 400)


def test_same_client_token_with_other_parameters_is_idempotent_parameter_mismatch(
    client: Client, region: str, launched: list[str]
) -> None:
    token = unique("token")
    run(client, region, launched=launched, client_token=token, instance_name="first-name")

    error = api_error(lambda: run(client, region, launched=launched, client_token=token, instance_name="second-name"))

    assert_error(error, "IdempotentParameterMismatch", 400)


def test_unknown_region_is_not_found(client: Client) -> None:
    for call in (
        lambda: client.describe_instances(ecs.DescribeInstancesRequest(region_id="xx-nowhere-1")),
        lambda: client.describe_zones(ecs.DescribeZonesRequest(region_id="xx-nowhere-1")),
        lambda: client.run_instances(run_request(client, "xx-nowhere-1", v_switch_id="vsw-any")),
    ):
        assert_error(api_error(call), "InvalidRegionId.NotFound", 404)


def test_allocate_public_ip_while_pending_is_incorrect_status(
    sandbox: Sandbox, client: Client, region: str, launched: list[str]
) -> None:
    request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large",
                             internet_max_bandwidth_out=5)  # fmt: skip
    with held_in_pending(sandbox):
        instance_id = client.create_instance(request).body.instance_id
    launched.append(instance_id)
    assert describe(client, region, [instance_id])[0].status == "Pending"

    error = api_error(
        lambda: client.allocate_public_ip_address(ecs.AllocatePublicIpAddressRequest(instance_id=instance_id))
    )

    assert_error(error, "IncorrectInstanceStatus", 403)


def test_auto_release_time_in_the_past_or_malformed_is_refused(client: Client, region: str) -> None:
    for value in ("2001-01-01T00:00:00Z", "tomorrow", "2030-01-01 00:00:00"):
        request = run_request(client, region, auto_release_time=value)
        error = api_error(lambda request=request: client.run_instances(request))
        assert_error(error, "InvalidAutoReleaseTime.Malformed", 400)


# -- key pairs ---------------------------------------------------------------------------------


def test_key_pair_with_a_taken_name_already_exists(client: Client, region: str, key_pair: tuple[str, Path]) -> None:
    name, _ = key_pair

    error = api_error(lambda: client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name)))

    assert_error(error, "KeyPair.AlreadyExist", 400)


def test_import_key_pair_with_a_taken_name_already_exists(
    client: Client, region: str, key_pair: tuple[str, Path]
) -> None:
    name, path = key_pair
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    request = ecs.ImportKeyPairRequest(region_id=region, key_pair_name=name, public_key_body=public.decode())

    assert_error(api_error(lambda: client.import_key_pair(request)), "KeyPair.AlreadyExist", 400)


def test_malformed_public_key_body_is_refused(client: Client, region: str) -> None:
    name = unique("badkey")
    for body in ("not a key", "ssh-rsa AAAAnot-base64!", "ssh-rsa " + base64.b64encode(b"garbage").decode()):
        request = ecs.ImportKeyPairRequest(region_id=region, key_pair_name=name, public_key_body=body)
        assert_error(
            api_error(lambda request=request: client.import_key_pair(request)), "InvalidPublicKeyBody.Malformed", 400
        )
    request = ecs.DescribeKeyPairsRequest(region_id=region, key_pair_name=name)
    assert client.describe_key_pairs(request).body.key_pairs.key_pair == []


def test_malformed_key_pair_name_is_refused(client: Client, region: str) -> None:
    for name in ("1starts-with-digit", "x", "has space"):
        request = ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name)
        error = api_error(lambda request=request: client.create_key_pair(request))
        assert_error(error, "InvalidKeyPairName.Malformed", 400)


def test_delete_key_pairs_without_names_is_missing_parameter(client: Client, region: str) -> None:
    request = ecs.DeleteKeyPairsRequest(region_id=region)

    assert_error(api_error(lambda: client.delete_key_pairs(request)), "MissingParameter", 400)


def test_instance_ids_that_are_not_a_json_array_are_invalid(client: Client, region: str) -> None:
    for value in ("i-abc", json.dumps({"id": "i-abc"}), json.dumps([1, 2])):
        request = ecs.DescribeInstancesRequest(region_id=region, instance_ids=value)
        error = api_error(lambda request=request: client.describe_instances(request))
        assert_error(error, "InvalidParameter", 400)


# -- Cloud Assistant ---------------------------------------------------------------------------


def test_run_command_on_a_stopped_instance_is_refused(client: Client, region: str, launched: list[str]) -> None:
    instance_id = created_stopped(client, region, launched)
    request = ecs.RunCommandRequest(
        region_id=region, type="RunShellScript", command_content="true", instance_id=[instance_id]
    )

    assert_error(api_error(lambda: client.run_command(request)), "InstanceNotRunning", 403)


def test_unknown_invoke_id_is_not_found(client: Client, region: str) -> None:
    request = ecs.DescribeInvocationResultsRequest(region_id=region, invoke_id="t-doesnotexist00000000")

    assert_error(api_error(lambda: client.describe_invocation_results(request)), "InvalidInvokeId.NotFound", 404)


def test_unsupported_command_type_is_refused(client: Client, region: str, launched: list[str]) -> None:
    ids = run(client, region, launched=launched)
    request = ecs.RunCommandRequest(
        region_id=region, type="RunPowerShellScript", command_content="dir", instance_id=ids
    )

    assert_error(api_error(lambda: client.run_command(request)), "InvalidCommandType.NotSupported", 400)
