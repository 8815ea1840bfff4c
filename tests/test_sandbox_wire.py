"""The sandbox's network on the wire, as root: private addresses only inside their VPC, public
addresses only on the ports the groups open, each instance with its own interfaces, and the
public bandwidth capped. Through the SDK and OpenSSH."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_vpc20160428 import models as vpc

from pymlsql_magics.core import EcsConfig, Fleet
from pymlsql_magics.sandbox import Sandbox, read_info

from .conftest import FAST
from .helpers import (
    SdkNetwork,
    address,
    api_error,
    describe,
    environment,
    make_network,
    new_client,
    new_vpc_client,
    pymlsql,
    run,
    sdk_network,
    ssh,
    wait_for,
    wait_ssh,
    wait_status,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network rules are enforced only as root")


def placed_in(network: SdkNetwork) -> dict[str, str]:
    return {"v_switch_id": network.vswitch_id, "security_group_id": network.security_group_id}


def connects(host: str, port: int, *, timeout: float = 3) -> bool:
    """Whether a TCP connection from this machine is accepted and not reset at once."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(0.3)
            try:
                return connection.recv(1, socket.MSG_PEEK) != b""
            except TimeoutError:
                return True  # accepted, and nothing said yet (an HTTP server waits for the request)
    except OSError:
        return False


Described = ecs.DescribeInstancesResponseBodyInstancesInstance


def start_instances(client: Client, region: str, launched: list[str], key: str, count: int,
                    network: SdkNetwork, **fields: object) -> list[Described]:  # fmt: skip
    ids = run(client, region, launched=launched, amount=count, key_pair_name=key, **placed_in(network), **fields)
    wait_status(client, region, ids, "Running")
    return describe(client, region, ids)


def test_private_addresses_answer_only_inside_their_vpc(
    sandbox: Sandbox, client: Client, region: str, key_pair: tuple[str, Path], launched: list[str]
) -> None:
    name, key = key_pair
    ours = sdk_network(sandbox, region)
    theirs = make_network(client, new_vpc_client(sandbox), region, zone=ours.zone_id)
    first, second = start_instances(client, region, launched, name, 2, ours, internet_max_bandwidth_out=5)
    (other,) = start_instances(client, region, launched, name, 1, theirs, internet_max_bandwidth_out=0)
    public = address(first, public=True)
    wait_ssh(public, key)

    assert not connects(address(first, public=False), 22), "this machine reached a private address"
    assert not connects(address(other, public=False), 22), "this machine reached a private address"
    assert other.public_ip_address.ip_address == []

    probe = "timeout 3 bash -c '</dev/tcp/{}/22' && echo open || echo closed"
    assert ssh(public, key, probe.format(address(second, public=False))).stdout.strip() == "open"
    assert ssh(public, key, probe.format(address(other, public=False))).stdout.strip() == "closed"

    shown: dict[str, list[str]] = {}
    for line in ssh(public, key, "ip -o -4 addr show").stdout.splitlines():
        fields = line.split()
        shown.setdefault(fields[1], []).append(fields[3])
    # Its own interface with the private address only: the public one is NAT, as on ECS.
    assert shown == {"lo": ["127.0.0.1/8", "100.100.100.200/32"], "eth0": [f"{address(first, public=False)}/20"]}


def authorize(client: Client, region: str, group: str, port: int, source: str) -> None:
    permission = ecs.AuthorizeSecurityGroupRequestPermissions(
        ip_protocol="TCP", port_range=f"{port}/{port}", source_cidr_ip=source
    )
    client.authorize_security_group(
        ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group, permissions=[permission])
    )


def revoke(client: Client, region: str, group: str, port: int, source: str) -> None:
    permission = ecs.RevokeSecurityGroupRequestPermissions(
        ip_protocol="TCP", port_range=f"{port}/{port}", source_cidr_ip=source
    )
    client.revoke_security_group(
        ecs.RevokeSecurityGroupRequest(region_id=region, security_group_id=group, permissions=[permission])
    )


