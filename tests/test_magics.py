"""The magics in a real InteractiveShell against the sandbox; widget state checked through traits."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from pymlsql_magics.core import EcsConfig, ExecResult, FleetResult, InstanceList, LogSink, TeeSink
from pymlsql_magics.magics import EcsMagics
from pymlsql_magics.sandbox import read_info
from pymlsql_magics.widgets import CopyView, ExecView

from .helpers import magics_shell, unique


@pytest.fixture
def shell(sandbox, monkeypatch, tmp_path):
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)
    ipython = magics_shell(tmp_path)
    yield ipython
    ipython.run_line_magic("ecs_stop", "--all")
    ipython.user_ns.clear()


def run(shell, source):
    result = shell.run_cell(source)
    return result


def start(shell, name, count=1, extra=""):
    result = run(shell, f"nodes = %ecs_start --image-id m-sandbox-webuser --count {count} --name {name} "
                        f"--key-pair-name {name}-key --init-ssh-key {extra}")  # fmt: skip
    assert result.error_in_exec is None, result.error_in_exec
    return shell.user_ns["nodes"]


def test_every_public_setting_of_the_core_has_a_trait():
    # Endpoints and the credentials' origin come from the environment, not from a notebook's %config.
    public = {f.name for f in fields(EcsConfig) if f.repr} - {"endpoint", "metadata_endpoint", "credentials_source",
                                                                 "ram_role_name"}
    assert public <= set(EcsMagics.class_trait_names(config=True))


def test_start_returns_a_fleet_and_is_idempotent_by_name(shell, capsys):
    name = unique("magic")
    nodes = start(shell, name, count=2)
    assert isinstance(nodes, InstanceList) and len(nodes) == 2
    for node in nodes:
        assert node.status == "Running" and node.private_ip and node.hostname and node.name == name
    printed = capsys.readouterr().out
    assert all(f"{node.instance_id}  Running" in printed and "ssh ready" in printed for node in nodes)
    again = start(shell, name, count=2)
    assert again.ids == nodes.ids
    assert "instance_id" in repr(nodes) and "<table>" in nodes._repr_html_()


def test_exec_streams_per_instance_and_stores_results(shell, capsys):
    nodes = start(shell, unique("exec"), count=2)
    result = run(shell, "%%ecs_exec nodes --user webuser --env GREETING=\'hi there\' -o out\n"
                        'echo "$GREETING from $(whoami) in $PWD"\necho warn >&2')  # fmt: skip
    assert result.error_in_exec is None
    out = shell.user_ns["out"]
    assert set(out) == set(nodes.ids)
    assert {r.stdout for r in out.values()} == {"hi there from webuser in /home/webuser\n"}
    assert {r.stderr for r in out.values()} == {"warn\n"}
    captured = capsys.readouterr()
    assert all(f"[{node.instance_id}]" in captured.out for node in nodes)
    assert "warn" in captured.err


def test_a_failing_script_fails_the_cell_with_one_short_message(shell):
    nodes = start(shell, unique("fail"), count=2)
    first = nodes.ids[0]
    result = run(shell, f"%%ecs_exec nodes\n[ \"$(hostname)\" = \"{nodes[0].hostname}\" ] && exit 4\ntrue")
    error = result.error_in_exec
    assert isinstance(error, UsageError)
    assert str(error) == f"the script failed on 1 of 2 instance(s): {first} exit 4"

    allowed = run(shell, "%%ecs_exec nodes --allow-fail -o res\nexit 5")
    assert allowed.error_in_exec is None
    assert {r.exit_status for r in shell.user_ns["res"].values()} == {5}


def test_targets_by_id_and_by_name_and_unknown_targets(shell):
    name = unique("target")
    nodes = start(shell, name)
    by_id = run(shell, f"%%ecs_exec {nodes.ids[0]} -o a\nhostname")
    by_name = run(shell, f"%%ecs_exec {name} -o b\nhostname")
    assert by_id.error_in_exec is None and by_name.error_in_exec is None
    assert shell.user_ns["a"][nodes.ids[0]].stdout == shell.user_ns["b"][nodes.ids[0]].stdout
    unknown = run(shell, "%%ecs_exec no-such-fleet\ntrue")
    assert isinstance(unknown.error_in_exec, UsageError)
    assert "neither a fleet variable, an instance id, nor the name" in str(unknown.error_in_exec)
    missing = run(shell, "%%ecs_exec i-doesnotexist\ntrue")
    assert "no instance i-doesnotexist" in str(missing.error_in_exec)


def test_bad_flags_are_usage_errors(shell):
    for line in ("%ecs_start --count two", "%ecs_start --ttl soon --image-id x", "%ecs_copy a b"):
        result = run(shell, line)
        assert isinstance(result.error_in_exec, UsageError), line


def test_copy_up_to_all_and_down_into_one_folder_per_instance(shell, tmp_path):
    nodes = start(shell, unique("copy"), count=2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    (data / "run.sh").write_text("echo run\n")
    (data / "run.sh").chmod(0o750)
    shell.user_ns["data"] = str(data)
    up = run(shell, "%ecs_copy {data} nodes:/home/webuser --user webuser")
    assert up.error_in_exec is None
    check = run(shell, "%%ecs_exec nodes -o st\nstat -c '%U %a' /home/webuser/data/run.sh")
    assert check.error_in_exec is None
    assert {r.stdout for r in shell.user_ns["st"].values()} == {"webuser 750\n"}

    back = tmp_path / "back"
    back.mkdir()
    shell.user_ns["back"] = str(back)
    down = run(shell, "%ecs_copy nodes:data/a.txt {back} --user webuser")
    assert down.error_in_exec is None
    assert sorted(p.parent.name for p in back.glob("*/a.txt")) == sorted(nodes.ids)

    missing = run(shell, "%ecs_copy nodes:data/nope.txt {back} --user webuser")
    assert isinstance(missing.error_in_exec, UsageError) and "does not exist" in str(missing.error_in_exec)


def test_list_and_stop(shell):
    name = unique("list")
    nodes = start(shell, name)
    listed = shell.run_line_magic("ecs_list", f"--name {name}")
    assert listed.ids == nodes.ids
    assert run(shell, "%ecs_stop nodes").error_in_exec is None
    assert len(shell.run_line_magic("ecs_list", f"--name {name}")) == 0


def test_exec_view_keeps_the_last_lines_and_marks_streams_and_status(tmp_path):
    view = ExecView(["i-a", "i-b"], max_lines=3, log_path=tmp_path / "log.txt", sandbox=True, live=True)
    log = LogSink(tmp_path / "log.txt")
    sink = TeeSink(log, view)  # as %%ecs_exec tees them
    for n in range(5):
        sink.write("i-a", "stdout", f"line {n}\n")
    sink.write("i-a", "stderr", "oops\n")
    sink.write("i-b", "stdout", "only\n")
    log.close()
    outputs = view.outputs["i-a"].outputs
    assert [o["text"] for o in outputs] == ["line 3\n", "line 4\n", "oops\n"]
    assert [o["name"] for o in outputs] == ["stdout", "stdout", "stderr"]
    results = {"i-a": ExecResult("i-a", "", 0, "", "", 1.25), "i-b": ExecResult("i-b", "", 2, "", "", 0.5)}
    view.finish(FleetResult(results))
    assert "exit 0 · 1.2 s" in view.badges["i-a"].value and "exit 2" in view.badges["i-b"].value
    assert "SANDBOX" in view.header.value and "1 failed" in view.header.value
    text = view.text()
    assert "[i-a] exit 0" in text and "  oops" in text and "[sandbox]" in text
    assert (tmp_path / "log.txt").read_text().count("line") == 5
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == text


def test_copy_view_moves_each_bar_by_whole_percents_and_always_reaches_the_end():
    view = CopyView(["i-a", "i-b"], description="up", sandbox=True, live=True)
    moves: list[int] = []
    view.bars["i-a"].observe(lambda change: moves.append(change["new"]), "value")
    total = 450 * 2**20
    for done in range(0, total, 1 << 16):  # as a copy reports: every 64 KiB
        view.progress("i-a", done, total)
    view.progress("i-a", total, total)
    assert len(moves) <= 101, len(moves)
    assert moves[-1] == total and view.bars["i-a"].max == total
    assert [value * 100 // total for value in moves] == sorted(set(value * 100 // total for value in moves))
    view.progress("i-b", 1, 3)  # a small copy moves at once
    assert (view.bars["i-b"].value, view.bars["i-b"].max) == (1, 3)


def test_without_credentials_the_magics_use_the_sandbox_and_say_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PYMLSQL_SANDBOX_DIR", str(tmp_path / "fallback"))
    ipython = InteractiveShell.instance()
    ipython.run_line_magic("load_ext", "pymlsql_magics")
    magics = ipython.magics_manager.registry["EcsMagics"]
    magics._fleet = magics._fleet_config = None
    magics._announced = ""
    try:
        listed = ipython.run_line_magic("ecs_list", "")
        assert len(listed) == 0
        assert "NO ALIBABA CLOUD CREDENTIALS FOUND: using the local ECS sandbox" in capsys.readouterr().err
        assert magics._sandboxed
        ipython.run_line_magic("ecs_list", "")
        assert "NO ALIBABA CLOUD CREDENTIALS" not in capsys.readouterr().err
    finally:
        ipython.run_line_magic("ecs_sandbox", "stop")
        magics._fleet = magics._fleet_config = None
    assert read_info(Path(tmp_path / "fallback")) is None


def test_pty_runs_the_script_on_a_terminal_and_leaves_no_script_behind(shell):
    start(shell, unique("pty"))
    result = run(shell, "%%ecs_exec nodes --pty --user webuser --allow-fail -o t\n"
                        "test -t 0 && test -t 1 && echo on-a-terminal\nwhoami\necho to-stderr >&2\nexit 6")  # fmt: skip
    assert result.error_in_exec is None
    (outcome,) = shell.user_ns["t"].values()
    assert outcome.exit_status == 6
    assert outcome.stdout == "on-a-terminal\nwebuser\nto-stderr\n" and outcome.stderr == ""
    plain = run(shell, "%%ecs_exec nodes -o p\ntest -t 1 || echo no-terminal\nls /tmp/.pymlsql-script.* | wc -l")
    assert plain.error_in_exec is None
    # As the login user the script is read from the channel: no file exists even while it runs.
    assert {r.stdout for r in shell.user_ns["p"].values()} == {"no-terminal\n0\n"}


def test_flag_beats_config_which_beats_environment(shell, monkeypatch):
    magics = shell.magics_manager.registry["EcsMagics"]
    monkeypatch.setenv("ALIBABA_CLOUD_REGION_ID", "cn-beijing")
    assert magics._config().region_id == "cn-beijing"
    monkeypatch.setattr(magics, "region_id", "cn-shanghai")
    assert magics._config().region_id == "cn-shanghai"
    assert magics._config(region_id="ap-southeast-1").region_id == "ap-southeast-1"
    monkeypatch.setattr(magics, "start_timeout", 42.0)
    assert magics._config().start_timeout == 42.0
    assert magics._config(start_timeout=7.0).start_timeout == 7.0


def test_secrets_never_reach_the_cell_output(shell, sandbox, capsys):
    start(shell, unique("secret"))
    run(shell, "%%ecs_exec nodes\nhostname")
    run(shell, "%ecs_list")
    captured = capsys.readouterr()
    assert sandbox.access_key_secret not in captured.out + captured.err
    assert sandbox.access_key_secret not in repr(shell.user_ns["nodes"])
