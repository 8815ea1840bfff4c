"""`pymlsql sandbox ...` as a user runs it from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PYMLSQL = str(Path(sys.executable).parent / "pymlsql")
FAST_FLAGS = ["--pending-delay", "0.3", "--starting-delay", "0.3", "--stopping-delay", "0.3", "--boot-delay", "0.3"]

# What a user's script does after `eval "$(pymlsql sandbox start)"`: the official SDK and OpenSSH.
SDK_SCRIPT = r"""
import json, os, subprocess, sys, time
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient
scheme, _, host = os.environ["PYMLSQL_ECS_ENDPOINT"].partition("://")
region = os.environ["ALIBABA_CLOUD_REGION_ID"]
config = Config(access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
    access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"], endpoint=host, protocol=scheme)
client, vpcs = Client(config), VpcClient(config)
# A network, as on Alibaba Cloud: a VPC, a vSwitch in one zone, a group that lets SSH in.
vpc_id = vpcs.create_vpc(vpc.CreateVpcRequest(region_id=region)).body.vpc_id
while True:
    (found,) = vpcs.describe_vpcs(vpc.DescribeVpcsRequest(region_id=region, vpc_id=vpc_id)).body.vpcs.vpc
    if found.status == "Available":
        break
    time.sleep(0.1)
vswitch_id = vpcs.create_vswitch(vpc.CreateVSwitchRequest(region_id=region, vpc_id=vpc_id, zone_id=region + "-h",
    cidr_block=found.cidr_block.replace("/16", "/24"))).body.v_switch_id
while vpcs.describe_vswitches(vpc.DescribeVSwitchesRequest(region_id=region,
        v_switch_id=vswitch_id)).body.v_switches.v_switch[0].status != "Available":
    time.sleep(0.1)
group_id = client.create_security_group(ecs.CreateSecurityGroupRequest(region_id=region,
    vpc_id=vpc_id)).body.security_group_id
client.authorize_security_group(ecs.AuthorizeSecurityGroupRequest(region_id=region, security_group_id=group_id,
    permissions=[ecs.AuthorizeSecurityGroupRequestPermissions(ip_protocol="TCP", port_range="22/22",
                                                              source_cidr_ip="0.0.0.0/0")]))
pair = client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name="cli-key")).body
key = sys.argv[1]
with open(key, "w") as f:
    f.write(pair.private_key_body)
os.chmod(key, 0o600)
ids = client.run_instances(ecs.RunInstancesRequest(region_id=region, image_id="m-sandbox-webuser",
    instance_type="ecs.g7.large", key_pair_name="cli-key", v_switch_id=vswitch_id, security_group_id=group_id,
    internet_max_bandwidth_out=5)).body.instance_id_sets.instance_id_set
while True:
    (item,) = client.describe_instances(ecs.DescribeInstancesRequest(region_id=region,
        instance_ids=json.dumps(ids))).body.instances.instance
    if item.status == "Running":
        break
    time.sleep(0.1)
ip = item.public_ip_address.ip_address[0]  # from outside the VPC, only the public address reaches it
for _ in range(100):
    done = subprocess.run(["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@" + ip, "hostname"],
        capture_output=True, text=True)
    if done.returncode == 0:
        break
    time.sleep(0.1)
