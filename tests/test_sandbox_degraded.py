"""Without root the sandbox still serves real sshd instances, on high ports, and says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_vpc20160428.client import Client as VpcClient

from .helpers import make_network, wait_for

NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]


def _readable_copy(target: Path) -> Path:
    """The package and what the sandbox imports, where the unprivileged user can read them.

    The checkout and its virtualenv may sit in a folder only root can enter (a mktemp -d clone).
    """
    site = Path(sysconfig.get_paths()["platlib"])
    shutil.copytree(REPO / "pymlsql_magics", target / "pymlsql_magics",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("cryptography", "yaml", "bcrypt"):
        if (site / name).is_dir():
            shutil.copytree(site / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for extension in site.glob("_cffi_backend*.so"):
        shutil.copy2(extension, target / extension.name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _python_for_nobody() -> str:
    """An interpreter of this Python version that an unprivileged user may run."""
    for candidate in (f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", "/usr/bin/python3"):
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", candidate, "-c",
             "import sys; print(sys.version_info[:2])"],
            capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    pytest.skip("no Python of this version that the unprivileged user can run (needs Debian's python3)")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unprivileged_sandbox_serves_sshd_on_a_reported_port():
    python = _python_for_nobody()
    state_root = Path(tempfile.mkdtemp(prefix="pymlsql-degraded-"))
    os.chown(state_root, NOBODY, NOBODY)
    state_dir = state_root / "sandbox"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(state_root),
        "PYTHONPATH": str(_readable_copy(state_root / "lib")),
    }
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
                 "-m", "pymlsql_magics.sandbox"]  # fmt: skip
    started = subprocess.run([*as_nobody, "start", "--state-dir", str(state_dir), "--pending-delay", "0.2",
                              "--starting-delay", "0.2", "--boot-delay", "0.2"],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert "not running as root, so instances are degraded" in started.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        config = Config(access_key_id=exports["ALIBABA_CLOUD_ACCESS_KEY_ID"],
                        access_key_secret=exports["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
                        endpoint=exports["PYMLSQL_ECS_ENDPOINT"].removeprefix("http://"), protocol="http")  # fmt: skip
        client = Client(config)
        region = exports["ALIBABA_CLOUD_REGION_ID"]
        network = make_network(client, VpcClient(config), region)
        ids = client.run_instances(ecs.RunInstancesRequest(
            region_id=region, image_id="debian_12_x64_20G_alibase_20240101.vhd", instance_type="ecs.g7.large",
            v_switch_id=network.vswitch_id, security_group_id=network.security_group_id,
        )).body.instance_id_sets.instance_id_set  # fmt: skip

        def running():
            request = ecs.DescribeInstancesRequest(region_id=region, instance_ids=json.dumps(ids))
            (item,) = client.describe_instances(request).body.instances.instance
            return item if item.status == "Running" else None

        instance = wait_for(running, timeout=30)
        tags = {tag.tag_key: tag.tag_value for tag in instance.tags.tag}
        assert tags["pymlsql:ssh-user"] == "nobody"
        port = int(tags["pymlsql:ssh-port"])
        assert port > 1024
        host = instance.vpc_attributes.private_ip_address.ip_address[0]

        def banner():
            scan = subprocess.run(["ssh-keyscan", "-p", str(port), host], capture_output=True, text=True, timeout=30)
            return scan.stdout if "ssh-ed25519" in scan.stdout else None

        assert wait_for(banner, timeout=30)
        owner = subprocess.run(["ps", "-o", "user=", "-C", "sshd"], capture_output=True, text=True).stdout.split()
        assert "nobody" in owner
    finally:
        subprocess.run([*as_nobody, "stop", "--state-dir", str(state_dir)], env=env, capture_output=True, timeout=60)
        time.sleep(0.2)
        leftover = subprocess.run(["pgrep", "-u", "nobody", "-f", str(state_dir)], capture_output=True, text=True)
        shutil.rmtree(state_root, ignore_errors=True)
    assert leftover.stdout == ""
