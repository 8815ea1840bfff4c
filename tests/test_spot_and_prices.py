"""Prices and spot instances: the sandbox's DescribePrice, DescribeSpotPriceHistory and reclaim
notice through the official SDK, and what the CLI and the magics show and refuse with them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs

from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import (
    api_error,
    environment,
    hinted_error,
    home_folder,
    magics_shell,
    new_client,
    own_sandbox,
    pymlsql,
    sdk_network,
    started_ids,
    unique,
    wait_for,
)

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from own_sandbox(tmp_path_factory.mktemp("prices"), FAST)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return home_folder(tmp_path_factory.mktemp("prices-home"))


@pytest.fixture
def env(cleared: Sandbox, home: Path) -> dict[str, str]:
    return environment(cleared, home)


def described(sandbox: Sandbox, instance_id: str) -> Any:
    request = ecs.DescribeInstancesRequest(region_id=sandbox.region_id, instance_ids=json.dumps([instance_id]))
    found = new_client(sandbox).describe_instances(request).body.instances.instance
    return found[0] if found else None


def price(sandbox: Sandbox, **fields: Any) -> Any:
    request = ecs.DescribePriceRequest(region_id=sandbox.region_id, resource_type="instance", **fields)
    return new_client(sandbox).describe_price(request).body.price_info.price


# -- the sandbox's prices -----------------------------------------------------------------------


def test_describe_price_answers_as_ecs_with_the_total_of_the_amount_and_spot_below_it(cleared: Sandbox) -> None:
    one = price(cleared, instance_type="ecs.g7.large", zone_id="cn-hangzhou-h")
    three = price(cleared, instance_type="ecs.g7.large", zone_id="cn-hangzhou-h", amount=3)
    spot = price(cleared, instance_type="ecs.g7.large", zone_id="cn-hangzhou-h", spot_strategy="SpotAsPriceGo")
    bigger = price(cleared, instance_type="ecs.g7.2xlarge", zone_id="cn-hangzhou-h")

    assert one.currency == "CNY" and one.original_price == one.trade_price > 0 and one.discount_price == 0
    assert three.trade_price == pytest.approx(3 * one.trade_price)
    assert 0.1 * one.trade_price < spot.trade_price < 0.3 * one.trade_price
    assert spot.original_price == one.original_price and spot.discount_price > 0
    assert bigger.trade_price > one.trade_price
    parts = {item.resource: item.trade_price for item in one.detail_infos.detail_info}
    assert set(parts) == {"instanceType", "systemDisk", "bandwidth"}
    assert sum(parts.values()) == pytest.approx(one.trade_price)

    missing = api_error(lambda: price(cleared))
    assert missing.code == "InvalidInstanceType.Missing"
    unknown = api_error(lambda: price(cleared, instance_type="ecs.nope.large"))
    assert unknown.code == "InvalidInstanceType.ValueNotSupported"


def test_spot_price_history_gives_each_zone_an_hourly_price_under_the_original(cleared: Sandbox) -> None:
    request = ecs.DescribeSpotPriceHistoryRequest(region_id=cleared.region_id, network_type="vpc",
                                                  instance_type="ecs.r5.large")  # fmt: skip
    body = new_client(cleared).describe_spot_price_history(request).body
    points = body.spot_prices.spot_price_type
    assert body.currency == "CNY"
    assert {point.zone_id for point in points} == {"cn-hangzhou-h", "cn-hangzhou-i", "cn-hangzhou-k"}
    assert all(0 < point.spot_price < point.origin_price for point in points)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", point.timestamp) for point in points)
    assert 3 <= len([point for point in points if point.zone_id == "cn-hangzhou-h"]) <= 4  # the last 3 hours


def test_run_instances_refuses_spot_settings_ecs_refuses(cleared: Sandbox) -> None:
    client = new_client(cleared)
    network = sdk_network(cleared)
    for fields, code in (
        ({"spot_strategy": "SpotAsPriceGo", "spot_price_limit": 0.2}, "InvalidSpotPriceLimit"),
        ({"spot_strategy": "SpotWithPriceLimit", "spot_price_limit": 0.12345}, "InvalidSpotPriceLimit"),
        ({"spot_strategy": "SpotAsPriceGo", "spot_duration": 2}, "InvalidSpotDuration"),
        ({"spot_strategy": "SpotOnMonday"}, "InvalidSpotStrategy"),
    ):
        request = ecs.RunInstancesRequest(region_id=cleared.region_id, image_id=DEBIAN, instance_type="ecs.g7.large",
                                          v_switch_id=network.vswitch_id, security_group_id=network.security_group_id,
                                          **fields)  # fmt: skip
        assert api_error(lambda r=request: client.run_instances(r)).code == code, fields


# -- the client: the price before a start, and a limit ------------------------------------------


def test_a_start_says_its_price_before_creating_with_one_describe_price(cleared: Sandbox, env: dict[str, str]) -> None:
    mark = len(cleared.log()["requests"])
    name = unique("priced")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2")
    actions = [r["action"] for r in cleared.log()["requests"][mark:]]
    assert pymlsql(env, "stop", "--name", name).returncode == 0
    assert done.returncode == 0, done.stderr

    quoted = price(cleared, instance_type="ecs.g7.large", amount=2).trade_price
    assert f"price: 2 x ecs.g7.large: {quoted:.3f} CNY/hour ({quoted / 2:.3f} each)" in done.stderr, done.stderr
    assert actions.count("DescribePrice") == 1 and actions.index("DescribePrice") < actions.index("RunInstances")


def test_a_start_over_its_price_limit_is_refused_before_anything_is_made(cleared: Sandbox, env: dict[str, str]) -> None:
    mark = len(cleared.log()["requests"])
    name = unique("too-dear")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "3", "--instance-type",
                   "ecs.g7.2xlarge", "--max-price-per-hour", "1.5")  # fmt: skip

    first, hint = hinted_error(done, exit_code=2)
    quoted = price(cleared, instance_type="ecs.g7.2xlarge", amount=3).trade_price
    assert f"3 x ecs.g7.2xlarge would cost {quoted:.3f} CNY/hour, over --max-price-per-hour 1.5" in first, first
    assert "--spot" in hint
    made = [r["action"] for r in cleared.log()["requests"][mark:] if r["action"].startswith(("Create", "Run"))]
    assert made == [], made

    done = pymlsql(env, "start", "--image-id", DEBIAN, "--max-price-per-hour", "-2")
    assert "--max-price-per-hour must be a price above 0, got -2" in hinted_error(done, exit_code=2)[0]


# -- spot: a reclaim notice, the release, and a re-run that tops the fleet up ------------------------


def test_a_reclaimed_spot_instance_gets_ecs_notice_is_released_and_a_rerun_replaces_it(
    cleared: Sandbox, env: dict[str, str], home: Path
) -> None:
    name = unique("spot")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2", "--spot")
    assert done.returncode == 0, done.stderr
    assert re.search(r"price: 2 x ecs\.g7\.large spot: [\d.]+ CNY/hour", done.stderr), done.stderr
    first, second = started_ids(done)
    assert described(cleared, first).spot_strategy == "SpotAsPriceGo"

    termination = "http://100.100.100.200/latest/meta-data/instance/spot/termination-time"
    probe = ("import urllib.request, urllib.error\n"
             f"try: print(urllib.request.urlopen('{termination}', timeout=5).read().decode())\n"
             "except urllib.error.HTTPError as error: print(error.code)\n")  # fmt: skip
    state = ["--state-dir", str(cleared.state_dir)]
    before = pymlsql(env, "sandbox", "run", *state, first, "--", "python3", "-c", probe)
    assert before.stdout.strip() == "404", before.stderr

    refused = pymlsql(env, "sandbox", "fault", *state, "--reclaim", "i-notathing")
    assert refused.returncode != 0 and "not a Running instance" in refused.stderr
    assert pymlsql(env, "sandbox", "fault", *state, "--reclaim", first, "--notice", "4").returncode == 0

    locks = [lock.lock_reason for lock in described(cleared, first).operation_locks.lock_reason]
    assert locks == ["Recycling"]
    after = pymlsql(env, "sandbox", "run", *state, first, "--", "python3", "-c", probe)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", after.stdout.strip()), after.stdout
    wait_for(lambda: described(cleared, first) is None, timeout=20, what="the reclaim")
    assert described(cleared, second) is not None

    again = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2", "--spot")
    assert again.returncode == 0, again.stderr
    replaced = started_ids(again)
    assert second in replaced and first not in replaced and len(replaced) == 2
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_a_non_spot_instance_cannot_be_reclaimed(cleared: Sandbox, env: dict[str, str]) -> None:
    name = unique("on-demand")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name)
    [instance_id] = started_ids(done)
    refused = pymlsql(env, "sandbox", "fault", "--state-dir", str(cleared.state_dir), "--reclaim", instance_id)
    assert refused.returncode != 0 and "is not a spot instance" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_spot_flags_that_contradict_each_other_are_refused(env: dict[str, str]) -> None:
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--spot", "--spot-strategy", "NoSpot")
    assert "--spot-strategy NoSpot contradicts --spot" in hinted_error(done, exit_code=2)[0]
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--spot-price-limit", "0")
    assert "--spot-price-limit must be a price above 0" in hinted_error(done, exit_code=2)[0]


# -- what is running, and what it costs ----------------------------------------------------------


def test_list_and_the_magics_show_each_instance_price_and_cost_so_far(
    cleared: Sandbox, env: dict[str, str], home: Path
) -> None:
    name = unique("costs")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2",
                   "--spot-price-limit", "0.4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = started_ids(done)
    assert described(cleared, ids[0]).spot_price_limit == 0.4

    listed = json.loads(pymlsql(env, "list", "--name", name, "--output", "json").stdout)
    spot_each = price(cleared, instance_type="ecs.g7.large", zone_id=listed[0]["zone_id"],
                      spot_strategy="SpotWithPriceLimit").trade_price  # fmt: skip
    assert {item["instance_id"] for item in listed} == set(ids)
    assert all(item["price_per_hour"] == pytest.approx(spot_each, abs=1e-4) and item["currency"] == "CNY"
               and 0 <= item["cost_so_far"] < spot_each for item in listed)  # fmt: skip
    text = pymlsql(env, "list", "--name", name)
    assert all(f"{spot_each:.3f} CNY/h" in line for line in text.stdout.splitlines()), text.stdout
    assert f"2 instance(s), {2 * spot_each:.3f} CNY/hour in all" in text.stderr

    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    try:
        table = shell.run_line_magic("ecs_list", f"--name {name}")
        assert set(table.costs) == set(ids)
        shown = repr(table)
        assert f"{2 * spot_each:.3f} CNY/hour in all" in shown and "per_hour" in shown and "so_far" in shown
        assert "<th>per_hour</th>" in table._repr_html_()
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_a_script_ended_by_a_reclaim_fails_with_that_reason_on_both_faces(
    cleared: Sandbox, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    import subprocess
    import threading
    import time

    from .helpers import PYMLSQL, hinted_error

    name = unique("reclaimed")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--count", "2", "--spot",
                   "--key-pair-name", name, "--init-ssh-key", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doomed, kept = started_ids(done)
    script = tmp_path / "long.sh"
    # Only the doomed instance runs long: the command ends when its instance goes, not 45 s later.
    script.write_text(f'echo started\ncase "$(hostname)" in *{doomed[2:]}*) sleep 45;; esac\necho finished\n')
    state = ["--state-dir", str(cleared.state_dir)]

    def reclaim_soon() -> None:
        time.sleep(2)
        pymlsql(env, "sandbox", "fault", *state, "--reclaim", doomed, "--notice", "6")

    threading.Thread(target=reclaim_soon, daemon=True).start()
    began = time.monotonic()
    ran = subprocess.run([PYMLSQL, "exec-shell", "--instance-id", doomed, kept, "--script-file", str(script)],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - began

    first, hint = hinted_error(ran)
    assert f"{doomed} was reclaimed at " in ran.stderr and "what ran on it ended with it" in ran.stderr, ran.stderr
    assert re.search(rf"\[{doomed}\] pymlsql: reclaimed at \d\d:\d\d:\d\d", ran.stderr), ran.stderr
    assert first.startswith(f"pymlsql: error: {doomed} was reclaimed at "), first
    assert f"[{kept}] finished" in ran.stdout and f"[{doomed}] finished" not in ran.stdout, ran.stdout
    assert "same --name" in ran.stderr
    assert took < 45, took  # it fails when the instance goes, not when the script would have ended

    # The magics' panel of a reclaimed instance says so, from its fleet variable.
    shell = magics_shell(home, key_dir=home / ".ssh")
    os.environ.update(cleared.environment())
    try:
        shell.run_line_magic("ecs_start", f"--image-id {DEBIAN} --name {name} --count 2 --spot "
                                          f"--key-pair-name {name}")  # fmt: skip
        fleet = shell.run_line_magic("ecs_list", f"--name {name}")
        shell.user_ns["spot_fleet"] = fleet
        target = next(i.instance_id for i in fleet if i.instance_id != kept)
        threading.Thread(target=lambda: (time.sleep(2), cleared.fault({"reclaim": target, "notice": 4})),
                         daemon=True).start()  # fmt: skip
        from IPython.core.error import UsageError

        with pytest.raises(UsageError) as caught:
            shell.run_cell_magic("ecs_exec", "spot_fleet", f'case "$(hostname)" in *{target[2:]}*) sleep 45;; esac\n')
        assert f"{target} was reclaimed at " in str(caught.value), caught.value
    finally:
        for variable in cleared.environment():
            os.environ.pop(variable, None)
    assert pymlsql(env, "stop", "--name", name).returncode == 0