def test_a_public_address_answers_only_on_the_ports_its_groups_open_to_the_source(
    sandbox: Sandbox, client: Client, region: str, key_pair: tuple[str, Path], launched: list[str]
) -> None:
    name, key = key_pair
    network = make_network(client, new_vpc_client(sandbox), region)
    group = network.security_group_id
    (instance,) = start_instances(client, region, launched, name, 1, network, internet_max_bandwidth_out=5)
    public = address(instance, public=True)
    wait_ssh(public, key)
    served = ssh(public, key, "setsid python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null & "
                              "sleep 0.5; timeout 5 bash -c 'until </dev/tcp/127.0.0.1/8080; do sleep 0.1; done' "
                              "2>/dev/null && echo up")  # fmt: skip
    assert served.stdout.strip() == "up", served.stderr

    assert not connects(public, 8080), "a port no rule opens answered"
    authorize(client, region, group, 8080, "10.0.0.0/8")
    time.sleep(0.5)
    assert not connects(public, 8080), "a port opened to another source answered this machine"
    authorize(client, region, group, 8080, "127.0.0.1/32")
    wait_for(lambda: connects(public, 8080), timeout=5, what="port 8080 to open")
    revoke(client, region, group, 8080, "127.0.0.1/32")
    wait_for(lambda: not connects(public, 8080), timeout=5, what="port 8080 to close")

    revoke(client, region, group, 22, "0.0.0.0/0")
    wait_for(lambda: not connects(public, 22), timeout=5, what="port 22 to close")
    authorize(client, region, group, 22, "0.0.0.0/0")
    wait_ssh(public, key)


def timed(command: list[str], stdin: bytes | None = None) -> float:
    began = time.monotonic()
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - began


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox with the public bandwidth caps on, as `pymlsql sandbox start` runs by default."""
    with Sandbox(tmp_path_factory.mktemp("capped"), timings=FAST).start() as running:
        yield running


def test_public_traffic_is_capped_by_the_instance_bandwidth_both_ways(capped: Sandbox, tmp_path: Path) -> None:
    client, region = new_client(capped), capped.region_id
    launched: list[str] = []
    pair = client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name="capped")).body
    key = tmp_path / "capped"
    key.write_text(pair.private_key_body)
    key.chmod(0o600)
    name = "capped"
    network = sdk_network(capped, region)
    (instance,) = start_instances(client, region, launched, name, 1, network,
                                  internet_max_bandwidth_out=2, internet_max_bandwidth_in=3)  # fmt: skip
    public = address(instance, public=True)
    wait_ssh(public, key)
    ssh_command = ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                   "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{public}"]  # fmt: skip
    size = 1_000_000
    handshake = timed([*ssh_command, "true"])
    down = timed([*ssh_command, f"head -c {size} /dev/zero"]) - handshake
    up = timed([*ssh_command, "cat > /dev/null"], stdin=bytes(size)) - handshake
    # Only upper bounds on the rates: a loaded machine may be slower, never faster than the caps.
    # (benchmarks/bandwidth.py measures how close to the caps the rates come.)
    assert size * 8 / down / 1e6 <= 2 * 1.2, f"{size * 8 / down / 1e6:.2f} Mbit/s down through a 2 Mbit/s cap"
    assert size * 8 / up / 1e6 <= 3 * 1.2, f"{size * 8 / up / 1e6:.2f} Mbit/s up through a 3 Mbit/s cap"
    client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance.instance_id, force=True))


def test_a_command_run_inside_an_instance_sees_what_a_program_on_ecs_sees(
    sandbox: Sandbox, client: Client, region: str, key_pair: tuple[str, Path], launched: list[str], tmp_path: Path
) -> None:
    name, key = key_pair
    network = sdk_network(sandbox, region)
    (instance,) = start_instances(client, region, launched, name, 1, network, internet_max_bandwidth_out=5)
    wait_ssh(address(instance), key)
    env = environment(sandbox, tmp_path)

    def inside(*argv: str) -> subprocess.CompletedProcess[str]:
        return pymlsql(env, "sandbox", "run", "--state-dir", str(sandbox.state_dir), instance.instance_id, "--", *argv)

    # Also where this machine has no DMI at all (many VMs), and with the rest of /sys/class intact.
    assert inside("cat", "/sys/class/dmi/id/product_name").stdout == "Alibaba Cloud ECS\n"
    assert inside("ls", "/sys/class/net").stdout.split() == sorted(os.listdir("/sys/class/net"))
    # The sandbox's API answers inside at the address it has outside, and sessions are told where.
    assert inside("sh", "-c", "echo $PYMLSQL_ECS_ENDPOINT").stdout.strip() == sandbox.endpoint
    ask_api = "import sys, urllib.request as u; u.urlopen(sys.argv[1] + '/?Action=DescribeRegions')"
    refused = inside("python3", "-c", ask_api, sandbox.endpoint)
    assert "HTTP Error 400" in refused.stderr or "HTTP Error 403" in refused.stderr, refused.stderr  # unsigned
    ask = ("import sys, urllib.request as u; "
           "print(u.urlopen('http://100.100.100.200/latest/meta-data/' + sys.argv[1]).read().decode())")
    expected = {
        "instance-id": instance.instance_id,
        "region-id": region,
        "zone-id": network.zone_id,
        "vpc-id": network.vpc_id,
        "vswitch-id": network.vswitch_id,
        "private-ipv4": address(instance, public=False),
        "eipv4": address(instance),
    }
    for path, value in expected.items():
        done = inside("python3", "-c", ask, path)
        assert (done.returncode, done.stdout) == (0, f"{value}\n"), (path, done.stderr)
    listing = inside("python3", "-c", ask, "").stdout.split()
    assert set(expected) <= set(listing)
    assert inside("hostname").stdout.strip() == instance.host_name
    assert inside("sh", "-c", "id -un; exit 7").stdout == "root\n"
    assert inside("sh", "-c", "exit 7").returncode == 7

    done = pymlsql(env, "sandbox", "run", "--state-dir", str(sandbox.state_dir), "i-nosuchinstance", "--", "true")
    assert done.returncode == 1
    assert "i-nosuchinstance has no machine running" in done.stderr


def test_an_instance_ram_role_gives_sts_credentials_the_api_accepts_with_their_token(
    sandbox: Sandbox, client: Client, region: str, key_pair: tuple[str, Path], launched: list[str], tmp_path: Path
) -> None:
    name, key = key_pair
    (instance,) = start_instances(client, region, launched, name, 1, sdk_network(sandbox, region),
                                  ram_role_name="pymlsql-workers")  # fmt: skip
    wait_ssh(address(instance), key)
    # What alibabacloud-credentials' ECS RAM role provider does on an instance (IMDSv2 token, the
    # role's name, then its credentials), with the instance's own python3 and nothing installed.
    fetch = """
