"""Benchmarks against the sandbox, each figure beside its reference measured in the same run.

Usage: .venv/bin/python benchmarks/run.py [--smoke] [--json FILE] [--work-dir DIR]

The sandbox's disks and the files copied live in --work-dir, by default /dev/shm (memory).

Every row of the README's table: fan-out exec over open and fresh connections (reference:
OpenSSH `ssh` to every instance in parallel, through ControlMaster connections for the open
ones), copies of one big file and of a tree of small files both ways (reference: OpenSSH `scp`
and `scp -r` to the same instance), the delay from the sandbox's "SSH ready" to Fleet.start
returning, DescribeInstances calls per poll, peak memory while a script prints 1 GiB, and a
100-instance start, how long `pymlsql --help` and `pymlsql sandbox status` take to start (row
11, beside the interpreter's own start), and one upload to 8 instances of a VPC through a modelled
40 Mbit/s client link (row 12, beside a copy to one of them), and 256 MiB through a port forward
(row 13, beside `ssh -L`), and copies over 10 Mbit/s links with `--compress auto` (row 14,
beside scp). Timed figures are the median of 3
runs. Rows 1 to 8 and 11 compare tools on one path, so their sandbox runs with `--bandwidth-caps
off` (as root the path is still the public address's relay into the instance's own network). Rows
9 and 10 measure the caps themselves: an instance's InternetMaxBandwidthOut/In, and a modelled
client link shared by two uploads; row 12 runs through such a link.
`--smoke` runs every row small, as CI does: it checks the harness, not the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pymlsql_magics.core import EcsConfig, Fleet, Instance
from pymlsql_magics.sandbox import Sandbox, Timings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bandwidth  # noqa: E402 - a sibling module of this script
import command_line  # noqa: E402 - a sibling module of this script

_MiB = 1 << 20
_HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    number: int
    what: str
    value: float
    unit: str
    reference: str
    target: str
    passed: bool


@dataclass
class Sizes:
    fan_out: int  # instances for rows 1, 2 and 6
    big_file: int  # bytes, row 3
    tree_dirs: int  # row 4: folders of 100 files of 4 KiB
    printed: int  # bytes, row 7
    crowd: int  # instances, row 8
    capped: int  # bytes through a 10 Mbit/s cap, rows 9 and 10
    relayed: int  # bytes, row 12
    relayed_to: int  # instances, row 12
    forwarded: int  # bytes, row 13
    slow: int  # bytes through a 10 Mbit/s link, row 14
    calls: int  # exec-shell calls in a shell loop, row 15
    repeats: int


FULL = Sizes(fan_out=32, big_file=512 * _MiB, tree_dirs=50, printed=1 << 30, crowd=100, capped=8_000_000,
             relayed=32 * _MiB, relayed_to=8, forwarded=256 * _MiB,
             slow=32 * _MiB, calls=15, repeats=3)
SMOKE = Sizes(fan_out=4, big_file=16 * _MiB, tree_dirs=2, printed=16 * _MiB, crowd=8, capped=1_000_000,
              relayed=2 * _MiB, relayed_to=3, forwarded=8 * _MiB,
              slow=_MiB, calls=2, repeats=1)


def _fleet(sandbox: Sandbox, work: Path, **settings: object) -> Fleet:
    config = EcsConfig.from_env(
        sandbox.environment(), known_hosts=str(work / "known_hosts"), key_dir=str(work / "keys"), **settings
    )
    return Fleet(config)


def _openssh_options(key: Path) -> list[str]:
    return ["-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip


# The references dial what the tool dials from this machine, outside the instances' VPC: their
# public addresses, so each row compares two clients on one path.


def _openssh_parallel(instances: list[Instance], key: Path, command: str) -> float:
    options = " ".join(_openssh_options(key))
    script = " ".join(f"ssh {options} root@{i.public_ip} '{command}' &" for i in instances)
    started = time.perf_counter()
    subprocess.run(["bash", "-c", f"{script} wait"], check=True)
    return time.perf_counter() - started


def _openssh_multiplexed(instances: list[Instance], key: Path, command: str, repeats: int) -> float:
    """OpenSSH with its connections open: a ControlMaster per instance, then `ssh` through each in
    parallel (`&` + `wait`); the median of `repeats` runs."""
    options = _openssh_options(key)
    with tempfile.TemporaryDirectory(prefix="mux-", dir="/tmp") as sockets:  # socket paths are short
        via = {i.instance_id: ["-o", f"ControlPath={sockets}/{i.instance_id}"] for i in instances}
        try:
            for i in instances:
                master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N"]
                subprocess.run(["ssh", *options, *via[i.instance_id], *master, f"root@{i.public_ip}"], check=True)
            script = " ".join(f"ssh {' '.join(options + via[i.instance_id])} root@{i.public_ip} '{command}' &"
                              for i in instances)  # fmt: skip
            subprocess.run(["bash", "-c", f"{script} wait"], check=True)  # each connection's first session
            return _median_of(repeats, lambda _: subprocess.run(["bash", "-c", f"{script} wait"], check=True))
        finally:
            for i in instances:
                subprocess.run(["ssh", *options, *via[i.instance_id], "-O", "exit", f"root@{i.public_ip}"],
                               capture_output=True)  # fmt: skip


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _median_of(repeats: int, call: Callable[[int], object]) -> float:
    return statistics.median(_timed(lambda n=attempt: call(n)) for attempt in range(repeats))


def _make_tree(top: Path, folders: int) -> None:
    """`folders` folders of 100 files of 4 KiB."""
    for folder in range(folders):
        (top / f"dir{folder:02}").mkdir(parents=True)
        for number in range(100):
            (top / f"dir{folder:02}" / f"file{number:03}.bin").write_bytes(os.urandom(4096))


def _scp(key: Path, *arguments: str) -> None:
    subprocess.run(["scp", "-q", *_openssh_options(key), *arguments], check=True)


def _start_latency(sandbox: Sandbox, fleet: Fleet, repeats: int) -> list[float]:
    """Fleet.start of 4 instances `repeats` times: seconds from the last SSH ready to the return."""
    delays = []
    for _ in range(repeats):
        instances = fleet.start(image_id="m-sandbox-webuser", count=4, key_pair_name="bench")
        returned_at = time.time()
        events = sandbox.log()["instances"]
        delays.append(returned_at - max(events[i.instance_id]["ssh_ready_at"] for i in instances))
        fleet.stop(instances)
    return delays


def run(sizes: Sizes, work: Path) -> list[Row]:
    count, repeats = sizes.fan_out, sizes.repeats
    timings = Timings(pending=1.0, starting=1.0, stopping=0.3, boot=1.0)
    rows: list[Row] = []
    with Sandbox(work / "sandbox", timings=timings, bandwidth_caps=False).start() as sandbox:
        fleet = _fleet(sandbox, work, max_parallel=64)
        started_at = time.time()
        instances = fleet.start(image_id="m-sandbox-webuser", count=count, key_pair_name="bench",
                                init_ssh_key=True)  # fmt: skip
        rows += _startup_rows(sandbox, repeats)
        log = sandbox.log()
        polls = [r for r in log["requests"] if r["action"] == "DescribeInstances" and r["time"] >= started_at]
        mentioned = {len(r["instance_ids"]) for r in polls}
        rows.append(Row(6, f"DescribeInstances per poll for {count} instances", 1.0 if mentioned == {count} else
                        float(max(mentioned or {0})) / count, "calls", f"{len(polls)} polls in the request log",
                        "1, independent of N", mentioned == {count}))  # fmt: skip

        delays = _start_latency(sandbox, fleet, repeats)
        delay = statistics.median(delays)
        rows.append(Row(5, "start returns after the last instance's SSH ready", delay, "s",
                        f"sandbox event log; {len(delays)} starts of 4: " + ", ".join(f"{d:.2f}" for d in delays),
                        "median <= 0.5 s", delay <= 0.5))  # fmt: skip

        key = work / "keys" / "bench"
        fleet.exec(instances, "true")  # connections open
        warm = statistics.median(_timed(lambda: fleet.exec(instances, "sleep 1")) for _ in range(repeats))
        multiplexed = _openssh_multiplexed(instances, key, "sleep 1", repeats)
        rows.append(Row(1, f"exec sleep 1 on {count} instances, connections open", warm, "s",
                        f"OpenSSH, connections open (ControlMaster) {multiplexed:.2f} s", "<= 1.15 s",
                        warm <= 1.15))  # fmt: skip

        fresh_times, ssh_times = [], []
        for _ in range(repeats):
            cold = _fleet(sandbox, work, max_parallel=64)
            fresh_times.append(_timed(lambda f=cold: f.exec(instances, "sleep 1")))
            cold.close()
            ssh_times.append(_openssh_parallel(instances, key, "sleep 1"))
        fresh, openssh = statistics.median(fresh_times), statistics.median(ssh_times)
        rows.append(Row(2, f"exec sleep 1 on {count} instances, fresh connections", fresh, "s",
                        f"OpenSSH in parallel {openssh:.2f} s", "<= 1.0x OpenSSH", fresh <= openssh))  # fmt: skip

        rows += _command_line_rows(sandbox, instances[0], key, work, sizes)
        rows += _copy_rows(fleet, instances[0], key, work, sizes)
        rows.append(_forward_row(fleet, instances[0], key, sizes))
        rows.append(_memory_row(sandbox, instances[0], work, sizes.printed))
        fleet.stop(instances)
        fleet.close()
        _wait_for_disks_removed(work / "sandbox", instances)  # row 8 boots alone, not beside their teardown

        before = time.time()
        crowd = _fleet(sandbox, work, max_parallel=64)
        many = crowd.start(image_id="m-sandbox-webuser", count=sizes.crowd, key_pair_name="bench")
        after = time.time()
        log = sandbox.log()
        run_calls = [r for r in log["requests"] if r["action"] == "RunInstances" and r["time"] >= before]
        events = [log["instances"][i.instance_id] for i in many]
        spread = max(e["ssh_ready_at"] for e in events) - min(e["running_at"] for e in events)
        limit = timings.boot + 2.0
        rows.append(Row(8, f"start {sizes.crowd} instances: all SSH-ready after Running", spread, "s",
                        f"{len(run_calls)} RunInstances; start returned in {after - before:.1f} s",
                        f"1 call; <= boot delay + 2 s = {limit:g} s",
                        len(run_calls) == 1 and spread <= limit))  # fmt: skip
        crowd.stop(many)
        crowd.close()
    if os.geteuid() == 0:  # the caps exist only where the sandbox enforces its network
        rows += _bandwidth_rows(work, timings, sizes)
        rows += _relay_rows(work, timings, sizes)
        rows += _slow_link_rows(work, timings, sizes)
    return sorted(rows, key=lambda row: row.number)


def _command_line_rows(sandbox: Sandbox, instance: Instance, key: Path, work: Path, sizes: Sizes) -> list[Row]:
    """Rows 15 and 16: `pymlsql` called from shell scripts, in a home of its own with the fleet's key."""
    home = work / "cli-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(key, home / ".ssh" / key.name)
    env = command_line.environment(sandbox.environment(), home)
    try:
        found = command_line.exec_rows(env, instance.instance_id, instance.public_ip, key, sizes.calls, sizes.repeats)
        found += command_line.cluster_rows(env, sizes.repeats)
    finally:
        subprocess.run([str(Path(sys.executable).parent / "pymlsql"), "agent", "stop"], env=env, capture_output=True)
    return [Row(**row) for row in found]


