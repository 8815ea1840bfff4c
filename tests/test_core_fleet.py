"""Fleet against the sandbox: start, exec, copy, stop, host keys and retries, over real HTTP and SSH."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs

from pymlsql_magics.core import (
    CREATED_BY,
    NAME_TAG,
    ConfigError,
    CopyError,
    CopyResult,
    EcsApiError,
    EcsConfig,
    ExecResult,
    Fleet,
    FleetError,
    HostKeyMismatchError,
    Instance,
    SshError,
    WaitTimeoutError,
)
from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import describe, new_client, sdk_network, ssh, unique, wait_for

WEBUSER_IMAGE = "m-sandbox-webuser"
DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
USER_DATA = "#!/bin/sh\necho from-user-data > /root/user-data.txt\n"


def config_for(sandbox: Sandbox, home: Path, **extra: Any) -> EcsConfig:
    return EcsConfig.from_env(
        sandbox.environment(), known_hosts=str(home / "known_hosts"), key_dir=str(home / "keys"), **extra
    )


def requests_since(sandbox: Sandbox, mark: int, action: str | None = None) -> list[dict[str, Any]]:
    requests = sandbox.log()["requests"][mark:]
    return [r for r in requests if action is None or r["action"] == action]


def remote(fleet: Fleet, instance: Instance, command: str) -> subprocess.CompletedProcess[str]:
    """Runs `command` as root with the OpenSSH client, independently of the fleet's own SSH."""
    key = fleet.config.key_path(instance.key_pair_name)
    done = ssh(instance.public_ip, key, command)  # this machine is outside the VPC
    assert done.returncode in (0, 1), done.stderr
    return done


def leftover_scripts(fleet: Fleet, instance: Instance) -> list[str]:
    return remote(fleet, instance, "ls -a /tmp | grep pymlsql-script || true").stdout.split()


