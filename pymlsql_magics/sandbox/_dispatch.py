"""The ECS RPC API: one HTTP request in, the status and JSON body Alibaba Cloud would answer out."""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from . import _signature
from ._actions import ACTIONS, ECS_VERSION, Context
from ._api_errors import ApiError
from ._model import World
from ._params import Params

LOST = 0  # the status handle_api gives an answer that must never reach the caller


def handle_api(
    world: World,
    access_keys: Mapping[str, str],
    method: str,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, dict[str, Any]]:
    """Checks the signature against `access_keys` (id -> secret), runs the action, logs the call."""
    request_id = str(uuid.uuid4()).upper()
    action = headers.get("x-acs-action") or query.get("Action") or ""
    host = headers.get("host", "")
    started = time.time()
    params = dict(query)
    try:
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode(), keep_blank_values=True))
        with world.lock:
            key_id = _signature.verify(
                method=method,
                path="/",
                query=query,
                headers=headers,
                body=body,
                secrets={**world.role_credentials.secrets(), **access_keys},
                seen_nonces=world.nonces,
            )
            world.role_credentials.check_token(key_id, headers.get("x-acs-security-token"))
        version = headers.get("x-acs-version") or query.get("Version") or ECS_VERSION
        if version not in ACTIONS:
            raise ApiError("InvalidVersion", message=f"Specified version {version} is not valid.")
        handler = ACTIONS[version].get(action)
        if handler is None:
            raise ApiError("InvalidAction.NotFound")
        fault = world.take_fault(action)
        if fault is not None and not fault.lose_response:
            raise ApiError(fault.code, status=fault.status, message=fault.message)
        with world.lock:
            try:
                answer = handler(Context(world, host), Params(params))
            except ApiError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sandbox bug still answers as ECS would
                traceback.print_exc()
                raise ApiError("InternalError") from exc
        status, body_out = 200, {"RequestId": request_id, **answer}
        code = "OK"
        if fault is not None:
            status, code = LOST, "OK, answer dropped"
    except ApiError as error:
        status, code = error.status, error.code
        body_out = {
            "RequestId": request_id,
            "HostId": host,
            "Code": error.code,
            "Message": error.message,
            "Recommend": (f"https://api.aliyun.com/troubleshoot?q={error.code}&product=Ecs&requestId={request_id}"),
        }
    with world.lock:
        world.requests.append(
            {
                "time": started,
                "action": action,
                "code": code,
                "http_status": status,
                "request_id": request_id,
                "instance_ids": _mentioned_instances(params),
            }
        )
    return status, body_out


def _mentioned_instances(params: dict[str, str]) -> list[str]:
    ids = [value for key, value in params.items() if key == "InstanceId" or key.startswith("InstanceId.")]
    if params.get("InstanceIds"):
        try:
            ids += [str(item) for item in json.loads(params["InstanceIds"])]
        except ValueError:
            pass
    return ids
