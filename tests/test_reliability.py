"""Faults survived, through the CLI, the magics and the core, against the sandbox's fault injection:
API errors and lost answers, stuck and late instances, dead connections, interrupts, host keys, leaks
after a kernel restart, and load."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jupyter_client.manager import start_new_kernel

from pymlsql_magics.core import EcsConfig, ExecResult, Fleet, FleetError, HostKeyMismatchError, Instance, LaunchSpec
from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import (
    PYMLSQL,
    codes,
    environment,
    hinted_error,
    home_folder,
    ids_named,
    own_sandbox,
    pymlsql,
    sdk_network,
    started_ids,
    unique,
    wait_for,
)
from .test_magics_kernel import execute

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from own_sandbox(tmp_path_factory.mktemp("reliability"), FAST)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return home_folder(tmp_path_factory.mktemp("reliability-home"))


@pytest.fixture
def env(cleared: Sandbox, home: Path) -> dict[str, str]:
    return environment(cleared, home)


def fleet_for(sandbox: Sandbox, home: Path, **settings: Any) -> Fleet:
    config = EcsConfig.from_env(sandbox.environment(), known_hosts=str(home / "known_hosts"),
                                key_dir=str(home / ".ssh"), **settings)  # fmt: skip
    return Fleet(config)


# -- the API: throttling, server errors, lost answers ----------------------------------------

API_FAULTS = [("Throttling", 400), ("Throttling.User", 400), ("ServiceUnavailable", 503), ("InternalError", 500)]
ACTIONS = ["DescribeKeyPairs", "CreateKeyPair", "ImportKeyPair", "RunInstances", "DescribeInstances",
           "GetInstanceConsoleOutput", "StopInstances", "StartInstances", "DeleteInstances"]  # fmt: skip


def test_every_action_the_cli_uses_is_retried_through_throttling_and_server_errors(
    cleared: Sandbox, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    mark = len(cleared.log()["requests"])
    for number, action in enumerate(ACTIONS):
        code, status = API_FAULTS[number % len(API_FAULTS)]
        cleared.fault({"action": action, "code": code, "status": status, "count": 1})
    name, key, imported = unique("api"), unique("api-key"), unique("api-imported")
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(home / ".ssh" / imported)],
                   check=True, env={**os.environ, "HOME": str(home)})  # fmt: skip
    script = tmp_path / "hello.sh"
    script.write_text("echo hello\n")

    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", key, "--init-ssh-key", "true")
    assert done.returncode == 0, done.stderr
    [instance_id] = started_ids(done)
    steps = [
        ["exec-shell", "--instance-id", instance_id, "--script-file", str(script)],
        ["stop", "--name", name, "--keep-disk"],
        ["start", "--instance-id", instance_id],
        ["start", "--image-id", DEBIAN, "--name", name + "-b", "--key-pair-name", imported, "--init-ssh-key", "true"],
        ["stop", "--name", name],
        ["stop", "--name", name + "-b"],
    ]
    for step in steps:
        done = pymlsql(env, *step)
        assert done.returncode == 0, (step, done.stderr)

    for number, action in enumerate(ACTIONS):
        seen = codes(cleared, action, mark)
        expected = API_FAULTS[number % len(API_FAULTS)][0]
        assert seen[:2] == [expected, "OK"], (action, seen)


def test_magics_ride_out_api_faults_during_a_start(cleared: Sandbox, home: Path) -> None:
    from .helpers import magics_shell

    cleared.fault({"action": "RunInstances", "code": "InternalError", "status": 500, "count": 2})
    cleared.fault({"action": "DescribeInstances", "code": "Throttling.User", "status": 400, "count": 3})
    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    name = unique("magic-api")
    try:
        nodes = shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --key-pair-name {name} "
                                                  "--init-ssh-key --count 2")  # fmt: skip
        assert len(nodes) == 2 and {i.status for i in nodes} == {"Running"}
        shell.run_line_magic("ecs_stop", name)
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert ids_named(cleared, name) == []


def test_a_run_instances_answer_lost_on_the_way_creates_no_extra_instance(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    mark = len(cleared.log()["requests"])
    cleared.fault({"action": "RunInstances", "lose_response": True, "count": 1})
    name = unique("lost")

    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2",
                   "--key-pair-name", unique("lost-key"), "--init-ssh-key", "true")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert codes(cleared, "RunInstances", mark) == ["OK, answer dropped", "OK"]
    assert sorted(ids_named(cleared, name)) == sorted(started_ids(done)) and len(started_ids(done)) == 2
    assert pymlsql(env, "stop", "--name", name).returncode == 0


# -- instances that do not come up -----------------------------------------------------------


def test_a_start_stuck_in_pending_names_the_instance_and_releases_it(cleared: Sandbox, home: Path) -> None:
    from IPython.core.error import UsageError

    from .helpers import magics_shell

    cleared.fault({"stuck": "Pending"})
    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    name = unique("stuck")
    try:
        with pytest.raises(UsageError) as caught:
            shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --timeout 1.5")
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    message = str(caught.value)
    [instance_id] = [i for i in cleared.log()["instances"] if i in message]
    assert f"{instance_id} (stuck in Pending)" in message and "not Running within 1.5 s" in message
    assert "released the 1 instance(s)" in message and len(message.splitlines()) <= 2
    assert ids_named(cleared, name) == []


def test_ssh_a_few_seconds_late_is_waited_for(cleared: Sandbox, env: dict[str, str]) -> None:
    cleared.fault({"ssh_delay": 3})
    name = unique("late")
    began = time.monotonic()
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", unique("late-key"),
                   "--init-ssh-key", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began >= 3
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_ssh_that_never_comes_up_fails_the_start_naming_the_instance_and_releases_it(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    cleared.fault({"ssh_delay": 600})
    name = unique("nossh")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", unique("nossh-key"),
                   "--init-ssh-key", "true", "--start-timeout", "3")  # fmt: skip
    first, hint = hinted_error(done)
    [instance_id] = [i for i in cleared.log()["instances"] if i in first]
    assert "did not accept the key within 3 s" in first and "released the 1 instance(s)" in first
    assert "port 22" in hint and ids_named(cleared, name) == []
    assert instance_id not in pymlsql(env, "list").stdout


# -- connections that die, and interrupts ------------------------------------------------------


@pytest.fixture
def frozen_later(cleared: Sandbox) -> Iterator[Any]:
    """Freezes an instance after a delay, on a thread; thaws it when the test ends."""
    frozen: list[str] = []

    def freeze(instance_id: str, after: float) -> None:
        def later() -> None:
            time.sleep(after)
            cleared.fault({"freeze": instance_id})
            frozen.append(instance_id)

        threading.Thread(target=later, daemon=True).start()

    yield freeze
    for instance_id in frozen:
        if instance_id in ids_of(cleared):
            cleared.fault({"thaw": instance_id})


def ids_of(sandbox: Sandbox) -> set[str]:
    return {i["InstanceId"] for i in sandbox.status()["instances"]}


def test_a_dead_connection_fails_a_cell_within_the_keepalive(
    cleared: Sandbox, home: Path, frozen_later: Any
) -> None:
    from IPython.core.error import UsageError

    from .helpers import magics_shell

    shell = magics_shell(home, key_dir=home / ".ssh")
    magics = shell.magics_manager.registry["EcsMagics"]
    os.environ.update(cleared.environment())
    name = unique("frozen")
    try:
        magics.keepalive_interval = 2.0
        nodes = shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --key-pair-name {name} "
                                                  "--init-ssh-key")  # fmt: skip
        shell.user_ns["nodes"] = nodes
        frozen_later(nodes[0].instance_id, 1.0)
        began = time.monotonic()
        with pytest.raises(UsageError) as caught:
            shell.run_cell_magic("ecs_exec", "nodes", "echo started; sleep 60")
        took = time.monotonic() - began
        cleared.fault({"thaw": nodes[0].instance_id})
        shell.run_line_magic("ecs_stop", name)
    finally:
        magics.keepalive_interval = EcsConfig().keepalive_interval
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert took < 1.0 + 2.0 * 1.5 + 2.0, took  # the freeze, then at most 1.5 keepalive intervals
    assert "lost the connection" in str(caught.value) and nodes[0].instance_id in str(caught.value)


def test_a_dead_connection_fails_exec_shell_within_the_default_keepalive(
    cleared: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    name = unique("frozen-cli")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", name,
                   "--init-ssh-key", "true")  # fmt: skip
    [instance_id] = started_ids(done)
    marker = f"sleep 120.{os.getpid()}"
    script = tmp_path / "long.sh"
    script.write_text(f"{marker}\n")
    try:
        process = subprocess.Popen([PYMLSQL, "exec-shell", "--instance-id", instance_id, "--script-file", str(script)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0,
                 timeout=30, what="the script to run")  # fmt: skip
        cleared.fault({"freeze": instance_id})
        began = time.monotonic()
        _, errors = process.communicate(timeout=60)
        took = time.monotonic() - began
    finally:
        cleared.fault({"thaw": instance_id})
        assert pymlsql(env, "stop", "--name", name).returncode == 0
    done = subprocess.CompletedProcess(process.args, process.returncode, "", errors)
    first, hint = hinted_error(done)
    assert "lost the connection" in first and instance_id in first and "list" in hint
    assert took < EcsConfig().keepalive_interval * 1.5 + 2.0, took


def test_an_interrupted_start_releases_what_it_created_and_stop_all_finds_the_rest(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    cleared.fault({"stuck": "Starting"})
    name = unique("interrupted")
    process = subprocess.Popen([PYMLSQL, "start", "--image-id", DEBIAN, "--name", name, "--count", "2"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: len(ids_named(cleared, name)) == 2, timeout=30, what="the instances to exist")
    process.send_signal(signal.SIGINT)  # Ctrl-C
    _, errors = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in errors
    assert "releasing the 2 instance(s)" in errors
    wait_for(lambda: ids_named(cleared, name) == [], timeout=30, what="the release")

    # A start interrupted too early to know its instances: they carry the tool's tag all the same.
    network = sdk_network(cleared)
    orphans = fleet_for(cleared, Path(env["HOME"])).ecs.run_instances(
        LaunchSpec(image_id=DEBIAN, instance_type="ecs.g7.large", name=name, vswitch_id=network.vswitch_id,
                   security_group=network.security_group_id),
        amount=1, client_token=unique("token"), tags={"pymlsql:created-by": "pymlsql"},
    )  # fmt: skip
    cleared.fault({"clear": True})
    done = pymlsql(env, "stop", "--all")
    assert done.returncode == 0, done.stderr
    assert not [i for i in cleared.status()["instances"] if i["InstanceId"] in orphans]


def test_a_kernel_restart_leaves_nothing_unnoticed(cleared: Sandbox, home: Path, tmp_path: Path) -> None:
    kernel_env = {**os.environ, **cleared.environment(), "HOME": str(tmp_path)}
    name = unique("restart")
    manager, client = start_new_kernel(kernel_name="python3", env=kernel_env)
    try:
        reply, _ = execute(client, "%load_ext pymlsql_magics")
        reply, _ = execute(client, f"nodes = %ecs_start --image-id {DEBIAN} --name {name} --count 2")
        assert reply["status"] == "ok", reply
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)  # the kernel dies with its instances running

    manager, client = start_new_kernel(kernel_name="python3", env=kernel_env)
    try:
        reply, messages = execute(client, "%load_ext pymlsql_magics")
        said = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        left = ids_named(cleared, name)
        assert len(left) == 2 and all(instance_id in said for instance_id in left), said
        assert "still there" in said and "%ecs_stop --all" in said
        assert re.search(r"costing \d+\.\d{3} CNY/hour", said), said
        reply, messages = execute(client, "%ecs_stop --all")
        assert reply["status"] == "ok", reply
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert ids_named(cleared, name) == []


# -- host keys -------------------------------------------------------------------------------


def test_first_contact_refuses_a_host_key_the_console_does_not_show(cleared: Sandbox, home: Path) -> None:
    with fleet_for(cleared, home) as fleet:
        [instance] = fleet.start(image_id=DEBIAN, key_pair_name=unique("console"), init_ssh_key=True,
                                 wait_for_ssh=False)  # fmt: skip
        wait_for(lambda: _ssh_ready(cleared, instance), timeout=30, what="SSH")
        # New host keys the console never printed: what an impostor answering for it would offer.
        cleared.fault({"rotate_host_key": instance.instance_id})
        wait_for(lambda: _ssh_ready(cleared, instance), timeout=30, what="SSH back")
        with pytest.raises(FleetError) as caught:
            fleet.exec([instance], "true")
        error = caught.value.result[instance.instance_id]
        assert isinstance(error, HostKeyMismatchError) and "is not one its console output shows" in str(error)
        pins = home / "known_hosts"
        assert not pins.exists() or instance.instance_id not in pins.read_text()
        fleet.stop([instance])


def test_host_keys_from_cloud_config_are_pinned_before_the_first_connection(cleared: Sandbox, home: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    private_text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()).decode()  # fmt: skip
    public_text = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()  # fmt: skip
    user_data = ("#cloud-config\nssh_keys:\n  ed25519_private: |\n"
                 + "".join(f"    {line}\n" for line in private_text.splitlines())
                 + f"  ed25519_public: {public_text}\n")  # fmt: skip
    mark = len(cleared.log()["requests"])
    with fleet_for(cleared, home) as fleet:
        [instance] = fleet.start(image_id=DEBIAN, key_pair_name=unique("given"), init_ssh_key=True,
                                 user_data=user_data, wait_for_ssh=False)  # fmt: skip
        pinned = [line for line in (home / "known_hosts").read_text().splitlines() if instance.instance_id in line]
        assert pinned == [f"{instance.instance_id} {public_text}"]
        wait_for(lambda: _ssh_ready(cleared, instance), timeout=30, what="SSH")
        result = fleet.exec([instance], "cat /etc/ssh/ssh_host_ed25519_key.pub")[instance.instance_id]
        assert isinstance(result, ExecResult) and result.stdout.split()[:2] == public_text.split()[:2]
        # Pinned already, so the console was never needed to trust it.
        assert codes(cleared, "GetInstanceConsoleOutput", mark) == []
        fleet.stop([instance])


def test_a_changed_host_key_is_refused_by_the_cli_saying_how_to_accept_it(
    cleared: Sandbox, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    name = unique("rotated")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", name,
                   "--init-ssh-key", "true")  # fmt: skip
    [instance_id] = started_ids(done)
    cleared.fault({"rotate_host_key": instance_id})
    wait_for(lambda: _ssh_ready_id(cleared, instance_id), timeout=30, what="SSH back")
    script = tmp_path / "true.sh"
    script.write_text("true\n")
    first, hint = hinted_error(pymlsql(env, "exec-shell", "--instance-id", instance_id, "--script-file", str(script)))
    assert f"the SSH host key of {instance_id}" in first and "changed" in first
    assert f"remove the line for {instance_id}" in hint and "known_hosts" in hint
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def _ssh_ready(sandbox: Sandbox, instance: Instance) -> bool:
    return _ssh_ready_id(sandbox, instance.instance_id)


def _ssh_ready_id(sandbox: Sandbox, instance_id: str) -> bool:
    return any(i["InstanceId"] == instance_id and i["SshReady"] for i in sandbox.status()["instances"])


# -- load --------------------------------------------------------------------------------------


def test_a_hundred_concurrent_execs_on_fifty_instances_lose_no_line(sandbox: Sandbox, tmp_path: Path) -> None:
    lines = 2000
    # The hostname once: a fork per line would make this a test of a 2-core machine's scheduler.
    script = f'h=$(hostname); for n in $(seq 1 {lines}); do echo "$h out $n"; done; echo "$h err" >&2'
    with fleet_for(sandbox, tmp_path, max_parallel=50) as fleet:
        crowd = fleet.start(image_id=DEBIAN, count=50, key_pair_name=unique("load"), init_ssh_key=True)
        try:
            results: list[Any] = [None, None]
            seen: list[list[tuple[str, str, str]]] = [[], []]

            def run(slot: int) -> None:
                class Keep:
                    def write(self, source: str, stream: str, text: str) -> None:
                        seen[slot].append((source, stream, text))

                results[slot] = fleet.exec(crowd, script, sink=Keep())

            workers = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=300)
            hostnames = {i.instance_id: fleet.exec([i], "hostname")[i.instance_id].stdout.strip() for i in crowd}
        finally:
            fleet.stop(crowd)
    for slot in (0, 1):
        for instance in crowd:
            host = hostnames[instance.instance_id]
            expected = "".join(f"{host} out {n}\n" for n in range(1, lines + 1))
            result = results[slot][instance.instance_id]
            assert result.stdout == expected and result.stderr == f"{host} err\n"
            streamed = "".join(t for s, n, t in seen[slot] if s == instance.instance_id and n == "stdout")
            assert streamed == expected
