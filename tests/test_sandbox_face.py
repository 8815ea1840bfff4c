"""The sandbox's public face: one package to import, one error type to catch, one fault order type."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pymlsql_magics.sandbox as sandbox
from pymlsql_magics.sandbox import (
    FaultOrder,
    HostError,
    SandboxBusyError,
    SandboxControlError,
    SandboxError,
    SandboxInfo,
    UserDataError,
)

REPO = Path(__file__).resolve().parents[1]


def _private_sandbox_imports(path: Path) -> list[str]:
    """`import ….sandbox._x`, `from ….sandbox._x import …` and `from ….sandbox import _x` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names if ".sandbox._" in f".{name}"]
    return found


def test_nothing_outside_the_sandbox_imports_its_private_modules() -> None:
    inside = REPO / "pymlsql_magics" / "sandbox"
    files = [path for path in (REPO / "pymlsql_magics").rglob("*.py") if inside not in path.parents]
    files += [path for folder in ("tests", "benchmarks", "scripts") for path in (REPO / folder).rglob("*.py")]
    assert any(path.name == "cli.py" for path in files)
    assert [line for path in files for line in _private_sandbox_imports(path)] == []


def test_every_name_in_the_sandbox_all_exists_once() -> None:
    assert len(set(sandbox.__all__)) == len(sandbox.__all__)
    assert [name for name in sandbox.__all__ if not hasattr(sandbox, name)] == []
    assert sorted(sandbox.__all__) == sandbox.__all__


def test_the_sandbox_imports_nothing_from_core_or_the_faces() -> None:
    probe = (
        "import sys, pymlsql_magics.sandbox\n"
        "bad = [m for m in sys.modules if m.startswith(('pymlsql_magics.core', 'pymlsql_magics.magics',"
        " 'pymlsql_magics.cli', 'IPython'))]\n"
        "sys.exit(str(bad) if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", [SandboxControlError, SandboxBusyError, HostError, UserDataError])
def test_every_sandbox_error_is_one_type_to_catch_with_its_hint_below(kind: type[SandboxError]) -> None:
    error = kind("it went wrong", hint="do this next.")
    assert isinstance(error, SandboxError)
    assert str(error) == "it went wrong\nHint: do this next."
    assert str(kind("no hint")) == "no hint"


def test_sandbox_errors_keep_the_builtin_bases_they_had() -> None:
    assert issubclass(SandboxControlError, RuntimeError)
    assert issubclass(SandboxBusyError, RuntimeError)
    assert issubclass(HostError, RuntimeError)
    assert issubclass(UserDataError, ValueError)


def test_info_environment_and_exports_come_from_one_place_and_hide_the_secret(tmp_path: Path) -> None:
    info = SandboxInfo(endpoint="http://127.0.0.1:1", region_id="cn-hangzhou", access_key_id="LTAIid",
                       access_key_secret="s3cret", state_dir=tmp_path, pid=1, port=1, network="127.101.0.0/16",
                       full_fidelity=True, started_at=0.0)  # fmt: skip
    assert info.environment() == {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIid",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s3cret",
        "ALIBABA_CLOUD_REGION_ID": "cn-hangzhou",
        "PYMLSQL_ECS_ENDPOINT": "http://127.0.0.1:1",
        "PYMLSQL_METADATA_ENDPOINT": "off",
    }
    assert info.exports() == "".join(f"export {k}={v}\n" for k, v in info.environment().items())
    assert "s3cret" not in repr(info)


def test_a_fault_order_survives_its_json_and_empty_values_mean_the_defaults() -> None:
    order = FaultOrder(action="RunInstances", code="Throttling.User", status=400, count=2, lose_response=True)
    assert FaultOrder.from_json(order.to_json()) == order
    assert FaultOrder.from_json({"action": "X", "code": "", "status": 0, "count": 0}) == FaultOrder(action="X")
    assert FaultOrder().empty and FaultOrder(message="only a message").empty
    assert not FaultOrder(stuck="").empty and not FaultOrder(thaw="i-1").empty


def test_a_fault_order_refuses_a_status_instances_cannot_be_stuck_in() -> None:
    with pytest.raises(ValueError, match="stuck must be Pending, Starting or Stopping"):
        FaultOrder.from_json({"stuck": "Running"})
    with pytest.raises(TypeError):
        FaultOrder.from_json(["not", "an", "object"])  # type: ignore[arg-type]
