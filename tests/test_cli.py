"""`pymlsql` as shell scripts run it: real subprocesses against the sandbox, seed-compatible output."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pymlsql_magics.sandbox import Sandbox
from pymlsql_magics.sandbox import stop as stop_sandbox

from .conftest import FAST
from .helpers import (
    describe,
    environment,
    error_lines,
    hinted_error,
    new_client,
    pymlsql,
    requests_since,
    sdk_network,
    ssh,
    unique,
)

REPO = Path(__file__).resolve().parent.parent
WEBUSER_IMAGE = "m-sandbox-webuser"
DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
SEED_LINES = re.compile(r"instance_id:(i-\w+)\npublic_ip:([\d.]*)\nintern_ip:([\d.]+)\n")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def env(sandbox: Sandbox, home: Path) -> dict[str, str]:
    return environment(sandbox, home)


@pytest.fixture(scope="module")
def master(sandbox: Sandbox, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """One instance started the seed's way, with a new key pair and a public IP."""
    key, name = unique("cli-key"), unique("cli-master")
    began = time.time()
    done = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--instance-type", "ecs.g7.large",
                   "--key-pair-name", key, "--init-ssh-key", "true", "--need-public-ip", "true",
                   "--security-group", sdk_network(sandbox).security_group_id, "--name", name, "--tag", "team=cli",
                   "--tag", "stage=test", "--ttl", "2h")  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = SEED_LINES.fullmatch(done.stdout)
    assert match, done.stdout
    info = {"done": done, "id": match[1], "public": match[2], "intern": match[3], "key": key, "name": name,
            "began": began, "key_path": Path(env["HOME"]) / ".ssh" / key}  # fmt: skip
    yield info
    pymlsql(env, "stop", "--instance-id", info["id"])


