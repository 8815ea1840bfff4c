"""Fault injection and the sandbox's own log, on a sandbox of their own."""

from __future__ import annotations

import subprocess
import time

import pytest
from alibabacloud_ecs20140526 import models as ecs

from pymlsql_magics.sandbox import Sandbox

from .conftest import FAST
from .helpers import address, api_error, new_client, run, ssh, statuses, unique, wait_for, wait_ssh, wait_status


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    with Sandbox(tmp_path_factory.mktemp("faulty"), timings=FAST).start() as running:
        yield running


@pytest.fixture
def fclient(faulty):
    faulty.fault({"clear": True})
    yield new_client(faulty)
    faulty.fault({"clear": True})


@pytest.fixture
def fkey(fclient, faulty, tmp_path):
    name = unique("fault-key")
    body = fclient.create_key_pair(ecs.CreateKeyPairRequest(region_id=faulty.region_id, key_pair_name=name)).body
    path = tmp_path / name
    path.write_text(body.private_key_body)
    path.chmod(0o600)
    return name, path


def test_injected_api_errors_fail_the_next_calls_then_stop(fclient, faulty):
    faulty.fault({"action": "DescribeRegions", "code": "Throttling.User", "status": 400, "count": 2})
    for _ in range(2):
        error = api_error(lambda: fclient.describe_regions(ecs.DescribeRegionsRequest()))
        assert (error.code, error.status_code) == ("Throttling.User", 400)
    assert fclient.describe_regions(ecs.DescribeRegionsRequest()).body.regions.region

    codes = [(r["action"], r["code"]) for r in faulty.log()["requests"] if r["action"] == "DescribeRegions"]
    assert codes[-3:] == [("DescribeRegions", "Throttling.User")] * 2 + [("DescribeRegions", "OK")]


def test_server_errors_can_be_injected_for_any_action(fclient, faulty):
    faulty.fault({"action": "DescribeInstances", "code": "ServiceUnavailable", "status": 503, "count": 1})
    error = api_error(lambda: fclient.describe_instances(ecs.DescribeInstancesRequest(region_id=faulty.region_id)))
    assert (error.code, error.status_code) == ("ServiceUnavailable", 503)
    assert error.data["RequestId"] and error.data["Message"]


def test_ssh_delay_makes_ssh_come_up_later(fclient, faulty, fkey):
    launched: list[str] = []
    faulty.fault({"ssh_delay": 2.0})
    try:
        ids = run(fclient, faulty.region_id, launched=launched, key_pair_name=fkey[0])
        (instance,) = wait_status(fclient, faulty.region_id, ids, "Running")
        wait_ssh(address(instance), fkey[1])
        events = faulty.log()["instances"][ids[0]]
        assert events["ssh_ready_at"] - events["running_at"] >= FAST.boot + 2.0
    finally:
        _release(fclient, launched)


def test_stuck_instances_never_leave_their_status_but_can_be_force_deleted(fclient, faulty):
    launched: list[str] = []
    faulty.fault({"stuck": "Pending"})
    ids = run(fclient, faulty.region_id, launched=launched)
    time.sleep(FAST.pending * 4)
    assert statuses(fclient, faulty.region_id, ids) == {ids[0]: "Pending"}
    fclient.delete_instance(ecs.DeleteInstanceRequest(instance_id=ids[0], force=True))
    assert statuses(fclient, faulty.region_id, ids) == {}


def test_kill_ssh_drops_sessions_and_ssh_comes_back(fclient, faulty, fkey):
    launched: list[str] = []
    try:
        ids = run(fclient, faulty.region_id, launched=launched, key_pair_name=fkey[0])
        (instance,) = wait_status(fclient, faulty.region_id, ids, "Running")
        host = address(instance)
        wait_ssh(host, fkey[1])
        session = subprocess.Popen(
            ["ssh", "-i", str(fkey[1]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", f"root@{host}", "echo started; sleep 60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert session.stdout.readline().strip() == "started"

        faulty.fault({"kill_ssh": instance.instance_id})

        session.communicate(timeout=10)
        assert session.returncode == 255
        assert statuses(fclient, faulty.region_id, ids)[instance.instance_id] == "Running"
        wait_ssh(host, fkey[1])
        events = faulty.log()["instances"][instance.instance_id]
        assert events["ssh_ready_at"] > events["ssh_dropped_at"]
    finally:
        _release(fclient, launched)


def test_rotated_host_key_is_refused_by_a_client_that_pinned_the_old_one(fclient, faulty, fkey, tmp_path):
    launched: list[str] = []
    try:
        ids = run(fclient, faulty.region_id, launched=launched, key_pair_name=fkey[0])
        (instance,) = wait_status(fclient, faulty.region_id, ids, "Running")
        host = address(instance)
        wait_ssh(host, fkey[1])
        known_hosts = tmp_path / "known_hosts"
        scanned = subprocess.run(["ssh-keyscan", host], capture_output=True, text=True, timeout=30).stdout
        known_hosts.write_text(scanned)
        assert ssh(host, fkey[1], "true", known_hosts=known_hosts).returncode == 0

        faulty.fault({"rotate_host_key": instance.instance_id})
        wait_for(lambda: "ssh_ready_at" in faulty.log()["instances"][instance.instance_id], timeout=15)

        refused = ssh(host, fkey[1], "true", known_hosts=known_hosts)
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    finally:
        _release(fclient, launched)


def test_log_records_each_request_and_instance_event_times(fclient, faulty, fkey):
    launched: list[str] = []
    try:
        ids = run(fclient, faulty.region_id, launched=launched, key_pair_name=fkey[0])
        (instance,) = wait_status(fclient, faulty.region_id, ids, "Running")
        wait_ssh(address(instance), fkey[1])
        log = faulty.log()
        run_calls = [r for r in log["requests"] if r["action"] == "RunInstances"]
        assert run_calls[-1]["code"] == "OK" and run_calls[-1]["request_id"]
        events = log["instances"][ids[0]]
        assert events["created_at"] <= events["starting_at"] <= events["running_at"] < events["ssh_ready_at"]
        assert events["starting_at"] - events["created_at"] >= FAST.pending * 0.9
        assert events["ssh_ready_at"] - events["running_at"] >= FAST.boot * 0.9
    finally:
        _release(fclient, launched)


def _release(client, ids):
    for instance_id in ids:
        client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id, force=True))
