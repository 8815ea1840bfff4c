"""The client's network on a fresh account: found or made once, reused, checked when given, removed on
request; and the address it dials decided by where it runs. Through the core, the CLI and the magics."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs

from pymlsql_magics.core import EcsConfig, Fleet, Instance
from pymlsql_magics.core._errors import ConfigError
from pymlsql_magics.core._network import NetworkPlanner
from pymlsql_magics.core._whereabouts import Whereabouts
from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import environment, hinted_error, magics_shell, make_network, new_client, new_vpc_client, pymlsql, unique

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
MADE = ("CreateVpc", "CreateVSwitch", "CreateSecurityGroup", "AuthorizeSecurityGroup", "CreateKeyPair",
        "RunInstances", "CreateInstance")  # fmt: skip


@pytest.fixture(scope="module")
def netbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox of this module's own: its regions start with no network at all."""
    with Sandbox(tmp_path_factory.mktemp("netbox"), timings=FAST).start() as running:
        yield running
        left = running.status()["instances"]
        assert not left, f"instances left behind: {left}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("net-home")


def fleet_in(sandbox: Sandbox, home: Path, region: str, said: list[str] | None = None) -> Fleet:
    config = EcsConfig.from_env(sandbox.environment(), region_id=region, known_hosts=str(home / "known_hosts"),
                                key_dir=str(home / ".ssh"))  # fmt: skip
    return Fleet(config, progress=(said if said is not None else []).append)


def tagged(sandbox: Sandbox, region: str) -> dict[str, list[str]]:
    """The ids of what the tool tagged as its own in `region`, by kind."""
    world = sandbox.world
    assert world is not None
    with world.lock:
        own = {"pymlsql:created-by": "pymlsql"}
        return {
            "vpcs": [v.vpc_id for v in world.vpcs.values() if v.region_id == region and own.items() <= v.tags.items()],
            "vswitches": [v.vswitch_id for v in world.vswitches.values()
                          if v.region_id == region and own.items() <= v.tags.items()],
            "groups": [g.security_group_id for g in world.security_groups.values()
                       if g.region_id == region and own.items() <= g.tags.items()],
        }  # fmt: skip


def ingress(sandbox: Sandbox, region: str, group_id: str) -> list[tuple[str, str, str]]:
    request = ecs.DescribeSecurityGroupAttributeRequest(region_id=region, security_group_id=group_id)
    found = new_client(sandbox).describe_security_group_attribute(request).body.permissions.permission
    return [(rule.ip_protocol, rule.port_range, rule.source_cidr_ip) for rule in found]


@contextmanager
def makes_nothing(sandbox: Sandbox) -> Iterator[None]:
    """No call that makes something (network, key pair, instance) succeeds meanwhile."""
    mark = len(sandbox.log()["requests"])
    yield
    made = [(r["action"], r["code"]) for r in sandbox.log()["requests"][mark:] if r["action"] in MADE]
    assert all(code != "OK" for _, code in made), made


# -- found or made once ------------------------------------------------------------------------


@pytest.fixture
def hangzhou(netbox: Sandbox, home: Path) -> Iterator[tuple[Fleet, list[str], list[Instance]]]:
    """A fleet in cn-hangzhou, what it said, and the instances a test adds to release at its end."""
    said: list[str] = []
    started: list[Instance] = []
    with fleet_in(netbox, home, "cn-hangzhou", said) as fleet:
        yield fleet, said, started
        fleet.stop(started)


def test_a_start_without_network_flags_makes_one_network_and_the_next_start_reuses_it(
    netbox: Sandbox, hangzhou: tuple[Fleet, list[str], list[Instance]]
) -> None:
    (fleet, said, started), region = hangzhou, "cn-hangzhou"
    key = unique("net-key")
    first = fleet.start(image_id=DEBIAN, key_pair_name=key, init_ssh_key=True, name=unique("net"))
    started += first
    made = tagged(netbox, region)
    assert [len(made[kind]) for kind in ("vpcs", "vswitches", "groups")] == [1, 1, 1], made
    assert any(line.startswith("network: created VPC") for line in said), said
    assert ingress(netbox, region, made["groups"][0]) == [("TCP", "22/22", "0.0.0.0/0")]
    (instance,) = first
    assert (instance.vpc_id, instance.vswitch_id) == (made["vpcs"][0], made["vswitches"][0])
    # From this machine, outside the VPC, a start gets and dials public addresses.
    assert instance.public_ip and not fleet.exec(first, "true").failed

    said.clear()
    second = fleet.start(image_id=DEBIAN, key_pair_name=key, name=unique("net"))
    started += second
    assert tagged(netbox, region) == made
    network_lines = [line for line in said if line.startswith("network: ")]
    assert any(line.startswith("network: found VPC") for line in network_lines), said
    assert not any("created" in line for line in network_lines), said

    (network,) = fleet.networks()
    assert network.vpc_id == made["vpcs"][0]
    assert sorted(network.instances) == sorted(i.instance_id for i in started)
    with makes_nothing(netbox), pytest.raises(Exception, match="still used") as refused:
        fleet.delete_networks()
    assert "Release those instances first" in str(refused.value)
    fleet.stop(started)
    started.clear()
    deleted = fleet.delete_networks()
    assert sorted(deleted) == sorted(made["groups"] + made["vswitches"] + made["vpcs"])
    assert tagged(netbox, region) == {"vpcs": [], "vswitches": [], "groups": []}


