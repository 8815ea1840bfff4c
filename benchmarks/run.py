"""Benchmarks against the sandbox, each figure beside its reference measured in the same run.

Usage: .venv/bin/python benchmarks/run.py [--smoke] [--json FILE]

Rows measured so far (see the README's table): fan-out exec over open and fresh connections
(reference: OpenSSH `ssh` to every instance in parallel), the delay from the sandbox's "SSH
ready" to Fleet.start returning, DescribeInstances calls per poll, and a 100-instance start.
`--smoke` runs every row on a few instances, as CI does: it checks the harness, not the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pymlsql_magics.core import EcsConfig, Fleet
from pymlsql_magics.sandbox import Sandbox, Timings


@dataclass
class Row:
    number: int
    what: str
    value: float
    unit: str
    reference: str
    target: str
    passed: bool


def _fleet(sandbox: Sandbox, work: Path, **settings: object) -> Fleet:
    config = EcsConfig.from_env(
        sandbox.environment(), known_hosts=str(work / "known_hosts"), key_dir=str(work / "keys"), **settings
    )
    return Fleet(config)


def _openssh_parallel(instances: list, key: Path, command: str) -> float:
    script = " ".join(
        f"ssh -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o LogLevel=ERROR root@{i.private_ip} '{command}' &"
        for i in instances
    )
    started = time.perf_counter()
    subprocess.run(["bash", "-c", f"{script} wait"], check=True)
    return time.perf_counter() - started


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run(smoke: bool) -> list[Row]:
    count = 4 if smoke else 32
    big = 8 if smoke else 100
    timings = Timings(pending=1.0, starting=1.0, stopping=0.3, boot=1.0)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pymlsql-bench-") as folder:
        work = Path(folder)
        with Sandbox(work / "sandbox", timings=timings).start() as sandbox:
            fleet = _fleet(sandbox, work, max_parallel=64)
            started_at = time.time()
            instances = fleet.start(image_id="m-sandbox-webuser", count=count, key_pair_name="bench",
                                    init_ssh_key=True)  # fmt: skip
            returned_at = time.time()
            log = sandbox.log()
            ready_at = max(log["instances"][i.instance_id]["ssh_ready_at"] for i in instances)
            polls = [r for r in log["requests"] if r["action"] == "DescribeInstances" and r["time"] >= started_at]
            mentioned = {len(r["instance_ids"]) for r in polls}
            rows.append(Row(5, "start returns after the last instance's SSH ready", returned_at - ready_at, "s",
                            "sandbox event log", "<= 0.5 s", returned_at - ready_at <= 0.5))  # fmt: skip
            rows.append(Row(6, f"DescribeInstances per poll for {count} instances", 1.0 if mentioned == {count} else
                            float(max(mentioned or {0})) / count, "calls", f"{len(polls)} polls in the request log",
                            "1, independent of N", mentioned == {count}))  # fmt: skip

            fleet.exec(instances, "true")  # connections open
            warm = statistics.median(_timed(lambda: fleet.exec(instances, "sleep 1")) for _ in range(3))
            rows.append(Row(1, f"exec sleep 1 on {count} instances, connections open", warm, "s", "-",
                            "<= 1.15 s", warm <= 1.15))  # fmt: skip

            key = work / "keys" / "bench"
            fresh_times, ssh_times = [], []
            for _ in range(3):
                cold = _fleet(sandbox, work, max_parallel=64)
                fresh_times.append(_timed(lambda f=cold: f.exec(instances, "sleep 1")))
                cold.close()
                ssh_times.append(_openssh_parallel(instances, key, "sleep 1"))
            fresh, openssh = statistics.median(fresh_times), statistics.median(ssh_times)
            rows.append(Row(2, f"exec sleep 1 on {count} instances, fresh connections", fresh, "s",
                            f"OpenSSH in parallel {openssh:.2f} s", "<= 1.0x OpenSSH", fresh <= openssh))  # fmt: skip
            fleet.stop(instances)
            fleet.close()

            before = time.time()
            crowd = _fleet(sandbox, work, max_parallel=64)
            many = crowd.start(image_id="m-sandbox-webuser", count=big, key_pair_name="bench")
            after = time.time()
            log = sandbox.log()
            run_calls = [r for r in log["requests"] if r["action"] == "RunInstances" and r["time"] >= before]
            events = [log["instances"][i.instance_id] for i in many]
            spread = max(e["ssh_ready_at"] for e in events) - min(e["running_at"] for e in events)
            limit = timings.boot + 2.0
            rows.append(Row(8, f"start {big} instances: all SSH-ready after Running", spread, "s",
                            f"{len(run_calls)} RunInstances; start returned in {after - before:.1f} s",
                            f"1 call; <= boot delay + 2 s = {limit:g} s",
                            len(run_calls) == 1 and spread <= limit))  # fmt: skip
            crowd.stop(many)
            crowd.close()
    return sorted(rows, key=lambda row: row.number)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few instances only: checks the harness")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to save the rows")
    args = parser.parse_args()
    rows = run(args.smoke)
    print(f"{'#':>2}  {'what':<52} {'value':>9}  {'reference':<40} {'target':<28} result")
    for row in rows:
        print(f"{row.number:>2}  {row.what:<52} {row.value:>7.2f} {row.unit:<2} {row.reference:<40} "
              f"{row.target:<28} {'pass' if row.passed else 'FAIL'}")  # fmt: skip
    machine = {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke}
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
