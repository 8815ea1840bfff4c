"""Makes docs/spark-ui-jupyterlab.png: the Spark master UI, reached through %ecs_forward, in JupyterLab.

Starts JupyterLab on loopback and runs notebooks/spark_cluster.ipynb in it, cell by cell, in Debian's
headless Chromium (as tests/test_browser.py does with the quickstart), against a local sandbox of its
own. Once the cell that shows the master's web UI has run, it checks inside that frame that the UI
lists every worker as ALIVE, takes the screenshot, then runs the release cells and stops everything.
Usage: .venv/bin/python scripts/spark_ui_screenshot.py [OUT.png]   (bash scripts/setup.sh first)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.browser import Cell, NotebookPage, chromium, jupyterlab, lab_environment  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

RUNBOOK = REPO / "notebooks" / "spark_cluster.ipynb"
SCREENSHOT = REPO / "docs" / "spark-ui-jupyterlab.png"
# The master's page inside the cell's frame, as the browser shows it.
_FRAME_TEXT = "return document.body ? document.body.innerText : ''"


def main(target: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="spark-ui-") as scratch:
        work = Path(scratch)
        root, sandbox_dir = work / "root", work / "sandbox"
        root.mkdir()
        cells = _runbook_without_outputs(root / RUNBOOK.name)
        env = lab_environment(work / "home", sandbox_dir)
        try:
            with jupyterlab(root, env, work / "jupyterlab.log") as lab, chromium(work / "profile") as driver:
                driver.set_window_size(1280, 1200)
                page = NotebookPage(driver, work / "pages")
                page.open(lab.notebook_url(RUNBOOK.name), cells=len(cells))
                with page.kept_on_failure():
                    _run_to_the_ui_and_shoot(page, cells, target)
        finally:
            # The sandbox's server and its instances outlive the kernel: stopped here however it went.
            pymlsql = str(Path(sys.executable).with_name("pymlsql"))
            subprocess.run([pymlsql, "sandbox", "stop", "--state-dir", str(sandbox_dir)], env=env,
                           capture_output=True, timeout=120, check=False)  # fmt: skip
            for picture in sorted((work / "pages").glob("*.png")):
                kept = target.with_name(f"{target.stem}-{picture.name}")
                kept.write_bytes(picture.read_bytes())
                print(f"spark_ui_screenshot: the page when it failed: {kept}", file=sys.stderr)
    print(f"spark_ui_screenshot: wrote {target}")
    return 0


def _run_to_the_ui_and_shoot(page: NotebookPage, cells: list[dict[str, Any]], target: Path) -> None:
    sources = ["".join(cell["source"]) for cell in cells]
    ui_cell = next(i for i, source in enumerate(sources) if "IFrame(master_ui.url" in source)
    workers = next(int(m[1]) for s in sources if (m := re.search(r"^worker_count = (\d+)$", s, re.M)))
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        shown = page.run(index, timeout=900)
        failure = _failure(shown)
        if failure:
            raise SystemExit(f"spark_ui_screenshot: cell {index} failed:\n{failure}")
        if index == ui_cell:
            _check_the_master_ui(page, index, workers)
            page.driver.execute_script("document.querySelectorAll(arguments[0])[arguments[1]]"
                                       ".scrollIntoView({block: 'start'})", page.CELLS, index)  # fmt: skip
            target.parent.mkdir(parents=True, exist_ok=True)
            page.driver.save_screenshot(str(target))


def _check_the_master_ui(page: NotebookPage, index: int, workers: int) -> None:
    """The frame shows the master's page itself, with every worker ALIVE, not an error or a blank."""
    cell = page.driver.find_elements(By.CSS_SELECTOR, page.CELLS)[index]
    frame = wait_for(lambda: cell.find_elements(By.TAG_NAME, "iframe"), timeout=30, what="the UI's frame")[0]
    page.driver.switch_to.frame(frame)
    seen = [""]

    def alive() -> bool:
        seen[0] = page.driver.execute_script(_FRAME_TEXT)
        summary = re.search(r"^Workers: (\d+) Alive", seen[0], re.M)
        rows = re.findall(r"^worker-\S+\s.*\bALIVE\b", seen[0], re.M)
        return summary is not None and int(summary[1]) == workers and len(rows) == workers

    try:
        wait_for(alive, timeout=60, interval=0.5, what=f"the master UI in the frame to list {workers} alive workers")
        page.driver.execute_script("window.scrollTo(0, 0)")  # the page's top: the master's summary
    except AssertionError as error:
        raise AssertionError(f"{error}; the frame shows:\n{seen[0]}") from None
    finally:
        page.driver.switch_to.default_content()


def _failure(cell: Cell) -> str:
    """An error the cell showed: a traceback, or the one-line UsageError of a magic."""
    errors = [o["text"] for o in cell["outputs"] if re.search(r"^\w*(Error|Exception)\b|Traceback", o["text"], re.M)]
    return "\n".join(errors)


def _runbook_without_outputs(path: Path) -> list[dict[str, Any]]:
    notebook = json.loads(RUNBOOK.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(notebook, indent=1))
    cells: list[dict[str, Any]] = notebook["cells"]
    return cells


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else SCREENSHOT))