def root_ssh(master: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    # This machine is outside the instance's VPC: its public address is the one that reaches it.
    return ssh(master["public"], master["key_path"], command)


# -- start ---------------------------------------------------------------------------------


def test_start_prints_exactly_the_seed_lines_on_stdout(master: dict[str, Any]) -> None:
    assert master["done"].stdout == (
        f"instance_id:{master['id']}\npublic_ip:{master['public']}\nintern_ip:{master['intern']}\n"
    )
    assert master["public"] and master["public"] != master["intern"]


def test_start_reports_progress_on_stderr_without_secrets(sandbox: Sandbox, master: dict[str, Any]) -> None:
    stderr = master["done"].stderr
    assert "pymlsql: creating 1 instance(s)" in stderr and "Running" in stderr
    assert "waiting for SSH" in stderr
    assert sandbox.access_key_secret not in stderr + master["done"].stdout


def test_start_flags_reach_ecs(sandbox: Sandbox, master: dict[str, Any]) -> None:
    (item,) = describe(new_client(sandbox), sandbox.region_id, [master["id"]])
    tags = {tag.tag_key: tag.tag_value for tag in item.tags.tag}
    assert {k: tags.get(k) for k in ("team", "stage", "pymlsql:name", "pymlsql:created-by")} == {
        "team": "cli",
        "stage": "test",
        "pymlsql:name": master["name"],
        "pymlsql:created-by": "pymlsql",
    }
    assert (item.instance_type, item.key_pair_name) == ("ecs.g7.large", master["key"])
    assert item.security_group_ids.security_group_id == [sdk_network(sandbox).security_group_id]
    assert item.public_ip_address.ip_address == [master["public"]]
    released = datetime.strptime(item.auto_release_time, "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
    assert abs(released.timestamp() - (master["began"] + 7200)) <= 90


def test_init_ssh_key_saves_the_key_in_home_ssh_with_mode_600(master: dict[str, Any]) -> None:
    path: Path = master["key_path"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert root_ssh(master, "hostname").stdout.strip() == f"iZ{master['id'][2:]}Z"


def test_start_by_instance_id_reuses_it_and_prints_json(
    sandbox: Sandbox, env: dict[str, str], master: dict[str, Any]
) -> None:
    mark = len(sandbox.log()["requests"])
    done = pymlsql(env, "start", "--instance-id", master["id"], "--key-pair-name", master["key"], "--output", "json")
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)
    assert (item["instance_id"], item["public_ip"], item["intern_ip"]) == (
        master["id"],
        master["public"],
        master["intern"],
    )
    assert item["status"] == "Running" and item["tags"]["team"] == "cli"
    assert item["currency"] == "CNY" and item["price_per_hour"] > 0 and item["cost_so_far"] >= 0
    assert requests_since(sandbox, mark, "RunInstances") == []


def test_start_with_the_same_name_again_finds_the_instance(
    sandbox: Sandbox, env: dict[str, str], master: dict[str, Any]
) -> None:
    mark = len(sandbox.log()["requests"])
    done = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--name", master["name"],
                   "--key-pair-name", master["key"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"instance_id:{master['id']}"
    assert requests_since(sandbox, mark, "RunInstances") == []


def test_key_pair_name_falls_back_to_mlsql_key_pare_name(env: dict[str, str], master: dict[str, Any]) -> None:
    absent = pymlsql({**env, "MLSQL_KEY_PARE_NAME": "absent-key-pair"}, "start", "--instance-id", master["id"])
    first, _ = hinted_error(absent, exit_code=2)
    assert "absent-key-pair" in first

    present = pymlsql({**env, "MLSQL_KEY_PARE_NAME": master["key"]}, "start", "--instance-id", master["id"])
    assert present.returncode == 0, present.stderr
    assert f"instance_id:{master['id']}" in present.stdout


def test_start_passes_every_launch_flag_and_region(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    vswitch_id = sdk_network(sandbox, "cn-shanghai", zone="cn-shanghai-k").vswitch_id
    user_data = tmp_path / "user-data.sh"
    user_data.write_text("#!/bin/sh\necho hello\n")
    done = pymlsql(env, "start", "--region", "cn-shanghai", "--image-id", DEBIAN, "--instance-type", "ecs.c7.large",
                   "--zone", "cn-shanghai-k", "--vswitch", vswitch_id, "--spot-strategy",
                   "SpotWithPriceLimit", "--system-disk-size", "50", "--system-disk-category", "cloud_ssd",
                   "--user-data-file", str(user_data), "--start-timeout", "60", "--count", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = re.findall(r"^instance_id:(i-\w+)$", done.stdout, re.MULTILINE)
    assert len(ids) == 2 and len(done.stdout.splitlines()) == 6
    try:
        items = describe(new_client(sandbox), "cn-shanghai", ids)
        assert {(i.instance_type, i.zone_id, i.spot_strategy, i.vpc_attributes.v_switch_id) for i in items} == {
            ("ecs.c7.large", "cn-shanghai-k", "SpotWithPriceLimit", vswitch_id)
        }
        kept = [sandbox.world.instances[i] for i in ids]
        assert {(k.system_disk_size, k.system_disk_category, k.user_data) for k in kept} == {
            (50, "cloud_ssd", b"#!/bin/sh\necho hello\n")
        }
        assert "no key pair: not waiting for SSH" in done.stderr

        listed = pymlsql(env, "list", "--region", "cn-shanghai", "--output", "json")
        assert sorted(item["instance_id"] for item in json.loads(listed.stdout)) == sorted(ids)
    finally:
        stopped = pymlsql(env, "stop", "--all", "--region", "cn-shanghai")
    assert stopped.returncode == 0, stopped.stderr
    assert "released 2 instance(s)" in stopped.stderr
    assert describe(new_client(sandbox), "cn-shanghai", ids) == []


def test_start_with_an_unknown_image_is_an_api_error_with_a_hint(sandbox: Sandbox, env: dict[str, str]) -> None:
    mark = len(sandbox.log()["requests"])
    first, hint = hinted_error(pymlsql(env, "start", "--image-id", "m-no-such-image"), exit_code=1)
    assert "InvalidImageId.NotFound" in first and "RequestId" in first
    assert "image" in hint
    assert len(requests_since(sandbox, mark, "RunInstances")) == 1


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["start"], "nothing to start"),
        (["start", "--image-id", DEBIAN, "--user-data-file", "/no/such/user-data"], "user data file"),
        (["stop"], "nothing to stop"),
    ],
)
def test_missing_inputs_are_config_errors(env: dict[str, str], args: list[str], complaint: str) -> None:
    lines = error_lines(pymlsql(env, *args), exit_code=2)
    assert complaint in lines[0]


@pytest.mark.parametrize(("flag", "value"), [("--ttl", "soon"), ("--init-ssh-key", "maybe"), ("--tag", "novalue")])
def test_malformed_flag_values_are_usage_errors(env: dict[str, str], flag: str, value: str) -> None:
    done = pymlsql(env, "start", "--image-id", DEBIAN, flag, value)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and value in done.stderr


# -- exec-shell ----------------------------------------------------------------------------


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "script.sh"
    path.write_text(text)
    return str(path)


def test_exec_shell_prints_only_the_script_stdout_and_exits_with_its_status(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--execute-user", "root",
                   "--script-file", script(tmp_path, "echo out; echo err >&2; echo € done; exit 3"))  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == "out\n€ done\n"
    assert "err\n" in done.stderr and "Traceback" not in done.stderr


def test_exec_shell_as_webuser_runs_a_login_shell_in_its_home(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    # Only a login shell reads /etc/profile (and with it /etc/profile.d).
    root_ssh(master, "echo 'export FROM_PROFILE=yes' > /etc/profile.d/pymlsql-cli-test.sh")
    lines = 'whoami; pwd; echo "$HOME"; echo "${FROM_PROFILE:-no}"'
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--execute-user", "webuser",
                   "--key-pair-name", master["key"], "--script-file", script(tmp_path, lines))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["webuser", "/home/webuser", "/home/webuser", "yes"]


def test_exec_shell_reaches_the_public_ip_by_default_and_the_flag_still_forces_a_choice(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    # Behind the public address is NAT, as on ECS: the instance sees its private address.
    what = script(tmp_path, 'echo "$SSH_CONNECTION" | cut -d" " -f3')
    for forced in ([], ["--need-public-ip", "true"]):
        done = pymlsql(env, "exec-shell", "--instance-id", master["id"], *forced, "--script-file", what)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{master['intern']}\n"
    # This machine is outside the VPC: forced onto the private address, it finds nothing there.
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--need-public-ip", "false", "--script-file", what)
    assert done.returncode == 1
    assert f"({master['intern']}:22): Connection refused" in done.stderr


def test_exec_shell_timeout_stops_the_script(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--timeout", "1",
                   "--script-file", script(tmp_path, "echo begun; sleep 4721"))  # fmt: skip
    first, hint = hinted_error(done, exit_code=1)
    assert "did not finish within 1 s" in first and "timeout" in hint
    assert done.stdout == "begun\n"
    assert root_ssh(master, "pgrep -x -f 'sleep 4721'").returncode == 1


def test_exec_shell_with_a_missing_script_file(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    first, hint = hinted_error(
        pymlsql(env, "exec-shell", "--instance-id", master["id"], "--script-file", str(tmp_path / "nope.sh")),
        exit_code=2,
    )
    assert "cannot read the script file" in first and "nope.sh" in first
    assert "--script-file" in hint


def test_exec_shell_on_an_unknown_instance(env: dict[str, str], tmp_path: Path) -> None:
    first, hint = hinted_error(
        pymlsql(env, "exec-shell", "--instance-id", "i-nosuchinstance", "--script-file", script(tmp_path, "true")),
        exit_code=2,
    )
    assert "no instance i-nosuchinstance" in first and "region" in hint


def test_exec_shell_as_an_unknown_user(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--execute-user", "ghost",
                   "--script-file", script(tmp_path, "true"))  # fmt: skip
    first, hint = hinted_error(done)
    assert "no user 'ghost'" in first and master["id"] in first
    assert "--execute-user" in hint and "%ecs" not in hint
    assert done.stderr == f"{first}\n{hint}\n"  # the remote complaint is the error, not output too


def test_exec_shell_with_a_key_pair_whose_key_file_is_missing(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    done = pymlsql({**env, "MLSQL_KEY_PARE_NAME": "no-such-key"}, "exec-shell", "--instance-id", master["id"],
                   "--script-file", script(tmp_path, "true"))  # fmt: skip
    first, hint = hinted_error(done)
    assert "no-such-key" in first and "does not exist" in first and "--key-pair-name" in hint


def test_debug_shows_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    done = pymlsql(env, "exec-shell", "--instance-id", "i-x", "--script-file", str(tmp_path / "nope.sh"), "--debug")
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr and "ConfigError" in done.stderr


# -- copy ----------------------------------------------------------------------------------


def test_copy_from_local_puts_a_file_and_a_directory_owned_by_the_user(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o750)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "token").write_text("secret\n")
    (tree / "sub" / "token").chmod(0o600)
    folder = f"/home/webuser/{unique('up')}"
    root_ssh(master, f"mkdir {folder}")

    for source in (tool, tree):
        done = pymlsql(env, "copy-from-local", "--instance-id", master["id"], "--execute-user", "webuser",
                       "--source", str(source), "--target", folder)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "" and f"to {master['id']}:{folder}/{source.name}" in done.stderr

    found = root_ssh(master, f"cd {folder} && stat -c '%U %a %n' tool.sh tree tree/sub/token && ./tool.sh")
    assert found.stdout.splitlines() == ["webuser 750 tool.sh", "webuser 755 tree", "webuser 600 tree/sub/token",
                                         "tool"]  # fmt: skip


def test_copy_from_local_to_a_new_name_renames(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("a\n")
    done = pymlsql(env, "copy-from-local", "--instance-id", master["id"], "--execute-user", "webuser",
                   "--need-public-ip", "true", "--key-pair-name", master["key"],
                   "--source", str(source), "--target", "renamed-by-cli.txt")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert root_ssh(master, "stat -c '%U' /home/webuser/renamed-by-cli.txt").stdout == "webuser\n"


def test_copy_to_local_gets_a_directory_under_an_existing_folder_and_a_file_by_a_new_name(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    name = unique("down")
    root_ssh(master, f"mkdir -p /home/webuser/{name}/sub && echo deep > /home/webuser/{name}/sub/f.txt "
                     f"&& chmod 640 /home/webuser/{name}/sub/f.txt")  # fmt: skip

    into = pymlsql(env, "copy-to-local", "--instance-id", master["id"], "--execute-user", "webuser",
                   "--source", name, "--target", str(tmp_path))  # fmt: skip
    renamed = pymlsql(env, "copy-to-local", "--instance-id", master["id"], "--need-public-ip", "true",
                      "--key-pair-name", master["key"],
                      "--source", f"/home/webuser/{name}/sub/f.txt", "--target", str(tmp_path / "g.txt"))  # fmt: skip

    assert into.returncode == 0 and renamed.returncode == 0, into.stderr + renamed.stderr
    copied = tmp_path / name / "sub" / "f.txt"
    assert copied.read_text() == "deep\n" and stat.S_IMODE(copied.stat().st_mode) == 0o640
    assert (tmp_path / "g.txt").read_text() == "deep\n"


def test_copy_from_local_of_a_missing_local_path(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    done = pymlsql(env, "copy-from-local", "--instance-id", master["id"], "--source", str(tmp_path / "absent"),
                   "--target", "/tmp")  # fmt: skip
    first, hint = hinted_error(done)
    assert str(tmp_path / "absent") in first and "does not exist" in first and "--source" in hint


def test_copy_to_local_of_a_missing_remote_path(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    done = pymlsql(env, "copy-to-local", "--instance-id", master["id"], "--execute-user", "webuser",
                   "--source", "absent.txt", "--target", str(tmp_path))  # fmt: skip
    first, hint = hinted_error(done)
    assert "/home/webuser/absent.txt does not exist" in first and "--source" in hint
    assert list(tmp_path.iterdir()) == []


def test_copy_to_local_from_two_instances_puts_each_copy_in_its_own_folder(
    env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    started = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--key-pair-name", master["key"])
    assert started.returncode == 0, started.stderr
    (other,) = SEED_LINES.findall(started.stdout)
    try:
        ids = [master["id"], other[0]]
        done = pymlsql(env, "copy-to-local", "--instance-id", *ids, "--source", "/etc/hostname",
                       "--target", str(tmp_path))  # fmt: skip
        assert done.returncode == 0, done.stderr
        names = {instance_id: root_ssh({**master, "public": ip}, "hostname").stdout
                 for instance_id, ip in ((master["id"], master["public"]), (other[0], other[1]))}  # fmt: skip
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(ids)
        for instance_id in ids:
            assert (tmp_path / instance_id / "hostname").read_text() == names[instance_id]
        assert done.stderr.count("copied 1 file(s)") == 2
    finally:
        pymlsql(env, "stop", "--instance-id", other[0])


def test_exec_shell_exports_env_values_quoted(env: dict[str, str], master: dict[str, Any], tmp_path: Path) -> None:
    printing = script(tmp_path, 'printf "%s|%s\\n" "$GREETING" "${EMPTY-unset}"')
    done = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--env", "GREETING=it's a $HOME `x`",
                   "--env", "EMPTY=", "--script-file", printing)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "it's a $HOME `x`|\n"
    bad = pymlsql(env, "exec-shell", "--instance-id", master["id"], "--env", "1X=y",
                  "--script-file", script(tmp_path, "true"))  # fmt: skip
    first, hint = hinted_error(bad, exit_code=2)
    assert "'1X' is not a valid environment variable name" in first and "letters" in hint


# -- list and stop -------------------------------------------------------------------------


def test_list_shows_what_this_tool_created(env: dict[str, str], master: dict[str, Any]) -> None:
    listed = pymlsql(env, "list", "--name", master["name"])
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    words = line.split()
    assert words[:8] == [master["id"], "Running", master["name"], master["intern"], master["public"],
                         "ssh", "via", "public"]  # fmt: skip
    # Then its hourly price and what it has cost since it was created.
    assert re.fullmatch(r"\d+\.\d{3} CNY/h \d+\.\d{3} CNY so far", " ".join(words[8:])), line

    as_json = json.loads(pymlsql(env, "list", "--output", "json").stdout)
    (item,) = [item for item in as_json if item["instance_id"] == master["id"]]
    assert item["ssh_via"] == "public"


def test_stop_by_name_keeps_disks_then_releases_and_exec_labels_many_instances(
    sandbox: Sandbox, env: dict[str, str], master: dict[str, Any], tmp_path: Path
) -> None:
    name = unique("cli-batch")
    started = pymlsql(env, "start", "--image-id", DEBIAN, "--count", "2", "--name", name,
                      "--key-pair-name", master["key"])  # fmt: skip
    assert started.returncode == 0, started.stderr
    ids = re.findall(r"^instance_id:(i-\w+)$", started.stdout, re.MULTILINE)
    client = new_client(sandbox)
    try:
        ran = pymlsql(env, "exec-shell", "--instance-id", *ids, "--script-file", script(tmp_path, "echo hi"))
        assert ran.returncode == 0, ran.stderr
        assert sorted(ran.stdout.splitlines()) == sorted(f"[{i}] hi" for i in ids)
        # To several instances of one VPC the file leaves this machine once: the first passes it on.
        copied = pymlsql(env, "copy-from-local", "--instance-id", *ids, "--source", script(tmp_path, "echo hi"),
                         "--target", "/root/hi.sh")  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        assert f"to {ids[0]}:/root/hi.sh\n" in copied.stderr
        assert f"to {ids[1]}:/root/hi.sh (through {ids[0]})\n" in copied.stderr

        kept = pymlsql(env, "stop", "--name", name, "--keep-disk", "--key-pair-name", master["key"])
        assert kept.returncode == 0, kept.stderr
        assert {item.status for item in describe(client, sandbox.region_id, ids)} == {"Stopped"}

        released = pymlsql(env, "stop", "--name", name)
        assert released.returncode == 0, released.stderr
        assert describe(client, sandbox.region_id, ids) == []
        assert "no instances to stop" in pymlsql(env, "stop", "--name", name).stderr
    finally:
        for item in describe(client, sandbox.region_id, ids):
            pymlsql(env, "stop", "--instance-id", item.instance_id)


def test_stop_of_an_unknown_instance_names_it(env: dict[str, str]) -> None:
    first, _ = hinted_error(pymlsql(env, "stop", "--instance-id", "i-nosuchinstance"), exit_code=2)
    assert "i-nosuchinstance" in first


def test_wrong_secret_is_an_api_error_that_does_not_show_the_secret(env: dict[str, str]) -> None:
    wrong = "wrong-secret-value-123"
    done = pymlsql({**env, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": wrong}, "list")
    first, hint = hinted_error(done, exit_code=1)
    assert "SignatureDoesNotMatch" in first and "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in hint
    assert wrong not in done.stderr + done.stdout


# -- faults, on a sandbox of their own -----------------------------------------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("cli-faults"), timings=FAST).start() as running:
        yield running


@pytest.fixture
def fenv(faulty: Sandbox, home: Path) -> Iterator[dict[str, str]]:
    faulty.fault({"clear": True})
    yield environment(faulty, home)
    faulty.fault({"clear": True})


def test_throttled_calls_are_retried_until_the_command_succeeds(faulty: Sandbox, fenv: dict[str, str]) -> None:
    faulty.fault({"action": "DescribeInstances", "code": "Throttling.User", "status": 400, "count": 2})
    done = pymlsql(fenv, "list")
    assert done.returncode == 0, done.stderr
    codes = [r["code"] for r in faulty.log()["requests"] if r["action"] == "DescribeInstances"]
    assert codes[-3:] == ["Throttling.User", "Throttling.User", "OK"]


def test_a_start_that_times_out_is_kept_with_keep_on_failure(faulty: Sandbox, fenv: dict[str, str]) -> None:
    faulty.fault({"stuck": "Pending"})
    name = unique("cli-stuck")
    done = pymlsql(fenv, "start", "--image-id", DEBIAN, "--name", name, "--start-timeout", "1", "--keep-on-failure")
    first, hint = hinted_error(done, exit_code=1)
    assert "not Running within 1 s" in first and "--start-timeout" in hint
    assert done.stdout == ""
    listed = json.loads(pymlsql(fenv, "list", "--name", name, "--output", "json").stdout)
    assert [item["status"] for item in listed] == ["Pending"]
    assert pymlsql(fenv, "stop", "--name", name).returncode == 0


# -- the sandbox fallback and the seed's own script ----------------------------------------


def test_without_credentials_the_cli_uses_a_local_sandbox_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    home.mkdir()
    try:
        done = pymlsql(environment(None, home), "list")
    finally:
        stop_sandbox(home / ".pymlsql" / "sandbox")
    assert done.returncode == 0, done.stderr
    assert "NO ALIBABA CLOUD CREDENTIALS FOUND: using the local ECS sandbox" in done.stderr
    assert done.stdout == ""


def test_the_seed_style_cluster_script_runs_unchanged(sandbox: Sandbox, tmp_path: Path) -> None:
    home = tmp_path / "seed-home"
    home.mkdir()
    done = subprocess.run(["bash", str(REPO / "examples" / "cluster.sh")], env=environment(sandbox, home),
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    master = re.fullmatch(r"master (i-\w+) public (127\.[\d.]+) intern (127\.[\d.]+)", lines[0])
    assert master, lines
    assert lines[1:] == [
        f"root on iZ{master[1][2:]}Z",
        "slaves started by webuser in /home/webuser",
        "webuser 750 start-slaves.sh",
        "webuser 600 conf/sub/token",
        "copied back identical",
        "failing script exited 7",
    ]
    assert stat.S_IMODE((home / ".ssh" / "mlsql-build-env-local").stat().st_mode) == 0o600
    assert describe(new_client(sandbox), sandbox.region_id, [master[1]]) == []
