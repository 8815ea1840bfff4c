"""The widgets in a real browser: JupyterLab runs the quickstart runbook and Debian's Chromium shows it.

The runbook is a copy with two cells added before the release: a script that prints a line a second
on stdout and on stderr, and one that fails. Screenshots of each stage go to test-artifacts/browser/
(or $PYMLSQL_BROWSER_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import CHROMEDRIVER, CHROMIUM, Cell, JupyterLab, NotebookPage, chromium, jupyterlab, lab_environment

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"
ARTIFACTS = Path(os.environ.get("PYMLSQL_BROWSER_ARTIFACTS") or REPO / "test-artifacts" / "browser")
STREAMING = '%%ecs_exec nodes\nfor i in 1 2 3 4 5; do echo "line $i"; echo "warn $i" >&2; sleep 1; done'
FAILING = '%%ecs_exec nodes\necho "about to fail"\nexit 3'
STDOUT, STDERR = "application/vnd.jupyter.stdout", "application/vnd.jupyter.stderr"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is missing: bash scripts/setup.sh installs chromium and chromium-driver (CI does)",
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[JupyterLab]:
    for program in (CHROMIUM, CHROMEDRIVER):
        assert program.exists(), f"{program} is missing: bash scripts/setup.sh installs chromium and chromium-driver"
    root = tmp_path / "root"
    root.mkdir()
    sandbox_dir = tmp_path / "sandbox"
    env = lab_environment(tmp_path / "home", sandbox_dir)
    with jupyterlab(root, env, ARTIFACTS / "jupyterlab.log") as server:
        try:
            yield server
        finally:
            # Before the kernels go: the sandbox's server and its sshd instances outlive them.
            stop = subprocess.run([str(Path(sys.executable).with_name("pymlsql")), "sandbox", "stop", "--state-dir",
                                   str(sandbox_dir)], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
            assert stop.returncode == 0, stop.stderr


@pytest.fixture
def page(lab: JupyterLab, tmp_path: Path) -> Iterator[NotebookPage]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield NotebookPage(driver, ARTIFACTS)


def test_quickstart_in_jupyterlab_shows_live_widgets_streams_and_one_clear_error(
    lab: JupyterLab, page: NotebookPage
) -> None:
    cells = _prepared_quickstart(lab.root / "quickstart.ipynb")
    sources = ["".join(cell["source"]) for cell in cells]

    def find(text: str) -> int:
        return next(i for i, source in enumerate(sources) if text in source)

    state: dict[str, Any] = {}
    checks: dict[int, Callable[[NotebookPage, int, dict[str, Any]], None]] = {
        find("nodes = %ecs_start"): _start_table_shows_running_instances_with_addresses,
        find("# As root"): _exec_shows_each_instance_output_and_exit_badge,
        find("%ecs_copy {data} nodes:"): _copy_bars_reach_100_percent,
        find("%ecs_copy nodes:result.txt"): _copy_bars_reach_100_percent,
        sources.index(STREAMING): _exec_streams_stdout_and_stderr_apart_while_running,
        sources.index(FAILING): _failing_cell_shows_one_message,
    }
    printed = {
        find("answers = "): "sum of squares 1..100 on each instance: {'338350'}\n",
        find("%ecs_stop nodes"): "released 2 instance(s) [sandbox]\n",
        find('"instances left"'): "0 instances left\n",
        find("%ecs_sandbox stop"): "sandbox stopped\n",
    }
    with page.kept_on_failure():
        page.open(lab.notebook_url("quickstart.ipynb"), cells=len(cells))
        # Cell by cell, as Shift+Enter goes: a failing cell stops nothing that is run after it by hand.
        for index in (i for i, cell in enumerate(cells) if cell["cell_type"] == "code"):
            if index in checks:
                checks[index](page, index, state)
                continue
            expected = [printed[index]] if index in printed else None
            shown = page.run(index, until=lambda cell, expected=expected: expected in (None, _texts(cell)))
            assert not _errors(shown), f"cell {index} failed: {shown['text']}"
            if expected is not None:
                assert _texts(shown) == expected, shown["outputs"]
        page.screenshot("7-released", find("%ecs_stop nodes"))


def _prepared_quickstart(target: Path) -> list[dict[str, Any]]:
    """The runbook without its saved outputs, so that everything checked comes from this run."""
    notebook = json.loads(QUICKSTART.read_text())
    cells = notebook["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    release = next(i for i, cell in enumerate(cells) if "".join(cell["source"]).startswith("%ecs_stop nodes"))
    cells[release:release] = [
        {"cell_type": "code", "id": name, "metadata": {}, "execution_count": None, "outputs": [], "source": source}
        for name, source in (("streaming", STREAMING), ("failing", FAILING))
    ]
    target.write_text(json.dumps(notebook, indent=1))
    return cells


def _texts(cell: Cell) -> list[str]:
    return [output["text"] for output in cell["outputs"]]


def _errors(cell: Cell) -> list[str]:
    return [o["text"] for o in cell["outputs"] if re.search(r"^\w*(Error|Exception)\b|Traceback", o["text"], re.M)]


def _rendered(cell: Cell) -> None:
    """The widget view itself is on the page, not a placeholder or the text/plain record."""
    assert any(o["widget"] for o in cell["outputs"]), cell["outputs"]
    for placeholder in ("Loading widget", "Error displaying widget", "[sandbox]"):
        assert placeholder not in cell["text"], cell["text"]


def _exited(cell: Cell) -> bool:
    """Every instance's badge tells how its script ended."""
    return bool(cell["panels"]) and all(panel["badge"]["text"].startswith("exit ") for panel in cell["panels"])


