"""The sandbox's public bandwidth, measured through OpenSSH against the caps that should hold it.

Each figure is payload bytes over wall time, minus an `ssh ... true` handshake measured alongside,
so SSH's own framing counts against the rate (as it does for a user).
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pymlsql_magics.core import Instance


@dataclass(frozen=True)
class Rate:
    mbit_per_second: float
    seconds: float


def _ssh(key: Path, instance: Instance) -> list[str]:
    return ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{instance.public_ip}"]  # fmt: skip


def _seconds(command: list[str], stdin: bytes | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, input=stdin, check=True, capture_output=True)
    return time.perf_counter() - started


def download(key: Path, instance: Instance, size: int) -> Rate:
    """Instance -> this machine: `size` bytes printed by the instance."""
    handshake = _seconds([*_ssh(key, instance), "true"])
    seconds = _seconds([*_ssh(key, instance), f"head -c {size} /dev/zero"]) - handshake
    return Rate(size * 8 / seconds / 1e6, seconds)


def upload(key: Path, instance: Instance, size: int) -> Rate:
    """This machine -> instance: `size` bytes read by the instance."""
    handshake = _seconds([*_ssh(key, instance), "true"])
    seconds = _seconds([*_ssh(key, instance), "cat > /dev/null"], stdin=bytes(size)) - handshake
    return Rate(size * 8 / seconds / 1e6, seconds)


def parallel_upload(key: Path, instances: list[Instance], size: int) -> Rate:
    """This machine -> every instance at once, `size` bytes each: what the shared uplink carries."""
    handshake = _seconds([*_ssh(key, instances[0]), "true"])
    started = time.perf_counter()
    with ThreadPoolExecutor(len(instances)) as pool:
        list(pool.map(lambda i: _seconds([*_ssh(key, i), "cat > /dev/null"], stdin=bytes(size)), instances))
    seconds = time.perf_counter() - started - handshake
    return Rate(size * len(instances) * 8 / seconds / 1e6, seconds)
