"""Copies compress what shrinks: text-like data crosses the client's link compressed (zstd, else
gzip), random bytes cross it as they are, and `compress` on/off overrides the choice. The bytes
are counted by the sandbox's model of the client's link, not by the tool."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymlsql_magics.core import ConfigError, Fleet, Instance
from pymlsql_magics.sandbox import Sandbox, Timings

from .helpers import unique
from .test_core_fleet import config_for, remote

SIZE = 4 << 20
FAST = Timings(pending=0.2, starting=0.2, stopping=0.1, boot=0.2)


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("linked"), timings=FAST, client_link=(400.0, 400.0)).start() as running:
        yield running


@pytest.fixture(scope="module")
def fleet(linked: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(config_for(linked, tmp_path_factory.mktemp("compress-home"))) as opened:
        yield opened


@pytest.fixture(scope="module")
def node(fleet: Fleet) -> Iterator[Instance]:
    [instance] = fleet.start(image_id="m-sandbox-webuser", key_pair_name=unique("zk"), init_ssh_key=True,
                             bandwidth=100)  # fmt: skip
    yield instance
    fleet.stop([instance])


def csv_file(path: Path) -> bytes:
    lines = (f"{n},sensor-{n % 97},{(n * 7919) % 10007 / 3:.4f},2026-12-03T12:{n % 60:02}:00Z\n" for n in range(10**6))
    data = "".join(lines).encode()[:SIZE]
    path.write_bytes(data)
    return data


def carried(sandbox: Sandbox, way: str) -> int:
    return int(sandbox.log()["client_link"][way])


def test_text_goes_up_and_down_compressed_and_arrives_whole(
    fleet: Fleet, node: Instance, linked: Sandbox, tmp_path: Path
) -> None:
    data = csv_file(tmp_path / "readings.csv")
    before = carried(linked, "up")
    fleet.copy_to([node], str(tmp_path / "readings.csv"), "/root/readings.csv")
    assert carried(linked, "up") - before < SIZE // 3
    digest = remote(fleet, node, "sha256sum /root/readings.csv | cut -d' ' -f1").stdout.strip()
    assert digest == hashlib.sha256(data).hexdigest()

    before = carried(linked, "down")
    back = fleet.copy_from(node, "/root/readings.csv", str(tmp_path / "back.csv"))
    assert carried(linked, "down") - before < SIZE // 3
    assert Path(back.target).read_bytes() == data


def test_random_bytes_cross_as_they_are_and_off_turns_compression_off(
    fleet: Fleet, node: Instance, linked: Sandbox, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(SIZE))
    before = carried(linked, "up")
    fleet.copy_to([node], str(noise), "/root/noise.bin")
    assert SIZE <= carried(linked, "up") - before < SIZE * 1.1

    text = tmp_path / "readings.csv"
    csv_file(text)
    before = carried(linked, "up")
    fleet.copy_to([node], str(text), "/root/plain.csv", compress="off")
    assert carried(linked, "up") - before >= SIZE


def test_a_folder_compressed_keeps_modes_and_owner(fleet: Fleet, node: Instance, tmp_path: Path) -> None:
    tree = tmp_path / "src"
    (tree / "pkg").mkdir(parents=True)
    for n in range(20):
        (tree / "pkg" / f"module{n}.py").write_text("def f(x):\n    return x * 2\n" * 500)
    (tree / "run.sh").write_text("#!/bin/sh\necho run\n" * 100)
    (tree / "run.sh").chmod(0o750)
    fleet.copy_to([node], str(tree), "/home/webuser/", user="webuser", compress="on")
    seen = remote(fleet, node, "stat -c '%U %a' /home/webuser/src/run.sh; ls /home/webuser/src/pkg | wc -l")
    assert seen.stdout == "webuser 750\n20\n"


def test_a_mode_other_than_auto_on_off_is_refused(fleet: Fleet, node: Instance, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--compress must be auto, on or off, got 'fast'"):
        fleet.copy_to([node], str(tmp_path), "/root/", compress="fast")
