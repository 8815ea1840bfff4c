"""The agent, as shell scripts meet it: the same output, exit status, errors and Ctrl-C as without
it, in the caller's folder; private files, no secret on its socket, commands at once in workers at
once, another environment another agent, and `agent status|stop` and the idle exit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymlsql_magics.agent import _place
from pymlsql_magics.agent.control import stop_all
from pymlsql_magics.sandbox import Sandbox

from .helpers import PYMLSQL, environment, pymlsql, sdk_network, ssh, unique, wait_for

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
AGENT = re.compile(r"^agent (\d+): (this|another) environment, .* (\d+) worker\(s\), (\d+) busy, (\d+) command", re.M)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("agent-home")
    yield folder
    stop_all(folder)


@pytest.fixture(scope="module")
def env(sandbox: Sandbox, home: Path) -> dict[str, str]:
    return environment(sandbox, home)


@pytest.fixture(scope="module")
def nodes(sandbox: Sandbox, env: dict[str, str]) -> Iterator[list[dict[str, str]]]:
    """Two instances, started without the agent."""
    name, key = unique("agent"), unique("agent-key")
    done = pymlsql({**env, "PYMLSQL_AGENT": "0"}, "start", "--image-id", DEBIAN, "--count", "2", "--name", name,
                   "--key-pair-name", key, "--init-ssh-key", "--need-public-ip", "true", "--output", "json",
                   "--security-group", sdk_network(sandbox).security_group_id)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = [{"id": i["instance_id"], "public": i["public_ip"], "key": key} for i in json.loads(done.stdout)]
    yield found
    pymlsql({**env, "PYMLSQL_AGENT": "0"}, "stop", "--name", name)


def agents(env: dict[str, str]) -> list[tuple[int, str, int, int, int]]:
    """(pid, whose environment, workers, busy, commands) of each agent `pymlsql agent status` lists."""
    done = pymlsql({**env, "PYMLSQL_AGENT": "0"}, "agent", "status")
    assert done.returncode == 0, done.stderr
    return [(int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])) for m in AGENT.finditer(done.stdout)]


def commands_run(env: dict[str, str]) -> int:
    ours = [entry for entry in agents(env) if entry[1] == "this"]
    return ours[0][4] if ours else 0


def both_ways(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[Any, Any]:
    """The command run without the agent, then through it (which the agent's count shows)."""
    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYMLSQL, *args], env={**env, **extra}, capture_output=True, text=True, timeout=120,
                              cwd=cwd)  # fmt: skip

    alone = run({"PYMLSQL_AGENT": "0"})
    before = commands_run(env)
    through = run({})
    assert commands_run(env) == before + 1, "the command did not run in the agent"
    return alone, through


