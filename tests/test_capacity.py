"""The cloud's rough edges right after a create, through the CLI, the magics and the core, against
the sandbox's faults: releases refused while instances initialize, replays still being processed,
listings that trail creation, consoles filled late, and Ctrl-C at every step of a start."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pymlsql_magics import cli
from pymlsql_magics.core import EcsConfig, Fleet, PymlsqlError, _api_calls
from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import (
    PYMLSQL,
    codes,
    environment,
    hinted_error,
    home_folder,
    ids_named,
    magics_shell,
    new_client,
    own_sandbox,
    pymlsql,
    started_ids,
    unique,
    wait_for,
)

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from own_sandbox(tmp_path_factory.mktemp("capacity"), FAST)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return home_folder(tmp_path_factory.mktemp("capacity-home"))


@pytest.fixture
def env(cleared: Sandbox, home: Path) -> dict[str, str]:
    return environment(cleared, home)


def start_flags(name: str, *more: str) -> list[str]:
    return ["start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", name, "--init-ssh-key", "true", *more]


# -- releases refused while instances initialize -----------------------------------------------


def test_a_start_failing_at_ssh_waits_out_initializing_and_leaves_nothing(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    cleared.fault({"initializing": 8, "ssh_delay": 120})
    mark = len(cleared.log()["requests"])
    name = unique("initializing")

    done = pymlsql(env, *start_flags(name, "--count", "2", "--start-timeout", "3"))

    first, _ = hinted_error(done)
    assert "SSH" in first and "released the 2 instance(s) this start created" in first, first
    seen = codes(cleared, "DeleteInstances", mark)
    assert seen[0] == "IncorrectInstanceStatus.Initializing" and seen[-1] == "OK", seen
    assert ids_named(cleared, name) == []


def test_a_release_still_refused_names_what_is_left_and_the_command_that_releases_it(
    cleared: Sandbox, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_api_calls, "PROCESSING_PATIENCE", 2.0)  # ECS's patience is minutes, not seconds
    cleared.fault({"initializing": 600, "ssh_delay": 120})
    name = unique("left")
    config = EcsConfig.from_env(cleared.environment(), known_hosts=str(home / "known_hosts"),
                                key_dir=str(home / ".ssh"))  # fmt: skip
    with Fleet(config) as fleet:
        with pytest.raises(PymlsqlError) as caught:
            fleet.start(image_id=DEBIAN, name=name, count=2, key_pair_name=name, init_ssh_key=True, start_timeout=2)
    left = sorted(ids_named(cleared, name))
    text = str(caught.value)
    assert len(left) == 2 and all(instance_id in text for instance_id in left), text
    assert "could not release" in text and "IncorrectInstanceStatus.Initializing" in text
    hint = text.split("release them with: ", 1)[1]
    assert hint.startswith("Fleet.stop(Fleet.get('") and sorted(hint.split("'")[1].split()) == left, hint

    # What the command line would have said, run as said once ECS lets go.
    cleared.fault({"initializing": 0})
    command = cli._FACE.release_hint(left)
    assert command == f"pymlsql stop --instance-id {left[0]} {left[1]}"
    done = pymlsql(environment(cleared, home), *command.split()[1:])
    assert done.returncode == 0, done.stderr
    assert ids_named(cleared, name) == []


# -- a lost answer replayed while ECS still processes the first call -----------------------------


def test_a_lost_run_instances_answer_replayed_while_processing_yields_exactly_the_instances_asked_for(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    cleared.fault({"action": "RunInstances", "lose_response": True, "count": 1})
    cleared.fault({"idempotent_processing": 2})
    mark = len(cleared.log()["requests"])
    name = unique("processing")

    done = pymlsql(env, *start_flags(name, "--count", "2"))

    assert done.returncode == 0, done.stderr
    seen = codes(cleared, "RunInstances", mark)
    assert seen[0] == "OK, answer dropped" and "IdempotentProcessing" in seen and seen[-1] == "OK", seen
    assert sorted(ids_named(cleared, name)) == sorted(started_ids(done)) and len(started_ids(done)) == 2
    assert pymlsql(env, "stop", "--name", name).returncode == 0
    assert ids_named(cleared, name) == []


# -- listings and consoles that trail the create -------------------------------------------------


def test_instances_listed_late_are_waited_for_not_called_disappeared(cleared: Sandbox, home: Path) -> None:
    cleared.fault({"describe_lag": 3})
    mark = len(cleared.log()["requests"])
    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    name = unique("late-listing")
    try:
        nodes = shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --key-pair-name {name} "
                                                  "--init-ssh-key --count 2")  # fmt: skip
        assert len(nodes) == 2 and {i.status for i in nodes} == {"Running"}
        requests = cleared.log()["requests"][mark:]
        created = next(r["time"] for r in requests if r["action"] == "RunInstances" and r["code"] == "OK")
        early = [r for r in requests if r["action"] == "DescribeInstances" and r["time"] - created < 2.5]
        assert early, "the start never asked while the instances were still unlisted"
        shell.run_line_magic("ecs_stop", name)
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert ids_named(cleared, name) == []


def test_the_console_stays_empty_until_its_lag_has_passed(cleared: Sandbox, env: dict[str, str]) -> None:
    from alibabacloud_ecs20140526 import models as ecs

    cleared.fault({"console_lag": 8})
    name = unique("console")
    done = pymlsql(env, *start_flags(name))
    assert done.returncode == 0, done.stderr
    [instance_id] = started_ids(done)
    client = new_client(cleared)

    def console() -> str:
        request = ecs.GetInstanceConsoleOutputRequest(region_id=cleared.region_id, instance_id=instance_id)
        return client.get_instance_console_output(request).body.console_output or ""

    first_ran = cleared.log()["instances"][instance_id]["first_running_at"]
    early = console()
    assert time.time() - first_ran < 8, "the start took longer than the lag: nothing to check early"
    assert early == ""
    wait_for(lambda: console() != "", timeout=15, what="the console output")
    assert pymlsql(env, "stop", "--name", name).returncode == 0


# -- Ctrl-C at every step of a start ------------------------------------------------------------


def _stderr_lines(process: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """The lines the process writes to stderr, as they come, and the thread that reads them."""
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def _made(sandbox: Sandbox, name: str, since: int) -> bool:
    return bool(ids_named(sandbox, name))


def _answer_dropped(sandbox: Sandbox, name: str, since: int) -> bool:
    return "OK, answer dropped" in codes(sandbox, "RunInstances", since)


Reached = Callable[[Sandbox, str, int], bool]  # (sandbox, the start's name, its first request) -> reached
# moment -> (faults, what shows the start has reached it: a progress line, or the sandbox's state)
MOMENTS: dict[str, tuple[list[dict[str, Any]], str | Reached]] = {
    "before RunInstances": ([], "network:"),
    "during RunInstances": ([{"action": "RunInstances", "lose_response": True, "count": 1},
                             {"idempotent_processing": 3}], _answer_dropped),  # fmt: skip
    "after RunInstances": ([{"stuck": "Pending"}], _made),
    "while waiting for Running": ([{"stuck": "Starting"}], "Starting"),
    "while waiting for SSH": ([{"ssh_delay": 120}], "waiting for SSH"),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_at_any_step_of_a_start_returns_within_seconds_and_leaves_nothing(
    cleared: Sandbox, env: dict[str, str], moment: str
) -> None:
    faults, reached = MOMENTS[moment]
    for fault in [{"initializing": 2}, *faults]:
        cleared.fault(fault)
    name = unique("ctrl-c")
    mark = len(cleared.log()["requests"])
    with subprocess.Popen([PYMLSQL, *start_flags(name, "--count", "2")], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        lines, reader = _stderr_lines(process)

        def there() -> bool:
            if isinstance(reached, str):
                return any(reached in line for line in lines)
            return reached(cleared, name, mark)

        wait_for(there, timeout=30, what=f"the start to get {moment}")

        process.send_signal(signal.SIGINT)
        began = time.monotonic()
        process.wait(timeout=30)
        took = time.monotonic() - began
        reader.join(timeout=10)

    said = "".join(lines)
    assert process.returncode != 0 and "Traceback" not in said, said
    assert ids_named(cleared, name) == [], said
    # A release refused while the instances initialize is waited out; the rest is a few seconds.
    assert took < 8.0, (took, said)


def test_the_notebook_stop_button_while_a_start_waits_for_ssh_returns_at_once_and_leaves_nothing(
    cleared: Sandbox, tmp_path: Path
) -> None:
    from jupyter_client.manager import start_new_kernel

    from .test_magics_kernel import execute

    cleared.fault({"ssh_delay": 120})
    cleared.fault({"initializing": 2})
    name = unique("stop-button")
    manager, kernel = start_new_kernel(kernel_name="python3",
                                       env={**os.environ, **cleared.environment(), "HOME": str(tmp_path)})  # fmt: skip
    try:
        reply, _ = execute(kernel, "%load_ext pymlsql_magics")
        assert reply["status"] == "ok", reply
        msg_id = kernel.execute(f"%ecs_start --image-id {DEBIAN} --name {name} --key-pair-name {name} "
                                "--init-ssh-key --count 2")  # fmt: skip
        assert cleared.world is not None
        wait_for(lambda: len(ids_named(cleared, name)) == 2
                 and all(i.status == "Running" for i in cleared.world.instances.values() if i.name == name),
                 timeout=30, what="the instances to run")  # fmt: skip
        time.sleep(1.0)  # now the start waits for SSH
        manager.interrupt_kernel()
        began = time.monotonic()
        reply = kernel.get_shell_msg(timeout=60)
        took = time.monotonic() - began
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < 8.0, took
        assert ids_named(cleared, name) == []
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)


def test_the_quirks_are_set_and_cleared_from_the_command_line(cleared: Sandbox, env: dict[str, str]) -> None:
    assert cleared.world is not None
    state = ["--state-dir", str(cleared.state_dir)]
    done = pymlsql(env, "sandbox", "fault", *state, "--initializing", "30", "--idempotent-processing", "4",
                   "--describe-lag", "2.5", "--console-lag", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    quirks = cleared.world.quirks
    assert (quirks.initializing, quirks.idempotent_processing, quirks.describe_lag, quirks.console_lag) == (
        30, 4, 2.5, 60)  # fmt: skip

    done = pymlsql(env, "sandbox", "fault", *state, "--describe-lag", "-1")
    assert done.returncode != 0 and "--describe-lag: must be 0 or more seconds, got -1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and cleared.world.quirks.describe_lag == 2.5

    assert pymlsql(env, "sandbox", "fault", *state, "--initializing", "0").returncode == 0
    assert cleared.world.quirks.initializing == 0 and cleared.world.quirks.console_lag == 60
    assert pymlsql(env, "sandbox", "fault", *state, "--clear").returncode == 0
    assert cleared.world.quirks.console_lag == 0 and cleared.world.quirks.idempotent_processing == 0


# -- stock, zones and failover --------------------------------------------------------------------


def zones_of(sandbox: Sandbox, name: str) -> list[str]:
    assert sandbox.world is not None
    with sandbox.world.lock:
        return sorted(i.zone_id for i in sandbox.world.instances.values() if i.name == name)


def test_describe_available_resource_shows_stock_as_ecs_does(cleared: Sandbox) -> None:
    from alibabacloud_ecs20140526 import models as ecs

    cleared.fault({"no_stock": ["ecs.g7.large@cn-hangzhou-h"], "stock": ["ecs.g7.large@cn-hangzhou-i=2"]})
    request = ecs.DescribeAvailableResourceRequest(region_id=cleared.region_id, destination_resource="InstanceType",
                                                   instance_type="ecs.g7.large")  # fmt: skip
    body = new_client(cleared).describe_available_resource(request).body
    seen = {}
    for zone in body.available_zones.available_zone:
        [kind] = zone.available_resources.available_resource
        [item] = kind.supported_resources.supported_resource
        assert item.value == "ecs.g7.large" and (item.status, item.status_category) == (
            zone.status, zone.status_category)  # fmt: skip
        seen[zone.zone_id] = (zone.status, zone.status_category)
    assert seen == {"cn-hangzhou-h": ("SoldOut", "WithoutStock"), "cn-hangzhou-i": ("Available", "ClosedWithStock"),
                    "cn-hangzhou-k": ("Available", "WithStock")}  # fmt: skip


def test_a_start_goes_where_the_type_has_stock_and_moves_only_what_a_zone_could_not_make(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    # The zone this tool's network prefers has stock for one more; no other zone is limited.
    cleared.fault({"stock": ["ecs.g7.large@cn-hangzhou-h=1"]})
    mark = len(cleared.log()["requests"])
    name = unique("failover")

    done = pymlsql(env, *start_flags(name, "--count", "3"))

    assert done.returncode == 0, done.stderr
    assert zones_of(cleared, name) == ["cn-hangzhou-h", "cn-hangzhou-i", "cn-hangzhou-i"], done.stderr
    assert codes(cleared, "RunInstances", mark) == ["OK", "OperationDenied.NoStock", "OK"]
    assert "cn-hangzhou-h had stock for 1 of 3" in done.stderr
    assert "OperationDenied.NoStock: no ecs.g7.large in cn-hangzhou-h now; looking elsewhere" in done.stderr
    assert "creating 2 instance(s) of ecs.g7.large in cn-hangzhou-i" in done.stderr
    assert sorted(started_ids(done)) == sorted(ids_named(cleared, name))
    assert pymlsql(env, "stop", "--name", name).returncode == 0

    # A zone sold out is not even asked: DescribeAvailableResource says so first.
    cleared.fault({"no_stock": ["ecs.g7.large@cn-hangzhou-h"]})
    mark = len(cleared.log()["requests"])
    done = pymlsql(env, *start_flags(name))
    assert done.returncode == 0, done.stderr
    assert zones_of(cleared, name) == ["cn-hangzhou-i"] and codes(cleared, "RunInstances", mark) == ["OK"]
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_when_every_zone_runs_out_one_message_names_each_place_tried_and_nothing_is_left(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    cleared.fault({"stock": [f"ecs.g7.large@cn-hangzhou-{zone}=1" for zone in "hik"]})
    name = unique("all-out")

    done = pymlsql(env, *start_flags(name, "--count", "4"))

    first, hint = hinted_error(done)
    assert first.startswith("pymlsql: error: no zone of cn-hangzhou could make the 1 instance(s) still missing; "
                            "tried ecs.g7.large in cn-hangzhou-h (OperationDenied.NoStock), ecs.g7.large in "
                            "cn-hangzhou-i (OperationDenied.NoStock), ecs.g7.large in cn-hangzhou-k "
                            "(OperationDenied.NoStock)"), first  # fmt: skip
    assert "released the 3 instance(s) this start created" in first
    assert "--instance-type A,B" in hint and "--region" in hint
    assert ids_named(cleared, name) == []

    cleared.fault({"no_stock": ["ecs.g7.large"]})
    with_none = pymlsql(env, *start_flags(name))
    first, hint = hinted_error(with_none, exit_code=2)
    assert "no zone of cn-hangzhou offers the instance type ecs.g7.large now" in first
    assert ids_named(cleared, name) == []


def test_a_pinned_zone_does_not_fail_over_and_says_what_ecs_refused(cleared: Sandbox, env: dict[str, str]) -> None:
    cleared.fault({"stock": ["ecs.g7.large@cn-hangzhou-k=1"]})
    mark = len(cleared.log()["requests"])
    name = unique("pinned")

    done = pymlsql(env, *start_flags(name, "--count", "2", "--zone", "cn-hangzhou-k"))

    first, _ = hinted_error(done)
    assert "OperationDenied.NoStock" in first and "(InstanceType ecs.g7.large, ZoneId cn-hangzhou-k" in first, first
    assert codes(cleared, "RunInstances", mark) == ["OK", "OperationDenied.NoStock"]
    assert ids_named(cleared, name) == []


def test_instance_types_are_tried_in_order_from_the_magics(cleared: Sandbox, home: Path) -> None:
    cleared.fault({"no_stock": ["ecs.g7.large"], "stock": ["ecs.r5.large@cn-hangzhou-h=1"]})
    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    name = unique("types")
    try:
        nodes = shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --key-pair-name {name} "
                                                  "--init-ssh-key --count 2 "
                                                  "--instance-type ecs.g7.large,ecs.r5.large")  # fmt: skip
        assert sorted((i.instance_type, i.zone_id) for i in nodes) == [
            ("ecs.r5.large", "cn-hangzhou-h"), ("ecs.r5.large", "cn-hangzhou-i")]  # fmt: skip
        shell.run_line_magic("ecs_stop", name)
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert ids_named(cleared, name) == []


def test_stock_faults_are_set_from_the_command_line_and_refused_when_malformed(
    cleared: Sandbox, env: dict[str, str]
) -> None:
    assert cleared.world is not None
    state = ["--state-dir", str(cleared.state_dir)]
    done = pymlsql(env, "sandbox", "fault", *state, "--no-stock", "ecs.c7.large", "--stock",
                   "ecs.g7.large@cn-hangzhou-i=3", "--no-stock", "ecs.r5.large@cn-hangzhou-k")  # fmt: skip
    assert done.returncode == 0, done.stderr
    stock = cleared.world.stock
    assert stock.available("ecs.c7.large", "cn-hangzhou-h") == 0
    assert stock.available("ecs.g7.large", "cn-hangzhou-i") == 3
    assert stock.available("ecs.r5.large", "cn-hangzhou-k") == 0
    assert stock.available("ecs.r5.large", "cn-hangzhou-h") is None

    done = pymlsql(env, "sandbox", "fault", *state, "--stock", "ecs.g7.large@cn-hangzhou-i")
    assert done.returncode == 2 and "--stock: must be TYPE@ZONE=N" in done.stderr and "Traceback" not in done.stderr
    assert pymlsql(env, "sandbox", "fault", *state, "--clear").returncode == 0
    assert cleared.world.stock.available("ecs.c7.large", "cn-hangzhou-h") is None
