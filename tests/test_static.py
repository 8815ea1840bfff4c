"""The package type-checks strictly and lints clean: seams typed `Any` show up here, not in the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_mypy_strict_finds_nothing() -> None:
    done = run("mypy")  # settings in pyproject.toml: strict, the whole package
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "pymlsql_magics", "tests", "benchmarks", "scripts")
    assert done.returncode == 0, done.stdout + done.stderr
