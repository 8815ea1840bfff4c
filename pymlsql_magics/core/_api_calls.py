"""The boundary every Alibaba Cloud API call crosses: SDK settings, retries, and errors as EcsApiError.

Throttling, 5xx answers and network failures are retried with exponential backoff and full
jitter (an endpoint that refuses connections or does not resolve only twice); every other error
becomes an EcsApiError carrying Code, Message, RequestId and a hint. ECS and the VPC product share
it: one endpoint setting, one credential chain, one retry policy.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config as CredentialConfig
from alibabacloud_tea_openapi.models import Config
from Tea.exceptions import TeaException

from ._config import CredentialsSource, EcsConfig
from ._errors import ConfigError, EcsApiError, InstanceStateError

# Nothing listens at the endpoint, or its name does not resolve: a second try covers an endpoint
# that is restarting, more tries only delay the message.
_UNREACHABLE = ("Connection refused", "Failed to resolve", "Name or service not known", "nodename nor servname")
_UNREACHABLE_ATTEMPTS = 2
_RETRIED_CODES = ("Throttling", "ServiceUnavailable", "InternalError", "Throttling.User", "Throttling.Api",
                  "Throttling.Resource", "OperationConflict", "LastTokenProcessing")  # fmt: skip
# "Your identical earlier call is still being carried out": asked again with the same request (and
# so the same ClientToken) until its answer comes, for as long as a create may take.
_PROCESSING_CODES = ("IdempotentProcessing", "OperationFailed.IdempotentTokenProcessing", "TOKEN_PROCESSING")
PROCESSING_PATIENCE = 120.0
_PROCESSING_INTERVAL = 1.0
_HINTS = {
    "InvalidAccessKeyId.NotFound": "Check ALIBABA_CLOUD_ACCESS_KEY_ID (or AK): that AccessKey does not exist.",
    "SignatureDoesNotMatch": "Check ALIBABA_CLOUD_ACCESS_KEY_SECRET (or AKS): it does not belong to that AccessKey.",
    "InvalidImageId.NotFound": "Check the image id; list images with DescribeImages in this region.",
    "InvalidInstanceId.NotFound": "Check the instance id and the region (--region / ALIBABA_CLOUD_REGION_ID).",
    "InvalidKeyPairName.NotFound": "Create the key pair first, e.g. with --init-ssh-key true.",
    "InvalidKeyPairName.Malformed": "Key pair names have 2-128 letters, digits, '.', '_', '-' or ':', a letter first.",
    "KeyPair.AlreadyExist": "Pick another key pair name, or reuse it with --init-ssh-key false.",
    "InvalidSecurityGroupId.NotFound": "Check the security group id and the region.",
    "InvalidVSwitchId.NotFound": "Check the vSwitch id and the zone.",
    "InvalidInstanceType.ValueNotSupported": "Pick an instance type this zone offers (DescribeInstanceTypes).",
    "InvalidRegionId.NotFound": "Pick a region ECS offers: --region (or ALIBABA_CLOUD_REGION_ID), e.g. cn-hangzhou.",
    "InvalidTagKey.Malformed": "Tag keys must not start with aliyun or acs: nor contain http://; rename the --tag.",
    "OperationDenied.NoStock": "Pick another zone or instance type.",
    "IdempotentProcessing": "ECS is still carrying out the first call with this ClientToken; list the instances "
    "in a minute and release any this call made.",
    "IncorrectInstanceStatus.Initializing": "ECS releases an instance only once it has finished initializing; "
    "release it again in a minute.",
    "IncorrectInstanceStatus": "Wait until the instance is Running or Stopped, then try again.",
    "InvalidUserData.SizeExceeded": "Keep user data under 16 KB; copy larger files after start instead.",
    "Forbidden.RAM": "Grant this RAM user the ECS permission it needs.",
    "QuotaExceed.ElasticQuota": "Raise the instance quota in the ECS console, or use fewer or smaller instances.",
}


# Refusals about the place and the type, not one parameter: the values that made them.
_ABOUT = {
    "OperationDenied.NoStock": ("InstanceType", "ZoneId"),
    "Zone.NotOnSale": ("ZoneId",),
    "InvalidResourceType.NotSupported": ("InstanceType", "ZoneId"),
    "InvalidInstanceType.ZoneNotSupported": ("InstanceType", "ZoneId"),
    "InvalidSystemDiskCategory.ValueNotSupported": ("SystemDisk.Category", "InstanceType", "ZoneId"),
    "IncorrectInstanceStatus.Initializing": ("InstanceId",),
    "IdempotentProcessing": ("ClientToken",),
}
# Values an error never repeats: user data may hold secrets, the others are long and not typed.
_NEVER_SHOWN = ("UserData", "PublicKeyBody", "Password")
_NAMED_IN_CODE = re.compile(r"^(?:Invalid|Missing)([A-Z][A-Za-z]*?)(?:\.|$)")


class ApiCaller:
    """Calls one SDK operation to its answer, retrying what retrying can fix."""

    def __init__(
        self,
        config: EcsConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock

    def __call__(self, what: str, call: Callable[[], Any], *, request: Any = None,
                 wait_out: tuple[str, ...] = ()) -> Any:  # fmt: skip
        """The body of `call()`'s answer; retried while retrying can help, else an EcsApiError.

        Codes in `wait_out`, like those saying an identical call is still being carried out, are
        asked again every second for up to two minutes before they count as the answer. The error
        of a refused `request` (found in a `partial` when not given) names the values it was refused
        for, and the region.
        """
        if request is None and isinstance(call, functools.partial) and call.args:
            request = call.args[0]
        attempt = 1
        processing_until: float | None = None
        while True:
            try:
                return call().body
            except TeaException as error:
                code = error.code or ""
                if code in _PROCESSING_CODES or code in wait_out:
                    now = self._clock()
                    processing_until = processing_until or now + PROCESSING_PATIENCE
                    if now < processing_until:
                        self._sleep(_PROCESSING_INTERVAL)
                        continue
                status = int(getattr(error, "status_code", 0) or (error.data or {}).get("statusCode") or 0)
                retriable = not code or code in _RETRIED_CODES or code.startswith("Throttling") or status >= 500
                attempts = self.config.api_attempts
                if not code and any(sign in _network_cause(error) for sign in _UNREACHABLE):
                    attempts = min(attempts, _UNREACHABLE_ATTEMPTS)
                if retriable and attempt < attempts:
                    self._sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise _translate(
                    what, error, attempts=attempt, retriable=retriable, endpoint=self.config.endpoint,
                    values=_request_values(request),
                ) from None

    def _backoff(self, attempt: int) -> float:
        # Full jitter: a random wait up to an exponentially growing cap, so clients spread out.
        return self._jitter() * min(20.0, 0.5 * 2.0 ** (attempt - 1))


def sdk_config(config: EcsConfig) -> Config:
    endpoint, protocol = config.endpoint, "https"
    if endpoint and "://" in endpoint:
        protocol, _, endpoint = endpoint.partition("://")
    options: dict[str, Any] = {
        "region_id": config.region_id,
        "endpoint": endpoint.rstrip("/") if endpoint else None,
        "protocol": protocol,
        "connect_timeout": 10000,
        "read_timeout": 60000,
    }
    if config.access_key_id:
        options.update(
            access_key_id=config.access_key_id,
            access_key_secret=config.access_key_secret,
            security_token=config.security_token,
        )
    elif config.credentials_source is CredentialsSource.CHAIN:
        options["credential"] = CredentialClient()
    elif config.credentials_source is CredentialsSource.ECS_RAM_ROLE:
        role = CredentialConfig(type="ecs_ram_role", role_name=config.ram_role_name)
        options["credential"] = CredentialClient(role)
    else:
        raise ConfigError(
            "no Alibaba Cloud credentials found",
            hint=(
                "Set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or configure the aliyun "
                "CLI, or on an ECS instance attach a RAM role to it, or try everything locally first with: "
                'eval "$(pymlsql sandbox start)"'
            ),
        )
    return Config(**options)


def _request_values(request: Any) -> dict[str, Any]:
    """A request's parameters by their API names, nested ones as `SystemDisk.Category`."""
    if request is None or not hasattr(request, "to_map"):
        return {}
    flat: dict[str, Any] = {}
    for name, value in request.to_map().items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": item for inner, item in value.items()})
        else:
            flat[name] = value
    return flat


