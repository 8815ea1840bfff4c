"""Runbooks are re-run, as a user does after fixing a failure: a second run of every cell above the
release (the cells tagged `release`) creates no instance and skips the setup cells, and then the
release leaves no instance. Each runbook runs in a kernel of its own, on a sandbox of its own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .helpers import PYMLSQL

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUNBOOKS = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb") if '"release"' in path.read_text())


def instances(state_dir: Path) -> list[str]:
    done = subprocess.run([PYMLSQL, "sandbox", "status", "--state-dir", str(state_dir), "--json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return sorted(item["InstanceId"] for item in json.loads(done.stdout)["instances"])


def text_of(cell: Any) -> str:
    """What a cell printed, and the text records its views left."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def run(client: NotebookClient, cell: Any, index: int) -> None:
    """Executes the cell; a failure says what the cell printed, not only its error."""
    try:
        client.execute_cell(cell, index)
    except CellExecutionError as error:
        raise AssertionError(f"cell {index} failed; it printed:\n{text_of(cell)}\n{error}") from None


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "sandbox"
    monkeypatch.setenv("PYMLSQL_SANDBOX_DIR", str(folder))  # the kernel's embedded sandbox
    yield folder
    subprocess.run([PYMLSQL, "sandbox", "stop", "--state-dir", str(folder)], capture_output=True, check=False)


def test_there_are_runbooks_with_release_cells() -> None:
    assert {"dask_cluster.ipynb", "spark_cluster.ipynb"} <= set(RUNBOOKS)


@pytest.mark.parametrize("name", RUNBOOKS)
def test_a_second_run_above_the_release_creates_nothing_and_skips_setup(name: str, state_dir: Path) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    release = [(index, cell) for index, cell in code if "release" in cell.metadata.get("tags", [])]
    above = [(index, cell) for index, cell in code if index < release[0][0]]
    once = [index for index, cell in above if "--once" in cell.source.splitlines()[0]]
    assert once, f"{name} has no setup cell run with --once"
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    with client.setup_kernel():
        for index, cell in above:
            run(client, cell, index)
        started = instances(state_dir)
        assert started

        # The same cells again: views are updated in place in the notebook's own cells.
        for index, cell in above:
            run(client, cell, index)
        assert instances(state_dir) == started
        for index in once:
            assert "already done (at " in text_of(notebook.cells[index]), (index, text_of(notebook.cells[index]))

        *teardown, (last, stop_sandbox) = release
        for index, cell in teardown:
            run(client, cell, index)
        assert instances(state_dir) == []
        run(client, stop_sandbox, last)
