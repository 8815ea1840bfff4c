"""The sandbox checks requests as ECS does: the ACS3-HMAC-SHA256 signature, the date, the nonce.

Raw requests are signed with the SDK's own code (`Utils.get_authorization`, `DaraCore.compose_url`)
and sent with urllib, so a check can be made on exactly what the server refuses.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi import utils_models as open_api_models
from alibabacloud_tea_openapi.utils import Utils
from darabonba.core import DaraCore
from darabonba.request import DaraRequest
from darabonba.runtime import RuntimeOptions

from pymlsql_magics.sandbox import Sandbox

from .helpers import api_error, new_client

ALGORITHM = "ACS3-HMAC-SHA256"
ERROR_FIELDS = {"RequestId", "HostId", "Code", "Message", "Recommend"}


def call_action(client: Client, action: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    """Calls any RPC action through the SDK's generic `call_api`, as the generated client does."""
    params = open_api_models.Params(
        action=action,
        version="2014-05-26",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    request = open_api_models.OpenApiRequest(query=Utils.query(query or {}))
    return client.call_api(params, request, RuntimeOptions())


def signed_request(
    sandbox: Sandbox,
    action: str,
    query: dict[str, str],
    *,
    date: str | None = None,
    secret: str | None = None,
    nonce: bool = True,
) -> DaraRequest:
    """A request signed exactly as `Client.do_request` signs it, ready to be sent as is."""
    request = DaraRequest()
    request.protocol = "http"
    request.method = "POST"
    request.pathname = "/"
    request.query = Utils.query(query)
    payload = Utils.hash(b"", ALGORITHM).hex()
    request.headers = {
        "host": sandbox.endpoint.removeprefix("http://"),
        "x-acs-version": "2014-05-26",
        "x-acs-action": action,
        "user-agent": Utils.get_user_agent(None),
        "x-acs-date": date or Utils.get_timestamp(),
        "x-acs-signature-nonce": Utils.get_nonce(),
        "accept": "application/json",
        "x-acs-content-sha256": payload,
    }
    if not nonce:
        del request.headers["x-acs-signature-nonce"]
    request.headers["Authorization"] = Utils.get_authorization(
        request, ALGORITHM, payload, sandbox.access_key_id, secret or sandbox.access_key_secret
    )
    return request


def send(request: DaraRequest, *, url: str | None = None) -> tuple[int, dict[str, Any]]:
    """Sends a signed request with urllib (no proxy); returns the HTTP status and the JSON body."""
    raw = urllib.request.Request(
        url or DaraCore.compose_url(request),
        data=b"",
        headers=request.headers,
        method=request.method,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(raw, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def control(sandbox: Sandbox, name: str, key: str | None) -> int:
    headers = {"x-sandbox-key": key} if key is not None else {}
    raw = urllib.request.Request(f"{sandbox.endpoint}/_sandbox/{name}", data=b"{}", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(raw, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_correctly_signed_raw_request_is_accepted(sandbox: Sandbox, region: str) -> None:
    status, body = send(signed_request(sandbox, "DescribeZones", {"RegionId": region}))

    assert status == 200, body
    assert [zone["ZoneId"] for zone in body["Zones"]["Zone"]][0].startswith(region)
    assert body["RequestId"]


def test_wrong_secret_gives_signature_does_not_match(sandbox: Sandbox, region: str) -> None:
    client = new_client(sandbox, secret="not-the-secret-of-this-sandbox")

    error = api_error(lambda: client.describe_zones(ecs.DescribeZonesRequest(region_id=region)))

    assert error.code == "SignatureDoesNotMatch"
    assert error.status_code == 400
    assert "StringToSign" in error.data["Message"]


def test_unknown_access_key_id_gives_not_found(sandbox: Sandbox, region: str) -> None:
    client = new_client(sandbox, key_id="LTAInobodyhasthiskeyid00")

    error = api_error(lambda: client.describe_zones(ecs.DescribeZonesRequest(region_id=region)))

    assert error.code == "InvalidAccessKeyId.NotFound"
    assert error.status_code == 404


def test_error_body_has_exactly_the_ecs_fields(sandbox: Sandbox, region: str) -> None:
    status, body = send(signed_request(sandbox, "DescribeZones", {"RegionId": region}, secret="wrong"))

    assert status == 400
    assert set(body) == ERROR_FIELDS
    assert body["Code"] == "SignatureDoesNotMatch"
    assert body["HostId"] == sandbox.endpoint.removeprefix("http://")
    assert body["RequestId"] == body["RequestId"].upper() and len(body["RequestId"]) == 36
    assert "q=SignatureDoesNotMatch" in body["Recommend"]
    assert body["RequestId"] in body["Recommend"]


def test_sdk_exception_carries_the_error_body(sandbox: Sandbox, region: str) -> None:
    client = new_client(sandbox, secret="wrong")

    error = api_error(lambda: client.describe_zones(ecs.DescribeZonesRequest(region_id=region)))

    assert set(error.data) - {"statusCode"} == ERROR_FIELDS
    assert error.data["Code"] == error.code
    assert error.request_id == error.data["RequestId"]


def test_generic_call_api_reaches_known_actions(client: Client, region: str) -> None:
    answer = call_action(client, "DescribeZones", {"RegionId": region})

    assert answer["statusCode"] == 200
    assert {zone["ZoneId"] for zone in answer["body"]["Zones"]["Zone"]} >= {f"{region}-h"}


def test_unknown_action_gives_invalid_action_not_found(client: Client, region: str) -> None:
    error = api_error(lambda: call_action(client, "DescribeUnicorns", {"RegionId": region}))

    assert error.code == "InvalidAction.NotFound"
    assert error.status_code == 404


def test_sandbox_control_names_are_not_ecs_actions(client: Client) -> None:
    for name in ("_sandbox/status", "_sandbox/shutdown", "/_sandbox/log", "status"):
        error = api_error(lambda name=name: call_action(client, name))
        assert (error.code, error.status_code) == ("InvalidAction.NotFound", 404), name


def test_replayed_request_is_refused_as_nonce_used(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region})

    first_status, first = send(request)
    second_status, second = send(request)

    assert first_status == 200, first
    assert second_status == 400
    assert second["Code"] == "SignatureNonceUsed"


def test_request_without_nonce_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region}, nonce=False)
    assert "x-acs-signature-nonce" not in request.headers["Authorization"]

    status, body = send(request)

    assert status == 400
    assert body["Code"] == "MissingParameter"
    assert "x-acs-signature-nonce" in body["Message"]


def test_acs_header_left_out_of_the_signature_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region}, nonce=False)
    request.headers["x-acs-signature-nonce"] = Utils.get_nonce()

    status, body = send(request)

    assert status == 400
    assert body["Code"] == "IncompleteSignature"


