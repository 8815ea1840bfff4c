"""Live views of the magics: ipywidgets in a kernel, plain text everywhere else.

Each view is displayed with a display id and updated in place when it finishes, so the saved
notebook also keeps a text/plain record of what happened (nbconvert, nbval, GitHub previews).
Reader threads write with `Output.outputs` assignments under a lock, never `with output:`.
"""

from __future__ import annotations

import collections
import html
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython import get_ipython
from IPython.display import display

from .core import CopyResult, ExecResult, FleetResult, Instance, StreamName

_SANDBOX_BADGE = (
    '<span style="background:#f0ad4e;color:#000;padding:1px 6px;border-radius:3px;'
    'font-weight:bold">SANDBOX</span> '
)


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel; terminal IPython and plain Python get text."""
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _TextRecord:
    """A widget whose display also carries `text/plain`: the record that saved notebooks keep."""

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if bundle is not None:
            bundle["text/plain"] = self.text()
        return bundle

    def text(self) -> str:
        raise NotImplementedError


class StartView(_TextRecord, widgets.VBox):
    """One row per instance: id, status, addresses and SSH readiness, updated while %ecs_start waits."""

    def __init__(self, *, sandbox: bool, live: bool) -> None:
        self.table = widgets.HTML("starting…")
        super().__init__(children=[self.table])
        self._sandbox = sandbox
        self._live = live
        self._rows: list[tuple[str, str, str, str, str, str]] = []
        self._lock = threading.Lock()
        self._printed: dict[str, str] = {}
        self._handle = display(self, display_id=True) if live else None

    def update(self, instances: list[Instance], ssh_ready: set[str], via: Mapping[str, str] | None = None) -> None:
        """`via`: how this client reaches each instance (public, private), shown beside SSH."""
        rows = [
            (i.instance_id, i.status, i.private_ip or "-", i.public_ip or "-",
             "ready" if i.instance_id in ssh_ready else ("waiting" if i.status == "Running" else "-"),
             (via or {}).get(i.instance_id, "-"))
            for i in instances
        ]  # fmt: skip
        with self._lock:
            self._rows = rows
            if self._live:
                self.table.value = self._html()
                return
            for row in rows:
                line = f"{row[0]}  {row[1]:<8}  {row[2]:<15}  {row[3]:<15}  ssh {row[4]} via {row[5]}"
                if self._printed.get(row[0]) != line:
                    self._printed[row[0]] = line
                    print(("[sandbox] " if self._sandbox else "") + line, flush=True)

    def finish(self) -> None:
        if self._handle is not None:
            self._handle.update(self)

    def _html(self) -> str:
        cell = 'style="padding:2px 16px 2px 0;text-align:left"'
        names = ("instance", "status", "private IP", "public IP", "SSH", "via")
        head = "".join(f"<th {cell}>{name}</th>" for name in names)
        cells = ("".join(f"<td {cell}>{html.escape(value)}</td>" for value in row) for row in self._rows)
        body = "".join(f"<tr>{row}</tr>" for row in cells)
        badge = _SANDBOX_BADGE if self._sandbox else ""
        return f"{badge}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def text(self) -> str:
        lines = ["[sandbox]"] if self._sandbox else []
        lines += [f"{r[0]}  {r[1]:<8}  {r[2]:<15}  {r[3]:<15}  ssh {r[4]} via {r[5]}" for r in self._rows]
        return "\n".join(lines) or "starting…"


class ExecView(_TextRecord, widgets.VBox):
    """Live output of %%ecs_exec: a panel per instance with its stdout and stderr and a badge.

    The panels keep the last `max_lines` lines of each instance; the header names the log file
    that holds the whole output (written by a LogSink beside this view).
    """

    def __init__(self, instance_ids: list[str], *, max_lines: int, log_path: Path, sandbox: bool,
                 live: bool) -> None:  # fmt: skip
        self._ids = list(instance_ids)
        self._max_lines = max_lines
        self._live = live
        self._sandbox = sandbox
        self.log_path = log_path
        self._lock = threading.Lock()
        self._tails: dict[str, collections.deque[tuple[str, str]]] = {i: collections.deque() for i in self._ids}
        self._lines: dict[str, int] = dict.fromkeys(self._ids, 0)
        self.header = widgets.HTML(self._header(f"running on {len(self._ids)} instance(s)…"))
        self.outputs = {i: widgets.Output() for i in self._ids}
        self.badges = {i: widgets.HTML("<b>running…</b>") for i in self._ids}
        panels = [widgets.VBox([self.badges[i], self.outputs[i]]) for i in self._ids]
        if len(panels) == 1:
            body: widgets.Widget = panels[0]
        else:
            body = widgets.Accordion(children=panels, titles=tuple(self._ids))
            body.selected_index = 0
        super().__init__(children=[self.header, body])
        self._results: dict[str, str] = {}
        self._handle = display(self, display_id=True) if live else None

    def write(self, source: str, stream: StreamName, text: str) -> None:
        with self._lock:
            tail = self._tails[source]
            tail.append((stream, text))
            self._lines[source] += text.count("\n")
            while self._lines[source] > self._max_lines and len(tail) > 1:
                _, dropped = tail.popleft()
                self._lines[source] -= dropped.count("\n")
            if self._live:
                self.outputs[source].outputs = tuple(
                    {"output_type": "stream", "name": name, "text": chunk} for name, chunk in tail
                )

    def finish(self, result: FleetResult[ExecResult] | None, *, interrupted: bool = False) -> None:
        with self._lock:
            for instance_id in self._ids:
                outcome = result.get(instance_id) if result is not None else None
                self._results[instance_id] = _describe(outcome, interrupted)
                ok = isinstance(outcome, ExecResult) and outcome.ok
                color = "#2e7d32" if ok else "#c62828"
                self.badges[instance_id].value = (
                    f'<b style="color:{color}">{html.escape(self._results[instance_id])}</b>'
                )
            failed = 0 if result is None else len(result.failed)
            summary = "interrupted" if interrupted else (f"{failed} failed" if failed else "all succeeded")
            self.header.value = self._header(f"{len(self._ids)} instance(s): {summary}")
        if self._handle is not None:
            self._handle.update(self)
        elif not self._live:
            for instance_id in self._ids:
                print(f"[{instance_id}] {self._results[instance_id]}", flush=True)

    def _header(self, text: str) -> str:
        badge = _SANDBOX_BADGE if self._sandbox else ""
        return f"{badge}{html.escape(text)} — full output: <code>{html.escape(str(self.log_path))}</code>"

    def text(self) -> str:
        lines = ["[sandbox]"] if self._sandbox else []
        with self._lock:
            for instance_id in self._ids:
                lines.append(f"[{instance_id}] {self._results.get(instance_id, 'running…')}")
                body = "".join(chunk for _, chunk in self._tails[instance_id])
                lines += [f"  {line}" for line in body.splitlines()]
        lines.append(f"full output: {self.log_path}")
        return "\n".join(lines)


def _describe(outcome: object, interrupted: bool) -> str:
    if isinstance(outcome, ExecResult):
        if outcome.done_at:
            return f"already done (at {outcome.done_at})"
        return f"exit {outcome.exit_status} · {outcome.duration:.1f} s"
    if outcome is None:
        return "interrupted" if interrupted else "not run"
    return f"failed: {str(outcome).splitlines()[0]}"


class CopyView(_TextRecord, widgets.VBox):
    """A progress bar per instance while %ecs_copy moves bytes."""

    def __init__(self, instance_ids: list[str], *, description: str, sandbox: bool, live: bool) -> None:
        self._ids = list(instance_ids)
        self._live = live
        self._sandbox = sandbox
        self._description = description
        # The whole id as the label, at its natural width: ids differ only after their first characters.
        self.bars = {
            i: widgets.IntProgress(value=0, min=0, max=1, description=i, style={"description_width": "initial"})
            for i in self._ids
        }
        self.label = widgets.HTML((_SANDBOX_BADGE if sandbox else "") + html.escape(description))
        super().__init__(children=[self.label, *self.bars.values()])
        self._done: dict[str, str] = {}
        self._shown: dict[str, tuple[int, int]] = {}  # instance id -> (whole percent, total) on its bar
        self._handle = display(self, display_id=True) if live else None

    def progress(self, instance_id: str, done: int, total: int) -> None:
        # Bytes are counted every 64 KiB: a front-end message for each would be thousands per bar, more
        # than a kernel's channel holds for a client that reads it after the cell (nbval), and a flood
        # for the browser. A bar moves when its whole percent changes: at most 101 messages per copy.
        total = max(total, 1)
        done = min(done, total)
        shown = (done * 100 // total, total)
        if self._shown.get(instance_id) == shown:
            return
        self._shown[instance_id] = shown
        bar = self.bars[instance_id]
        bar.max = total
        bar.value = done

    def finish(self, results: dict[str, object]) -> None:
        for instance_id, outcome in results.items():
            if isinstance(outcome, CopyResult):
                through = f" (through {outcome.via})" if outcome.via else ""
                self._done[instance_id] = f"{outcome.files} file(s), {outcome.bytes} bytes -> {outcome.target}{through}"
                self.bars[instance_id].bar_style = "success"
            else:
                self._done[instance_id] = f"failed: {str(outcome).splitlines()[0]}"
                self.bars[instance_id].bar_style = "danger"
        if self._handle is not None:
            self._handle.update(self)
        else:
            print(self.text(), flush=True)

    def text(self) -> str:
        lines = (["[sandbox]"] if self._sandbox else []) + [self._description]
        lines += [f"[{i}] {self._done.get(i, 'copying…')}" for i in self._ids]
        return "\n".join(lines)

