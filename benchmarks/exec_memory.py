"""Peak memory of a Python process while a script prints SIZE bytes through Fleet.exec.

Usage (run.py does this with the sandbox's settings in the environment):
    python benchmarks/exec_memory.py INSTANCE_ID KNOWN_HOSTS KEY_DIR SIZE

Prints one JSON object: bytes streamed, RSS before, peak RSS during the exec, and seconds.
A process of its own, so the peak is this exec's and not an earlier benchmark's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pymlsql_magics.core import EcsConfig, Fleet


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class CountingSink:
    def __init__(self) -> None:
        self.characters = 0

    def write(self, source: str, stream: str, text: str) -> None:
        self.characters += len(text)


def main() -> int:
    instance_id, known_hosts, key_dir, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Fleet(EcsConfig.from_env(known_hosts=known_hosts, key_dir=key_dir)) as fleet:
        instances = fleet.get([instance_id])
        fleet.exec(instances, "true")  # connection open, modules loaded
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        sink = CountingSink()
        started = time.perf_counter()
        script = f"yes 'a line of benchmark output, as a chatty build prints it' | head -c {size}"
        result = fleet.exec(instances, script, sink=sink)
        seconds = time.perf_counter() - started
        peak = _status("VmHWM")
    print(json.dumps({
        "streamed": sink.characters,
        "kept": len(result[instance_id].stdout),  # type: ignore[attr-defined]
        "rss_before": before,
        "peak": peak,
        "seconds": seconds,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