def test_request_with_stale_date_is_refused(sandbox: Sandbox, region: str) -> None:
    stale = stamp(datetime.now(timezone.utc) - timedelta(minutes=16))

    status, body = send(signed_request(sandbox, "DescribeZones", {"RegionId": region}, date=stale))

    assert status == 400
    assert body["Code"] == "InvalidTimeStamp.Expired"


def test_request_dated_far_in_the_future_is_refused(sandbox: Sandbox, region: str) -> None:
    ahead = stamp(datetime.now(timezone.utc) + timedelta(minutes=16))

    status, body = send(signed_request(sandbox, "DescribeZones", {"RegionId": region}, date=ahead))

    assert status == 400
    assert body["Code"] == "InvalidTimeStamp.Expired"


def test_request_within_the_clock_window_is_accepted(sandbox: Sandbox, region: str) -> None:
    skewed = stamp(datetime.now(timezone.utc) - timedelta(minutes=10))

    status, body = send(signed_request(sandbox, "DescribeZones", {"RegionId": region}, date=skewed))

    assert status == 200, body


def test_query_tampered_after_signing_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region})
    url = DaraCore.compose_url(request)
    other = next(name for name in ("cn-beijing", "cn-shanghai") if name != region)
    assert f"RegionId={region}" in url

    status, body = send(request, url=url.replace(f"RegionId={region}", f"RegionId={other}"))

    assert status == 400
    assert body["Code"] == "SignatureDoesNotMatch"


def test_parameter_added_after_signing_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region})

    status, body = send(request, url=DaraCore.compose_url(request) + "&Verbose=false")

    assert status == 400
    assert body["Code"] == "SignatureDoesNotMatch"


def test_signed_header_changed_after_signing_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region})
    request.headers["x-acs-action"] = "DescribeRegions"

    status, body = send(request)

    assert status == 400
    assert body["Code"] == "SignatureDoesNotMatch"


def test_request_without_authorization_is_refused(sandbox: Sandbox, region: str) -> None:
    request = signed_request(sandbox, "DescribeZones", {"RegionId": region})
    del request.headers["Authorization"]

    status, body = send(request)

    assert status == 400
    assert body["Code"] == "IncompleteSignature"
    assert set(body) == ERROR_FIELDS


def test_control_paths_refuse_requests_without_the_control_key(sandbox: Sandbox) -> None:
    for name in ("status", "log", "fault", "shutdown", "nothing-here"):
        assert control(sandbox, name, None) == 403, name
        assert control(sandbox, name, "wrong-key") == 403, name
        assert control(sandbox, name, sandbox.access_key_id) == 403, name


def test_control_paths_answer_with_the_control_key(sandbox: Sandbox) -> None:
    assert control(sandbox, "status", sandbox.access_key_secret) == 200
    assert control(sandbox, "nothing-here", sandbox.access_key_secret) == 404
