"""Rows 15 and 16: the `pymlsql` command as shell scripts call it, beside OpenSSH in the same run.

Row 15 times `pymlsql exec-shell` of `true` called again and again from a shell, as scripts do,
against `ssh root@ADDRESS true` (a fresh connection each time, no ControlMaster) to the same
instance; and the first call of a session (no agent running, as after its idle time) against the
same `ssh`. Row 16 times examples/cluster.sh end to end against benchmarks/cluster_openssh.sh, its
steps written with ssh and scp, each run starting with no agent.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
_BIN = Path(os.environ.get("VIRTUAL_ENV", _REPO / ".venv")) / "bin"


def environment(sandbox_env: dict[str, str], home: Path) -> dict[str, str]:
    """A user's shell against the sandbox: the venv's `pymlsql` first on PATH, a home of its own."""
    return {**sandbox_env, "PATH": f"{_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
            "LANG": "C.UTF-8", "PYMLSQL_METADATA_ENDPOINT": "off"}  # fmt: skip


def _wall(argv: list[str], env: dict[str, str], **options: Any) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    return time.perf_counter() - started


def _stop_agent(env: dict[str, str]) -> None:
    subprocess.run([str(_BIN / "pymlsql"), "agent", "stop"], env=env, check=True, capture_output=True)


def exec_rows(env: dict[str, str], instance_id: str, address: str, key: Path, calls: int,
              repeats: int) -> list[dict[str, Any]]:  # fmt: skip
    """Row 15, as dicts of the Row fields."""
    script = Path(env["HOME"]) / "true.sh"
    script.write_text("true\n")
    ours = [str(_BIN / "pymlsql"), "exec-shell", "--instance-id", instance_id, "--script-file", str(script)]
    openssh = ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{address}", "true"]  # fmt: skip
    _wall(ours, env)  # the instance's host key is pinned, and the agent remembers it, as after any use
    loop, reference = [], []
    for _ in range(calls):  # alternated, so both see the machine alike
        loop.append(_wall(ours, env))
        reference.append(_wall(openssh, env))
    first, first_reference = [], []
    for _ in range(repeats):
        _stop_agent(env)
        first.append(_wall(ours, env))
        first_reference.append(_wall(openssh, env))
    alone = [_wall(ours, {**env, "PYMLSQL_AGENT": "0"}) for _ in range(repeats)]
    median, ssh = statistics.median(loop), statistics.median(reference)
    first_median, first_ssh = statistics.median(first), statistics.median(first_reference)
    return [
        {"number": 15, "what": f"exec-shell of true, {calls} calls in a shell loop: median wall time",
         "value": median, "unit": "s",
         "reference": f"ssh root@ADDRESS true, fresh connections: {ssh:.3f} s ({median / ssh:.2f}x); "
                      f"without the agent (PYMLSQL_AGENT=0): {statistics.median(alone):.2f} s",
         "target": "<= 1.0x ssh", "passed": median <= ssh},
        {"number": 15, "what": f"exec-shell of true, first call of a session (no agent running), median of {repeats}",
         "value": first_median, "unit": "s", "reference": f"ssh: {first_ssh:.3f} s ({first_median / first_ssh:.2f}x)",
         "target": "<= 2.0x ssh", "passed": first_median <= 2 * first_ssh},
    ]  # fmt: skip


def cluster_rows(env: dict[str, str], repeats: int) -> list[dict[str, Any]]:
    """Row 16: examples/cluster.sh beside the same steps with ssh and scp, each from no agent."""
    ours, reference = [], []
    for _ in range(repeats):
        _stop_agent(env)
        ours.append(_wall(["bash", str(_REPO / "examples" / "cluster.sh")], env))
        _stop_agent(env)
        reference.append(_wall(["bash", str(_REPO / "benchmarks" / "cluster_openssh.sh")], env))
    median, openssh = statistics.median(ours), statistics.median(reference)
    return [{"number": 16, "what": "examples/cluster.sh end to end (start, 3 exec-shell, 3 copies, stop)",
             "value": median, "unit": "s",
             "reference": f"the same steps with ssh/scp (benchmarks/cluster_openssh.sh): {openssh:.2f} s "
                          f"({median / openssh:.2f}x)",
             "target": "<= 1.5x the ssh/scp script", "passed": median <= 1.5 * openssh}]  # fmt: skip
