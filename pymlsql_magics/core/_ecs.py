"""The ECS API through its official SDK: the only module that imports it.

Every call crosses `_api_calls.ApiCaller`, which retries and turns errors into EcsApiError.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from types import MappingProxyType
from typing import Any

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client

from ._api_calls import ApiCaller, sdk_config
from ._config import EcsConfig
from ._costs import Price
from ._launch import DEFAULT_BANDWIDTH, LaunchSpec
from ._network_resources import GroupInfo, IngressRule
from ._results import Instance

_BATCH = 100


class EcsClient:
    """The ECS operations this project needs, over one SDK client."""

    def __init__(self, config: EcsConfig, *, call: ApiCaller | None = None) -> None:
        self.config = config
        self.region_id = config.region_id
        self._call = call or ApiCaller(config)
        self._client = Client(sdk_config(config))

    def __repr__(self) -> str:
        return f"EcsClient(region_id={self.region_id!r}, endpoint={self.config.endpoint!r})"

    # -- instances -------------------------------------------------------------------------

    def run_instances(self, spec: LaunchSpec, *, amount: int, client_token: str, tags: Mapping[str, str],
                      min_amount: int | None = None) -> list[str]:  # fmt: skip
        """RunInstances of `amount` instances as `spec` describes them: the one mapping of a spec to ECS.

        With `min_amount`, ECS makes as many as its stock allows, at least that many, else none.
        """
        disk = None
        if spec.system_disk_size or spec.system_disk_category:
            disk = ecs.RunInstancesRequestSystemDisk(
                size=str(spec.system_disk_size) if spec.system_disk_size else None, category=spec.system_disk_category
            )
        request = ecs.RunInstancesRequest(
            region_id=self.region_id,
            amount=amount,
            min_amount=min_amount,
            client_token=client_token,
            image_id=spec.image_id,
            instance_type=spec.instance_type,
            key_pair_name=spec.key_pair_name,
            security_group_id=spec.security_group,
            v_switch_id=spec.vswitch_id,
            zone_id=spec.zone,
            spot_strategy=spec.spot_mode,
            spot_price_limit=spec.spot_price_limit,
            ram_role_name=spec.ram_role,
            system_disk=disk,
            internet_max_bandwidth_out=(spec.bandwidth or DEFAULT_BANDWIDTH) if spec.need_public_ip else 0,
            instance_name=spec.name,
            user_data=base64.b64encode(spec.user_data.encode()).decode() if spec.user_data else None,
            auto_release_time=_auto_release(spec.ttl) if spec.ttl else None,
            tag=[ecs.RunInstancesRequestTag(key=key, value=value) for key, value in tags.items()] or None,
        )
        body = self._call("create instances", partial(self._client.run_instances, request))
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
            # Right after RunInstances ECS refuses to release for a while: wait it out, don't leak.
            self._call("release instances", partial(self._client.delete_instances, request),
                       wait_out=("IncorrectInstanceStatus.Initializing",))  # fmt: skip

    def console_output(self, instance_id: str) -> str:
        request = ecs.GetInstanceConsoleOutputRequest(region_id=self.region_id, instance_id=instance_id)
        body = self._call("read the console", partial(self._client.get_instance_console_output, request))
        return base64.b64decode(body.console_output or "").decode(errors="replace")

    # -- network: security groups and where a type is offered -----------------------------

    def security_groups(
        self, *, vpc_id: str | None = None, group_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[GroupInfo]:
        found: list[GroupInfo] = []
        token: str | None = None
        while True:
            request = ecs.DescribeSecurityGroupsRequest(
                region_id=self.region_id,
                vpc_id=vpc_id,
                security_group_id=group_id,
                tag=[ecs.DescribeSecurityGroupsRequestTag(key=k, value=v) for k, v in (tags or {}).items()] or None,
                max_results=100,
                next_token=token,
            )
            body = self._call("describe security groups", partial(self._client.describe_security_groups, request))
            items = body.security_groups.security_group if body.security_groups else None
            found += [_group(item) for item in items or []]
            token = body.next_token
            if not token:
                return found

    def create_security_group(self, *, vpc_id: str, name: str, tags: Mapping[str, str], client_token: str) -> str:
        request = ecs.CreateSecurityGroupRequest(
            region_id=self.region_id,
            vpc_id=vpc_id,
            security_group_name=name,
            description="Made by pymlsql: SSH in from ssh_source_cidr; `pymlsql network delete` removes it.",
            tag=[ecs.CreateSecurityGroupRequestTag(key=k, value=v) for k, v in tags.items()],
            client_token=client_token,
        )
        return str(self._call("create a security group", partial(self._client.create_security_group, request))
                   .security_group_id)  # fmt: skip

    def authorize_tcp(self, group_id: str, port: int, source_cidr: str, description: str) -> None:
        rule = ecs.AuthorizeSecurityGroupRequestPermissions(
            ip_protocol="TCP", port_range=f"{port}/{port}", source_cidr_ip=source_cidr, description=description
        )
        request = ecs.AuthorizeSecurityGroupRequest(region_id=self.region_id, security_group_id=group_id,
                                                    permissions=[rule])  # fmt: skip
        self._call(f"open TCP {port} of {group_id}", partial(self._client.authorize_security_group, request))

    def ingress_rules(self, group_id: str) -> list[IngressRule]:
        request = ecs.DescribeSecurityGroupAttributeRequest(
            region_id=self.region_id, security_group_id=group_id, direction="ingress"
        )
        body = self._call(f"read the rules of {group_id}",
                          partial(self._client.describe_security_group_attribute, request))  # fmt: skip
        items = body.permissions.permission if body.permissions else None
        return [
            IngressRule(item.ip_protocol or "", item.port_range or "", item.source_cidr_ip or "", item.policy or "")
            for item in items or []
            if (item.direction or "ingress") == "ingress"
        ]

    def delete_security_group(self, group_id: str) -> None:
        request = ecs.DeleteSecurityGroupRequest(region_id=self.region_id, security_group_id=group_id)
        self._call(f"delete the security group {group_id}", partial(self._client.delete_security_group, request))

    def zones_offering(self, instance_type: str) -> list[str]:
        """The zones of the region where `instance_type` can be created now, pay-as-you-go."""
        request = ecs.DescribeAvailableResourceRequest(
            region_id=self.region_id, destination_resource="InstanceType", instance_type=instance_type,
            instance_charge_type="PostPaid",
        )  # fmt: skip
        body = self._call(f"find the zones offering {instance_type}",
                          partial(self._client.describe_available_resource, request))  # fmt: skip
        zones = []
        for zone in (body.available_zones.available_zone if body.available_zones else None) or []:
            kinds = (zone.available_resources.available_resource if zone.available_resources else None) or []
            offered = [
                item
                for kind in kinds
                for item in ((kind.supported_resources.supported_resource if kind.supported_resources else None) or [])
                if item.value == instance_type and item.status == "Available"
            ]
            if zone.status == "Available" and offered:
                zones.append(zone.zone_id)
        return zones

    # -- prices ----------------------------------------------------------------------------

    def price(self, instance_type: str, *, zone: str | None = None, spot_strategy: str | None = None,
              amount: int = 1, system_disk_category: str | None = None, system_disk_size: int | None = None,
              bandwidth: int = 0) -> Price:  # fmt: skip
        """What `amount` such instances cost per hour in all, pay-as-you-go, as DescribePrice quotes it."""
        disk = None
        if system_disk_category or system_disk_size:
            disk = ecs.DescribePriceRequestSystemDisk(category=system_disk_category, size=system_disk_size)
        request = ecs.DescribePriceRequest(
            region_id=self.region_id, resource_type="instance", instance_type=instance_type, zone_id=zone,
            spot_strategy=spot_strategy, amount=amount, system_disk=disk, internet_max_bandwidth_out=bandwidth,
            price_unit="Hour", period=1,
        )  # fmt: skip
        body = self._call(f"price {instance_type}", partial(self._client.describe_price, request))
        price = body.price_info.price
        return Price(float(price.trade_price or 0.0), price.currency or "", amount)

    # -- key pairs -------------------------------------------------------------------------

    def create_key_pair(self, name: str) -> str:
        """Creates the key pair and returns its private key (ECS gives it out only once)."""
        request = ecs.CreateKeyPairRequest(region_id=self.region_id, key_pair_name=name)
        return str(self._call("create the key pair", partial(self._client.create_key_pair, request)).private_key_body)

    def import_key_pair(self, name: str, public_key: str) -> None:
        request = ecs.ImportKeyPairRequest(region_id=self.region_id, key_pair_name=name, public_key_body=public_key)
        self._call("import the key pair", partial(self._client.import_key_pair, request))

    def key_pair_public_key(self, name: str) -> str | None:
        """The public key ECS holds for `name`, or None if there is no such key pair."""
        request = ecs.DescribeKeyPairsRequest(region_id=self.region_id, key_pair_name=name, include_public_key=True)
        body = self._call("describe key pairs", partial(self._client.describe_key_pairs, request))
        for pair in body.key_pairs.key_pair or []:
            if pair.key_pair_name == name:
                return str(pair.public_key or "")
        return None

def _auto_release(ttl: float) -> str:
    when = datetime.fromtimestamp(time.time() + ttl, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _batches(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _BATCH] for i in range(0, len(ids), _BATCH)]


def _group(item: Any) -> GroupInfo:
    tags = {tag.tag_key: tag.tag_value or "" for tag in (item.tags.tag if item.tags else None) or []}
    return GroupInfo(item.security_group_id, item.vpc_id or "", item.security_group_name or "",
                     item.creation_time or "", MappingProxyType(tags))  # fmt: skip


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
        vpc_id=(item.vpc_attributes.vpc_id if item.vpc_attributes else None) or "",
        vswitch_id=(item.vpc_attributes.v_switch_id if item.vpc_attributes else None) or "",
        security_group_ids=tuple((item.security_group_ids.security_group_id if item.security_group_ids else None)
                                 or ()),  # fmt: skip
        spot_strategy=item.spot_strategy or "",
        creation_time=item.creation_time or "",
        lock_reasons=tuple(lock.lock_reason or "" for lock in (item.operation_locks.lock_reason
                                                                if item.operation_locks else None) or ()),  # fmt: skip
    )
