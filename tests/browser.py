"""JupyterLab on loopback, and Debian's Chromium driving it through chromedriver, for the browser tests."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from .helpers import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the networking flags Chromium keeps calling Google, which the closed network refuses.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--force-device-scale-factor=1",
    "--window-size=1280,960",
)
_USER_SETTINGS = re.compile(r"^(ALIBABA_CLOUD_\w+|AK|AKS|PYMLSQL_\w+|MLSQL_\w+|JUPYTER_\w+|IPYTHONDIR|(?i:\w*_proxy))$")
# The news toast would cover the notebook in screenshots, and asks the internet for news.
_PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Cell = dict[str, Any]  # what _INSPECT_CELL reads of one cell
CellCheck = Callable[[Cell], object]


@dataclass(frozen=True)
class JupyterLab:
    url: str
    token: str
    root: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}lab/tree/{name}?token={self.token}&reset"


def lab_environment(home: Path, sandbox_dir: Path) -> dict[str, str]:
    """This process's environment without the user's cloud, Jupyter and proxy settings."""
    env = {name: value for name, value in os.environ.items() if not _USER_SETTINGS.match(name)}
    env.update(
        HOME=str(home),
        PYMLSQL_SANDBOX_DIR=str(sandbox_dir),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
        JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
    )
    return env


@contextmanager
def jupyterlab(root: Path, env: dict[str, str], log: Path, *, timeout: float = 60) -> Iterator[JupyterLab]:
    """JupyterLab serving `root` on a free loopback port with a random token; stopped with its kernels."""
    config_dir = Path(env["JUPYTER_CONFIG_DIR"])
    (config_dir / "labconfig").mkdir(parents=True, exist_ok=True)
    (config_dir / "labconfig/page_config.json").write_text(json.dumps(_PAGE_CONFIG))
    token = secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        # The server writes its port to this file once it listens.
        info_file = Path(env["JUPYTER_RUNTIME_DIR"]) / f"jpserver-{process.pid}.json"

        def listening() -> dict[str, Any] | None:
            if process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {process.returncode}; see {log}")
            try:
                return json.loads(info_file.read_text())
            except (OSError, ValueError):
                return None

        info = wait_for(listening, timeout=timeout, interval=0.1, what=f"JupyterLab to listen (log: {log})")
        lab = JupyterLab(url=f"http://127.0.0.1:{info['port']}/", token=token, root=root)
        wait_for(lambda: _answers(f"{lab.url}api/status", token), timeout=timeout, interval=0.1,
                 what="JupyterLab's API to answer")  # fmt: skip
        yield lab
    finally:
        _stop(process)


def _answers(url: str, token: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with _NO_PROXY.open(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes the server shut its kernels down; whatever of them outlives it is killed."""
    children = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid, started in children:
        # The start time tells a leftover kernel from an unrelated process that reused its pid.
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _descendants(root: int) -> list[tuple[int, str]]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return [(pid, started) for pid in found if (started := _start_time(pid)) is not None]


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium through Debian's chromedriver: nothing is looked up or downloaded."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# What a check needs to know of one notebook cell, read from the DOM JupyterLab and ipywidgets render.
_INSPECT_CELL = """
const cell = document.querySelectorAll(arguments[0])[arguments[1]];
const text = (el) => (el ? el.textContent : null);
const shown = (el) => el.getClientRects().length > 0;
const stream = (el) => ({mime: el.dataset.mimeType || '', text: el.textContent,
                         background: getComputedStyle(el).backgroundColor, shown: shown(el)});
const badge = (root) => {
  const el = root.querySelector('.widget-html-content');
  const bold = el && el.querySelector('b');
  return {text: text(el), color: bold ? getComputedStyle(bold).color : null};
};
const top = cell.querySelector('.jp-Cell-outputArea');
return {
  prompt: text(cell.querySelector('.jp-InputPrompt')).trim(),
  text: text(top) || '',
  outputs: [...cell.querySelectorAll('.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output')].map(
    (el) => ({mime: el.dataset.mimeType || '', text: el.textContent, widget: !!el.querySelector('.jupyter-widgets')})),
  header: text(cell.querySelector('.jp-Cell-outputArea .jupyter-widgets .widget-html-content')),
  rows: [...cell.querySelectorAll('.jupyter-widgets .widget-html-content table tbody tr')].map(
    (row) => [...row.querySelectorAll('td')].map((td) => td.textContent)),
  results: [...cell.querySelectorAll('.jp-OutputArea-executeResult table tbody tr')].map(
    (row) => [...row.querySelectorAll('td')].map((td) => td.textContent)),
  panels: [...cell.querySelectorAll('.jupyter-widget-Accordion-child')].map((child) => {
    const contents = child.querySelector('.jupyter-widget-Collapse-contents');
    return {title: text(child.querySelector('.jupyter-widget-Collapse-header')), open: shown(contents),
            badge: badge(contents),
            streams: [...contents.querySelectorAll('.widget-output .jp-OutputArea-output')].map(stream)};
  }),
  bars: [...cell.querySelectorAll('.widget-hprogress')].map((el) => {
    const bar = el.querySelector('.progress-bar');
    return {label: text(el.querySelector('.widget-label')), width: bar.style.width,
            success: bar.classList.contains('progress-bar-success'), shown: shown(bar)};
  }),
};
"""