print(json.dumps({"id": ids[0], "ip": ip, "hostname": done.stdout.strip(), "api": item.host_name}))
"""


def pymlsql(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PYMLSQL, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def state_dirs(tmp_path):
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path / name)
        return made[-1]

    yield make
    for state_dir in made:
        pymlsql("sandbox", "stop", "--state-dir", str(state_dir), check=False)


def _sandbox_processes(state_dir: Path) -> list[int]:
    """Processes whose command line, environment or mounts mention `state_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            seen += (proc / "mountinfo").read_bytes()
        except OSError:
            continue
        if str(state_dir).encode() in seen:
            found.append(int(proc.name))
    return found


def test_start_prints_exports_that_configure_a_shell_for_the_sdk_and_ssh(state_dirs, tmp_path):
    state_dir = state_dirs("one")
    started = pymlsql("sandbox", "start", "--state-dir", str(state_dir), *FAST_FLAGS)
    names = [line.split("=")[0] for line in started.stdout.splitlines()]
    assert names == [
        "export ALIBABA_CLOUD_ACCESS_KEY_ID",
        "export ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "export ALIBABA_CLOUD_REGION_ID",
        "export PYMLSQL_ECS_ENDPOINT",
        "export PYMLSQL_METADATA_ENDPOINT",
    ]
    assert "PYMLSQL_ECS_ENDPOINT=http://127.0.0.1:" in started.stdout
    assert "PYMLSQL_METADATA_ENDPOINT=off" in started.stdout

    script = tmp_path / "user.py"
    script.write_text(SDK_SCRIPT)
    shell = f'eval "$({PYMLSQL} sandbox start --state-dir {state_dir})" && {sys.executable} {script} {tmp_path / "key"}'
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["hostname"] == result["api"] != ""
    assert "already running" in done.stderr


def test_status_reports_instances_and_says_when_nothing_runs(state_dirs):
    state_dir = state_dirs("status")
    stopped = pymlsql("sandbox", "status", "--state-dir", str(state_dir), check=False)
    assert stopped.returncode == 3 and "not running" in stopped.stdout

    pymlsql("sandbox", "start", "--state-dir", str(state_dir), *FAST_FLAGS)
    status = json.loads(pymlsql("sandbox", "status", "--state-dir", str(state_dir), "--json").stdout)
    assert status["full_fidelity"] is (os.geteuid() == 0)
    assert status["instances"] == []
    assert "running at http://127.0.0.1:" in pymlsql("sandbox", "status", "--state-dir", str(state_dir)).stdout


def test_two_sandboxes_run_side_by_side_and_stop_leaves_no_process(state_dirs, tmp_path):
    first, second = state_dirs("first"), state_dirs("second")
    script = tmp_path / "user.py"
    script.write_text(SDK_SCRIPT)
    results = []
    for index, state_dir in enumerate((first, second)):
        shell = (
            f'eval "$({PYMLSQL} sandbox start --state-dir {state_dir} {" ".join(FAST_FLAGS)})" && '
            f"{sys.executable} {script} {tmp_path / f'key{index}'}"
        )
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout.splitlines()[-1]))

    infos = [json.loads((d / "server.json").read_text()) for d in (first, second)]
    assert infos[0]["port"] != infos[1]["port"]
    assert infos[0]["network"] != infos[1]["network"]
    assert results[0]["ip"].split(".")[:2] != results[1]["ip"].split(".")[:2]
    assert all(r["hostname"] == r["api"] for r in results)
    assert _sandbox_processes(first) and _sandbox_processes(second)

    pymlsql("sandbox", "stop", "--state-dir", str(first))

    assert _sandbox_processes(first) == []
    assert _sandbox_processes(second)
    assert not (first / "instances").exists() or not any((first / "instances").iterdir())
    pymlsql("sandbox", "stop", "--state-dir", str(second))
    assert _sandbox_processes(second) == []


def test_fault_and_log_commands_drive_a_running_sandbox(state_dirs, tmp_path):
    state_dir = state_dirs("faults")
    exports = pymlsql("sandbox", "start", "--state-dir", str(state_dir), *FAST_FLAGS).stdout
    pymlsql("sandbox", "fault", "--state-dir", str(state_dir), "--action", "DescribeRegions",
            "--code", "Throttling.User", "--status", "400", "--count", "1")  # fmt: skip
    probe = (
        "from alibabacloud_ecs20140526.client import Client\n"
        "from alibabacloud_ecs20140526 import models as ecs\n"
        "from alibabacloud_tea_openapi.models import Config\n"
        "import os\n"
        "h = os.environ['PYMLSQL_ECS_ENDPOINT'].split('//')[1]\n"
        "c = Client(Config(access_key_id=os.environ['ALIBABA_CLOUD_ACCESS_KEY_ID'], "
        "access_key_secret=os.environ['ALIBABA_CLOUD_ACCESS_KEY_SECRET'], endpoint=h, protocol='http'))\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        c.describe_regions(ecs.DescribeRegionsRequest()); print('ok')\n"
        "    except Exception as e:\n"
        "        print(e.code)\n"
    )
    shell = f'{exports}\n{sys.executable} -c "$PROBE"'
    done = subprocess.run(["bash", "-c", shell], env={**os.environ, "PROBE": probe},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["Throttling.User", "ok"], done.stderr

    log = json.loads(pymlsql("sandbox", "log", "--state-dir", str(state_dir), "--json").stdout)
    assert [(r["action"], r["code"]) for r in log["requests"]] == [
        ("DescribeRegions", "Throttling.User"),
        ("DescribeRegions", "OK"),
    ]
    assert "DescribeRegions" in pymlsql("sandbox", "log", "--state-dir", str(state_dir)).stdout


def test_commands_against_no_sandbox_fail_with_a_hint(state_dirs):
    state_dir = state_dirs("none")
    done = pymlsql("sandbox", "fault", "--state-dir", str(state_dir), "--clear", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("pymlsql: error: no sandbox runs for")
    assert "pymlsql sandbox start" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_runs_in_the_foreground_until_interrupted(tmp_path):
    state_dir = tmp_path / "serve"
    server = subprocess.Popen([PYMLSQL, "sandbox", "serve", "--state-dir", str(state_dir), *FAST_FLAGS],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = server.stdout.readline()
        assert first.startswith("export ALIBABA_CLOUD_ACCESS_KEY_ID=")
        status = pymlsql("sandbox", "status", "--state-dir", str(state_dir), "--json").stdout
        assert json.loads(status)["pid"] == server.pid
    finally:
        server.send_signal(2)
        server.communicate(timeout=30)
    assert server.returncode == 0
    assert not (state_dir / "server.json").exists()


def test_help_documents_every_sandbox_command():
    text = pymlsql("sandbox", "--help").stdout
    for command in ("start", "serve", "stop", "status", "fault", "log"):
        assert command in text
    fault_help = pymlsql("sandbox", "fault", "--help").stdout
    for flag in ("--action", "--code", "--status", "--count", "--ssh-delay", "--stuck", "--kill-ssh",
                 "--rotate-host-key", "--clear", "--state-dir", "--initializing", "--idempotent-processing",
                 "--describe-lag", "--console-lag"):  # fmt: skip
        assert flag in fault_help
