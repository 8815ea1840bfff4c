"""Helpers for tests: the official SDK, the OpenSSH client, and waiting without sleeping blindly."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient
from IPython.core.interactiveshell import InteractiveShell

from pymlsql_magics.sandbox import Sandbox, Timings

T = TypeVar("T")
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def _sdk_config(sandbox: Sandbox, key_id: str | None = None, secret: str | None = None) -> Config:
    return Config(
        access_key_id=key_id or sandbox.access_key_id,
        access_key_secret=secret or sandbox.access_key_secret,
        endpoint=sandbox.endpoint.removeprefix("http://"),
        protocol="http",
        region_id=sandbox.region_id,
    )


_sandbox_of: weakref.WeakKeyDictionary[Client, Sandbox] = weakref.WeakKeyDictionary()


def new_client(sandbox: Sandbox, *, key_id: str | None = None, secret: str | None = None) -> Client:
    """The official ECS SDK client, configured as a user would for an HTTP endpoint."""
    client = Client(_sdk_config(sandbox, key_id, secret))
    _sandbox_of[client] = sandbox
    return client


def new_vpc_client(sandbox: Sandbox) -> VpcClient:
    """The official VPC SDK client (VPCs, vSwitches), at the same endpoint."""
    return VpcClient(_sdk_config(sandbox))


@dataclass(frozen=True)
class SdkNetwork:
    vpc_id: str
    vswitch_id: str
    security_group_id: str
    zone_id: str


_networks: dict[tuple[str, str, str], SdkNetwork] = {}


def sdk_network(sandbox: Sandbox, region: str | None = None, *, zone: str | None = None) -> SdkNetwork:
    """The tests' network in `sandbox`, made once per sandbox, region and zone (default: the first)."""
    region = region or sandbox.region_id
    zone = zone or f"{region}-h"
    key = (sandbox.endpoint, region, zone)
    if key not in _networks:
        _networks[key] = make_network(new_client(sandbox), new_vpc_client(sandbox), region, zone=zone)
    return _networks[key]


def make_network(client: Client, vpcs: VpcClient, region: str, *, zone: str | None = None,
                 ssh_from: str = "0.0.0.0/0") -> SdkNetwork:  # fmt: skip
    """A VPC, a vSwitch and a group letting SSH in, made through the SDKs as their users would: where
    tests that call RunInstances themselves put their instances."""
    vpc_id = vpcs.create_vpc(vpc.CreateVpcRequest(region_id=region, vpc_name="tests")).body.vpc_id

    def vpc_ready() -> Any:
        found = vpcs.describe_vpcs(vpc.DescribeVpcsRequest(region_id=region, vpc_id=vpc_id)).body.vpcs.vpc
        return found[0] if found and found[0].status == "Available" else None

    cidr = wait_for(vpc_ready, what=f"{vpc_id} to be Available").cidr_block
    zone = zone or f"{region}-h"
    first_block = cidr.replace("0.0/16", "0.0/20")
    vswitch_id = vpcs.create_vswitch(vpc.CreateVSwitchRequest(region_id=region, vpc_id=vpc_id, zone_id=zone,
                                                              cidr_block=first_block)).body.v_switch_id  # fmt: skip

    def vswitch_ready() -> bool:
        request = vpc.DescribeVSwitchesRequest(region_id=region, v_switch_id=vswitch_id)
        found = vpcs.describe_vswitches(request).body.v_switches.v_switch
        return bool(found) and found[0].status == "Available"

    wait_for(vswitch_ready, what=f"{vswitch_id} to be Available")
    group_id = client.create_security_group(
        ecs.CreateSecurityGroupRequest(region_id=region, vpc_id=vpc_id, security_group_name="tests")
    ).body.security_group_id
    ssh = ecs.AuthorizeSecurityGroupRequestPermissions(ip_protocol="TCP", port_range="22/22", source_cidr_ip=ssh_from)
    client.authorize_security_group(
        ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id, permissions=[ssh])
    )
    return SdkNetwork(vpc_id, vswitch_id, group_id, zone)