def test_two_clients_that_race_for_a_network_end_with_one(netbox: Sandbox, home: Path) -> None:
    region = "cn-beijing"
    barrier = threading.Barrier(2)
    found: list[Any] = []

    def plan() -> None:
        with fleet_in(netbox, home, region) as fleet:
            planner = NetworkPlanner(fleet.ecs, fleet.vpc, progress=lambda _: None, timeout=30)
            barrier.wait()
            found.append(planner.network_for("ecs.g7.large", vswitch_id=None, security_group=None, zone=None,
                                             ssh_source_cidr="0.0.0.0/0"))  # fmt: skip

    threads = [threading.Thread(target=plan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(found) == 2 and found[0] == found[1], found
    made = tagged(netbox, region)
    assert made == {"vpcs": [found[0].vpc_id], "vswitches": [found[0].vswitch_id],
                    "groups": [found[0].security_group_id]}  # fmt: skip
    with fleet_in(netbox, home, region) as fleet:
        fleet.delete_networks()


def test_ssh_cidr_is_the_only_source_the_made_group_lets_ssh_in_from(netbox: Sandbox, home: Path) -> None:
    region = "ap-southeast-1"
    env = environment(netbox, home)
    done = pymlsql(env, "start", "--region", region, "--image-id", DEBIAN, "--ssh-cidr", "203.0.113.7/32")
    assert done.returncode == 0, done.stderr
    (group_id,) = tagged(netbox, region)["groups"]
    assert ingress(netbox, region, group_id) == [("TCP", "22/22", "203.0.113.7/32")]
    assert "network: created security group" in done.stderr and "public addresses" in done.stderr
    listed = pymlsql(env, "list", "--region", region)
    assert " ssh via public " in listed.stdout, listed.stdout
    assert pymlsql(env, "stop", "--all", "--region", region).returncode == 0

    listed = json.loads(pymlsql(env, "network", "list", "--region", region, "--output", "json").stdout)
    assert [(n["made_by_this_tool"], n["security_groups"], n["instances"]) for n in listed] == [(True, [group_id], [])]
    deleted = pymlsql(env, "network", "delete", "--region", region)
    assert deleted.returncode == 0 and "deleted 3 network resource(s)" in deleted.stderr, deleted.stderr
    assert pymlsql(env, "network", "list", "--region", region).stdout == ""


# -- given, and checked before anything is made --------------------------------------------------


def foreign_network(sandbox: Sandbox, region: str, zone: str, *, ssh_from: str = "0.0.0.0/0") -> Any:
    """A network the user made through the SDKs (not tagged as this tool's)."""
    return make_network(new_client(sandbox), new_vpc_client(sandbox), region, zone=zone, ssh_from=ssh_from)


@pytest.fixture(scope="module")
def theirs(netbox: Sandbox) -> dict[str, Any]:
    region = "cn-shanghai"
    return {
        "open": foreign_network(netbox, region, f"{region}-h"),
        "closed": foreign_network(netbox, region, f"{region}-i", ssh_from="10.0.0.0/8"),
        "region": region,
    }


BAD_STARTS = {
    "no-such-vswitch": (lambda t: ["--vswitch-id", "vsw-nosuchswitch"],
                        ["vSwitch vsw-nosuchswitch does not exist", "--vswitch-id"]),
    "group-of-another-vpc": (lambda t: ["--vswitch-id", t["open"].vswitch_id,
                                        "--security-group", t["closed"].security_group_id],
                             ["is in vpc-", "Pass a group and a vSwitch of one VPC"]),
    "zone-not-the-vswitchs": (lambda t: ["--vswitch-id", t["open"].vswitch_id, "--zone", "cn-shanghai-k"],
                              ["is in cn-shanghai-h, not in the zone cn-shanghai-k", "Leave --zone out"]),
    "group-closed-to-ssh": (lambda t: ["--vswitch-id", t["closed"].vswitch_id,
                                       "--security-group", t["closed"].security_group_id],
                            ["does not let TCP 22 in from 0.0.0.0/0", "--ssh-cidr"]),
    "ssh-cidr-not-a-cidr": (lambda t: ["--ssh-cidr", "everyone"], ["--ssh-cidr must be an IPv4 address block", "e.g."]),
    "private-only-from-outside": (lambda t: ["--need-public-ip", "false"],
                                  ["--need-public-ip is false, but this client runs outside any VPC",
                                   "run the start from an ECS instance"]),
    "bandwidth-too-high": (lambda t: ["--bandwidth", "101"], ["--bandwidth must be 1 to 100 Mbit/s, got 101", "1-100"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_STARTS))
def test_a_start_with_a_network_that_cannot_work_says_so_in_two_lines_and_makes_nothing(
    netbox: Sandbox, home: Path, theirs: dict[str, Any], case: str
) -> None:
    flags, expected = BAD_STARTS[case]
    env = environment(netbox, home)
    with makes_nothing(netbox):
        done = pymlsql(env, "start", "--region", theirs["region"], "--image-id", DEBIAN, "--key-pair-name",
                       unique("never"), "--init-ssh-key", "true", *flags(theirs))  # fmt: skip
    first, hint = hinted_error(done, exit_code=2)
    assert expected[0] in first and expected[1] in hint, (first, hint)
    assert tagged(netbox, theirs["region"]) == {"vpcs": [], "vswitches": [], "groups": []}


def test_a_given_group_that_opens_ssh_is_used_as_given(netbox: Sandbox, home: Path, theirs: dict[str, Any]) -> None:
    region, network = theirs["region"], theirs["open"]
    with fleet_in(netbox, home, region) as fleet:
        (instance,) = fleet.start(image_id=DEBIAN, security_group=network.security_group_id)
        try:
            assert (instance.vswitch_id, instance.security_group_ids) == (network.vswitch_id,
                                                                          (network.security_group_id,))  # fmt: skip
            # Only the group was given: the roomiest vSwitch of its VPC; nothing of this tool's was made.
            assert tagged(netbox, region) == {"vpcs": [], "vswitches": [], "groups": []}
        finally:
            fleet.stop([instance])


BESIDE_REFUSED = {
    "zone-not-the-clients": (lambda t: {"vswitch_id": t["open"].vswitch_id, "zone": "cn-shanghai-k"},
                             ["this client runs in cn-shanghai-h", "not in the zone cn-shanghai-k",
                              "Leave --zone out"]),
    "vswitch-not-shown": (lambda t: {"vswitch_id": "vsw-elsewhere", "zone": None},
                          ["which region cn-shanghai does not show to these credentials", "--region"]),
    "type-not-in-the-clients-zone": (lambda t: {"vswitch_id": t["open"].vswitch_id, "zone": None,
                                                "instance_type": "ecs.nope.large"},
                                     ["ecs.nope.large cannot be created in cn-shanghai-h", "--vswitch-id of"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BESIDE_REFUSED))
def test_a_start_from_inside_a_vpc_that_cannot_go_beside_its_client_says_why_and_makes_nothing(
    netbox: Sandbox, home: Path, theirs: dict[str, Any], case: str
) -> None:
    given, expected = BESIDE_REFUSED[case]
    place = given(theirs)
    client_home = Whereabouts(theirs["open"].vpc_id, "i-theclient0000000000", place["vswitch_id"], "cn-shanghai-h")
    with fleet_in(netbox, home, theirs["region"]) as fleet, makes_nothing(netbox):
        planner = NetworkPlanner(fleet.ecs, fleet.vpc, progress=lambda _: None, timeout=30)
        with pytest.raises(ConfigError) as raised:
            planner.network_for(place.get("instance_type", "ecs.g7.large"), vswitch_id=None, security_group=None,
                                zone=place["zone"], ssh_source_cidr="0.0.0.0/0", home=client_home)  # fmt: skip
    text = str(raised.value)
    assert all(part in text for part in expected), text


# -- the magics ------------------------------------------------------------------------------------


def test_the_magics_show_and_delete_the_network_and_refuse_a_bad_cidr(
    netbox: Sandbox, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    region = "cn-hangzhou"
    for name, value in {**netbox.environment(), "ALIBABA_CLOUD_REGION_ID": region}.items():
        monkeypatch.setenv(name, value)
    shell = magics_shell(tmp_path)
    started = shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {unique('magic-net')}")
    header, row = repr(shell.run_line_magic("ecs_list", "")).splitlines()[1:]
    via = header.split().index("ssh_via")
    assert row.split()[via] == "public", (header, row)
    assert repr(started).splitlines()[-1].split()[via] == "public"
    networks = shell.run_line_magic("ecs_network", "list")
    (network,) = networks
    assert network.vpc_id in tagged(netbox, region)["vpcs"] and len(network.instances) == 1

    with makes_nothing(netbox), pytest.raises(Exception, match="still used"):
        shell.run_line_magic("ecs_network", "delete")
    with makes_nothing(netbox), pytest.raises(Exception, match="--ssh-cidr must be an IPv4 address block"):
        shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --ssh-cidr 300.1.1.1/8")
    shell.run_line_magic("ecs_stop", "--all")
    shell.run_line_magic("ecs_network", "delete")
    assert shell.run_line_magic("ecs_network", "list") == []


def test_an_instance_without_a_public_address_is_refused_from_outside_its_vpc(
    netbox: Sandbox, home: Path, theirs: dict[str, Any]
) -> None:
    region, network = theirs["region"], theirs["open"]
    client = new_client(netbox)
    request = ecs.RunInstancesRequest(region_id=region, image_id=DEBIAN, instance_type="ecs.g7.large",
                                      v_switch_id=network.vswitch_id, security_group_id=network.security_group_id,
                                      key_pair_name="")  # fmt: skip
    (instance_id,) = client.run_instances(request).body.instance_id_sets.instance_id_set
    try:
        with fleet_in(netbox, home, region) as fleet:
            (found,) = fleet.get([instance_id])
            assert isinstance(found, Instance) and not found.public_ip
            with pytest.raises(Exception, match="has no public address") as refused:
                fleet.dials_public(found)
            assert "--need-public-ip true" in str(refused.value)
            assert fleet.dials_public(found, public=False) is False  # the old flag still forces a choice
    finally:
        client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id, force=True))


# -- where this client runs ------------------------------------------------------------------------


def test_the_metadata_service_is_asked_only_on_ecs_or_where_set(tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pymlsql_magics.core._whereabouts import METADATA_ENDPOINT, find_whereabouts, metadata_base

    laptop, ecs_dmi = tmp_path / "laptop", tmp_path / "ecs"
    laptop.write_text("ThinkPad X1\n")
    ecs_dmi.write_text("Alibaba Cloud ECS\n")
    assert metadata_base(None, laptop) is None and metadata_base(None, tmp_path / "absent") is None
    assert metadata_base(None, ecs_dmi) == METADATA_ENDPOINT
    assert metadata_base("off", ecs_dmi) is None  # "off" wins even on ECS

    asked: list[str] = []
    answers = {"vpc-id": "vpc-inside0000000000", "instance-id": "i-client000000000000", "vswitch-id": "vsw-client",
               "zone-id": "cn-shanghai-b", "region-id": "cn-shanghai"}  # fmt: skip

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            asked.append(self.path)
            body = answers.get(self.path.removeprefix("/latest/meta-data/"), "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        where = find_whereabouts(base, laptop)
        first = list(asked)
        asked.clear()
        # Nothing given: the region is the instance's own. A RAM role is used only through the one
        # address alibabacloud-credentials asks, so a metadata service elsewhere gives no credentials.
        config = EcsConfig.from_env({"PYMLSQL_METADATA_ENDPOINT": base, "HOME": str(tmp_path)})
        given = EcsConfig.from_env({"PYMLSQL_METADATA_ENDPOINT": base, "HOME": str(tmp_path),
                                    "ALIBABA_CLOUD_REGION_ID": "cn-beijing"})  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert first == [f"/latest/meta-data/{key}" for key in ("vpc-id", "instance-id", "vswitch-id", "zone-id")]
    assert where == Whereabouts("vpc-inside0000000000", "i-client000000000000", "vsw-client", "cn-shanghai-b")
    assert where.inside("vpc-inside0000000000")
    assert config.region_id == "cn-shanghai" and not config.has_credentials
    assert given.region_id == "cn-beijing" and asked == ["/latest/meta-data/region-id"]
    assert not where.inside("vpc-other") and not find_whereabouts("off", ecs_dmi).inside("vpc-inside0000000000")