import json, urllib.request as u
base = "http://100.100.100.200/latest/"
token = u.urlopen(u.Request(base + "api/token", method="PUT",
                            headers={"X-aliyun-ecs-metadata-token-ttl-seconds": "21600"})).read().decode()
def get(path):
    return u.urlopen(u.Request(base + "meta-data/" + path, headers={"X-aliyun-ecs-metadata-token": token})).read()
role = get("ram/security-credentials/").decode()
found = json.loads(get("ram/security-credentials/" + role))
assert found["Code"] == "Success", found
print(json.dumps([role, found["AccessKeyId"], found["AccessKeySecret"], found["SecurityToken"], found["Expiration"]]))
"""
    done = pymlsql(environment(sandbox, tmp_path), "sandbox", "run", "--state-dir", str(sandbox.state_dir),
                   instance.instance_id, "--", "python3", "-c", fetch)  # fmt: skip
    assert done.returncode == 0, done.stderr
    role, key_id, secret, token, expiration = json.loads(done.stdout)
    assert role == "pymlsql-workers" and key_id.startswith("STS.") and token
    hours = (time.mktime(time.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) / 3600
    assert 5.9 < hours <= 6.0

    def describe_with(security_token: str) -> object:
        scheme, _, host = sandbox.endpoint.partition("://")
        config = Config(access_key_id=key_id, access_key_secret=secret, security_token=security_token,
                        endpoint=host, protocol=scheme, region_id=region)  # fmt: skip
        request = ecs.DescribeInstancesRequest(region_id=region, instance_ids=json.dumps([instance.instance_id]))
        return Client(config).describe_instances(request).body.instances.instance[0].instance_id

    assert describe_with(token) == instance.instance_id
    with pytest.raises(Exception, match="InvalidSecurityToken.MismatchWithAccessKey"):
        describe_with(token[:-4] + "AAAA")


def test_an_eip_gives_an_instance_its_public_address_until_it_is_unassociated(
    sandbox: Sandbox, client: Client, region: str, key_pair: tuple[str, Path], launched: list[str]
) -> None:
    name, key = key_pair
    vpcs = new_vpc_client(sandbox)
    (instance,) = start_instances(client, region, launched, name, 1, sdk_network(sandbox, region),
                                  internet_max_bandwidth_out=0)  # fmt: skip
    assert instance.public_ip_address.ip_address == []
    allocated = vpcs.allocate_eip_address(vpc.AllocateEipAddressRequest(region_id=region, bandwidth=3)).body
    allocation_id, eip = allocated.allocation_id, allocated.eip_address

    def status() -> str:
        request = vpc.DescribeEipAddressesRequest(region_id=region, allocation_id=allocation_id)
        found = vpcs.describe_eip_addresses(request).body.eip_addresses.eip_address
        return str(found[0].status) if found else "gone"

    assert status() == "Available" and not connects(eip, 22)
    vpcs.associate_eip_address(vpc.AssociateEipAddressRequest(region_id=region, allocation_id=allocation_id,
                                                              instance_id=instance.instance_id))  # fmt: skip
    wait_for(lambda: status() == "InUse", what="the EIP to be InUse")
    (shown,) = describe(client, region, [instance.instance_id])
    assert (shown.eip_address.ip_address, shown.eip_address.allocation_id) == (eip, allocation_id)
    wait_ssh(eip, key)
    # The client finds the EIP in DescribeInstances and dials it, with no flag.
    config = EcsConfig.from_env(sandbox.environment(), known_hosts=str(key.parent / "known_hosts"),
                                key_dir=str(key.parent))  # fmt: skip
    with Fleet(config) as fleet:
        (found,) = fleet.get([instance.instance_id])
        assert found.public_ip == eip
        assert fleet.exec([found], "hostname")[instance.instance_id].stdout.strip() == instance.host_name  # type: ignore[union-attr]
    refused = api_error(lambda: vpcs.release_eip_address(
        vpc.ReleaseEipAddressRequest(region_id=region, allocation_id=allocation_id)))  # fmt: skip
    assert refused.code == "IncorrectEipStatus"

    vpcs.unassociate_eip_address(vpc.UnassociateEipAddressRequest(region_id=region, allocation_id=allocation_id,
                                                                  instance_id=instance.instance_id))  # fmt: skip
    assert not connects(eip, 22), "an EIP being unassociated still answered"
    wait_for(lambda: status() == "Available", what="the EIP to be Available")
    vpcs.release_eip_address(vpc.ReleaseEipAddressRequest(region_id=region, allocation_id=allocation_id))
    assert status() == "gone"
    missing = api_error(lambda: vpcs.release_eip_address(
        vpc.ReleaseEipAddressRequest(region_id=region, allocation_id=allocation_id)))  # fmt: skip
    assert missing.code == "InvalidAllocationId.NotFound"


def _namespaces_in_use() -> dict[str, set[int]]:
    """Network namespace -> the processes in it, over every process of this machine."""
    found: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.setdefault(os.readlink(entry / "ns" / "net"), set()).add(int(entry.name))
            except OSError:
                pass  # gone meanwhile
    return found


def test_a_killed_sandbox_leaves_no_network_behind(tmp_path: Path) -> None:
    env = environment(None, tmp_path)
    state = tmp_path / "state"
    before = set(_namespaces_in_use())
    started = pymlsql(env, "sandbox", "start", "--state-dir", str(state), "--boot-delay", "0.3",
                      "--pending-delay", "0.3", "--starting-delay", "0.3")  # fmt: skip
    assert started.returncode == 0, started.stderr
    info = read_info(state)
    assert info is not None
    config = EcsConfig.from_env(info.environment(), known_hosts=str(tmp_path / "known_hosts"),
                                key_dir=str(tmp_path / "keys"))  # fmt: skip
    with Fleet(config) as fleet:
        (instance,) = fleet.start(image_id="debian_12_x64_20G_alibase_20240101.vhd", key_pair_name="crash",
                                  init_ssh_key=True)  # fmt: skip
    made = set(_namespaces_in_use()) - before
    assert len(made) >= 2, "the instance's network and its VPC's bridge each have a namespace"
    assert connects(instance.public_ip, 22)

    os.kill(info.pid, signal.SIGKILL)  # no clean-up code of the sandbox runs
    wait_for(lambda: not (made & set(_namespaces_in_use())), timeout=15, what="the sandbox's namespaces to go")
    assert not connects(instance.public_ip, 22)
    stopped = pymlsql(env, "sandbox", "stop", "--state-dir", str(state))
    assert stopped.returncode == 0, stopped.stderr