def _offending(code: str, values: Mapping[str, Any]) -> str:
    """` (ImageId nope-image-123, region cn-hangzhou)`: what the refusal was about, as the user gave it."""
    named = _NAMED_IN_CODE.match(code)
    names = _ABOUT.get(code) or ((named[1],) if named else ())
    given = {name: _shown(values[name]) for name in names if values.get(name) not in (None, "", [])}
    shown = [f"{name} {value}" for name, value in given.items() if name not in _NEVER_SHOWN and len(value) <= 128]
    if values.get("RegionId") and "RegionId" not in names:
        shown.append(f"region {values['RegionId']}")
    return f" ({', '.join(shown)})" if shown else ""


def _shown(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _translate(
    what: str, error: TeaException, *, attempts: int, retriable: bool, endpoint: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> EcsApiError:
    data = error.data if isinstance(error.data, dict) else {}
    code = error.code or ""
    message = str(data.get("Message") or "")
    request_id = str(data.get("RequestId") or getattr(error, "request_id", "") or "")
    if not code:
        return _no_answer(what, _network_cause(error), attempts=attempts, endpoint=endpoint)
    # Some messages span lines (SignatureDoesNotMatch quotes the string to sign); errors are one line.
    shown = " ".join(str(message or error.message or "").split())
    text = f"ECS could not {what}: {code}: {shown}{_offending(code, values or {})}"
    if attempts > 1:
        text += f" (after {attempts} attempts)"
    if request_id:
        text += f" [RequestId {request_id}]"
    kind = InstanceStateError if code.startswith("IncorrectInstanceStatus") else EcsApiError
    return kind(text, code=code, api_message=message, request_id=request_id, hint=_hint(code, data, retriable))


def _hint(code: str, data: Mapping[str, Any], retriable: bool) -> str:
    if code in _HINTS:
        return _HINTS[code]
    if retriable:
        return "ECS is busy or throttling this account; wait a minute and try again."
    if data.get("Recommend"):
        return f"See {data['Recommend']} for what {code} means and how to fix it."
    return f"Look up the error code {code} in the ECS API documentation."


def _network_cause(error: TeaException) -> str:
    """The text of what went wrong below HTTP (the SDK nests it in a RetryError's dict)."""
    inner = getattr(error, "inner_exception", None)
    return str(inner or error.message or error)


def _no_answer(what: str, cause: str, *, attempts: int, endpoint: str | None) -> EcsApiError:
    """No answer at all: nothing listening, a name that does not resolve, a timeout, or credentials
    the chain could not find."""
    where = endpoint or "the ECS endpoint"
    after = f" (after {attempts} attempts)" if attempts > 1 else ""
    setting = f"PYMLSQL_ECS_ENDPOINT ({endpoint})" if endpoint else "the network and proxy settings"
    if "Connection refused" in cause:
        return EcsApiError(
            f"ECS could not {what}: {where} refused the connection{after}",
            code="NoResponse",
            hint=f"Check {setting}: nothing listens there. `pymlsql sandbox status` shows a local sandbox's endpoint.",
        )
    if any(sign in cause for sign in _UNREACHABLE):
        return EcsApiError(
            f"ECS could not {what}: the host of {where} does not resolve{after}",
            code="NoResponse",
            hint=f"Check {setting} and the DNS settings.",
        )
    errno = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", cause)
    return EcsApiError(
        f"ECS could not {what}: no answer from {where} ({errno[1].strip() if errno else _short(cause)}){after}",
        code="NoResponse",
        hint="Check the endpoint (PYMLSQL_ECS_ENDPOINT), the network and the credentials.",
    )


def _short(cause: object) -> str:
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text[:200]