def _streams(panel: dict[str, Any], mime: str) -> str:
    return "".join(stream["text"] for stream in panel["streams"] if stream["mime"] == mime)


def _start_table_shows_running_instances_with_addresses(page: NotebookPage, index: int, state: dict[str, Any]) -> None:
    page.start(index)
    live: list[list[list[str]]] = []

    def seen(cell: Cell) -> None:
        if cell["rows"]:
            live.append(cell["rows"])

    def ready(cell: Cell) -> bool:
        return bool(cell["results"]) and all(row[4] == "ready" for row in cell["rows"])

    shown = page.watch(index, seen, until=ready, timeout=120)
    assert not _errors(shown), shown["text"]
    _rendered(shown)
    # The table is live: it was on the page, and changing, before the start returned.
    assert any(row[1] != "Running" or row[4] != "ready" for rows in live for row in rows), live
    assert shown["header"].startswith("SANDBOX "), shown["header"]
    assert len(shown["rows"]) == 2, shown["rows"]
    for instance_id, status, private_ip, public_ip, ssh, via in shown["rows"]:
        assert instance_id.startswith("i-") and status == "Running" and ssh == "ready", shown["rows"]
        assert via == "public", shown["rows"]  # the table says which address this client dials
        # Started from this machine, outside their VPC, they get the public addresses that reach them.
        assert re.fullmatch(r"127\.\d+\.\d+\.\d+", private_ip), shown["rows"]
        assert re.fullmatch(r"127\.\d+\.\d+\.\d+", public_ip) and public_ip != private_ip, shown["rows"]
    state["ids"] = [row[0] for row in shown["rows"]]
    # The cell's value, the fleet, names each instance's hostname.
    state["hostnames"] = {row[0]: row[5] for row in shown["results"]}
    assert sorted(state["hostnames"]) == sorted(state["ids"]), shown["results"]
    page.screenshot("1-start", index)


def _exec_shows_each_instance_output_and_exit_badge(page: NotebookPage, index: int, state: dict[str, Any]) -> None:
    shown = page.run(index, until=_exited)
    assert not _errors(shown), shown["text"]
    _rendered(shown)
    assert "2 instance(s): all succeeded" in shown["header"], shown["header"]
    panels = shown["panels"]
    assert sorted(panel["title"] for panel in panels) == sorted(state["ids"]), panels
    for panel in panels:
        assert panel["badge"]["text"].startswith("exit 0 · "), panel["badge"]
        expected = f"{state['hostnames'][panel['title']]}\nroot\nwebuser's home is there\n"
        assert _streams(panel, STDOUT) == expected, panel["streams"]
    # An accordion: the first instance open, the others folded under their ids.
    assert [panel["open"] for panel in panels] == [True, False], panels
    assert all(stream["shown"] for stream in panels[0]["streams"]), panels[0]
    state["ok_color"] = panels[0]["badge"]["color"]
    page.screenshot("2-exec", index)


def _copy_bars_reach_100_percent(page: NotebookPage, index: int, state: dict[str, Any]) -> None:
    shown = page.run(index, until=lambda cell: cell["bars"] and all(bar["success"] for bar in cell["bars"]))
    assert not _errors(shown), shown["text"]
    _rendered(shown)
    bars = shown["bars"]
    assert sorted(bar["label"] for bar in bars) == sorted(state["ids"]), bars
    for bar in bars:
        assert bar["width"] == "100%" and bar["success"] and bar["shown"], bars
    name = "3-copy-down" if "3-copy-up" in state else "3-copy-up"
    state[name] = page.screenshot(name, index)


