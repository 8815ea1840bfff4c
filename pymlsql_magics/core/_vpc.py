"""The VPC product's API (2016-04-28) through its official SDK: the only module that imports it.

ECS's own VPC actions are deprecated; like Terraform, VPCs and vSwitches go through this product,
security groups and instances through ECS. Both cross the same `ApiCaller`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import MappingProxyType

from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client

from ._api_calls import ApiCaller, sdk_config
from ._config import EcsConfig
from ._network_resources import VpcInfo, VSwitchInfo

_PAGE = 50


class VpcClient:
    """The VPC operations this project needs, over one SDK client."""

    def __init__(self, config: EcsConfig, call: ApiCaller | None = None) -> None:
        self.region_id = config.region_id
        self._call = call or ApiCaller(config)
        self._client = Client(sdk_config(config))

    def vpcs(self, *, vpc_ids: tuple[str, ...] = (), tags: Mapping[str, str] | None = None) -> list[VpcInfo]:
        found: list[VpcInfo] = []
        page = 1
        while True:
            request = vpc.DescribeVpcsRequest(
                region_id=self.region_id,
                vpc_id=",".join(vpc_ids) or None,
                tag=[vpc.DescribeVpcsRequestTag(key=k, value=v) for k, v in (tags or {}).items()] or None,
                page_number=page,
                page_size=_PAGE,
            )
            body = self._call("describe VPCs", partial(self._client.describe_vpcs, request))
            items = body.vpcs.vpc if body.vpcs else None
            found += [_vpc(item) for item in items or []]
            if page * _PAGE >= int(body.total_count or 0):
                return found
            page += 1

    def create_vpc(self, *, name: str, tags: Mapping[str, str], client_token: str) -> str:
        request = vpc.CreateVpcRequest(
            region_id=self.region_id,
            vpc_name=name,
            description="Made by pymlsql for its instances; `pymlsql network delete` removes it.",
            tag=[vpc.CreateVpcRequestTag(key=k, value=v) for k, v in tags.items()],
            client_token=client_token,
        )
        return str(self._call("create a VPC", partial(self._client.create_vpc, request)).vpc_id)

    def delete_vpc(self, vpc_id: str) -> None:
        request = vpc.DeleteVpcRequest(region_id=self.region_id, vpc_id=vpc_id)
        self._call(f"delete the VPC {vpc_id}", partial(self._client.delete_vpc, request))

    def vswitches(
        self, *, vpc_id: str | None = None, vswitch_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[VSwitchInfo]:
        found: list[VSwitchInfo] = []
        page = 1
        while True:
            request = vpc.DescribeVSwitchesRequest(
                region_id=self.region_id,
                vpc_id=vpc_id,
                v_switch_id=vswitch_id,
                tag=[vpc.DescribeVSwitchesRequestTag(key=k, value=v) for k, v in (tags or {}).items()] or None,
                page_number=page,
                page_size=_PAGE,
            )
            body = self._call("describe vSwitches", partial(self._client.describe_vswitches, request))
            items = body.v_switches.v_switch if body.v_switches else None
            found += [_vswitch(item) for item in items or []]
            if page * _PAGE >= int(body.total_count or 0):
                return found
            page += 1

    def create_vswitch(
        self, *, vpc_id: str, zone_id: str, cidr: str, name: str, tags: Mapping[str, str], client_token: str
    ) -> str:
        request = vpc.CreateVSwitchRequest(
            region_id=self.region_id,
            vpc_id=vpc_id,
            zone_id=zone_id,
            cidr_block=cidr,
            v_switch_name=name,
            tag=[vpc.CreateVSwitchRequestTag(key=k, value=v) for k, v in tags.items()],
            client_token=client_token,
        )
        body = self._call(f"create a vSwitch in {zone_id}", partial(self._client.create_vswitch, request))
        return str(body.v_switch_id)

    def delete_vswitch(self, vswitch_id: str) -> None:
        request = vpc.DeleteVSwitchRequest(region_id=self.region_id, v_switch_id=vswitch_id)
        self._call(f"delete the vSwitch {vswitch_id}", partial(self._client.delete_vswitch, request))


def _tags(item: object) -> Mapping[str, str]:
    tags = getattr(getattr(item, "tags", None), "tag", None) or []
    return MappingProxyType({tag.key: tag.value or "" for tag in tags})


def _vpc(item: vpc.DescribeVpcsResponseBodyVpcsVpc) -> VpcInfo:
    return VpcInfo(
        vpc_id=item.vpc_id,
        cidr=item.cidr_block or "",
        status=item.status or "",
        name=item.vpc_name or "",
        created=item.creation_time or "",
        tags=_tags(item),
    )


def _vswitch(item: vpc.DescribeVSwitchesResponseBodyVSwitchesVSwitch) -> VSwitchInfo:
    return VSwitchInfo(
        vswitch_id=item.v_switch_id,
        vpc_id=item.vpc_id or "",
        zone_id=item.zone_id or "",
        cidr=item.cidr_block or "",
        status=item.status or "",
        free_addresses=int(item.available_ip_address_count or 0),
        created=item.creation_time or "",
        tags=_tags(item),
    )
