"""User data runs at first boot as cloud-init runs it, and the console shows the host keys."""

from __future__ import annotations

import base64
import subprocess
import textwrap

import yaml
from alibabacloud_ecs20140526 import models as ecs

from .helpers import address, run, ssh, wait_for, wait_ssh, wait_status


def _user_data(text: str) -> str:
    return base64.b64encode(textwrap.dedent(text).lstrip().encode()).decode()


def _new_key(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return (path.parent / f"{path.name}.pub").read_text().strip()


def _boot(client, region, launched, key, **fields):
    ids = run(client, region, launched=launched, **fields)
    (instance,) = wait_status(client, region, ids, "Running")
    wait_ssh(address(instance), key)
    return instance


def test_shell_script_user_data_runs_once_as_root(client, region, key_pair, launched):
    name, key = key_pair
    script = _user_data(
        """
        #!/bin/sh
        echo "$(id -un) $(hostname)" >> /root/user-data-ran
        """
    )
    instance = _boot(client, region, launched, key, key_pair_name=name, user_data=script)
    host = address(instance)
    ran = wait_for(lambda: ssh(host, key, "cat /root/user-data-ran").stdout.strip(), timeout=10)
    assert ran == f"root {instance.host_name}"

    client.reboot_instance(ecs.RebootInstanceRequest(instance_id=instance.instance_id))
    wait_status(client, region, [instance.instance_id], "Running")
    wait_ssh(host, key)
    assert ssh(host, key, "wc -l < /root/user-data-ran").stdout.strip() == "1"


def test_cloud_config_users_write_files_and_runcmd(client, region, key_pair, launched, tmp_path):
    name, key = key_pair
    alice_key = tmp_path / "alice"
    alice_public = _new_key(alice_key)
    config = "#cloud-config\n" + yaml.safe_dump(
        {
            "users": ["default", {"name": "alice", "shell": "/bin/bash", "ssh_authorized_keys": [alice_public]}],
            "write_files": [
                {"path": "/etc/app/settings.ini", "content": "mode = sandbox\n", "permissions": "0640"},
                {"path": "/home/alice/notes.txt", "content": "hello\n", "owner": "alice:alice", "defer": True},
            ],
            "runcmd": ["echo runcmd-done > /root/runcmd", ["touch", "/tmp/from list"]],
        }
    )
    instance = _boot(client, region, launched, key, key_pair_name=name, user_data=_user_data(config))
    host = address(instance)

    assert ssh(host, alice_key, "id -un; pwd", user="alice").stdout.split() == ["alice", "/home/alice"]
    assert ssh(host, key, "stat -c '%a %U' /etc/app/settings.ini; cat /etc/app/settings.ini").stdout.splitlines() == [
        "640 root",
        "mode = sandbox",
    ]
    wait_for(lambda: ssh(host, key, "cat /root/runcmd").stdout.strip() == "runcmd-done", timeout=10)
    wait_for(lambda: ssh(host, key, "test -f '/tmp/from list'").returncode == 0, timeout=10)
    assert ssh(host, key, "stat -c %U /home/alice/notes.txt").stdout.strip() == "alice"


def test_cloud_config_ssh_keys_become_the_host_keys(client, region, key_pair, launched, tmp_path):
    name, key = key_pair
    host_key = tmp_path / "ssh_host_ed25519_key"
    host_public = _new_key(host_key)
    config = "#cloud-config\n" + yaml.safe_dump(
        {"ssh_keys": {"ed25519_private": host_key.read_text(), "ed25519_public": host_public}}
    )
    instance = _boot(client, region, launched, key, key_pair_name=name, user_data=_user_data(config))

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{address(instance)} {host_public}\n")
    pinned = ssh(address(instance), key, "true", known_hosts=known_hosts)
    assert pinned.returncode == 0, pinned.stderr


def test_console_output_shows_the_host_keys_the_server_presents(client, region, key_pair, launched):
    name, key = key_pair
    instance = _boot(client, region, launched, key, key_pair_name=name)
    console = client.get_instance_console_output(
        ecs.GetInstanceConsoleOutputRequest(region_id=region, instance_id=instance.instance_id)
    ).body
    text = base64.b64decode(console.console_output).decode()
    keys_block = text.split("-----BEGIN SSH HOST KEY KEYS-----\n")[1].split("-----END SSH HOST KEY KEYS-----")[0]
    printed = {" ".join(line.split()[:2]) for line in keys_block.splitlines() if line.strip()}
    assert "-----BEGIN SSH HOST KEY FINGERPRINTS-----" in text

    scanned = subprocess.run(["ssh-keyscan", address(instance)], capture_output=True, text=True, timeout=30)
    served = {" ".join(line.split()[1:3]) for line in scanned.stdout.splitlines() if not line.startswith("#")}
    assert served and served == printed
