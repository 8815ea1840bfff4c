"""The seed's own case, where the master launches its workers: `pymlsql start` run on a sandbox
instance, installed there from the wheel this test builds as a user would install it, with no key
and no setting but the instance's RAM role. Its workers go beside it and are reached by private
address, which nothing outside their VPC reaches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymlsql_magics.core import EcsConfig, Fleet, Instance
from pymlsql_magics.sandbox import Sandbox

from .helpers import environment, pymlsql, unique

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="instances have networks and files of their own only as root")

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
# Debian's own Python, which an instance has; the package and its dependencies come as wheels.
INSTALL = ("/usr/bin/python3 -m venv /root/venv && "
           "/root/venv/bin/pip install -q --no-index --find-links /root/wheels pymlsql-magics")  # fmt: skip


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built from this checkout, with every wheel it needs (pip's cache makes it quick)."""
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(folder), str(ROOT)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def master(sandbox: Sandbox, wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """An instance with a RAM role and pymlsql installed, started from this machine ("the internet")."""
    home = tmp_path_factory.mktemp("master-home")
    config = EcsConfig.from_env(sandbox.environment(), known_hosts=str(home / "known_hosts"),
                                key_dir=str(home / "keys"))  # fmt: skip
    with Fleet(config) as fleet:
        name = unique("master")
        (instance,) = fleet.start(image_id=DEBIAN, name=name, key_pair_name=name, init_ssh_key=True,
                                  ram_role="pymlsql-master")  # fmt: skip
        try:
            fleet.copy_to([instance], str(wheels), "/root/wheels")  # raises if it fails
            fleet.exec([instance], INSTALL)
            yield instance
        finally:
            fleet.stop([instance])


def inside(sandbox: Sandbox, instance: Instance, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return pymlsql(environment(sandbox, home), "sandbox", "run", "--state-dir", str(sandbox.state_dir),
                   instance.instance_id, "--", *argv, timeout=300)  # fmt: skip


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def test_pymlsql_start_on_an_instance_puts_workers_beside_it_and_reaches_them_privately(
    sandbox: Sandbox, master: Instance, tmp_path: Path
) -> None:
    name = unique("workers")
    seen = inside(sandbox, master, tmp_path, "env").stdout
    assert "ALIBABA_CLOUD" not in seen and "AK=" not in seen and f"PYMLSQL_ECS_ENDPOINT={sandbox.endpoint}" in seen
    started = inside(sandbox, master, tmp_path, "/root/venv/bin/pymlsql", "start", "--image-id", DEBIAN, "--count",
                     "2", "--name", name, "--key-pair-name", name, "--init-ssh-key", "--output", "json")  # fmt: skip
    assert started.returncode == 0, started.stderr
    workers = json.loads(started.stdout)
    ids = [worker["instance_id"] for worker in workers]
    try:
        assert len(ids) == 2
        # No key, no region, no network flag was given: the role, the metadata and the client's place did it.
        assert "beside this client" in started.stderr and "private addresses" in started.stderr
        with Fleet(EcsConfig.from_env(sandbox.environment())) as fleet:
            found = fleet.get(ids)
        for worker in found:
            assert (worker.vpc_id, worker.vswitch_id, worker.zone_id) == (master.vpc_id, master.vswitch_id,
                                                                          master.zone_id)  # fmt: skip
            assert worker.security_group_ids == master.security_group_ids
            assert worker.public_ip == ""
            assert not reachable(worker.private_ip, 22)  # from this machine, outside the VPC
        script = "/root/who.sh"
        made = inside(sandbox, master, tmp_path, "sh", "-c", f"echo 'echo $(hostname) $(id -un)' > {script}")
        assert made.returncode == 0, made.stderr
        ran = inside(sandbox, master, tmp_path, "/root/venv/bin/pymlsql", "exec-shell", "--instance-id", *ids,
                     "--script-file", script)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        expected = sorted(f"[{worker.instance_id}] {worker.hostname} root" for worker in found)
        assert sorted(ran.stdout.split("\n")[:-1]) == expected, ran.stdout
    finally:
        stopped = inside(sandbox, master, tmp_path, "/root/venv/bin/pymlsql", "stop", "--name", name)
    assert stopped.returncode == 0, stopped.stderr
    with Fleet(EcsConfig.from_env(sandbox.environment())) as fleet:
        assert [i.instance_id for i in fleet.find(name)] == []
