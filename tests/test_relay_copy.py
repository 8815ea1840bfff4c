"""One upload for a fleet: to several instances of a VPC the bytes leave this machine once, one
instance passes them on to the others over the private network, and what the relay cannot reach
is copied to directly."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymlsql_magics.core import CopyResult, Fleet, FleetError, Instance
from pymlsql_magics.core._fanout import plan
from pymlsql_magics.sandbox import Sandbox

from .helpers import unique
from .test_core_fleet import config_for, remote

FOUR_MIB = 4 * (1 << 20) + 12_345


@pytest.fixture(scope="module")
def said() -> list[str]:
    return []


@pytest.fixture(scope="module")
def fleet(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, said: list[str]) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("relay-home")
    with Fleet(config_for(sandbox, home), progress=said.append) as opened:
        yield opened


@pytest.fixture(scope="module")
def nodes(fleet: Fleet) -> Iterator[list[Instance]]:
    # Four instances make a tree two levels deep: the seed passes the copy on to two, one of them to a fourth.
    started = fleet.start(image_id="m-sandbox-webuser", count=4, key_pair_name=unique("relay"), init_ssh_key=True)
    yield started
    fleet.stop(started)


def digest_on(fleet: Fleet, instance: Instance, path: str) -> str:
    return remote(fleet, instance, f"sha256sum {path} | cut -d' ' -f1; stat -c '%U %a' {path}").stdout


def test_the_plan_is_a_tree_with_about_a_square_root_of_children_each() -> None:
    members = [Instance(f"i-{n}", "Running") for n in range(8)]
    tree = plan(members[0], members[1:])
    assert [child.instance.instance_id for child in tree.children] == ["i-1", "i-2", "i-3"]
    assert [c.instance.instance_id for c in tree.children[0].children] == ["i-4", "i-5", "i-6"]
    assert [c.instance.instance_id for c in tree.children[1].children] == ["i-7"]
    assert sorted(member.instance_id for member in tree.members()) == [f"i-{n}" for n in range(8)]


def test_a_file_reaches_every_instance_of_the_vpc_through_the_relay_tree(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    payload = os.urandom(FOUR_MIB)
    source.write_bytes(payload)
    source.chmod(0o640)
    seen: dict[str, int] = {}

    result = fleet.copy_to(nodes, str(source), "/home/webuser/", user="webuser",
                           progress=lambda instance_id, done, total: seen.__setitem__(instance_id, done))  # fmt: skip

    seed, first, second, third = (node.instance_id for node in nodes)
    vias = {instance_id: outcome.via for instance_id, outcome in result.items() if isinstance(outcome, CopyResult)}
    assert vias == {seed: "", first: seed, second: seed, third: first}
    assert seen == {node.instance_id: FOUR_MIB for node in nodes}
    expected = f"{hashlib.sha256(payload).hexdigest()}\nwebuser 640\n"
    for node in nodes:
        assert result[node.instance_id].target == "/home/webuser/data.bin"  # type: ignore[union-attr]
        assert digest_on(fleet, node, "/home/webuser/data.bin") == expected


def test_no_key_agent_or_relay_file_is_left_on_any_instance(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path
) -> None:
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a\n")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    fleet.copy_to(nodes, str(folder), "/root/")

    key = fleet.config.key_path(nodes[0].key_pair_name).read_text()
    body_line = key.splitlines()[-3]  # of the private part, near its end: in no public key
    for node in nodes:
        assert remote(fleet, node, "stat -c '%a' /root/tree/run.sh; cat /root/tree/sub/a.txt").stdout == "755\na\n"
        assert remote(fleet, node, "pgrep -x ssh-agent; ls -a /tmp /root | grep pymlsql- || true").stdout == ""
        found = remote(fleet, node, f"grep -rlF -- {body_line!r} /root /home /tmp /etc /run 2>/dev/null || true")
        assert found.stdout == ""


def test_a_target_the_user_cannot_write_fails_on_each_instance_without_a_direct_retry(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path, said: list[str]
) -> None:
    source = tmp_path / "small.txt"
    source.write_text("x\n")
    said.clear()

    with pytest.raises(FleetError) as caught:
        fleet.copy_to(nodes, str(source), "/no/such/folder/small.txt")

    for node in nodes:
        assert str(caught.value.result[node.instance_id]).startswith(
            f"the folder /no/such/folder does not exist on {node.instance_id}"
        )
    assert not [line for line in said if "directly" in line]


def test_an_instance_the_relay_cannot_reach_is_copied_to_directly_and_the_fleet_says_so(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path, said: list[str]
) -> None:
    seed, walled = nodes[0], nodes[1]
    # The seed has no route to the walled instance's private address; this machine still reaches it.
    fleet.exec([seed], f"ip route add unreachable {walled.private_ip}/32")
    source = tmp_path / "walled.bin"
    payload = os.urandom(1 << 20)
    source.write_bytes(payload)
    said.clear()
    try:
        result = fleet.copy_to(nodes, str(source), "/root/walled.bin")
    finally:
        fleet.exec([seed], f"ip route del unreachable {walled.private_ip}/32")

    # The walled instance, and the one it would have passed the copy on to, got it straight from here.
    third = nodes[3]
    assert {i for i, outcome in result.items() if outcome.via == ""} == {seed.instance_id, walled.instance_id,  # type: ignore[union-attr]
                                                                           third.instance_id}  # fmt: skip
    [notice] = [line for line in said if "directly" in line]
    assert notice.startswith(f"{seed.instance_id} could not pass the copy on to {walled.instance_id}: ")
    assert notice.endswith(f"copying to {walled.instance_id}, {third.instance_id} directly")
    for node in nodes:
        assert digest_on(fleet, node, "/root/walled.bin").startswith(hashlib.sha256(payload).hexdigest())


def test_an_interrupted_relayed_copy_leaves_nothing_on_any_instance(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path
) -> None:
    source = tmp_path / "cut.bin"
    source.write_bytes(os.urandom(FOUR_MIB))
    cancel = threading.Event()

    def stop_midway(_: str, done: int, total: int) -> None:
        if done > total // 4:
            cancel.set()

    with pytest.raises(KeyboardInterrupt):
        fleet.copy_to(nodes, str(source), "/root/cut.bin", progress=stop_midway, cancel=cancel)
    for node in nodes:
        leftovers = remote(fleet, node, "sleep 0.5; ls -a /root /tmp | grep -E 'cut.bin|pymlsql-'; pgrep -x ssh-agent")
        assert leftovers.stdout == ""


def test_text_relayed_compressed_reaches_every_instance_whole(
    fleet: Fleet, nodes: list[Instance], tmp_path: Path
) -> None:
    source = tmp_path / "words.txt"
    payload = b"".join(b"line %d of a text that compresses well\n" % n for n in range(100_000))
    source.write_bytes(payload)

    result = fleet.copy_to(nodes, str(source), "/root/words.txt")  # auto: it shrinks, so it is compressed

    assert {outcome.via for outcome in result.values()} - {""}  # type: ignore[union-attr]
    for node in nodes:
        assert digest_on(fleet, node, "/root/words.txt").startswith(hashlib.sha256(payload).hexdigest())
