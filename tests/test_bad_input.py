"""Bad input through `pymlsql` and the magics: one short message that names the fix, and nothing left behind.

Each case runs against the sandbox through the real command (a subprocess) and through the magics
in a real IPython shell. After each failure no instance was created (not even one released again),
and a failed copy left nothing at its target.

Cases covered elsewhere and not repeated here: `exec-shell` with an unknown instance, a missing
script file or an unknown user, `stop` of an unknown instance and `copy-to-local` of a missing
remote path (tests/test_cli.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from pymlsql_magics.sandbox import Sandbox

from .helpers import (
    create_request,
    creates_nothing,
    environment,
    error_lines,
    hinted_error,
    magics_shell,
    new_client,
    pymlsql,
    run,
    ssh,
    statuses,
    unique,
    wait_status,
)

WEBUSER_IMAGE = "m-sandbox-webuser"
DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
NOWHERE = "xx-nowhere-1"
_CREDENTIALS = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "PYMLSQL_ECS_ENDPOINT")
# sysfs refuses new files even to root, so this target fails however the tests are run; a folder
# without write permission would not stop root.
UNWRITABLE = "/sys"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input-home")


@pytest.fixture(scope="module")
def env(sandbox: Sandbox, home: Path) -> dict[str, str]:
    return environment(sandbox, home)


@pytest.fixture(scope="module")
def node(sandbox: Sandbox, env: dict[str, str], home: Path) -> Iterator[dict[str, Any]]:
    """One Running instance with a key pair, shared by every case that needs a working instance."""
    key = unique("bad-key")
    done = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--key-pair-name", key, "--init-ssh-key", "true",
                   "--name", unique("bad-node"), "--output", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)
    info = {"id": item["instance_id"], "ip": item["public_ip"], "key": key, "key_path": home / ".ssh" / key}
    yield info
    pymlsql(env, "stop", "--instance-id", info["id"])


@pytest.fixture(scope="module")
def halted(sandbox: Sandbox) -> Iterator[dict[str, str]]:
    """An instance that is Stopped, and one that stays Stopping."""
    client, region = new_client(sandbox), sandbox.region_id
    ids: list[str] = []
    try:
        request = create_request(client, region, image_id=DEBIAN, instance_type="ecs.g7.large")
        stopped = client.create_instance(request).body.instance_id
        ids.append(stopped)
        # Only instances created while the fault is on get stuck; it is off again at once.
        sandbox.fault({"stuck": "Stopping"})
        try:
            (stopping,) = run(client, region, launched=ids)
        finally:
            sandbox.fault({"stuck": ""})
        wait_status(client, region, [stopping], "Running")
        client.stop_instance(ecs.StopInstanceRequest(instance_id=stopping))
        wait_status(client, region, [stopped], "Stopped")
        assert statuses(client, region, [stopping]) == {stopping: "Stopping"}
        yield {"Stopped": stopped, "Stopping": stopping}
    finally:
        for instance_id in ids:
            client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id, force=True))


@pytest.fixture
def shell(sandbox: Sandbox, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> InteractiveShell:
    """The magics, logging in with the keys the command saved in HOME/.ssh."""
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)
    return magics_shell(tmp_path, key_dir=home / ".ssh")


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    """Local paths a case may name: a file, a path that does not exist, an empty folder."""
    source = tmp_path / "source.txt"
    source.write_text("data\n")
    (tmp_path / "empty").mkdir()
    return {"file": str(source), "missing": str(tmp_path / "absent.txt"), "empty": str(tmp_path / "empty")}


def cell_error(shell: InteractiveShell, source: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """The one short error a failing cell shows: a message and a hint, as a UsageError, no traceback."""
    capsys.readouterr()
    result = shell.run_cell(source)
    error = result.error_in_exec
    assert isinstance(error, UsageError), error
    shown = capsys.readouterr()
    assert "Traceback" not in shown.out + shown.err
    assert f"UsageError: {error}" in shown.err
    lines = str(error).splitlines()
    assert len(lines) == 2 and lines[1].startswith("Hint: "), lines
    return lines[0], lines[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def remote_entries(node: dict[str, Any], folder: str) -> list[str]:
    done = ssh(node["ip"], node["key_path"], f"ls -A {folder}")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def staged_leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if ".pymlsql-" in path.name]


# -- start: refused before or by ECS, creating nothing --------------------------------------

# Each table holds one case per code path and face; (flags, words of the message, RunInstances
# calls that ECS refused).
CLI_STARTS = {
    "unknown-instance": (["--instance-id", "i-nosuchinstance"], ["no instance i-nosuchinstance", "Check the id"], 0),
    "unknown-image": (["--image-id", "m-no-such-image"],
                      ["InvalidImageId.NotFound", "(ImageId m-no-such-image, region cn-hangzhou)",
                       "Check the image id"],
                      1),
    "unknown-type": (["--image-id", WEBUSER_IMAGE, "--instance-type", "ecs.no-such-type"],
                     ["the instance type ecs.no-such-type", "Check --instance-type"], 0),
    "count-0": (["--image-id", WEBUSER_IMAGE, "--count", "0"], ["count must be at least 1, got 0", "--count"], 0),
    "tag-no-value": (["--image-id", WEBUSER_IMAGE, "--tag", "novalue"], ["--tag", "KEY=VALUE", "'novalue'"], 0),
    "tag-no-key": (["--image-id", WEBUSER_IMAGE, "--tag", "=v"], ["--tag", "KEY=VALUE", "'=v'"], 0),
    "tag-reserved": (["--image-id", WEBUSER_IMAGE, "--tag", "aliyun:team=ml"],
                     ["tag key 'aliyun:team'", "reserves", "--tag"], 0),
    "wrong-region": (["--image-id", WEBUSER_IMAGE, "--region", NOWHERE],
                     ["InvalidRegionId.NotFound", f"(RegionId {NOWHERE})", "--region"], 0),
    "missing-user-data": (["--image-id", WEBUSER_IMAGE, "--user-data-file", "/no/such/user-data"],
                          ["cannot read the user data file /no/such/user-data", "--user-data-file"], 0),
}  # fmt: skip
MAGIC_STARTS = {
    "unknown-instance": ("--instance-id i-nosuchinstance", ["no instance i-nosuchinstance", "Check the id"], 0),
    "unknown-image": ("--image-id m-no-such-image",
                      ["InvalidImageId.NotFound", "(ImageId m-no-such-image, region cn-hangzhou)",
                       "Check the image id"],
                      1),
    "unknown-type": (f"--image-id {WEBUSER_IMAGE} --instance-type ecs.no-such-type",
                     ["the instance type ecs.no-such-type", "Check --instance-type"], 0),
    "count-0": (f"--image-id {WEBUSER_IMAGE} --count 0", ["count must be at least 1, got 0", "--count"], 0),
    "count-negative": (f"--image-id {WEBUSER_IMAGE} --count -2", ["count must be at least 1, got -2", "--count"], 0),
    "tag-no-value": (f"--image-id {WEBUSER_IMAGE} --tag novalue", ["--tag", "KEY=VALUE", "'novalue'"], 0),
    "tag-no-key": (f"--image-id {WEBUSER_IMAGE} --tag =v", ["--tag", "KEY=VALUE", "'=v'"], 0),
    "tag-reserved": (f"--image-id {WEBUSER_IMAGE} --tag acs:team=ml", ["tag key 'acs:team'", "reserves", "--tag"], 0),
    "wrong-region": (f"--image-id {WEBUSER_IMAGE} --region {NOWHERE}",
                     ["InvalidRegionId.NotFound", f"(RegionId {NOWHERE})", "--region"], 0),
    "missing-user-data": (f"--image-id {WEBUSER_IMAGE} --user-data /no/such/user-data",
                          ["cannot read the user data file /no/such/user-data", "--user-data"], 0),
}  # fmt: skip


@pytest.mark.parametrize(("flags", "words", "run_calls"), CLI_STARTS.values(), ids=CLI_STARTS.keys())
def test_the_command_refuses_a_bad_start_in_two_lines_creating_nothing(
    sandbox: Sandbox, env: dict[str, str], flags: list[str], words: list[str], run_calls: int
) -> None:
    with creates_nothing(sandbox, run_calls=run_calls):
        done = pymlsql(env, "start", *flags)
    first, hint = hinted_error(done)
    for word in words:
        assert word in f"{first}\n{hint}", (word, first, hint)
    assert done.stdout == ""


@pytest.mark.parametrize(("flags", "words", "run_calls"), MAGIC_STARTS.values(), ids=MAGIC_STARTS.keys())
def test_the_magic_refuses_a_bad_start_in_two_lines_creating_nothing(
    sandbox: Sandbox, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], flags: str, words: list[str],
    run_calls: int,
) -> None:  # fmt: skip
    with creates_nothing(sandbox, run_calls=run_calls):
        first, hint = cell_error(shell, f"nodes = %ecs_start {flags}", capsys)
    for word in words:
        assert word in f"{first}\n{hint}", (word, first, hint)
    assert "nodes" not in shell.user_ns


# -- instances that are unknown, or cannot do what is asked ---------------------------------

# Placeholders: {stopped}, {stopping}, and the paths of `places`. An unknown id through the
# command is here for `start`; tests/test_cli.py has it for exec-shell and stop, all one lookup.
CLI_STATES = {
    "exec-stopped": (["exec-shell", "--instance-id", "{stopped}", "--script-file", "{file}"],
                     ["{stopped} is Stopped, not Running", "start --instance-id {stopped}"]),
    "copy-stopped": (["copy-to-local", "--instance-id", "{stopped}", "--source", "/etc/hostname", "--target",
                      "{empty}"], ["{stopped} is Stopped, not Running", "start --instance-id {stopped}"]),
    "start-stopping": (["start", "--instance-id", "{stopping}"],
                       ["{stopping} is Stopping", "Wait until it is Stopped"]),
}  # fmt: skip
MAGIC_STATES = {
    "exec-stopped": ("%%ecs_exec {stopped}\ntrue", ["{stopped} is Stopped, not Running", "%ecs_start --instance-id"]),
    "copy-up-stopped": ("%ecs_copy {file} {stopped}:/tmp", ["{stopped} is Stopped, not Running", "%ecs_start"]),
    "copy-down-stopped": ("%ecs_copy {stopped}:/etc/hostname {empty}", ["{stopped} is Stopped", "%ecs_start"]),
    "start-stopping": ("nodes = %ecs_start --instance-id {stopping}", ["{stopping} is Stopping", "Wait until"]),
    "exec-unknown": ("%%ecs_exec i-nosuchinstance\ntrue", ["no instance i-nosuchinstance", "Check the id"]),
    "copy-up-unknown": ("%ecs_copy {file} i-nosuchinstance:/tmp", ["no instance i-nosuchinstance", "Check the id"]),
    "copy-down-unknown": ("%ecs_copy i-nosuchinstance:/etc/hostname {empty}", ["no instance i-nosuchinstance"]),
    "stop-unknown": ("%ecs_stop i-nosuchinstance", ["no instance i-nosuchinstance", "Check the id"]),
}  # fmt: skip


def unchanged(sandbox: Sandbox, halted: dict[str, str]) -> bool:
    found = statuses(new_client(sandbox), sandbox.region_id, list(halted.values()))
    return found == {halted["Stopped"]: "Stopped", halted["Stopping"]: "Stopping"}


@pytest.mark.parametrize(("args", "words"), CLI_STATES.values(), ids=CLI_STATES.keys())
def test_the_command_refuses_instances_that_are_not_running(
    sandbox: Sandbox, env: dict[str, str], halted: dict[str, str], places: dict[str, str], args: list[str],
    words: list[str],
) -> None:  # fmt: skip
    names = {"stopped": halted["Stopped"], "stopping": halted["Stopping"], **places}
    with creates_nothing(sandbox):
        done = pymlsql(env, *(arg.format(**names) for arg in args))
    first, hint = hinted_error(done)
    for word in words:
        assert word.format(**names) in f"{first}\n{hint}", (word, first, hint)
    assert list(Path(places["empty"]).iterdir()) == []
    assert unchanged(sandbox, halted)


@pytest.mark.parametrize(("source", "words"), MAGIC_STATES.values(), ids=MAGIC_STATES.keys())
def test_the_magics_refuse_instances_that_are_unknown_or_not_running(
    sandbox: Sandbox, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], halted: dict[str, str],
    places: dict[str, str], source: str, words: list[str],
) -> None:  # fmt: skip
    names = {"stopped": halted["Stopped"], "stopping": halted["Stopping"], **places}
    with creates_nothing(sandbox):
        first, hint = cell_error(shell, source.format(**names), capsys)
    for word in words:
        assert word.format(**names) in f"{first}\n{hint}", (word, first, hint)
    assert list(Path(places["empty"]).iterdir()) == []
    assert unchanged(sandbox, halted)


# -- users, sources and targets of exec and copy ---------------------------------------------


@pytest.fixture
def remote_folder(node: dict[str, Any]) -> str:
    folder = f"/tmp/{unique('target')}"
    assert ssh(node["ip"], node["key_path"], f"mkdir {folder}").returncode == 0
    return folder


# Placeholders: {id}, {remote} (an empty folder on the instance), and the paths of `places`.
# Through the command, exec-shell as an unknown user and copy-to-local of a missing remote path
# are in tests/test_cli.py.
CLI_COPIES = {
    "up-ghost": (["copy-from-local", "--execute-user", "ghost", "--source", "{file}", "--target", "{remote}"],
                 ["there is no user 'ghost'", "--execute-user"]),
    "up-missing": (["copy-from-local", "--source", "{missing}", "--target", "{remote}"],
                   ["the local path {missing} does not exist"]),
}  # fmt: skip
MAGIC_COPIES = {
    "exec-ghost": ("%%ecs_exec {id} --user ghost\ntrue", ["there is no user 'ghost'", "useradd", "(--user)"]),
    "up-ghost": ("%ecs_copy {file} {id}:{remote} --user ghost", ["there is no user 'ghost'", "useradd"]),
    "down-ghost": ("%ecs_copy {id}:/etc/hostname {empty} --user ghost", ["there is no user 'ghost'", "useradd"]),
    "up-missing": ("%ecs_copy {missing} {id}:{remote}", ["the local path {missing} does not exist"]),
    "down-missing": ("%ecs_copy {id}:/no/such/file {empty}", ["/no/such/file does not exist"]),
}  # fmt: skip


@pytest.mark.parametrize(("args", "words"), CLI_COPIES.values(), ids=CLI_COPIES.keys())
def test_the_command_refuses_bad_users_and_sources_leaving_no_part(
    sandbox: Sandbox, env: dict[str, str], node: dict[str, Any], places: dict[str, str], remote_folder: str,
    args: list[str], words: list[str],
) -> None:  # fmt: skip
    names = {**places, "remote": remote_folder, "id": node["id"]}
    command, *rest = (arg.format(**names) for arg in args)
    with creates_nothing(sandbox):
        done = pymlsql(env, command, "--instance-id", node["id"], *rest)
    first, hint = hinted_error(done)
    for word in words:
        assert word.format(**names) in f"{first}\n{hint}", (word, first, hint)
    assert remote_entries(node, remote_folder) == []


@pytest.mark.parametrize(("source", "words"), MAGIC_COPIES.values(), ids=MAGIC_COPIES.keys())
def test_the_magics_refuse_bad_users_and_sources_leaving_no_part(
    sandbox: Sandbox, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], node: dict[str, Any],
    places: dict[str, str], remote_folder: str, source: str, words: list[str],
) -> None:  # fmt: skip
    names = {**places, "remote": remote_folder, "id": node["id"]}
    with creates_nothing(sandbox):
        first, hint = cell_error(shell, source.format(**names), capsys)
    for word in words:
        assert word.format(**names) in f"{first}\n{hint}", (word, first, hint)
    assert list(Path(places["empty"]).iterdir()) == []
    assert remote_entries(node, remote_folder) == []


@pytest.fixture(scope="module")
def unwritable(env: dict[str, str], node: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Copies up to and down to a folder that refuses new files: by the command, and as cells."""
    source = tmp_path_factory.mktemp("unwritable") / "source.txt"
    source.write_text("data\n")
    up = pymlsql(env, "copy-from-local", "--instance-id", node["id"], "--source", str(source), "--target", UNWRITABLE)
    down = pymlsql(env, "copy-to-local", "--instance-id", node["id"], "--source", "/etc/hostname",
                   "--target", f"{UNWRITABLE}/x")  # fmt: skip
    return {
        "up": (up, f"%ecs_copy {source} {node['id']}:{UNWRITABLE}"),
        "down": (down, f"%ecs_copy {node['id']}:/etc/hostname {UNWRITABLE}/x"),
    }