def _exec_streams_stdout_and_stderr_apart_while_running(page: NotebookPage, index: int, state: dict[str, Any]) -> None:
    page.start(index)
    running: list[tuple[float, dict[str, Any]]] = []

    def seen(cell: dict[str, Any]) -> None:
        running.append((time.monotonic(), cell))
        if cell["panels"] and _streams(cell["panels"][0], STDOUT).count("line") == 3 and "4-streaming" not in state:
            state["4-streaming"] = page.screenshot("4-streaming", index)  # half-way, the cell still busy

    shown = page.watch(index, seen, until=_exited, timeout=60)
    finished = time.monotonic()
    lines_seen = {_streams(cell["panels"][0], STDOUT).count("line") for _, cell in running if cell["panels"]}
    warnings_seen = {_streams(cell["panels"][0], STDERR).count("warn") for _, cell in running if cell["panels"]}
    # Each line showed on its own while the script still ran, not all at the end.
    assert {1, 2, 3, 4} <= lines_seen and {1, 2, 3, 4} <= warnings_seen, (lines_seen, warnings_seen)
    first_line = next(t for t, cell in running if cell["panels"] and "line 1" in _streams(cell["panels"][0], STDOUT))
    assert finished - first_line > 2.5, "the first line showed only when the script was about to end"
    # The badge tells the end; it may change just before the cell's prompt does, never before the last line.
    early = [cell["panels"][0]["badge"]["text"] for _, cell in running
             if cell["panels"] and "line 5" not in _streams(cell["panels"][0], STDOUT)]  # fmt: skip
    assert early and set(early) == {"running…"}, set(early)

    assert not _errors(shown), shown["text"]
    _rendered(shown)
    assert "2 instance(s): all succeeded" in shown["header"], shown["header"]
    for panel in shown["panels"]:
        assert panel["badge"]["text"].startswith("exit 0 · "), panel["badge"]
        assert _streams(panel, STDOUT) == "".join(f"line {i}\n" for i in range(1, 6)), panel["streams"]
        assert _streams(panel, STDERR) == "".join(f"warn {i}\n" for i in range(1, 6)), panel["streams"]
    # stdout and stderr look different on the page: JupyterLab gives stderr its error background.
    streams = shown["panels"][0]["streams"]
    assert all(stream["shown"] for stream in streams), streams
    backgrounds = {mime: {s["background"] for s in streams if s["mime"] == mime} for mime in (STDOUT, STDERR)}
    assert len(backgrounds[STDOUT]) == len(backgrounds[STDERR]) == 1, backgrounds
    assert backgrounds[STDOUT] != backgrounds[STDERR], backgrounds
    assert backgrounds[STDERR] != {"rgba(0, 0, 0, 0)"}, backgrounds
    page.screenshot("5-streamed", index)

    # The other instance's panel opens on a click and shows its own output and badge.
    page.click_panel(index, 1)
    panels = page.wait_for_cell(index, lambda cell: cell["panels"][1]["open"], what="the panel to open")["panels"]
    assert not panels[0]["open"] and all(stream["shown"] for stream in panels[1]["streams"]), panels
    assert panels[1]["badge"]["text"].startswith("exit 0 · "), panels[1]["badge"]


def _failing_cell_shows_one_message(page: NotebookPage, index: int, state: dict[str, Any]) -> None:
    shown = page.run(index, until=lambda cell: _exited(cell) and len(cell["outputs"]) > 1)
    _rendered(shown)
    messages = [output for output in shown["outputs"] if not output["widget"]]
    assert len(messages) == 1, messages
    assert messages[0]["mime"] == STDERR, messages
    # One line saying what failed where, at most a hint below it, and no traceback.
    first, *rest = messages[0]["text"].strip().splitlines()
    assert first.startswith("UsageError: the script failed on 2 of 2 instance(s): "), first
    assert all(f"{instance_id} exit 3" in first for instance_id in state["ids"]), first
    assert len(rest) <= 1 and all(line.startswith("Hint:") for line in rest), rest
    assert "Traceback" not in shown["text"], shown["text"]
    assert "2 instance(s): 2 failed" in shown["header"], shown["header"]
    for panel in shown["panels"]:
        assert panel["badge"]["text"].startswith("exit 3 · "), panel["badge"]
        assert panel["badge"]["color"] != state["ok_color"], (panel["badge"], state["ok_color"])
        assert _streams(panel, STDOUT) == "about to fail\n", panel["streams"]
    page.screenshot("6-failure", index)
