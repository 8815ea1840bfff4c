"""The ECS API through the official SDK: the only module that imports it.

Throttling, 5xx answers and network failures are retried with exponential backoff and full
jitter (an endpoint that refuses connections or does not resolve only twice); every other error
becomes an EcsApiError carrying Code, Message, RequestId and a hint.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from Tea.exceptions import TeaException

from ._config import CredentialsSource, EcsConfig
from ._errors import ConfigError, EcsApiError, InstanceStateError
from ._launch import LaunchSpec
from ._results import Instance

T = TypeVar("T")
_BATCH = 100
_PUBLIC_BANDWIDTH = 10  # Mbit/s out, when a start asks for public addresses
# Nothing listens at the endpoint, or its name does not resolve: a second try covers an endpoint
# that is restarting, more tries only delay the message.
_UNREACHABLE = ("Connection refused", "Failed to resolve", "Name or service not known", "nodename nor servname")
_UNREACHABLE_ATTEMPTS = 2
_RETRIED_CODES = ("Throttling", "ServiceUnavailable", "InternalError", "Throttling.User", "Throttling.Api",
                  "Throttling.Resource", "OperationConflict", "LastTokenProcessing")  # fmt: skip
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
    "IncorrectInstanceStatus": "Wait until the instance is Running or Stopped, then try again.",
    "InvalidUserData.SizeExceeded": "Keep user data under 16 KB; copy larger files after start instead.",
    "Forbidden.RAM": "Grant this RAM user the ECS permission it needs.",
    "QuotaExceed.ElasticQuota": "Raise the instance quota in the ECS console, or use fewer or smaller instances.",
}


class EcsClient:
    """The ECS operations this project needs, over one SDK client."""

    def __init__(
        self,
        config: EcsConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.region_id = config.region_id
        self._sleep = sleep
        self._jitter = jitter
        self._client = Client(_sdk_config(config))

    def __repr__(self) -> str:
        return f"EcsClient(region_id={self.region_id!r}, endpoint={self.config.endpoint!r})"

    # -- instances -------------------------------------------------------------------------

    def run_instances(self, spec: LaunchSpec, *, amount: int, client_token: str, tags: Mapping[str, str]) -> list[str]:
        """RunInstances of `amount` instances as `spec` describes them: the one mapping of a spec to ECS."""
        disk = None
        if spec.system_disk_size or spec.system_disk_category:
            disk = ecs.RunInstancesRequestSystemDisk(
                size=str(spec.system_disk_size) if spec.system_disk_size else None, category=spec.system_disk_category
            )
        request = ecs.RunInstancesRequest(
            region_id=self.region_id,
            amount=amount,
            client_token=client_token,
            image_id=spec.image_id,
            instance_type=spec.instance_type,
            key_pair_name=spec.key_pair_name,
            security_group_id=spec.security_group,
            v_switch_id=spec.vswitch_id,
            zone_id=spec.zone,
            spot_strategy=spec.spot_strategy,
            system_disk=disk,
            internet_max_bandwidth_out=_PUBLIC_BANDWIDTH if spec.need_public_ip else 0,
            instance_name=spec.name,
            user_data=base64.b64encode(spec.user_data.encode()).decode() if spec.user_data else None,
            auto_release_time=_auto_release(spec.ttl) if spec.ttl else None,
            tag=[ecs.RunInstancesRequestTag(key=key, value=value) for key, value in tags.items()] or None,
        )
        body = self._call("create instances", lambda: self._client.run_instances(request))
        return list(body.instance_id_sets.instance_id_set)

    def describe(
        self, instance_ids: Sequence[str] | None = None, *, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Every instance matching the ids and tags, over as many pages and calls as needed."""
        if instance_ids is not None and not instance_ids:
            return []
        batches: Iterable[Sequence[str] | None] = (
            [instance_ids[i : i + _BATCH] for i in range(0, len(instance_ids), _BATCH)]
            if instance_ids is not None
            else [None]
        )
        found: list[Instance] = []
        tag_filter = [ecs.DescribeInstancesRequestTag(key=k, value=v) for k, v in (tags or {}).items()] or None
        for batch in batches:
            token: str | None = None
            while True:
                request = ecs.DescribeInstancesRequest(
                    region_id=self.region_id,
                    instance_ids=json.dumps(list(batch)) if batch is not None else None,
                    tag=tag_filter,
                    max_results=100,
                    next_token=token,
                )
                body = self._call("describe instances", partial(self._client.describe_instances, request))
                found += [_instance(item) for item in body.instances.instance or []]
                token = body.next_token
                if not token:
                    break
        return found

    def start(self, instance_ids: Sequence[str]) -> None:
        for batch in _batches(instance_ids):
            request = ecs.StartInstancesRequest(region_id=self.region_id, instance_id=list(batch))
            self._call("start instances", partial(self._client.start_instances, request))

    def stop(self, instance_ids: Sequence[str]) -> None:
        for batch in _batches(instance_ids):
            request = ecs.StopInstancesRequest(region_id=self.region_id, instance_id=list(batch))
            self._call("stop instances", partial(self._client.stop_instances, request))

    def delete(self, instance_ids: Sequence[str], *, force: bool = True) -> None:
        for batch in _batches(instance_ids):
            request = ecs.DeleteInstancesRequest(region_id=self.region_id, instance_id=list(batch), force=force)
            self._call("release instances", partial(self._client.delete_instances, request))

    def console_output(self, instance_id: str) -> str:
        request = ecs.GetInstanceConsoleOutputRequest(region_id=self.region_id, instance_id=instance_id)
        body = self._call("read the console", lambda: self._client.get_instance_console_output(request))
        return base64.b64decode(body.console_output or "").decode(errors="replace")

    # -- key pairs -------------------------------------------------------------------------

    def create_key_pair(self, name: str) -> str:
        """Creates the key pair and returns its private key (ECS gives it out only once)."""
        request = ecs.CreateKeyPairRequest(region_id=self.region_id, key_pair_name=name)
        return str(self._call("create the key pair", lambda: self._client.create_key_pair(request)).private_key_body)

    def import_key_pair(self, name: str, public_key: str) -> None:
        request = ecs.ImportKeyPairRequest(region_id=self.region_id, key_pair_name=name, public_key_body=public_key)
        self._call("import the key pair", lambda: self._client.import_key_pair(request))

    def key_pair_public_key(self, name: str) -> str | None:
        """The public key ECS holds for `name`, or None if there is no such key pair."""
        request = ecs.DescribeKeyPairsRequest(region_id=self.region_id, key_pair_name=name, include_public_key=True)
        body = self._call("describe key pairs", lambda: self._client.describe_key_pairs(request))
        for pair in body.key_pairs.key_pair or []:
            if pair.key_pair_name == name:
                return str(pair.public_key or "")
        return None

    # -- the retry and translation boundary ------------------------------------------------

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        attempt = 1
        while True:
            try:
                return call().body
            except TeaException as error:
                code = error.code or ""
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
                    what, error, attempts=attempt, retriable=retriable, endpoint=self.config.endpoint
                ) from None

    def _backoff(self, attempt: int) -> float:
        # Full jitter: a random wait up to an exponentially growing cap, so clients spread out.
        return self._jitter() * min(20.0, 0.5 * 2.0 ** (attempt - 1))


