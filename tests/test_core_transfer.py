"""Bulk data: copies as tar streams (over OpenSSH for big ones, pinned host key), and exec output
that streams through without being held in memory."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from pymlsql_magics.core import Fleet, FleetError, Instance, SshError, _streams
from pymlsql_magics.core._transfer import Meter, relay, unpacker_into
from pymlsql_magics.sandbox import Sandbox

from .helpers import unique
from .test_core_fleet import config_for, remote

# Streams from this size go through OpenSSH in these tests (hundreds of MiB in real use).
THRESHOLD = 1 << 20
BIG = 4 * THRESHOLD + 123_457  # not a multiple of any block size; progress comes in 256 KiB steps


@pytest.fixture(autouse=True)
def openssh_from_a_mebibyte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_streams, "OPENSSH_FROM", THRESHOLD)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer-home")


@pytest.fixture(scope="module")
def fleet(sandbox: Sandbox, home: Path) -> Iterator[Fleet]:
    with Fleet(config_for(sandbox, home, exec_output_limit=1000)) as opened:
        yield opened


@pytest.fixture(scope="module")
def node(fleet: Fleet) -> Iterator[Instance]:
    [instance] = fleet.start(image_id="m-sandbox-webuser", count=1, key_pair_name=unique("tk"), init_ssh_key=True)
    yield instance
    fleet.stop([instance])


@pytest.fixture
def ssh_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real OpenSSH client behind a wrapper on PATH that records each time it is run."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "ssh-runs.log"
    wrapper = folder / "ssh"
    wrapper.write_text(f'#!/bin/sh\necho run >> {log}\nexec /usr/bin/ssh "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return log


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_big_file_goes_both_ways_through_openssh_intact(
    fleet: Fleet, node: Instance, tmp_path: Path, ssh_log: Path
) -> None:
    source = tmp_path / "big.bin"
    payload = os.urandom(BIG)
    source.write_bytes(payload)
    source.chmod(0o604)
    seen: list[tuple[int, int]] = []

    fleet.copy_to([node], str(source), "/home/webuser/big.bin", user="webuser",
                  progress=lambda _, done, total: seen.append((done, total)))  # fmt: skip
    back = fleet.copy_from(node, "/home/webuser/big.bin", str(tmp_path / "back.bin"))

    assert runs(ssh_log) == 2
    assert (tmp_path / "back.bin").read_bytes() == payload
    assert stat.S_IMODE((tmp_path / "back.bin").stat().st_mode) == 0o604 and back.bytes == BIG
    assert remote(fleet, node, "stat -c '%U %a' /home/webuser/big.bin").stdout.split() == ["webuser", "604"]
    assert seen[-1] == (BIG, BIG) and len(seen) > 10
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_without_openssh_a_big_file_goes_over_the_open_connection(
    fleet: Fleet, node: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "no-openssh"
    tools.mkdir()
    (tools / "tar").symlink_to(shutil.which("tar") or "/usr/bin/tar")
    monkeypatch.setenv("PATH", str(tools))
    source = tmp_path / "big.bin"
    payload = os.urandom(BIG)
    source.write_bytes(payload)
    fleet.copy_to([node], str(source), "/root/no-openssh.bin")
    fleet.copy_from(node, "/root/no-openssh.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == payload


def test_openssh_checks_the_host_key_this_tool_pinned(
    fleet: Fleet, node: Instance, home: Path, tmp_path: Path, ssh_log: Path
) -> None:
    pins = home / "known_hosts"
    saved = pins.read_text()
    assert node.instance_id in saved
    # Another instance's key in place of this one's: OpenSSH must refuse, not ask or learn.
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    pins.write_text("".join(f"{line.split()[0]} {other}\n" for line in saved.splitlines()))
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(BIG))
    try:
        with pytest.raises(FleetError) as caught:
            fleet.copy_to([node], str(source), "/root/impostor.bin")
    finally:
        pins.write_text(saved)
    assert runs(ssh_log) == 1
    error = caught.value.result[node.instance_id]
    assert isinstance(error, SshError) and "Host key verification failed" in str(error)
    assert remote(fleet, node, "ls -a /root | grep -c pymlsql- || true").stdout.strip() == "0"


def test_a_tree_keeps_its_symlinks_and_empty_folders(fleet: Fleet, node: Instance, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "lib" / "empty").mkdir(parents=True)
    (tree / "lib" / "real.txt").write_text("real\n")
    (tree / "lib" / "link.txt").symlink_to("real.txt")
    (tree / "abs").symlink_to("/etc/hostname")
    name = unique("links")

    fleet.copy_to([node], str(tree), f"/root/{name}")
    listing = remote(fleet, node, f"cd /root/{name} && find . -printf '%y %p %l\\n' | sort").stdout
    fleet.copy_from(node, f"/root/{name}", str(tmp_path / "back"))

    assert listing.splitlines() == [
        "d . ", "d ./lib ", "d ./lib/empty ", "f ./lib/real.txt ", "l ./abs /etc/hostname", "l ./lib/link.txt real.txt"
    ]  # fmt: skip
    back = tmp_path / "back"
    assert os.readlink(back / "lib" / "link.txt") == "real.txt" and (back / "lib" / "link.txt").read_text() == "real\n"
    assert os.readlink(back / "abs") == "/etc/hostname" and (back / "lib" / "empty").is_dir()


def test_a_directory_is_never_merged_into_an_existing_one(fleet: Fleet, node: Instance, tmp_path: Path) -> None:
    tree = tmp_path / "data"
    tree.mkdir()
    (tree / "new.txt").write_text("new\n")
    remote(fleet, node, "mkdir -p /root/merge/data && echo old > /root/merge/data/old.txt")
    with pytest.raises(FleetError) as caught:
        fleet.copy_to([node], str(tree), "/root/merge")
    assert "/root/merge/data already exists" in str(caught.value.result[node.instance_id])
    assert remote(fleet, node, "ls -A /root/merge/data").stdout.split() == ["old.txt"]


@pytest.mark.parametrize("size", [4096, BIG], ids=["open connection", "openssh"])
def test_a_local_tar_that_fails_after_the_whole_stream_leaves_nothing_at_the_target(
    fleet: Fleet, node: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # As when a file cannot be read: tar still writes a whole archive, but says it failed.
    tools = tmp_path / "bin"
    tools.mkdir()
    real = shutil.which("tar") or "/usr/bin/tar"
    (tools / "tar").write_text(f'#!/bin/sh\n{real} "$@" || exit\ncase " $* " in *" -c "*) exit 2 ;; esac\n')
    (tools / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    tree = tmp_path / "failing"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(size))

    with pytest.raises(FleetError) as caught:
        fleet.copy_to([node], str(tree), "/root/")

    assert "cannot read" in str(caught.value.result[node.instance_id])
    assert remote(fleet, node, "ls -a /root | grep -E 'failing|pymlsql-' || true").stdout == ""


def test_an_interrupt_through_the_cancel_event_stops_a_copy_and_leaves_nothing(
    fleet: Fleet, node: Instance, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(BIG))
    cancel = threading.Event()

    def stop_midway(_: str, done: int, total: int) -> None:
        if done > total // 4:
            cancel.set()

    with pytest.raises(KeyboardInterrupt):
        fleet.copy_to([node], str(source), "/root/cancelled.bin", progress=stop_midway, cancel=cancel)
    assert remote(fleet, node, "ls -a /root | grep -E 'cancelled|pymlsql-' || true").stdout == ""


def test_exec_results_keep_only_the_tail_of_long_output(fleet: Fleet, node: Instance) -> None:
    seen: list[str] = []

    class Keep:
        def write(self, source: str, stream: str, text: str) -> None:
            if stream == "stdout":
                seen.append(text)

    result = fleet.exec([node], "seq 1 20000; echo done >&2", sink=Keep())[node.instance_id]

    everything = "".join(f"{n}\n" for n in range(1, 20001))
    assert "".join(seen) == everything  # the sink got all of it
    assert result.truncated and result.stdout == everything[-1000:]  # type: ignore[attr-defined]
    assert result.stderr == "done\n"  # type: ignore[attr-defined]


class Bytes:
    """A stream of given bytes, in place of what an instance sends."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        return self._data.read(min(size, 1000))

    def drain(self, target: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := self.read(1000):
            target.write(chunk)
            count(len(chunk))


def archive_of(*members: tuple[str, str]) -> bytes:
    """A tar of (name, kind) pairs: kind "dir", "file", a symlink's target, or "setuid"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif kind in ("file", "setuid"):
                info.size, info.mode = 1, 0o4775 if kind == "setuid" else 0o664
                archive.addfile(info, io.BytesIO(b"x"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, kind
                archive.addfile(info)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> int:
    unpacker = unpacker_into(folder)
    try:
        relay(Bytes(data), unpacker, Meter(len(data), len(data), lambda done, total: None, None))
        return unpacker.process.returncode
    finally:
        unpacker.close()


def test_what_an_instance_sends_cannot_land_outside_the_target(tmp_path: Path) -> None:
    outside, staging = tmp_path / "outside", tmp_path / "stage" / "in"
    outside.mkdir()
    staging.mkdir(parents=True)
    hostile = archive_of(("item", "dir"), ("item/link", str(outside)), ("item/link/planted", "file"),
                         ("../escape", "file"), (str(tmp_path / "absolute"), "file"))  # fmt: skip
    assert unpack(hostile, staging) != 0
    assert list(outside.iterdir()) == [] and not (tmp_path / "stage" / "escape").exists()
    assert not (tmp_path / "absolute").exists()


def test_unpacked_files_keep_their_modes_without_setuid(tmp_path: Path) -> None:
    assert unpack(archive_of(("tool", "setuid"), ("shared.txt", "file")), tmp_path) == 0
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o664


def test_an_unknown_user_is_named_for_copies_both_ways(fleet: Fleet, node: Instance, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(FleetError) as caught:
        fleet.copy_to([node], str(tmp_path / "x"), "x", user="nosuchuser")
    assert "no user 'nosuchuser'" in str(caught.value.result[node.instance_id])
    with pytest.raises(SshError, match="no user 'nosuchuser'"):
        fleet.copy_from(node, "x", str(tmp_path), user="nosuchuser")