def same(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """What a user sees, but for what differs between any two runs: ECS's request ids."""
    def steady(text: str) -> str:
        return re.sub(r"\[RequestId [^]]+\]", "[RequestId ...]", text)

    return done.returncode, steady(done.stdout), steady(done.stderr)


def script(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return name


# -- the same as without it ----------------------------------------------------------------


def test_scripts_print_and_exit_alike(env: dict[str, str], nodes: list[dict[str, str]], tmp_path: Path) -> None:
    name = script(tmp_path, "both.sh", "echo out; echo err >&2; printf 'no newline'; exit 3\n")
    alone, through = both_ways(env, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", name,
                               cwd=tmp_path)  # fmt: skip
    assert same(through) == same(alone)
    assert through.returncode == 3 and through.stdout == "out\nno newline" and through.stderr == "err\n"


def test_several_instances_label_their_lines_alike(env: dict[str, str], nodes: list[dict[str, str]],
                                                   tmp_path: Path) -> None:  # fmt: skip
    name = script(tmp_path, "hello.sh", "echo hello from $(hostname)\n")
    alone, through = both_ways(env, "exec-shell", "--instance-id", nodes[0]["id"], nodes[1]["id"],
                               "--script-file", name, cwd=tmp_path)  # fmt: skip
    assert through.returncode == alone.returncode == 0
    # The two instances' lines come in whichever order they finish.
    assert sorted(through.stdout.splitlines()) == sorted(alone.stdout.splitlines())
    assert len(through.stdout.splitlines()) == 2 and through.stderr == alone.stderr == ""


@pytest.mark.parametrize(
    "case",
    ["unknown instance", "missing script", "usage", "bad region", "unknown user", "env and once"],
)
def test_errors_and_flags_read_alike(case: str, env: dict[str, str], nodes: list[dict[str, str]],
                                     tmp_path: Path) -> None:  # fmt: skip
    node = nodes[0]["id"]
    hello = script(tmp_path, "hello.sh", 'echo "$GREETING"\n')
    args = {
        "unknown instance": ["exec-shell", "--instance-id", "i-nosuchinstance", "--script-file", hello],
        "missing script": ["exec-shell", "--instance-id", node, "--script-file", "no-such-script.sh"],
        "usage": ["exec-shell", "--instance-id", node],
        "bad region": ["list", "--region", "nowhere-1"],
        "unknown user": ["exec-shell", "--instance-id", node, "--execute-user", "ghost", "--script-file", hello],
        "env and once": ["exec-shell", "--instance-id", node, "--script-file", hello, "--env",
                         f"GREETING=hi {unique('once')}", "--once"],  # fmt: skip
    }[case]
    alone, through = both_ways(env, *args, cwd=tmp_path)
    if case == "env and once":  # the second run finds the first one's record
        assert alone.stdout.startswith("hi ") and "already done (at " in through.stderr
        return
    assert same(through) == same(alone)
    assert through.returncode != 0 and "Traceback" not in through.stderr


def test_copies_read_and_write_in_the_callers_folder(env: dict[str, str], nodes: list[dict[str, str]],
                                                     tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.ini").write_text("[app]\nworkers = 4\n")
    target = f"/root/{unique('conf')}"
    up = pymlsql_in(env, tmp_path, "copy-from-local", "--instance-id", nodes[0]["id"], "--source", "conf",
                    "--target", target)  # fmt: skip
    assert up.returncode == 0, up.stderr
    (tmp_path / "back").mkdir()
    down = pymlsql_in(env, tmp_path, "copy-to-local", "--instance-id", nodes[0]["id"], "--source", target,
                      "--target", "back")  # fmt: skip
    assert down.returncode == 0, down.stderr
    copied = tmp_path / "back" / Path(target).name / "app.ini"
    assert copied.read_text() == "[app]\nworkers = 4\n"
    # The caller's umask, not the agent's, decides the new folder's mode, as it would without the agent.
    assert stat.S_IMODE(copied.parent.parent.stat().st_mode) == 0o755


def pymlsql_in(env: dict[str, str], folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYMLSQL, *args], env=env, capture_output=True, text=True, timeout=120, cwd=folder)


def test_a_key_that_would_be_refused_is_refused_even_with_a_connection_open(
    env: dict[str, str], nodes: list[dict[str, str]], tmp_path: Path, home: Path
) -> None:
    hello = script(tmp_path, "hello.sh", "echo hello\n")
    warm = pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", hello)
    assert warm.returncode == 0, warm.stderr  # the agent now holds a connection made with the right key
    other = unique("other-key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / other)], check=True)
    alone, through = both_ways(env, "exec-shell", "--instance-id", nodes[0]["id"], "--key-pair-name", other,
                               "--script-file", hello, cwd=tmp_path)  # fmt: skip
    assert same(through) == same(alone)
    assert through.returncode != 0 and "hello" not in through.stdout


# -- Ctrl-C and a client that goes away ------------------------------------------------------------


def remote_processes(node: dict[str, str], home: Path, marker: str) -> str:
    done = ssh(node["public"], home / ".ssh" / node["key"], f"pgrep -af '{marker}' | grep -v pgrep || true")
    return done.stdout.strip()


@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_an_interrupted_or_killed_client_ends_its_script(how: str, env: dict[str, str], nodes: list[dict[str, str]],
                                                         home: Path, tmp_path: Path) -> None:  # fmt: skip
    marker = unique("sleeper")
    name = script(tmp_path, "sleep.sh", f"echo started; exec -a {marker} sleep 60\n")
    before = commands_run(env)
    client = subprocess.Popen([PYMLSQL, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", name],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert client.stdout is not None
    assert client.stdout.readline() == "started\n"
    assert remote_processes(nodes[0], home, marker)
    client.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, errors = client.communicate(timeout=30)
    if how == "ctrl-c":
        assert client.returncode == 130 and errors.strip() == "pymlsql: interrupted", errors
    else:
        assert client.returncode == -signal.SIGKILL
    wait_for(lambda: not remote_processes(nodes[0], home, marker), timeout=30, what="the script to end")
    assert commands_run(env) == before + 1


# -- the agent itself ----------------------------------------------------------------------


def test_commands_at_once_run_in_workers_at_once(env: dict[str, str], nodes: list[dict[str, str]],
                                                 tmp_path: Path) -> None:  # fmt: skip
    name = script(tmp_path, "span.sh", "date +%s.%N; sleep 2; date +%s.%N\n")
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(
        pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", name)))
        for _ in range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    spans = [tuple(float(line) for line in r.stdout.split()) for r in results]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans  # all three ran at once
    [(_, _, workers, _, _)] = [entry for entry in agents(env) if entry[1] == "this"]
    assert workers >= 3


def test_its_files_are_private(env: dict[str, str], nodes: list[dict[str, str]], home: Path) -> None:
    assert pymlsql(env, "list").returncode == 0
    folder = home / ".pymlsql" / "agent"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert any(path.suffix == ".sock" for path in files)
    for path in files:
        if path.suffix in (".sock", ".log", ".key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_secret_crosses_its_socket(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever listens on the agent's socket hears the command line and three descriptors, never the
    AccessKey secret; one that never starts the command leaves the client to run it itself."""
    home = tmp_path_factory.mktemp("h")  # a short path: a Unix socket's holds 107 bytes
    env = environment(sandbox, home)
    place = _place.private_folder(env)
    assert place is not None
    path = _place.socket_path(env, place)
    assert path is not None
    heard: list[tuple[bytes, int]] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def listen() -> None:
        connection, _ = listener.accept()
        with connection:
            data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 8)
            connection.settimeout(1)
            try:
                while chunk := connection.recv(1 << 16):
                    data += chunk
            except TimeoutError:
                pass
            heard.append((data, len(fds)))
            for fd in fds:
                os.close(fd)

    thread = threading.Thread(target=listen)
    thread.start()
    done = pymlsql(env, "list", "--output", "json")
    thread.join()
    listener.close()
    assert done.returncode == 0 and isinstance(json.loads(done.stdout), list), done.stderr  # it ran in the client
    [(data, descriptors)] = heard
    assert descriptors == 3 and b'"argv": ["list", "--output", "json"]' in data
    assert sandbox.access_key_secret.encode() not in data and sandbox.access_key_id.encode() not in data


def test_another_environment_has_another_agent(env: dict[str, str], nodes: list[dict[str, str]]) -> None:
    other = {**env, "MLSQL_KEY_PARE_NAME": nodes[0]["key"]}
    assert pymlsql(env, "list").returncode == 0
    assert pymlsql(other, "list").returncode == 0
    seen = {(pid, whose) for pid, whose, *_ in agents(other)}
    assert len(seen) >= 2 and {whose for _, whose in seen} == {"this", "another"}


def test_it_exits_when_idle_and_stops_when_told(sandbox: Sandbox, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = environment(sandbox, home, PYMLSQL_AGENT_IDLE="2s")
    assert pymlsql(env, "list").returncode == 0
    [(pid, _, _, _, _)] = agents(env)
    wait_for(lambda: not agents(env) and not pid_alive(pid), timeout=30, what="the idle agent to exit")
    assert not list((home / ".pymlsql" / "agent").glob("*.sock"))

    env = environment(sandbox, home)
    assert pymlsql(env, "list").returncode == 0
    [(pid, _, _, _, _)] = agents(env)
    stopped = pymlsql(env, "agent", "stop")
    assert stopped.returncode == 0 and f"stopped the agent (pid {pid})" in stopped.stderr
    assert not pid_alive(pid) and not agents(env)
    none = pymlsql(env, "agent", "status")
    assert none.returncode == 0 and none.stdout == "" and "no agent is running" in none.stderr


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_bad_idle_setting_is_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    env = environment(sandbox, tmp_path, PYMLSQL_AGENT_IDLE="soon")
    done = pymlsql(env, "list")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("pymlsql: error: PYMLSQL_AGENT_IDLE: ") and "'soon'" in lines[0], lines
    assert lines[1].startswith("Hint: ") and len(lines) == 2, lines


def test_turned_off_it_starts_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    env = environment(sandbox, tmp_path, PYMLSQL_AGENT="0")
    assert pymlsql(env, "list").returncode == 0
    assert not (tmp_path / ".pymlsql" / "agent").exists()


# -- a new agent's first command ------------------------------------------------------------


def test_a_new_agents_first_command_on_a_remembered_instance_asks_ecs_nothing_and_later_ones_do(
    sandbox: Sandbox, env: dict[str, str], nodes: list[dict[str, str]], tmp_path: Path
) -> None:
    hello = script(tmp_path, "hello.sh", "hostname\n")
    warm = pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", hello)
    assert warm.returncode == 0 and pymlsql(env, "agent", "stop").returncode == 0
    mark = len(sandbox.log()["requests"])
    first = pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", hello)
    assert first.returncode == 0 and first.stdout == f"iZ{nodes[0]['id'][2:]}Z\n", first.stderr
    assert [r["action"] for r in sandbox.log()["requests"][mark:]] == []

    # Once the agent has loaded the SDK (in the background, within seconds), every command asks ECS.
    def asks_ecs() -> bool:
        since = len(sandbox.log()["requests"])
        again = pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", nodes[0]["id"], "--script-file", hello)
        assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
        return "DescribeInstances" in [r["action"] for r in sandbox.log()["requests"][since:]]

    wait_for(asks_ecs, timeout=30, interval=0.2, what="a command that asks ECS")
    assert asks_ecs() and asks_ecs()


def test_a_remembered_instance_that_is_gone_or_stopped_reads_as_it_does_without_the_agent(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    name, key = unique("memory"), unique("memory-key")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--count", "2", "--name", name, "--key-pair-name", key,
                   "--init-ssh-key", "--need-public-ip", "true", "--output", "json",
                   "--security-group", sdk_network(sandbox).security_group_id)  # fmt: skip
    assert done.returncode == 0, done.stderr
    stopped, released = (item["instance_id"] for item in json.loads(done.stdout))
    hello = script(tmp_path, "hello.sh", "hostname\n")
    for instance_id in (stopped, released):  # remembered Running
        assert pymlsql_in(env, tmp_path, "exec-shell", "--instance-id", instance_id, "--script-file",
                          hello).returncode == 0  # fmt: skip
    alone = {**env, "PYMLSQL_AGENT": "0"}
    assert pymlsql(alone, "stop", "--instance-id", stopped, "--keep-disk").returncode == 0
    assert pymlsql(alone, "stop", "--instance-id", released).returncode == 0
    try:
        for instance_id in (stopped, released):
            assert pymlsql(env, "agent", "stop").returncode == 0
            args = ("exec-shell", "--instance-id", instance_id, "--script-file", hello)
            without = pymlsql_in(alone, tmp_path, *args)
            first = pymlsql_in(env, tmp_path, *args)
            assert same(first) == same(without) and first.returncode != 0
            assert ("not Running" if instance_id == stopped else "no instance") in first.stderr
    finally:
        pymlsql(alone, "stop", "--instance-id", stopped)