def _auto_release(ttl: float) -> str:
    when = datetime.fromtimestamp(time.time() + ttl, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _batches(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _BATCH] for i in range(0, len(ids), _BATCH)]


def _sdk_config(config: EcsConfig) -> Config:
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
    else:
        raise ConfigError(
            "no Alibaba Cloud credentials found",
            hint=(
                "Set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or configure the aliyun "
                'CLI, or try everything locally first with: eval "$(pymlsql sandbox start)"'
            ),
        )
    return Config(**options)


def _translate(
    what: str, error: TeaException, *, attempts: int, retriable: bool, endpoint: str | None = None
) -> EcsApiError:
    data = error.data if isinstance(error.data, dict) else {}
    code = error.code or ""
    message = str(data.get("Message") or "")
    request_id = str(data.get("RequestId") or getattr(error, "request_id", "") or "")
    if not code:
        return _no_answer(what, _network_cause(error), attempts=attempts, endpoint=endpoint)
    # Some messages span lines (SignatureDoesNotMatch quotes the string to sign); errors are one line.
    shown = " ".join(str(message or error.message or "").split())
    text = f"ECS could not {what}: {code}: {shown}"
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


def _instance(item: Any) -> Instance:
    public = list(item.public_ip_address.ip_address or []) if item.public_ip_address else []
    eip = item.eip_address.ip_address if item.eip_address and item.eip_address.ip_address else ""
    private = []
    if item.vpc_attributes and item.vpc_attributes.private_ip_address:
        private = list(item.vpc_attributes.private_ip_address.ip_address or [])
    if not private and item.inner_ip_address:
        private = list(item.inner_ip_address.ip_address or [])
    tags = {tag.tag_key: tag.tag_value or "" for tag in (item.tags.tag if item.tags else None) or []}
    return Instance(
        instance_id=item.instance_id,
        status=item.status or "",
        name=item.instance_name or "",
        hostname=item.host_name or "",
        private_ip=private[0] if private else "",
        public_ip=public[0] if public else eip,
        key_pair_name=item.key_pair_name or "",
        image_id=item.image_id or "",
        instance_type=item.instance_type or "",
        zone_id=item.zone_id or "",
        tags=MappingProxyType(tags),
    )