def refused_in_one_line(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], done: subprocess.CompletedProcess[str], cell: str
) -> list[str]:
    """The command's error lines and the cell's, each naming the refused target, no traceback."""
    (first, *_) = error_lines(done)
    capsys.readouterr()
    error = shell.run_cell(cell).error_in_exec
    assert isinstance(error, UsageError), error
    assert "Traceback" not in capsys.readouterr().err
    assert len(str(error).splitlines()) <= 2
    for shown in (first, str(error)):
        assert UNWRITABLE in shown and "not permitted" in shown, shown
    return [first, str(error)]


def test_an_unwritable_remote_target_fails_in_one_line_leaving_no_part(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], node: dict[str, Any], unwritable: dict[str, Any]
) -> None:
    refused_in_one_line(shell, capsys, *unwritable["up"])
    assert [name for name in remote_entries(node, UNWRITABLE) if ".pymlsql-" in name] == []


def test_an_unwritable_local_target_fails_in_one_line_leaving_no_part(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], unwritable: dict[str, Any]
) -> None:
    done, cell = unwritable["down"]
    assert done.stdout == "" and staged_leftovers(Path(UNWRITABLE)) == [] and not Path(UNWRITABLE, "x").exists()
    refused_in_one_line(shell, capsys, done, cell)
    assert staged_leftovers(Path(UNWRITABLE)) == [] and not Path(UNWRITABLE, "x").exists()


