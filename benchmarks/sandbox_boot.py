"""How long the sandbox takes to bring N instances of one RunInstances call to SSH-ready.

Usage: .venv/bin/python benchmarks/sandbox_boot.py [COUNT] [DELAY]
Each transition takes DELAY seconds (default 1, the sandbox's default), so the floor is about
3 x DELAY; the rest is the cost of booting the machines (namespaces, host keys, sshd) at once.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient

from pymlsql_magics.sandbox import Sandbox, Timings


def _network(client: Client, vpcs: VpcClient, region: str) -> tuple[str, str]:
    """A VPC, a vSwitch and a group, as RunInstances needs them: (vSwitch id, group id)."""
    vpc_id = vpcs.create_vpc(vpc.CreateVpcRequest(region_id=region)).body.vpc_id
    while (found := vpcs.describe_vpcs(vpc.DescribeVpcsRequest(region_id=region, vpc_id=vpc_id)).body.vpcs.vpc[0]
           ).status != "Available":  # fmt: skip
        time.sleep(0.05)
    request = vpc.CreateVSwitchRequest(region_id=region, vpc_id=vpc_id, zone_id=f"{region}-h",
                                       cidr_block=found.cidr_block)  # fmt: skip
    vswitch_id = vpcs.create_vswitch(request).body.v_switch_id
    while vpcs.describe_vswitches(vpc.DescribeVSwitchesRequest(region_id=region, v_switch_id=vswitch_id)
                                  ).body.v_switches.v_switch[0].status != "Available":  # fmt: skip
        time.sleep(0.05)
    group = ecs.CreateSecurityGroupRequest(region_id=region, vpc_id=vpc_id)
    return vswitch_id, client.create_security_group(group).body.security_group_id


def main(count: int, delay: float) -> None:
    timings = Timings(pending=delay, starting=delay, stopping=delay, boot=delay)
    with Sandbox(tempfile.mkdtemp(prefix="boot-bench-"), timings=timings).start() as sandbox:
        config = Config(access_key_id=sandbox.access_key_id, access_key_secret=sandbox.access_key_secret,
                        endpoint=sandbox.endpoint.removeprefix("http://"), protocol="http")  # fmt: skip
        client = Client(config)
        vswitch_id, group_id = _network(client, VpcClient(config), sandbox.region_id)
        started = time.time()
        request = ecs.RunInstancesRequest(region_id=sandbox.region_id, image_id="m-sandbox-webuser",
                                          instance_type="ecs.g7.large", amount=count, v_switch_id=vswitch_id,
                                          security_group_id=group_id)  # fmt: skip
        client.run_instances(request)
        while not all(i["SshReady"] for i in sandbox.status()["instances"]):
            time.sleep(0.05)
        total = time.time() - started
        events = sandbox.log()["instances"].values()
        running = [e["running_at"] - started for e in events]
        ssh_after = [e["ssh_ready_at"] - e["running_at"] for e in events]
        closing = time.time()
    released = time.time() - closing
    print(f"{count} instances, {delay:g} s per transition")
    print(f"  all SSH-ready after      {total:6.2f} s")
    print(f"  Running at               {min(running):6.2f} .. {max(running):.2f} s")
    print(f"  SSH after Running        median {statistics.median(ssh_after):.2f} s, max {max(ssh_after):.2f} s")
    print(f"  sandbox close (release)  {released:6.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50, float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