class Recording:
    """An OutputSink that keeps every chunk in order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def write(self, source: str, stream: str, text: str) -> None:
        with self._lock:
            self.chunks.append((source, stream, text))

    def text(self, source: str, stream: str = "stdout") -> str:
        with self._lock:
            return "".join(t for s, n, t in self.chunks if s == source and n == stream)


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# -- the shared crew: one start with every option ------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet-home")


@pytest.fixture(scope="module")
def said() -> list[str]:
    return []


@pytest.fixture(scope="module")
def fleet(sandbox: Sandbox, home: Path, said: list[str]) -> Iterator[Fleet]:
    with Fleet(config_for(sandbox, home), progress=said.append) as opened:
        yield opened


@pytest.fixture(scope="module")
def crew_start(sandbox: Sandbox, fleet: Fleet) -> Iterator[dict[str, Any]]:
    """Three instances from one start that uses every option, and what the sandbox saw meanwhile."""
    mark = len(sandbox.log()["requests"])
    tokens = set(sandbox.world.client_tokens)
    name, key = unique("crew"), unique("crew-key")
    network = sdk_network(sandbox, zone="cn-hangzhou-i")
    began = time.time()
    instances = fleet.start(
        image_id=WEBUSER_IMAGE,
        instance_type="ecs.r5.large",
        count=3,
        name=name,
        key_pair_name=key,
        init_ssh_key=True,
        need_public_ip=True,
        bandwidth=25,
        security_group=network.security_group_id,
        vswitch_id=network.vswitch_id,
        zone="cn-hangzhou-i",
        ssh_source_cidr="203.0.113.0/24",  # a group opening SSH to all opens it to these too
        tags={"team": "data"},
        user_data=USER_DATA,
        spot_strategy="SpotAsPriceGo",
        system_disk_size=60,
        system_disk_category="cloud_auto",
        ttl=3600,
    )
    yield {
        "instances": instances,
        "name": name,
        "key": key,
        "began": began,
        "requests": requests_since(sandbox, mark),
        "tokens": set(sandbox.world.client_tokens) - tokens,
        "network": network,
    }
    fleet.stop(instances)


@pytest.fixture(scope="module")
def crew(crew_start: dict[str, Any]) -> list[Instance]:
    return crew_start["instances"]


def test_start_creates_count_instances_with_one_run_instances_call(crew_start: dict[str, Any]) -> None:
    runs = [r for r in crew_start["requests"] if r["action"] == "RunInstances"]
    assert [r["code"] for r in runs] == ["OK"]
    assert len(crew_start["instances"]) == 3
    assert {i.status for i in crew_start["instances"]} == {"Running"}


def test_start_polls_all_its_instances_with_one_describe_per_poll(crew_start: dict[str, Any]) -> None:
    ids = {i.instance_id for i in crew_start["instances"]}
    polls = [r for r in crew_start["requests"] if r["action"] == "DescribeInstances" and r["instance_ids"]]
    assert len(polls) >= 2  # at least one poll before Running, one at Running
    assert all(set(r["instance_ids"]) == ids for r in polls)


def test_start_sends_a_client_token(crew_start: dict[str, Any]) -> None:
    (token,) = crew_start["tokens"]
    assert token[0] == "RunInstances" and 0 < len(token[1]) <= 64


def test_start_tags_what_it_creates_with_tool_name_and_given_tags(crew_start: dict[str, Any]) -> None:
    for instance in crew_start["instances"]:
        assert instance.tags[CREATED_BY] == "pymlsql"
        assert instance.tags[NAME_TAG] == crew_start["name"]
        assert instance.tags["team"] == "data"
        assert instance.name == crew_start["name"]


def test_start_passes_every_launch_option_to_ecs(sandbox: Sandbox, crew_start: dict[str, Any]) -> None:
    ids = [i.instance_id for i in crew_start["instances"]]
    for item in describe(new_client(sandbox), sandbox.region_id, ids):
        assert item.instance_type == "ecs.r5.large"
        assert item.image_id == WEBUSER_IMAGE
        assert item.zone_id == "cn-hangzhou-i"
        assert item.security_group_ids.security_group_id == [crew_start["network"].security_group_id]
        assert item.vpc_attributes.v_switch_id == crew_start["network"].vswitch_id
        assert item.vpc_attributes.vpc_id == crew_start["network"].vpc_id
        assert item.internet_max_bandwidth_out == 25
        assert item.spot_strategy == "SpotAsPriceGo"
        assert item.key_pair_name == crew_start["key"]
        assert item.public_ip_address.ip_address
        kept = sandbox.world.instances[item.instance_id]
        assert (kept.system_disk_size, kept.system_disk_category) == (60, "cloud_auto")


def test_ttl_sets_auto_release_time(sandbox: Sandbox, crew_start: dict[str, Any]) -> None:
    ids = [i.instance_id for i in crew_start["instances"]]
    for item in describe(new_client(sandbox), sandbox.region_id, ids):
        released_at = datetime.strptime(item.auto_release_time, "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
        assert abs(released_at.timestamp() - (crew_start["began"] + 3600)) <= 90


def test_start_returns_public_and_private_addresses(crew: list[Instance]) -> None:
    for instance in crew:
        assert instance.private_ip.startswith("127.") and instance.public_ip.startswith("127.")
        assert instance.public_ip != instance.private_ip


def test_user_data_runs_at_first_boot(fleet: Fleet, crew: list[Instance]) -> None:
    wait_for(lambda: remote(fleet, crew[0], "cat /root/user-data.txt").stdout == "from-user-data\n", timeout=15)


def test_init_ssh_key_saves_the_private_key_mode_600_in_a_folder_mode_700(
    fleet: Fleet, crew_start: dict[str, Any]
) -> None:
    path = fleet.config.key_path(crew_start["key"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert remote(fleet, crew_start["instances"][0], "echo in").stdout == "in\n"


def test_start_pins_each_instance_host_key_by_id(fleet: Fleet, crew: list[Instance]) -> None:
    lines = fleet.config.known_hosts_path().read_text().splitlines()
    pinned = {line.split()[0] for line in lines}
    assert {i.instance_id for i in crew} <= pinned
    assert stat.S_IMODE(fleet.config.known_hosts_path().stat().st_mode) == 0o600


def test_progress_is_reported_and_never_shows_secrets(sandbox: Sandbox, crew: list[Instance], said: list[str]) -> None:
    assert any("Running" in line for line in said)
    assert any("waiting for SSH" in line for line in said)
    assert not [line for line in said if sandbox.access_key_secret in line]


# -- exec ----------------------------------------------------------------------------------


def test_exec_as_root_runs_in_root_home(fleet: Fleet, crew: list[Instance]) -> None:
    result = fleet.exec(crew, 'whoami; echo "$HOME"; pwd')
    assert {r.stdout for r in result.values()} == {"root\n/root\n/root\n"}  # type: ignore[attr-defined]
    assert set(result) == {i.instance_id for i in crew}


def test_exec_as_another_user_is_like_su_dash_login_home_and_cwd(fleet: Fleet, crew: list[Instance]) -> None:
    target = crew[0]
    fleet.exec([target], "echo 'export PYMLSQL_LOGIN=yes' > /etc/profile.d/pymlsql-test.sh")

    result = fleet.exec([target], 'whoami; echo "$HOME"; pwd; echo "${PYMLSQL_LOGIN:-no}"', user="webuser")

    outcome = result[target.instance_id]
    assert isinstance(outcome, ExecResult)
    assert outcome.stdout == "webuser\n/home/webuser\n/home/webuser\nyes\n"
    assert outcome.ok and outcome.duration > 0


def test_exec_streams_before_the_command_ends(fleet: Fleet, crew: list[Instance]) -> None:
    target = crew[0]
    flag = f"/tmp/go-{unique('flag')}"
    sink = Recording()
    script = f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo second"
    thread, outcome = in_thread(lambda: fleet.exec([target], script, sink=sink, timeout=30))

    wait_for(lambda: sink.text(target.instance_id) == "first\n", timeout=15, what="the first line")
    assert thread.is_alive() and not outcome

    remote(fleet, target, f"touch {flag}")
    thread.join(30)
    assert outcome["value"][target.instance_id].stdout == "first\nsecond\n"
    assert sink.text(target.instance_id) == "first\nsecond\n"


def test_exec_keeps_stdout_and_stderr_apart(fleet: Fleet, crew: list[Instance]) -> None:
    sink = Recording()
    result = fleet.exec(crew[:2], "echo out; echo err >&2; echo out2", sink=sink)
    for instance in crew[:2]:
        outcome = result[instance.instance_id]
        assert (outcome.stdout, outcome.stderr) == ("out\nout2\n", "err\n")  # type: ignore[attr-defined]
        assert sink.text(instance.instance_id, "stdout") == "out\nout2\n"
        assert sink.text(instance.instance_id, "stderr") == "err\n"


def test_multibyte_output_survives_packet_boundaries(fleet: Fleet, crew: list[Instance]) -> None:
    sink = Recording()
    result = fleet.exec(crew[:1], """python3 -c "print('€' * 40000, end='')" """, sink=sink)
    assert {r.stdout for r in result.values()} == {"€" * 40000}  # type: ignore[attr-defined]
    chunks = [text for _, stream, text in sink.chunks if stream == "stdout"]
    assert len(chunks) > 1
    assert all(set(chunk) == {"€"} for chunk in chunks)


def test_all_the_output_arrives_even_when_the_exit_status_comes_first(fleet: Fleet, crew: list[Instance]) -> None:
    # sshd sends the exit status once the script ends, which can be before the last of the output
    # still in the pipe; ending at the status lost its final kilobytes in about one run in five.
    size = 16 << 20
    target = crew[0]
    for _ in range(12):
        sink = Recording()
        fleet.exec([target], f"yes 'a line of output' | head -c {size}", sink=sink)
        assert len(sink.text(target.instance_id)) == size


@pytest.mark.parametrize("keepalive", [10.0, 0.5])
def test_a_background_process_holding_the_output_does_not_hold_the_exec(
    sandbox: Sandbox, home: Path, crew: list[Instance], keepalive: float
) -> None:
    # Keepalive checks during the wait (every 0.5 s here) are no output: they do not prolong it.
    target = crew[0]
    with Fleet(config_for(sandbox, home, keepalive_interval=keepalive)) as own:
        started = time.monotonic()
        result = own.exec([target], "sleep 4714 & echo started")
        try:
            assert result[target.instance_id].stdout == "started\n"  # type: ignore[attr-defined]
            assert time.monotonic() - started < 10
        finally:
            remote(own, target, "pkill -x -f 'sleep 4714'")


def test_non_zero_exit_is_a_fleet_error_that_keeps_every_result(fleet: Fleet, crew: list[Instance]) -> None:
    failing = crew[1]
    script = f'echo "on $(hostname)"; if [ "$(hostname)" = "{failing.hostname}" ]; then echo bad >&2; exit 3; fi'

    with pytest.raises(FleetError) as caught:
        fleet.exec(crew, script)

    result = caught.value.result
    assert set(result) == {i.instance_id for i in crew}
    assert set(result.failed) == {failing.instance_id}
    assert result[failing.instance_id].exit_status == 3  # type: ignore[attr-defined]
    assert result[failing.instance_id].stderr == "bad\n"  # type: ignore[attr-defined]
    for instance in crew:
        if instance is not failing:
            assert result[instance.instance_id].stdout == f"on {instance.hostname}\n"  # type: ignore[attr-defined]
    assert f"{failing.instance_id}: exit status 3" in str(caught.value)
    assert "1 of 3" in str(caught.value)


def test_check_false_returns_non_zero_exits_without_raising(fleet: Fleet, crew: list[Instance]) -> None:
    result = fleet.exec(crew[:2], "exit 5", check=False)
    assert {r.exit_status for r in result.values()} == {5}  # type: ignore[attr-defined]
    assert len(result.failed) == 2 and not result.succeeded


@pytest.mark.parametrize("user", ["root", "webuser"])
def test_a_script_ended_by_a_signal_exits_with_128_plus_its_number(
    fleet: Fleet, crew: list[Instance], user: str
) -> None:
    result = fleet.exec(crew[:1], "echo before; kill -TERM $$; echo after", user=user, check=False)
    outcome = result[crew[0].instance_id]
    assert (outcome.exit_status, outcome.stdout) == (143, "before\n")  # type: ignore[attr-defined]

    killed = fleet.exec(crew[:1], "kill -KILL $$", user=user, check=False)
    assert killed[crew[0].instance_id].exit_status == 137  # type: ignore[attr-defined]
    # The instance's number for the signal (Linux: 10), whatever this machine numbers it.
    user1 = fleet.exec(crew[:1], "kill -USR1 $$", user=user, check=False)
    assert user1[crew[0].instance_id].exit_status == 138  # type: ignore[attr-defined]


@pytest.mark.parametrize("user", ["root", "webuser"])
def test_a_script_reads_an_empty_stdin(fleet: Fleet, crew: list[Instance], user: str) -> None:
    result = fleet.exec(crew[:1], 'read -r line; echo "read $? [$line]"', user=user)
    assert result[crew[0].instance_id].stdout == "read 1 []\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("user", ["root", "webuser"])
def test_timeout_ends_the_remote_process_and_leaves_no_script(fleet: Fleet, crew: list[Instance], user: str) -> None:
    target = crew[2]
    marker = 4711 if user == "root" else 4712
    started = time.monotonic()

    result = fleet.exec([target], f"echo begun; sleep {marker}", user=user, timeout=1, check=False)

    error = result[target.instance_id]
    assert isinstance(error, WaitTimeoutError)
    assert "did not finish within 1 s" in str(error) and error.hint
    assert time.monotonic() - started < 15
    running = remote(fleet, target, f"pgrep -x -f 'sleep {marker}'")
    assert running.returncode == 1, running.stdout
    assert leftover_scripts(fleet, target) == []


def test_cancel_event_ends_the_remote_process(fleet: Fleet, crew: list[Instance]) -> None:
    target = crew[1]
    cancel = threading.Event()
    sink = Recording()
    thread, outcome = in_thread(lambda: fleet.exec([target], "echo begun; sleep 4713", sink=sink, cancel=cancel))
    wait_for(lambda: sink.text(target.instance_id) == "begun\n", timeout=15, what="the script to start")

    cancel.set()
    thread.join(15)

    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), KeyboardInterrupt)
    assert remote(fleet, target, "pgrep -x -f 'sleep 4713'").returncode == 1
    assert leftover_scripts(fleet, target) == []


def test_unknown_user_is_an_ssh_error_naming_the_user(fleet: Fleet, crew: list[Instance]) -> None:
    with pytest.raises(FleetError) as caught:
        fleet.exec(crew[:1], "echo never", user="nosuchuser")
    error = caught.value.result[crew[0].instance_id]
    assert isinstance(error, SshError)
    assert "no user 'nosuchuser'" in str(error) and crew[0].instance_id in str(error)
    assert error.hint and "useradd" in error.hint


def test_exec_leaves_no_temporary_script(fleet: Fleet, crew: list[Instance]) -> None:
    fleet.exec(crew, "ls -a /tmp > /dev/null; exit 9", check=False)
    fleet.exec(crew[:1], "true", user="webuser")
    for instance in crew:
        assert leftover_scripts(fleet, instance) == []


def test_exec_reuses_one_ssh_connection_per_instance(fleet: Fleet, crew: list[Instance]) -> None:
    target = crew[0]
    first = fleet.exec([target], 'echo "$SSH_CONNECTION"')[target.instance_id]
    # From outside the instance's VPC (this machine), the public address is the one dialed.
    connection = fleet._connections[(target.instance_id, True)]
    second = fleet.exec([target], 'echo "$SSH_CONNECTION"')[target.instance_id]

    assert fleet._connections[(target.instance_id, True)] is connection
    assert first.stdout == second.stdout and first.stdout.strip()  # type: ignore[attr-defined]
    # Behind the public address is NAT, as on ECS: the instance sees its private one.
    assert first.stdout.split()[2] == target.private_ip  # type: ignore[attr-defined]


def test_exec_runs_instances_in_parallel(fleet: Fleet, crew: list[Instance]) -> None:
    started = time.monotonic()
    result = fleet.exec(crew, "sleep 1")
    assert len(result.succeeded) == 3
    assert time.monotonic() - started < 2.9  # one after the other would take 3 s


# -- copy ----------------------------------------------------------------------------------


def make_tree(root: Path) -> Path:
    tree = root / "conf"
    (tree / "sub").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tree / "a.txt").chmod(0o640)
    (tree / "sub" / "run.sh").chmod(0o750)
    (tree / "sub").chmod(0o700)
    tree.chmod(0o751)
    return tree


def listing(lines: str) -> set[str]:
    return set(lines.strip().splitlines())


def test_copy_to_puts_a_file_on_every_instance_owned_by_the_user_with_its_mode(
    fleet: Fleet, crew: list[Instance], tmp_path: Path
) -> None:
    source = tmp_path / unique("data")
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    source.chmod(0o640)
    seen: dict[str, list[tuple[int, int]]] = {}

    def progress(instance_id: str, done: int, total: int) -> None:
        seen.setdefault(instance_id, []).append((done, total))

    result = fleet.copy_to(crew, str(source), "/home/webuser", user="webuser", progress=progress)

    digest = hashlib.sha256(payload).hexdigest()
    for instance in crew:
        outcome = result[instance.instance_id]
        assert isinstance(outcome, CopyResult)
        assert (outcome.target, outcome.files, outcome.bytes) == (f"/home/webuser/{source.name}", 1, 300_000)
        found = remote(fleet, instance, f"stat -c '%U %G %a' {outcome.target}; sha256sum < {outcome.target}")
        assert found.stdout.split()[:4] == ["webuser", "webuser", "640", digest]
        values = seen[instance.instance_id]
        assert values[-1] == (300_000, 300_000)
        assert len(values) > 2 and all(total == 300_000 for _, total in values)
        assert [done for done, _ in values] == sorted(done for done, _ in values)


def test_copy_to_a_relative_new_name_lands_in_the_user_home(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("notes\n")
    result = fleet.copy_to(crew[:1], str(source), "renamed-notes.txt", user="webuser")
    assert result[crew[0].instance_id].target == "/home/webuser/renamed-notes.txt"  # type: ignore[attr-defined]
    assert remote(fleet, crew[0], "cat /home/webuser/renamed-notes.txt").stdout == "notes\n"


def test_copy_to_puts_a_directory_with_modes_and_owner(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    tree = make_tree(tmp_path / unique("up"))
    target = f"/home/webuser/{unique('tree')}"

    result = fleet.copy_to(crew[:1], str(tree), target, user="webuser")

    outcome = result[crew[0].instance_id]
    assert (outcome.files, outcome.bytes) == (2, len("alpha\n") + len("#!/bin/sh\necho run\n"))  # type: ignore[attr-defined]
    found = remote(fleet, crew[0], f"cd {target} && find . -printf '%u %m %p\\n'")
    assert listing(found.stdout) == {
        "webuser 751 .",
        "webuser 640 ./a.txt",
        "webuser 700 ./sub",
        "webuser 750 ./sub/run.sh",
        "webuser 755 ./empty",
    }


def test_copy_to_an_existing_directory_places_the_source_under_it(
    fleet: Fleet, crew: list[Instance], tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / unique("into"))
    folder = f"/home/webuser/{unique('into')}"
    remote(fleet, crew[0], f"mkdir {folder}")
    fleet.copy_to(crew[:1], str(tree), folder, user="webuser")
    assert remote(fleet, crew[0], f"cat {folder}/conf/a.txt").stdout == "alpha\n"


def test_copy_from_gets_a_file_with_its_mode_and_reports_progress(
    fleet: Fleet, crew: list[Instance], tmp_path: Path
) -> None:
    # Larger than the stream's read size, so progress comes in steps however fast the data arrives
    # (uncompressed: zeros compressed would be one read).
    size = 3_000_000
    fleet.exec(crew[:1], f"head -c {size} /dev/zero > out.bin && chmod 604 out.bin", user="webuser")
    seen: list[tuple[str, int, int]] = []

    outcome = fleet.copy_from(crew[0], "out.bin", str(tmp_path), user="webuser", compress="off",
                              progress=lambda iid, done, total: seen.append((iid, done, total)))  # fmt: skip

    local = tmp_path / "out.bin"
    assert outcome.target == str(local) and (outcome.files, outcome.bytes) == (1, size)
    assert local.read_bytes() == bytes(size)
    assert stat.S_IMODE(local.stat().st_mode) == 0o604
    assert seen[-1] == (crew[0].instance_id, size, size) and len(seen) > 2
    assert all(done < size for _, done, _ in seen[:2])


def test_copy_from_to_a_new_name_renames_like_scp(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    fleet.exec(crew[:1], "echo hello > hello.txt", user="webuser")
    fleet.copy_from(crew[0], "/home/webuser/hello.txt", str(tmp_path / "greeting.txt"), user="webuser")
    assert (tmp_path / "greeting.txt").read_text() == "hello\n"


def test_copy_from_several_instances_puts_each_copy_in_a_folder_named_by_its_id(
    fleet: Fleet, crew: list[Instance], tmp_path: Path
) -> None:
    result = fleet.copy_from(crew[:2], "/etc/hostname", str(tmp_path), user="webuser")
    assert set(result.succeeded) == {crew[0].instance_id, crew[1].instance_id} and not result.failed
    for instance in crew[:2]:
        assert (tmp_path / instance.instance_id / "hostname").read_text() == f"{instance.hostname}\n"
    with pytest.raises(FleetError) as caught:
        fleet.copy_from(crew[:2], "no/such/file", str(tmp_path / "missing"), user="webuser")
    assert "the copy failed on 2 of 2 instance(s)" in str(caught.value) and caught.value.hint
    assert sorted(p.name for p in (tmp_path / "missing").iterdir()) == sorted(i.instance_id for i in crew[:2])
    assert all(not any((tmp_path / "missing" / i.instance_id).iterdir()) for i in crew[:2])


def test_exec_exports_env_to_the_script_quoted(fleet: Fleet, crew: list[Instance]) -> None:
    result = fleet.exec(crew[:1], 'printf "%s\\n" "$A" "$B"', user="webuser", env={"A": "x y", "B": "'$(id)'"})
    outcome = result[crew[0].instance_id]
    assert isinstance(outcome, ExecResult) and outcome.stdout == "x y\n'$(id)'\n"
    with pytest.raises(ConfigError, match="'A-B' is not a valid environment variable name"):
        fleet.exec(crew[:1], "true", env={"A-B": "1"})


def test_copy_from_gets_a_directory_with_modes(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    tree = make_tree(tmp_path / unique("round"))
    name = unique("round")
    fleet.copy_to(crew[:1], str(tree), name, user="webuser")
    back = tmp_path / "back"
    back.mkdir()

    outcome = fleet.copy_from(crew[0], name, str(back), user="webuser")

    copied = back / name
    assert outcome.target == str(copied) and outcome.files == 2
    modes = {p.relative_to(copied).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in copied.rglob("*")}
    assert modes == {"a.txt": 0o640, "sub": 0o700, "sub/run.sh": 0o750, "empty": 0o755}
    assert stat.S_IMODE(copied.stat().st_mode) == 0o751
    assert (copied / "sub" / "run.sh").read_text() == "#!/bin/sh\necho run\n"


def test_copy_of_a_missing_local_path_fails_naming_it(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    missing = tmp_path / "not-here.txt"
    with pytest.raises(FleetError) as caught:
        fleet.copy_to(crew[:2], str(missing), "/tmp", user="root")
    assert set(caught.value.result.failed) == {crew[0].instance_id, crew[1].instance_id}
    error = caught.value.result[crew[0].instance_id]
    assert isinstance(error, CopyError) and str(missing) in str(error) and error.hint


def test_copy_of_a_missing_remote_path_fails_naming_it(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    with pytest.raises(CopyError) as caught:
        fleet.copy_from(crew[0], "no/such/file", str(tmp_path), user="webuser")
    assert "/home/webuser/no/such/file does not exist" in str(caught.value)
    assert crew[0].instance_id in str(caught.value) and caught.value.hint
    assert list(tmp_path.iterdir()) == []


def test_copy_into_a_missing_remote_folder_fails(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    source = tmp_path / "x.txt"
    source.write_text("x")
    with pytest.raises(FleetError) as caught:
        fleet.copy_to(crew[:1], str(source), "/no/such/folder/x.txt")
    assert "/no/such/folder does not exist" in str(caught.value.result[crew[0].instance_id])


def test_copy_into_a_missing_local_folder_fails(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    with pytest.raises(CopyError, match="does not exist"):
        fleet.copy_from(crew[0], "/etc/hostname", str(tmp_path / "no" / "such" / "x"))


def test_copy_as_an_unknown_user_fails(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    with pytest.raises(SshError, match="no user 'nosuchuser'"):
        fleet.copy_from(crew[0], "x", str(tmp_path), user="nosuchuser")


class Interrupted(BaseException):
    """Stands for Ctrl-C in the middle of a transfer."""


def interrupt_after_first_progress(*args: int | str) -> None:
    if args[-2] > 0:
        raise Interrupted


def test_an_interrupted_upload_leaves_the_old_target_whole_and_no_parts(
    fleet: Fleet, crew: list[Instance], tmp_path: Path
) -> None:
    target = f"/home/webuser/{unique('whole')}.bin"
    remote(fleet, crew[0], f"echo old > {target}")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(400_000))

    with pytest.raises(Interrupted):
        fleet.copy_to(crew[:1], str(source), target, user="webuser", progress=interrupt_after_first_progress)

    assert remote(fleet, crew[0], f"cat {target}").stdout == "old\n"
    assert remote(fleet, crew[0], "ls -a /home/webuser | grep pymlsql- || true").stdout == ""


def test_an_interrupted_download_leaves_nothing_behind(fleet: Fleet, crew: list[Instance], tmp_path: Path) -> None:
    fleet.exec(crew[:1], "head -c 400000 /dev/urandom > big.bin", user="webuser")
    (tmp_path / "big.bin").write_text("old\n")

    with pytest.raises(Interrupted):
        fleet.copy_from(crew[0], "big.bin", str(tmp_path), user="webuser", progress=interrupt_after_first_progress)

    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]
    assert (tmp_path / "big.bin").read_text() == "old\n"


# -- start again, reuse, stop --------------------------------------------------------------


def test_a_start_with_a_name_is_idempotent_and_creates_only_what_is_missing(sandbox: Sandbox, fleet: Fleet) -> None:
    name = unique("idem")
    first = fleet.start(image_id=DEBIAN, count=2, name=name)
    try:
        mark = len(sandbox.log()["requests"])
        again = fleet.start(image_id=DEBIAN, count=2, name=name)
        assert sorted(i.instance_id for i in again) == sorted(i.instance_id for i in first)
        assert requests_since(sandbox, mark, "RunInstances") == []

        more = fleet.start(image_id=DEBIAN, count=3, name=name)
        assert {i.instance_id for i in first} < {i.instance_id for i in more} and len(more) == 3
        assert len(requests_since(sandbox, mark, "RunInstances")) == 1
    finally:
        fleet.stop(fleet.find(name))
    assert fleet.find(name) == []


def test_stop_keep_disk_then_start_by_id_reuses_the_stopped_instance(
    sandbox: Sandbox, fleet: Fleet, crew_start: dict[str, Any]
) -> None:
    key = crew_start["key"]
    (instance,) = fleet.start(image_id=DEBIAN, key_pair_name=key)
    instance_id = instance.instance_id
    try:
        fleet.exec([instance], "echo kept > /root/marker")

        fleet.stop([instance], keep_disk=True)
        assert fleet.get([instance_id])[0].status == "Stopped"

        mark = len(sandbox.log()["requests"])
        (again,) = fleet.start(instance_ids=[instance_id], key_pair_name=key)
        assert again.status == "Running"
        assert requests_since(sandbox, mark, "RunInstances") == []
        assert [r["code"] for r in requests_since(sandbox, mark, "StartInstances")] == ["OK"]
        assert fleet.exec([again], "cat /root/marker")[instance_id].stdout == "kept\n"  # type: ignore[attr-defined]
    finally:
        fleet.stop(fleet.get([instance_id]))
    with pytest.raises(ConfigError, match=f"no instance {instance_id}"):
        fleet.get([instance_id])
    assert instance_id not in fleet.config.known_hosts_path().read_text()


def test_get_names_every_unknown_instance_id(fleet: Fleet) -> None:
    with pytest.raises(ConfigError) as caught:
        fleet.get(["i-doesnotexist1", "i-doesnotexist2"])
    assert "i-doesnotexist1, i-doesnotexist2" in str(caught.value) and caught.value.hint


def test_a_different_existing_key_file_is_never_overwritten(sandbox: Sandbox, fleet: Fleet) -> None:
    name = unique("clash")
    new_client(sandbox).create_key_pair(ecs.CreateKeyPairRequest(region_id=sandbox.region_id, key_pair_name=name))
    path = fleet.config.key_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    before = path.read_bytes()
    mark = len(sandbox.log()["requests"])

    with pytest.raises(ConfigError) as caught:
        fleet.start(image_id=DEBIAN, key_pair_name=name, init_ssh_key=True)

    assert path.read_bytes() == before
    assert "never overwritten" in str(caught.value) and str(path) in str(caught.value)
    assert requests_since(sandbox, mark, "RunInstances") == []


def test_init_ssh_key_imports_an_existing_key_file_and_reuses_it(sandbox: Sandbox, fleet: Fleet) -> None:
    name = unique("own")
    path = fleet.config.key_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    before = path.read_bytes()

    (instance,) = fleet.start(image_id=DEBIAN, name=name, key_pair_name=name, init_ssh_key=True)
    try:
        (again,) = fleet.start(image_id=DEBIAN, name=name, key_pair_name=name, init_ssh_key=True)
        assert again.instance_id == instance.instance_id
        assert path.read_bytes() == before
        assert ssh(instance.public_ip, path, "echo by-own-key").stdout == "by-own-key\n"
    finally:
        fleet.stop([instance])


def test_a_missing_key_pair_without_init_ssh_key_is_a_config_error(fleet: Fleet) -> None:
    with pytest.raises(ConfigError) as caught:
        fleet.start(image_id=DEBIAN, key_pair_name=unique("absent"))
    assert "--init-ssh-key true" in str(caught.value)


def test_a_start_without_the_key_file_fails_at_once_instead_of_waiting(
    sandbox: Sandbox, crew: list[Instance], tmp_path: Path
) -> None:
    started = time.monotonic()
    with Fleet(config_for(sandbox, tmp_path, start_timeout=20)) as keyless, pytest.raises(SshError) as caught:
        keyless.start(instance_ids=[crew[0].instance_id])
    assert time.monotonic() - started < 10
    assert str(tmp_path / "keys" / crew[0].key_pair_name) in str(caught.value) and caught.value.hint


def test_an_unknown_image_is_an_api_error_after_exactly_one_call(sandbox: Sandbox, fleet: Fleet) -> None:
    mark = len(sandbox.log()["requests"])
    with pytest.raises(EcsApiError) as caught:
        fleet.start(image_id="m-no-such-image")
    (call,) = requests_since(sandbox, mark, "RunInstances")
    error = caught.value
    assert (error.code, error.request_id) == ("InvalidImageId.NotFound", call["request_id"])
    assert error.api_message and error.hint and "RequestId" in str(error)


def test_start_without_image_or_reusable_instance_is_a_config_error(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match="image id"):
        fleet.start(name=unique("nothing"))


# -- faults: retries, timeouts, host keys, on a sandbox of their own -----------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("fleet-faults"), timings=FAST).start() as running:
        yield running


@pytest.fixture(scope="module")
def fhome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults-home")


def test_throttling_is_retried_until_it_succeeds(cleared: Sandbox, fhome: Path) -> None:
    cleared.fault({"action": "DescribeInstances", "code": "Throttling.User", "status": 400, "count": 2})
    with Fleet(config_for(cleared, fhome)) as fleet:
        assert fleet.find() == []
    codes = [r["code"] for r in cleared.log()["requests"] if r["action"] == "DescribeInstances"]
    assert codes[-3:] == ["Throttling.User", "Throttling.User", "OK"]


def test_a_refusal_of_the_place_names_the_type_zone_and_region_given(cleared: Sandbox, fhome: Path) -> None:
    cleared.fault({"action": "RunInstances", "code": "OperationDenied.NoStock", "status": 400, "count": 1,
                   "message": "The resource is out of stock in the specified zone."})  # fmt: skip
    with Fleet(config_for(cleared, fhome)) as fleet, pytest.raises(EcsApiError) as caught:
        fleet.start(image_id=DEBIAN, instance_type="ecs.g7.large", zone="cn-hangzhou-i")
    first = str(caught.value).splitlines()[0]
    assert "OperationDenied.NoStock" in first
    assert "(InstanceType ecs.g7.large, ZoneId cn-hangzhou-i, region cn-hangzhou)" in first, first


def test_server_errors_beyond_the_attempts_are_an_api_error_with_code_request_id_and_hint(
    cleared: Sandbox, fhome: Path
) -> None:
    cleared.fault({"action": "DescribeInstances", "code": "ServiceUnavailable", "status": 503, "count": 5})
    with Fleet(config_for(cleared, fhome, api_attempts=2)) as fleet, pytest.raises(EcsApiError) as caught:
        fleet.find()
    calls = [r for r in cleared.log()["requests"] if r["action"] == "DescribeInstances"][-2:]
    assert [r["code"] for r in calls] == ["ServiceUnavailable"] * 2
    error = caught.value
    assert (error.code, error.request_id) == ("ServiceUnavailable", calls[-1]["request_id"])
    assert "after 2 attempts" in str(error) and error.hint
    assert cleared.access_key_secret not in str(error)


@pytest.mark.parametrize("keep", [False, True])
def test_a_start_that_times_out_releases_what_it_created_unless_asked_to_keep_it(
    cleared: Sandbox, fhome: Path, keep: bool
) -> None:
    cleared.fault({"stuck": "Starting"})
    name = unique("stuck")
    with Fleet(config_for(cleared, fhome, start_timeout=1.5)) as fleet:
        with pytest.raises(WaitTimeoutError) as caught:
            fleet.start(image_id=DEBIAN, count=2, name=name, keep_on_failure=keep)
        assert "not Running within 1.5 s" in str(caught.value) and caught.value.hint
        left = fleet.find(name)
        if keep:
            assert [i.status for i in left] == ["Starting", "Starting"]
            fleet.stop(left)
        else:
            assert left == []
            deleted = [r for r in cleared.log()["requests"] if r["action"] == "DeleteInstances"]
            assert deleted[-1]["code"] == "OK" and len(deleted[-1]["instance_ids"]) == 2


def test_a_start_whose_ssh_never_comes_up_times_out_and_releases_what_it_created(cleared: Sandbox, fhome: Path) -> None:
    cleared.fault({"ssh_delay": 60})
    name = unique("no-ssh")
    with Fleet(config_for(cleared, fhome, start_timeout=2)) as fleet:
        with pytest.raises(WaitTimeoutError) as caught:
            fleet.start(image_id=DEBIAN, name=name, key_pair_name=unique("late"), init_ssh_key=True)
        message = str(caught.value)
        assert "did not accept the key within 2 s" in message and message.count("Hint:") == 1
        assert fleet.find(name) == []


def test_a_changed_host_key_is_refused_with_a_clear_message(cleared: Sandbox, fhome: Path) -> None:
    with Fleet(config_for(cleared, fhome)) as fleet:
        (instance,) = fleet.start(image_id=DEBIAN, key_pair_name=unique("hk"), init_ssh_key=True)
        try:
            assert fleet.exec([instance], "echo pinned")[instance.instance_id].stdout == "pinned\n"  # type: ignore[attr-defined]
            pinned = fleet.config.known_hosts_path().read_text()
            assert instance.instance_id in pinned

            cleared.fault({"rotate_host_key": instance.instance_id})
            wait_for(lambda: "ssh_ready_at" in cleared.log()["instances"][instance.instance_id], timeout=15)

            result = fleet.exec([instance], "echo never", check=False)
            error = result[instance.instance_id]
            assert isinstance(error, HostKeyMismatchError)
            assert f"the SSH host key of {instance.instance_id}" in str(error) and "refusing" in str(error)
            assert str(fleet.config.known_hosts_path()) in (error.hint or "")
            assert fleet.config.known_hosts_path().read_text() == pinned

            with pytest.raises(HostKeyMismatchError):
                fleet.start(instance_ids=[instance.instance_id])
        finally:
            fleet.stop([instance])


def test_a_missing_users_complaint_is_never_output_however_it_arrives() -> None:
    from pymlsql_magics.core._remote import PidHeader

    for cuts in ([b"pymlsql:pid=0\npymlsql: no user ghost\n"],
                 [b"pymlsql:pid=0\n", b"pymlsql: no user ", b"ghost\n"],
                 [b"pymlsql:pi", b"d=0\npymlsql: no user ghost\n"]):  # fmt: skip
        header = PidHeader()
        assert b"".join(header.feed(chunk) for chunk in cuts) == b"" and header.pid == 0, cuts
    header = PidHeader()
    assert [header.feed(chunk) for chunk in (b"pymlsql:pid=42\nfirst ", b"second\n")] == [b"first ", b"second\n"]