def shared_network(client: Client, region: str) -> SdkNetwork:
    """The tests' network in the sandbox `client` talks to."""
    return sdk_network(_sandbox_of[client], region)


def placed(client: Client, region: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` of a RunInstances or CreateInstance request, in the tests' network unless they name one."""
    if "v_switch_id" in fields:
        return fields
    network = shared_network(client, region)
    return {"v_switch_id": network.vswitch_id, "security_group_id": network.security_group_id, **fields}


def wait_for(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Polls `check` until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        time.sleep(interval)


def describe(client: Client, region: str, ids: list[str]) -> list[Any]:
    request = ecs.DescribeInstancesRequest(region_id=region, instance_ids=json.dumps(ids), page_size=100)
    return client.describe_instances(request).body.instances.instance


def statuses(client: Client, region: str, ids: list[str]) -> dict[str, str]:
    return {item.instance_id: item.status for item in describe(client, region, ids)}


def wait_status(client: Client, region: str, ids: list[str], status: str, timeout: float = 30) -> list[Any]:
    def reached() -> list[Any] | None:
        items = describe(client, region, ids)
        return items if len(items) == len(ids) and all(i.status == status for i in items) else None

    return wait_for(reached, timeout=timeout, interval=0.1, what=f"{ids} to be {status}")


def create_request(client: Client, region: str, **fields: Any) -> ecs.CreateInstanceRequest:
    """A CreateInstance request in the tests' network unless `fields` name one."""
    return ecs.CreateInstanceRequest(region_id=region, **placed(client, region, fields))


def run(
    client: Client,
    region: str,
    *,
    launched: list[str],
    image_id: str = "debian_12_x64_20G_alibase_20240101.vhd",
    instance_type: str = "ecs.g7.large",
    **fields: Any,
) -> list[str]:
    """RunInstances through the SDK; the ids are recorded in `launched` for release.

    Instances get a public address unless `fields` say otherwise: this machine reaches no other.
    """
    fields.setdefault("internet_max_bandwidth_out", 100)
    request = ecs.RunInstancesRequest(region_id=region, image_id=image_id, instance_type=instance_type,
                                      **placed(client, region, fields))  # fmt: skip
    ids = client.run_instances(request).body.instance_id_sets.instance_id_set
    launched.extend(ids)
    return ids


def address(instance: Any, *, public: bool = True) -> str:
    """The address this machine dials (the public one), or with `public=False` the private one."""
    if public:
        return instance.public_ip_address.ip_address[0]
    return instance.vpc_attributes.private_ip_address.ip_address[0]


def ssh_port(instance: Any) -> int:
    tags = {tag.tag_key: tag.tag_value for tag in instance.tags.tag}
    return int(tags.get("pymlsql:ssh-port", 22))


def ssh(
    host: str,
    key: Path,
    command: str,
    *,
    port: int = 22,
    user: str = "root",
    known_hosts: Path | None = None,
    timeout: float = 30,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `command` with the OpenSSH client; host keys are checked only if `known_hosts` is given."""
    checking = (
        ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
        if known_hosts
        else ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    )
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", *checking, f"{user}@{host}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )  # fmt: skip


def wait_ssh(host: str, key: Path, *, port: int = 22, timeout: float = 30) -> None:
    wait_for(
        lambda: ssh(host, key, "true", port=port).returncode == 0,
        timeout=timeout,
        interval=0.1,
        what=f"SSH on {host}:{port}",
    )


def api_error(call: Callable[[], Any]) -> Any:
    """Runs an SDK call that must fail and returns the SDK's exception."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the SDK's own exception types
        if getattr(error, "code", None) is None:
            raise
        return error
    raise AssertionError("the call succeeded, but an ECS error was expected")


# -- the `pymlsql` command as a shell script runs it ---------------------------------------

BIN = Path(sys.executable).parent
PYMLSQL = str(BIN / "pymlsql")


def environment(sandbox: Sandbox | None, home: Path, **extra: str) -> dict[str, str]:
    """What a user's shell would have: the venv first on PATH, a HOME, the sandbox's variables."""
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8",
           "PYMLSQL_METADATA_ENDPOINT": "off"}  # fmt: skip
    if sandbox is not None:
        env.update(sandbox.environment())
    env.update(extra)
    return env


def pymlsql(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYMLSQL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(done: subprocess.CompletedProcess[str], *, exit_code: int | None = None) -> list[str]:
    """The error a failed command printed: one or two lines, the second a hint, no traceback."""
    assert done.returncode != 0, done.stdout
    if exit_code is not None:
        assert done.returncode == exit_code, done.stderr
    assert "Traceback" not in done.stderr
    assert "pymlsql: error: " in done.stderr, done.stderr
    lines = done.stderr[done.stderr.index("pymlsql: error: ") :].strip().splitlines()
    assert 1 <= len(lines) <= 2, lines
    return lines


def hinted_error(done: subprocess.CompletedProcess[str], *, exit_code: int | None = None) -> tuple[str, str]:
    lines = error_lines(done, exit_code=exit_code)
    assert len(lines) == 2 and lines[1].startswith("Hint: "), lines
    return lines[0], lines[1]


def requests_since(sandbox: Sandbox, mark: int, action: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.log()["requests"][mark:] if r["action"] == action]


@contextmanager
def creates_nothing(sandbox: Sandbox, *, run_calls: int = 0) -> Iterator[None]:
    """No instance appears, even for a moment; `run_calls` RunInstances calls are made, all refused."""
    known = set(sandbox.log()["instances"])
    mark = len(sandbox.log()["requests"])
    yield
    assert set(sandbox.log()["instances"]) == known
    calls = requests_since(sandbox, mark, "RunInstances") + requests_since(sandbox, mark, "CreateInstance")
    assert len(calls) == run_calls and all(call["code"] != "OK" for call in calls), calls


# -- the magics in a real IPython shell ----------------------------------------------------


def magics_shell(folder: Path, *, key_dir: Path | None = None) -> InteractiveShell:
    """The IPython shell with the extension loaded; its host keys, keys and logs under `folder`."""
    ipython = InteractiveShell.instance()
    ipython.history_manager.enabled = False
    ipython.run_line_magic("load_ext", "pymlsql_magics")
    magics = ipython.magics_manager.registry["EcsMagics"]
    magics.known_hosts = str(folder / "known_hosts")
    magics.key_dir = str(key_dir or folder / "keys")
    magics.log_dir = str(folder / "logs")
    magics.start_timeout = 60.0
    return ipython


# -- a module's own sandbox, and what its log and world say ------------------------------------


def own_sandbox(folder: Path, timings: Timings) -> Iterator[Sandbox]:
    """A fixture body: a sandbox of the module's own in `folder`, which must end with no instance."""
    with Sandbox(folder, timings=timings).start() as running:
        yield running
        left = running.status()["instances"]
        assert not left, f"instances left behind: {left}"


def home_folder(folder: Path) -> Path:
    """A user's home for the CLI and the magics: `folder`, with a private ~/.ssh."""
    (folder / ".ssh").mkdir(mode=0o700)
    return folder


def codes(sandbox: Sandbox, action: str, since: int) -> list[str]:
    """The codes the sandbox answered `action` with since request number `since`."""
    return [r["code"] for r in sandbox.log()["requests"][since:] if r["action"] == action]


def ids_named(sandbox: Sandbox, name: str) -> list[str]:
    assert sandbox.world is not None
    with sandbox.world.lock:
        return [i.instance_id for i in sandbox.world.instances.values() if i.name == name]


def started_ids(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The ids `pymlsql start` printed, as PyMLSQL's scripts read them."""
    return [line.split(":", 1)[1] for line in done.stdout.splitlines() if line.startswith("instance_id:")]
