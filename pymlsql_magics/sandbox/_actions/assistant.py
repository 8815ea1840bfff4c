"""Cloud Assistant: RunCommand, DescribeInvocations, DescribeInvocationResults."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from datetime import datetime, timezone
from typing import Any

from .._api_errors import ApiError, invalid, missing
from .._errors import HostError
from .._model import Invocation, World, new_id
from .._params import Params, token_page
from .registry import Context, action, instance_of, region_of


@action
def RunCommand(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    command_type = params.required("Type")
    if command_type != "RunShellScript":
        raise ApiError("InvalidCommandType.NotSupported")
    content = params.required("CommandContent")
    if (params.text("ContentEncoding", "PlainText") or "").lower() == "base64":
        try:
            content = base64.b64decode(content, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise invalid("CommandContent", "is not valid Base64") from None
    ids = params.repeated("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    instances = [instance_of(ctx, instance_id) for instance_id in ids]
    for instance in instances:
        if instance.status != "Running" or "ssh_ready_at" not in instance.events:
            raise ApiError(
                "InstanceNotRunning",
                message=f"The Cloud Assistant agent on {instance.instance_id} is not running yet.",
            )
    username = params.text("Username", "root") or "root"
    invocation = Invocation(
        invoke_id=new_id("t-", 20),
        command_id=new_id("c-", 20),
        name=params.text("Name", "") or "",
        command_type=command_type,
        content=content,
        region_id=region,
        timeout=params.integer("Timeout", 60, low=1, high=86400) or 60,
        workdir=params.text("WorkingDir") or ("/root" if username == "root" else f"/home/{username}"),
        username=username,
    )
    for instance in instances:
        invocation.results[instance.instance_id] = {"status": "Running", "start": time.time()}
    ctx.world.invocations[invocation.invoke_id] = invocation
    for instance in instances:
        threading.Thread(target=_invoke, args=(ctx.world, invocation, instance.instance_id), daemon=True).start()
    return {"CommandId": invocation.command_id, "InvokeId": invocation.invoke_id}


def _invoke(world: World, invocation: Invocation, instance_id: str) -> None:
    try:
        code, output, timed_out = world.hosts.run(
            instance_id,
            invocation.content,
            user=invocation.username,
            workdir=invocation.workdir,
            timeout=invocation.timeout,
        )
        error = ("InvocationTimeout", "the command timed out") if timed_out else ("", "")
    except HostError as exc:
        code, output, timed_out, error = None, b"", False, ("InstanceNotRunning", str(exc))
    status = "Timeout" if timed_out else ("Success" if code == 0 else "Failed")
    with world.lock:
        invocation.results[instance_id].update(
            status=status,
            exit_code=code if code is not None else -1,
            output=output,
            finish=time.time(),
            error_code=error[0],
            error_info=error[1],
        )


def _overall_status(invocation: Invocation) -> str:
    states = {result["status"] for result in invocation.results.values()}
    if "Running" in states:
        return "Running"
    if states == {"Success"}:
        return "Success"
    if "Success" in states:
        return "PartialFailed"
    return "Failed"


def _encode_output(output: bytes, encoding: str) -> str:
    if encoding.lower() == "plaintext":
        return output.decode(errors="replace")
    return base64.b64encode(output).decode()


@action
def DescribeInvocations(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    invoke_id = params.text("InvokeId")
    instance_id = params.text("InstanceId")
    include_output = params.flag("IncludeOutput")
    encoding = params.text("ContentEncoding", "Base64") or "Base64"
    found = [
        invocation
        for invocation in ctx.world.invocations.values()
        if invocation.region_id == region
        and (invoke_id is None or invocation.invoke_id == invoke_id)
        and (instance_id is None or instance_id in invocation.results)
    ]
    found.sort(key=lambda invocation: -invocation.creation_time)
    chunk, paging = token_page(found, params, max_size=50)
    items = []
    for invocation in chunk:
        overall = _overall_status(invocation)
        instances = []
        for target, result in invocation.results.items():
            entry = {
                "InstanceId": target,
                "InvocationStatus": result["status"],
                "InstanceInvokeStatus": "Finished" if result["status"] != "Running" else "Running",
                "ExitCode": result.get("exit_code"),
                "ErrorCode": result.get("error_code", ""),
                "ErrorInfo": result.get("error_info", ""),
                "StartTime": _iso(result.get("start")),
                "FinishTime": _iso(result.get("finish")),
            }
            if include_output:
                entry["Output"] = _encode_output(result.get("output", b""), encoding)
            instances.append(entry)
        items.append(
            {
                "InvokeId": invocation.invoke_id,
                "CommandId": invocation.command_id,
                "CommandName": invocation.name,
                "CommandType": invocation.command_type,
                "CommandContent": base64.b64encode(invocation.content.encode()).decode(),
                "InvocationStatus": overall,
                "InvokeStatus": "Finished" if overall != "Running" else "Running",
                "CreationTime": _iso(invocation.creation_time),
                "Timeout": invocation.timeout,
                "WorkingDir": invocation.workdir,
                "Username": invocation.username,
                "RepeatMode": "Once",
                "InvokeInstances": {"InvokeInstance": instances},
            }
        )
    return {
        "TotalCount": paging["TotalCount"],
        "PageSize": paging["MaxResults"],
        "PageNumber": 1,
        "NextToken": paging["NextToken"],
        "Invocations": {"Invocation": items},
    }


@action
def DescribeInvocationResults(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    invoke_id = params.text("InvokeId")
    instance_id = params.text("InstanceId")
    encoding = params.text("ContentEncoding", "Base64") or "Base64"
    if invoke_id is not None and invoke_id not in ctx.world.invocations:
        raise ApiError("InvalidInvokeId.NotFound")
    rows = []
    for invocation in ctx.world.invocations.values():
        if invocation.region_id != region or (invoke_id is not None and invocation.invoke_id != invoke_id):
            continue
        for target, result in invocation.results.items():
            if instance_id is not None and target != instance_id:
                continue
            rows.append(
                {
                    "InvokeId": invocation.invoke_id,
                    "InstanceId": target,
                    "CommandId": invocation.command_id,
                    "InvocationStatus": result["status"],
                    "InvokeRecordStatus": "Finished" if result["status"] != "Running" else "Running",
                    "ExitCode": result.get("exit_code"),
                    "Output": _encode_output(result.get("output", b""), encoding),
                    "ErrorCode": result.get("error_code", ""),
                    "ErrorInfo": result.get("error_info", ""),
                    "StartTime": _iso(result.get("start")),
                    "FinishedTime": _iso(result.get("finish")),
                    "Username": invocation.username,
                }
            )
    chunk, paging = token_page(rows, params, max_size=50)
    return {
        "Invocation": {
            "TotalCount": paging["TotalCount"],
            "PageSize": paging["MaxResults"],
            "PageNumber": 1,
            "NextToken": paging["NextToken"],
            "InvocationResults": {"InvocationResult": chunk},
        }
    }


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