def test_an_unwritable_target_names_the_fix(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], unwritable: dict[str, Any]
) -> None:
    for done, cell in unwritable.values():
        for first, hint in (hinted_error(done), cell_error(shell, cell, capsys)):
            assert UNWRITABLE in first and ".pymlsql-" not in first and "target" in hint, (first, hint)


# -- the endpoint, the region and the credentials --------------------------------------------


def test_an_endpoint_that_refuses_connections_fails_fast_naming_it(
    sandbox: Sandbox, env: dict[str, str], shell: InteractiveShell, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with creates_nothing(sandbox):
        began = time.monotonic()
        listed = pymlsql({**env, "PYMLSQL_ECS_ENDPOINT": endpoint}, "list")
        started = pymlsql({**env, "PYMLSQL_ECS_ENDPOINT": endpoint}, "start", "--image-id", WEBUSER_IMAGE)
        command_took = time.monotonic() - began
        monkeypatch.setenv("PYMLSQL_ECS_ENDPOINT", endpoint)
        began = time.monotonic()
        magic = cell_error(shell, "%ecs_list", capsys)
        magic_took = time.monotonic() - began
    # Two runs of the command, each with a Python start-up; retrying a refused connection for
    # long would show here as many seconds.
    assert command_took < 8 and magic_took < 3, (command_took, magic_took)
    for first, hint in (hinted_error(listed), hinted_error(started), magic):
        assert f"{endpoint} refused the connection" in first, first
        assert "PYMLSQL_ECS_ENDPOINT" in hint and "HTTPConnectionPool" not in first


def test_a_region_the_endpoint_does_not_serve_is_named_with_the_fix(
    sandbox: Sandbox, env: dict[str, str], shell: InteractiveShell, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with creates_nothing(sandbox):
        done = pymlsql({**env, "ALIBABA_CLOUD_REGION_ID": NOWHERE}, "list")
        monkeypatch.setenv("ALIBABA_CLOUD_REGION_ID", NOWHERE)
        magic = cell_error(shell, "%ecs_list", capsys)
    for first, hint in (hinted_error(done), magic):
        assert "InvalidRegionId.NotFound" in first and "--region" in hint and "ALIBABA_CLOUD_REGION_ID" in hint


def test_without_credentials_and_without_a_possible_sandbox_the_message_says_how_to_configure(
    home: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    # A sandbox folder under a regular file cannot be made, even by root.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state_dir = blocker / "sandbox"
    done = pymlsql(environment(None, home, PYMLSQL_SANDBOX_DIR=str(state_dir)), "list")
    for name in _CREDENTIALS:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYMLSQL_SANDBOX_DIR", str(state_dir))
    magic = cell_error(shell, "%ecs_list", capsys)
    for first, hint in (hinted_error(done, exit_code=2), magic):
        assert "no Alibaba Cloud credentials found" in first and str(state_dir) in first
        assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in hint and "PYMLSQL_SANDBOX_DIR" in hint
    assert blocker.read_text() == ""
    assert subprocess.run(["pgrep", "-f", "--", f"--state-dir {state_dir}"], capture_output=True).stdout == b""