_SCROLLED = """
const [selector, index, done] = arguments;
document.querySelectorAll(selector)[index].scrollIntoView({block: 'start'});
requestAnimationFrame(() => requestAnimationFrame(() => done(true)));
"""


class NotebookPage:
    """The notebook open in JupyterLab, worked the way a user does: click a cell, Shift+Enter."""

    CELLS = "#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell"

    def __init__(self, driver: webdriver.Chrome, artifacts: Path) -> None:
        self.driver = driver
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True)

    def open(self, url: str, *, cells: int, timeout: float = 60) -> None:
        self.driver.get(url)
        wait_for(lambda: len(self.driver.find_elements(By.CSS_SELECTOR, self.CELLS)) == cells, timeout=timeout,
                 interval=0.2, what=f"the notebook's {cells} cells to show")  # fmt: skip
        wait_for(lambda: "| Idle" in self.driver.find_element(By.ID, "jp-main-statusbar").text, timeout=timeout,
                 interval=0.2, what="the kernel to be idle")  # fmt: skip
        # The file browser would take a third of every screenshot: clicking its open tab folds it.
        tabs = ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"
        for tab in self.driver.find_elements(By.CSS_SELECTOR, tabs):
            tab.click()
        wait_for(lambda: not self.driver.find_elements(By.CSS_SELECTOR, tabs), timeout=10, interval=0.1,
                 what="the left side bar to fold")  # fmt: skip

    def cell(self, index: int) -> Cell:
        return self.driver.execute_script(_INSPECT_CELL, self.CELLS, index)

    def _element(self, index: int) -> WebElement:
        return self.driver.find_elements(By.CSS_SELECTOR, self.CELLS)[index]

    def start(self, index: int) -> None:
        """Clicks the cell's prompt and presses Shift+Enter; returns once the kernel has it."""
        prompt = self._element(index).find_element(By.CSS_SELECTOR, ".jp-InputPrompt")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", prompt)
        ActionChains(self.driver).move_to_element(prompt).click().perform()
        ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        self.wait_for_cell(index, lambda cell: cell["prompt"] != "[ ]:", what=f"cell {index} to be queued")

    def wait_for_cell(self, index: int, check: CellCheck, *, timeout: float = 10, what: str = "") -> Cell:
        def matching() -> Cell | None:
            cell = self.cell(index)
            return cell if check(cell) else None

        return wait_for(matching, timeout=timeout, interval=0.1, what=what or f"cell {index} to change")

    def watch(
        self, index: int, seen: CellCheck | None = None, *, until: CellCheck | None = None, timeout: float = 60
    ) -> Cell:
        """Polls a started cell until it has its execution count, passing `seen` each state read before.

        With `until`, it then waits a little for that to hold too, and returns the cell as it last was
        if it never does (for the caller's checks to say what is missing): the prompt comes with the
        kernel's reply, widget updates come on another channel and may be rendered a moment later.
        """

        def finished(cell: Cell) -> bool:
            if re.fullmatch(r"\[\d+\]:", cell["prompt"]):
                return True
            if seen is not None:
                seen(cell)
            return False

        cell = self.wait_for_cell(index, finished, timeout=timeout, what=f"cell {index} to finish")
        if until is None or until(cell):
            return cell
        try:
            return self.wait_for_cell(index, until, timeout=10)
        except AssertionError:
            return self.cell(index)

    def run(self, index: int, *, until: CellCheck | None = None, timeout: float = 60) -> Cell:
        self.start(index)
        return self.watch(index, until=until, timeout=timeout)

    def click_panel(self, index: int, panel: int) -> None:
        headers = self._element(index).find_elements(By.CSS_SELECTOR, ".jupyter-widget-Collapse-header")
        ActionChains(self.driver).move_to_element(headers[panel]).click().perform()

    @contextmanager
    def kept_on_failure(self, name: str = "failure") -> Iterator[None]:
        """Saves the page as it is when a check fails, to see what the browser showed."""
        try:
            yield
        except BaseException:
            self.driver.save_screenshot(str(self.artifacts / f"{name}.png"))
            raise

    def screenshot(self, name: str, index: int) -> Path:
        """The page with cell `index` at the top, saved as an artefact."""
        self.driver.execute_async_script(_SCROLLED, self.CELLS, index)
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
