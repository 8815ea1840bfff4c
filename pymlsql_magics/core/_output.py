"""Where streamed output goes: an OutputSink, fed by decoders that never split a character."""

from __future__ import annotations

import codecs
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Literal, Protocol, TextIO

StreamName = Literal["stdout", "stderr"]


class OutputSink(Protocol):
    """Receives output while scripts run; `source` is the instance id."""

    def write(self, source: str, stream: StreamName, text: str) -> None: ...


class NullSink:
    def write(self, source: str, stream: StreamName, text: str) -> None:
        pass


class ConsoleSink:
    """Writes each stream to the matching file, prefixed by the instance when there are many.

    With `headers`, a `[source]` line announces the instance whenever it changes instead (as
    ipyparallel prints), so output reads as it came.
    """

    def __init__(self, *, label: bool = False, headers: bool = False, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:  # fmt: skip
        self._files = {"stdout": stdout or sys.stdout, "stderr": stderr or sys.stderr}
        self._label = label
        self._headers = headers
        self._last_source: str | None = None
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], str] = {}

    def write(self, source: str, stream: StreamName, text: str) -> None:
        target = self._files[stream]
        with self._lock:
            if not self._label:
                if self._headers and source != self._last_source:
                    target.write(f"[{source}]\n")
                self._last_source = source
                target.write(text)
                target.flush()
                return
            # Whole lines only, so lines of several instances never interleave mid-line.
            buffered = self._pending.get((source, stream), "") + text
            *lines, rest = buffered.split("\n")
            self._pending[(source, stream)] = rest
            for line in lines:
                target.write(f"[{source}] {line}\n")
            target.flush()

    def flush(self) -> None:
        with self._lock:
            for (source, stream), rest in self._pending.items():
                if rest:
                    self._files[stream].write(f"[{source}] {rest}\n")
            self._pending.clear()


class StreamDecoder:
    """Turns raw channel chunks into text without breaking multi-byte characters.

    Everything goes to the sink; only the last `keep` characters are held for `text`, so a script
    that prints gigabytes costs no more memory than one that prints `keep`.
    """

    def __init__(self, source: str, stream: StreamName, sink: OutputSink, *, terminal: bool = False,
                 keep: int = 1 << 20) -> None:  # fmt: skip
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._source, self._stream, self._sink = source, stream, sink
        self._terminal = terminal
        self._held = ""
        self._keep = keep
        self._parts: deque[str] = deque()
        self._kept = 0
        self.dropped = 0  # characters no longer held, from the start of the stream

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        text = self._decode(chunk, final)
        if self._terminal:
            # A terminal ends lines with \r\n; a \r at the end of a chunk may be half of one.
            text = (self._held + text).replace("\r\n", "\n")
            self._held = ""
            if text.endswith("\r") and not final:
                text, self._held = text[:-1], "\r"
        if text:
            self._hold(text)
            self._sink.write(self._source, self._stream, text)

    def _hold(self, text: str) -> None:
        self._parts.append(text)
        self._kept += len(text)
        while self._parts and self._kept - len(self._parts[0]) >= self._keep:
            first = self._parts.popleft()
            self._kept -= len(first)
            self.dropped += len(first)

    @property
    def text(self) -> str:
        whole = "".join(self._parts)
        return whole[len(whole) - self._keep :] if len(whole) > self._keep else whole

    @property
    def truncated(self) -> bool:
        return self.dropped > 0 or self._kept > self._keep


class LogSink:
    """Appends every line to a log file as `[source] stream: line`: the whole output, however long."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, source: str, stream: StreamName, text: str) -> None:
        with self._lock:
            for line in text.splitlines(keepends=True):
                self._file.write(f"[{source}] {stream}: {line}" + ("" if line.endswith("\n") else "\n"))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class TeeSink:
    """Hands every write to each of its sinks, in order."""

    def __init__(self, *sinks: OutputSink) -> None:
        self._sinks = sinks

    def write(self, source: str, stream: StreamName, text: str) -> None:
        for sink in self._sinks:
            sink.write(source, stream, text)