def _startup_rows(sandbox: Sandbox, repeats: int) -> list[Row]:
    """Row 11: how long the command line takes to start, beside the interpreter's own start."""
    pymlsql = str(Path(sys.executable).parent / "pymlsql")

    def wall(*argv: str) -> float:
        return _median_of(max(5, repeats), lambda _: subprocess.run(argv, capture_output=True, check=False))

    python = wall(sys.executable, "-c", "pass")
    rows = []
    for what, argv in (("pymlsql --help", [pymlsql, "--help"]),
                       ("pymlsql sandbox status", [pymlsql, "sandbox", "status", "--state-dir",
                                                   str(sandbox.state_dir)])):  # fmt: skip
        took = wall(*argv)
        rows.append(Row(11, f"{what}: wall time, median of {max(5, repeats)}", took, "s",
                        f"python3 -c pass {python:.2f} s", "<= 0.25 s", took <= 0.25))  # fmt: skip
    return rows


def _within(rate: float, cap: float) -> bool:
    return abs(rate - cap) <= 0.2 * cap


def _bandwidth_rows(work: Path, timings: Timings, sizes: Sizes) -> list[Row]:
    """Rows 9 and 10: the public caps hold (each within 20 %), as ECS applies them."""
    rows = []
    link = (4.0, 100.0)
    with Sandbox(work / "capped", timings=timings, client_link=link).start() as sandbox:
        fleet = _fleet(sandbox, work / "capped")
        key = work / "capped" / "keys" / "bench"
        instances = fleet.start(image_id="debian_12_x64_20G_alibase_20240101.vhd", count=2, key_pair_name="bench",
                                init_ssh_key=True, bandwidth=10)  # fmt: skip
        rates = [statistics.median(f(key, instances[0], sizes.capped).mbit_per_second for _ in range(sizes.repeats))
                 for f in (bandwidth.download, bandwidth.upload)]  # fmt: skip
        # Upload through the 4 Mbit/s client link is its own figure: the instance's inbound 10 does not bind.
        down, _ = rates
        rows.append(Row(9, "public download, InternetMaxBandwidthOut 10 Mbit/s", down, "Mbit/s",
                        f"OpenSSH, {sizes.capped / 1e6:g} MB", "10 Mbit/s within 20 %", _within(down, 10)))  # fmt: skip
        shared = statistics.median(bandwidth.parallel_upload(key, instances, sizes.capped // 2).mbit_per_second
                                   for _ in range(sizes.repeats))  # fmt: skip
        rows.append(Row(10, f"client link {link[0]:g}/{link[1]:g}: 2 uploads at once, total", shared, "Mbit/s",
                        f"OpenSSH, 2 x {sizes.capped / 2e6:g} MB; one upload alone {rates[1]:.2f} Mbit/s",
                        f"{link[0]:g} Mbit/s within 20 %",
                        _within(shared, link[0]) and _within(rates[1], link[0])))  # fmt: skip
        fleet.stop(instances)
        fleet.close()
    with Sandbox(work / "capped-in", timings=timings).start() as sandbox:
        fleet = _fleet(sandbox, work / "capped-in")
        key = work / "capped-in" / "keys" / "bench"
        (instance,) = fleet.start(image_id="debian_12_x64_20G_alibase_20240101.vhd", key_pair_name="bench",
                                  init_ssh_key=True, bandwidth=5)  # fmt: skip
        up = statistics.median(bandwidth.upload(key, instance, sizes.capped).mbit_per_second
                               for _ in range(sizes.repeats))  # fmt: skip
        rows.append(Row(9, "public upload, InternetMaxBandwidthIn 10 Mbit/s (ECS's default)", up, "Mbit/s",
                        f"OpenSSH, {sizes.capped / 1e6:g} MB", "10 Mbit/s within 20 %", _within(up, 10)))  # fmt: skip
        fleet.stop([instance])
        fleet.close()
    return rows


# Sends `size` bytes to each connection on 127.0.0.1:PORT of the instance, then closes it.
_SENDER = """
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
block = bytes(1 << 20)
server = socket.create_server(("127.0.0.1", port))
while True:
    peer, _ = server.accept()
    with peer:
        left = size
        try:
            while left:
                left -= peer.send(memoryview(block)[: min(left, len(block))])
        except OSError:
            pass  # a probe that only checked the port is open
"""


def _forward_row(fleet: Fleet, instance: Instance, key: Path, sizes: Sizes) -> Row:
    """Row 13: bytes through a forward to a port of the instance, beside OpenSSH's `ssh -L`."""
    port, size = 9109, sizes.forwarded
    fleet.exec([instance], f"cat > /root/sender.py <<'EOF'\n{_SENDER}EOF\n"
               f"nohup python3 /root/sender.py {port} {size} >/dev/null 2>&1 </dev/null &\nsleep 0.5")  # fmt: skip

    def pull(local_port: int) -> None:
        got = 0
        with socket.create_connection(("127.0.0.1", local_port)) as connection:
            while chunk := connection.recv(1 << 20):
                got += len(chunk)
        assert got == size, got

    forward = fleet.forward(instance, port)
    ours = _median_of(sizes.repeats, lambda _: pull(forward.local_port))
    forward.close()
    local = _free_port()
    tunnel = subprocess.Popen(["ssh", *_openssh_options(key), "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{port}",
                               f"root@{instance.public_ip}"])  # fmt: skip
    try:
        _wait_for_port(local)
        theirs = _median_of(sizes.repeats, lambda _: pull(local))
    finally:
        tunnel.terminate()
        tunnel.wait()
    fleet.exec([instance], "pkill -f /root/sender.py; rm -f /root/sender.py")
    megabytes = size / _MiB
    return Row(13, f"{megabytes:.0f} MiB from the instance through a port forward", megabytes / ours, "MB/s",
               f"ssh -L {megabytes / theirs:.0f} MB/s ({theirs / ours:.2f}x its rate)", ">= 0.8x ssh -L",
               ours <= theirs / 0.8)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _relay_rows(work: Path, timings: Timings, sizes: Sizes) -> list[Row]:
    """Row 12: one upload for a fleet through a modelled 40 Mbit/s client link, beside one instance's
    copy; the bytes the client sent are counted by the sandbox's link, not by the tool."""
    link = (40.0, 100.0)
    count, size, repeats = sizes.relayed_to, sizes.relayed, sizes.repeats
    with Sandbox(work / "relay", timings=timings, client_link=link).start() as sandbox:
        fleet = _fleet(sandbox, work / "relay", max_parallel=64)
        # 100 Mbit/s each way at every instance (inbound follows outbound above 10): the client's link binds.
        instances = fleet.start(image_id="m-sandbox-webuser", count=count, key_pair_name="bench",
                                init_ssh_key=True, bandwidth=100)  # fmt: skip
        payload = work / "relayed.bin"
        payload.write_bytes(os.urandom(size))
        fleet.exec(instances, "true")  # connections open, as in a notebook that ran cells before

        def sent_during(call: Callable[[], object]) -> tuple[float, float]:
            before = sandbox.log()["client_link"]["up"]
            took = _timed(call)
            return took, (sandbox.log()["client_link"]["up"] - before) / size

        one = statistics.median(sent_during(lambda: fleet.copy_to(instances[:1], str(payload), "/root/one.bin"))[0]
                                for _ in range(repeats))  # fmt: skip
        relayed = [sent_during(lambda: fleet.copy_to(instances, str(payload), "/root/all.bin")) for _ in range(repeats)]
        took, sent = statistics.median(t for t, _ in relayed), statistics.median(s for _, s in relayed)
        # Today's way once, for scale: a copy from this machine to each instance.
        direct_took, direct_sent = sent_during(lambda: fleet.copy_to(instances, str(payload), "/root/direct.bin",
                                                                     relay=False))  # fmt: skip
        what = f"copy {size / _MiB:g} MiB to {count} instances of a VPC, client link {link[0]:g} Mbit/s"
        rows = [
            Row(12, what, took, "s", f"one instance {one:.2f} s ({took / one:.2f}x); direct to each "
                f"{direct_took:.1f} s", "<= 1.5x one instance's copy", took <= 1.5 * one),
            Row(12, "  bytes the client sent, per byte of the file", sent, "x", f"direct to each {direct_sent:.2f}x",
                "<= 1.2x", sent <= 1.2),
        ]  # fmt: skip
        fleet.stop(instances)
        fleet.close()
    return rows


def _csv(path: Path, size: int) -> None:
    """Text-like data: rows of a sensor log, as CSV."""
    with path.open("wb") as out:
        written, n = 0, 0
        while written < size:
            line = f"{n},sensor-{n % 97},{(n * 7919) % 10007 / 3:.4f},2026-12-03T12:{n % 60:02}:{n % 59:02}Z\n".encode()
            out.write(line[: size - written])
            written, n = written + len(line), n + 1


def _slow_link_rows(work: Path, timings: Timings, sizes: Sizes) -> list[Row]:
    """Row 14: copies over 10 Mbit/s (the client's uplink, the instance's InternetMaxBandwidthOut for
    downloads) with `--compress auto`, beside scp of the same file."""
    size, repeats = sizes.slow, sizes.repeats
    with Sandbox(work / "slow", timings=timings, client_link=(10.0, 100.0)).start() as sandbox:
        fleet = _fleet(sandbox, work / "slow")
        key = work / "slow" / "keys" / "bench"
        (instance,) = fleet.start(image_id="m-sandbox-webuser", key_pair_name="bench", init_ssh_key=True,
                                  bandwidth=10)  # fmt: skip
        host = f"root@{instance.public_ip}"
        text, noise, down = work / "slow.csv", work / "slow.bin", work / "slow-down"
        _csv(text, size)
        noise.write_bytes(os.urandom(size))
        down.mkdir()
        megabytes = size / _MiB

        def up(local: Path) -> tuple[float, float]:
            theirs = _median_of(repeats, lambda n: _scp(key, str(local), f"{host}:/root/scp-{local.name}"))
            ours = _median_of(repeats, lambda n: fleet.copy_to([instance], str(local), f"/root/our-{local.name}"))
            return ours, theirs

        ours, theirs = up(text)
        rows = [Row(14, f"copy {megabytes:g} MiB of CSV up, client link 10 Mbit/s", ours, "s",
                    f"scp {theirs:.1f} s ({theirs / ours:.1f}x faster)", ">= 3x faster than scp", theirs >= 3 * ours)]
        theirs = _median_of(repeats, lambda n: _scp(key, f"{host}:/root/scp-{text.name}", str(down / f"scp-{n}")))
        ours = _median_of(repeats, lambda n: fleet.copy_from(instance, f"/root/our-{text.name}",
                                                             str(down / f"our-{n}")))  # fmt: skip
        _same_bytes(text, down / "our-0")
        rows.append(Row(14, f"copy {megabytes:g} MiB of CSV down, public 10 Mbit/s", ours, "s",
                        f"scp {theirs:.1f} s ({theirs / ours:.1f}x faster)", ">= 3x faster than scp",
                        theirs >= 3 * ours))
        ours, theirs = up(noise)
        rows.append(Row(14, f"copy {megabytes:g} MiB of random bytes up, client link 10 Mbit/s", ours, "s",
                        f"scp {theirs:.1f} s ({ours / theirs:.2f}x its time)", "not slower than scp (2 %)",
                        ours <= 1.02 * theirs))
        fleet.stop([instance])
        fleet.close()
    return rows


def _wait_for_disks_removed(state: Path, instances: list[Instance]) -> None:
    """The sandbox releases instances in the background: their machines halt, their disks go."""
    deadline = time.monotonic() + 60
    while any((state / "instances" / i.instance_id).exists() for i in instances) and time.monotonic() < deadline:
        time.sleep(0.1)


def _copy_rows(fleet: Fleet, instance: Instance, key: Path, work: Path, sizes: Sizes) -> list[Row]:
    host = f"root@{instance.public_ip}"
    big = work / "big.bin"
    with big.open("wb") as out:
        for _ in range(sizes.big_file // _MiB):
            out.write(os.urandom(_MiB))
    tree = work / "tree"
    _make_tree(tree, sizes.tree_dirs)
    down = work / "down"
    down.mkdir()
    fleet.exec([instance], "mkdir -p /root/bench")
    os.sync()  # what was just written is on disk, not competing with the copies for it
    repeats = sizes.repeats

    files = sizes.tree_dirs * 100
    scp_up = _median_of(repeats, lambda n: _scp(key, "-r", str(tree), f"{host}:/root/bench/scp-tree-{n}"))
    our_up = _median_of(repeats, lambda n: fleet.copy_to([instance], str(tree), f"/root/bench/our-tree-{n}"))
    scp_down = _median_of(repeats, lambda n: _scp(key, "-r", f"{host}:/root/bench/scp-tree-{n}",
                                                  str(down / f"scp-tree-{n}")))  # fmt: skip
    our_down = _median_of(repeats, lambda n: fleet.copy_from(instance, f"/root/bench/our-tree-{n}",
                                                             str(down / f"our-tree-{n}")))  # fmt: skip
    _same_tree(tree, down / "our-tree-0")
    rows = []
    for direction, ours, theirs in (("up", our_up, scp_up), ("down", our_down, scp_down)):
        rows.append(Row(4, f"copy {files} files of 4 KiB in {sizes.tree_dirs} folders {direction}", ours, "s",
                        f"scp -r {theirs:.2f} s ({theirs / ours:.1f}x faster)", ">= 5x faster than scp -r",
                        theirs >= 5 * ours))  # fmt: skip
    os.sync()  # the tree's files reach the disk before the big file's writes compete with them
    scp_up = _median_of(repeats, lambda n: _scp(key, str(big), f"{host}:/root/bench/scp-{n}.bin"))
    our_up = _median_of(repeats, lambda n: fleet.copy_to([instance], str(big), f"/root/bench/our-{n}.bin"))
    scp_down = _median_of(repeats, lambda n: _scp(key, f"{host}:/root/bench/scp-{n}.bin", str(down / f"scp-{n}")))
    our_down = _median_of(repeats, lambda n: fleet.copy_from(instance, f"/root/bench/our-{n}.bin",
                                                             str(down / f"our-{n}")))  # fmt: skip
    _same_bytes(big, down / "our-0")
    megabytes = sizes.big_file / _MiB
    for direction, ours, theirs in (("up", our_up, scp_up), ("down", our_down, scp_down)):
        rows.append(Row(3, f"copy one {megabytes:.0f} MiB file {direction}", megabytes / ours, "MB/s",
                        f"scp {megabytes / theirs:.0f} MB/s ({ours / theirs:.2f}x its time)",
                        ">= 1.0x scp's throughput", ours <= theirs))  # fmt: skip

    fleet.exec([instance], "rm -rf /root/bench")
    shutil.rmtree(down)
    return rows


def _same_bytes(expected: Path, got: Path) -> None:
    subprocess.run(["cmp", "--quiet", str(expected), str(got)], check=True)


def _same_tree(expected: Path, got: Path) -> None:
    subprocess.run(["diff", "-r", "--brief", str(expected), str(got)], check=True)


def _memory_row(sandbox: Sandbox, instance: Instance, work: Path, size: int) -> Row:
    probe = subprocess.run(
        [sys.executable, str(_HERE / "exec_memory.py"), instance.instance_id, str(work / "known_hosts"),
         str(work / "keys"), str(size)],
        env={**os.environ, **sandbox.environment()}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    found = json.loads(probe.stdout)
    growth = (found["peak"] - found["rss_before"]) / _MiB
    streamed = found["streamed"] / _MiB
    return Row(7, f"peak RSS growth while a script prints {size / _MiB:.0f} MiB", growth, "MiB",
               f"{streamed:.0f} MiB streamed in {found['seconds']:.1f} s; RSS before "
               f"{found['rss_before'] / _MiB:.0f} MiB", "<= 64 MiB",
               growth <= 64 and found["streamed"] == size)  # fmt: skip


def _default_work_dir() -> str:
    """Memory (tmpfs) when there is one: the rows compare tools, not the disk of the machine they run on.

    Creating a file on a virtual machine's disk can cost a millisecond, which both sides pay, and
    which varies from run to run with what the disk is still writing back.
    """
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every row small: checks the harness")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to save the rows")
    parser.add_argument("--work-dir", default=_default_work_dir(),
                        help="where the sandbox's disks and the test files go (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pymlsql-bench-", dir=args.work_dir) as folder:
        rows = run(SMOKE if args.smoke else FULL, Path(folder))
    print(f"{'#':>2}  {'what':<56} {'value':>12}  {'reference':<48} {'target':<32} result")
    for row in rows:
        print(f"{row.number:>2}  {row.what:<56} {row.value:>7.2f} {row.unit:<5} {row.reference:<48} "
              f"{row.target:<32} {'pass' if row.passed else 'FAIL'}")  # fmt: skip
    machine = {
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "smoke": args.smoke,
    }
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
