"""Instances are real, isolated OpenSSH servers that follow the ECS lifecycle."""

from __future__ import annotations

import subprocess

from alibabacloud_ecs20140526 import models as ecs

from .helpers import address, describe, run, ssh, statuses, wait_for, wait_ssh, wait_status


def _keyscan(host: str) -> set[str]:
    scanned = subprocess.run(["ssh-keyscan", "-T", "5", host], capture_output=True, text=True, timeout=30)
    return {" ".join(line.split()[1:3]) for line in scanned.stdout.splitlines() if line and not line.startswith("#")}


def test_three_instances_are_isolated_openssh_servers_that_match_the_api(client, region, key_pair, launched):
    name, key = key_pair
    ids = run(client, region, launched=launched, amount=3, key_pair_name=name, internet_max_bandwidth_out=5)

    assert set(statuses(client, region, ids).values()) == {"Pending"}
    instances = wait_status(client, region, ids, "Running")
    for instance in instances:
        wait_ssh(address(instance), key)

    hostnames = {ssh(address(i), key, "hostname").stdout.strip(): i.host_name for i in instances}
    assert len(hostnames) == 3
    assert all(seen == reported for seen, reported in hostnames.items())

    host_keys = [frozenset(_keyscan(address(i))) for i in instances]
    assert all(host_keys) and len(set(host_keys)) == 3
    assert all(_keyscan(address(i, public=True)) == set(k) for i, k in zip(instances, host_keys, strict=True))

    for instance in instances:
        marker = f"written on {instance.instance_id}"
        assert ssh(address(instance), key, f"echo '{marker}' > /root/marker; echo x > /tmp/only-here").returncode == 0
    for instance in instances:
        assert ssh(address(instance), key, "cat /root/marker").stdout.strip() == f"written on {instance.instance_id}"

    first, second, third = instances
    assert ssh(address(first), key, "useradd -m alice && id -un alice").stdout.strip() == "alice"
    for other in (second, third):
        assert ssh(address(other), key, "id alice").returncode != 0
        assert ssh(address(other), key, "test -d /home/alice").returncode != 0


def test_sshd_is_openssh_on_port_22_of_the_instance_address(client, region, key_pair, launched):
    name, key = key_pair
    ids = run(client, region, launched=launched, key_pair_name=name)
    (instance,) = wait_status(client, region, ids, "Running")
    wait_ssh(address(instance), key)
    scanned = subprocess.run(
        ["ssh", "-v", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", f"root@{address(instance)}", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Remote protocol version 2.0, remote software version OpenSSH" in scanned.stderr
    assert address(instance).startswith("127.") and address(instance) != "127.0.0.1"


def test_stop_keeps_the_disk_and_ends_every_process(client, region, key_pair, launched):
    name, key = key_pair
    ids = run(client, region, launched=launched, key_pair_name=name)
    (instance,) = wait_status(client, region, ids, "Running")
    host = address(instance)
    wait_ssh(host, key)
    assert ssh(host, key, "echo kept > /root/data; nohup sleep 4242.25 >/dev/null 2>&1 &").returncode == 0
    assert _processes("sleep 4242.25")

    client.stop_instance(ecs.StopInstanceRequest(instance_id=instance.instance_id))
    assert statuses(client, region, ids)[instance.instance_id] == "Stopping"
    wait_status(client, region, ids, "Stopped")
    assert not _processes("sleep 4242.25")
    assert ssh(host, key, "true", timeout=10).returncode == 255

    client.start_instance(ecs.StartInstanceRequest(instance_id=instance.instance_id))
    assert statuses(client, region, ids)[instance.instance_id] == "Starting"
    wait_status(client, region, ids, "Running")
    wait_ssh(host, key)
    assert ssh(host, key, "cat /root/data").stdout.strip() == "kept"


def test_delete_releases_the_instance_and_its_machine(client, region, key_pair, launched, sandbox):
    name, key = key_pair
    ids = run(client, region, launched=launched, amount=2, key_pair_name=name)
    instances = wait_status(client, region, ids, "Running")
    for instance in instances:
        wait_ssh(address(instance), key)
    assert ssh(address(instances[0]), key, "nohup sleep 4343.5 >/dev/null 2>&1 &").returncode == 0

    client.delete_instances(ecs.DeleteInstancesRequest(region_id=region, instance_id=ids, force=True))

    assert describe(client, region, ids) == []
    wait_for(lambda: not _processes("sleep 4343.5"), timeout=10, what="the instance's processes to end")
    wait_for(lambda: not any((sandbox.state_dir / "instances" / i).exists() for i in ids), timeout=10)
    assert ssh(address(instances[0]), key, "true", timeout=10).returncode == 255


def test_reboot_brings_ssh_back_with_the_same_host_key(client, region, key_pair, launched):
    name, key = key_pair
    ids = run(client, region, launched=launched, key_pair_name=name)
    (instance,) = wait_status(client, region, ids, "Running")
    wait_ssh(address(instance), key)
    before = _keyscan(address(instance))

    client.reboot_instance(ecs.RebootInstanceRequest(instance_id=instance.instance_id))
    assert statuses(client, region, ids)[instance.instance_id] == "Starting"
    wait_status(client, region, ids, "Running")
    wait_ssh(address(instance), key)

    assert _keyscan(address(instance)) == before


def test_key_pair_is_authorized_for_root_only_with_its_private_key(client, region, key_pair, launched, tmp_path):
    name, key = key_pair
    ids = run(client, region, launched=launched, key_pair_name=name, image_id="m-sandbox-webuser")
    (instance,) = wait_status(client, region, ids, "Running")
    wait_ssh(address(instance), key)
    assert ssh(address(instance), key, "id -un").stdout.strip() == "root"
    assert ssh(address(instance), key, "su - webuser -c 'id -un; pwd'").stdout.split() == ["webuser", "/home/webuser"]

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    assert ssh(address(instance), stranger, "true").returncode == 255


def _processes(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()
