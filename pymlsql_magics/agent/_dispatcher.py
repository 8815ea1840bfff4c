"""The agent: listens on the user's socket and hands each command to an idle worker, forking a new
one from itself (with paramiko and the core imported, and no thread, so the fork is safe) when all
are busy.
It answers `status` and `stop` itself, and exits after its idle time without work."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _wire

_ACCEPT_TIMEOUT = 5.0  # a client sends its request at once; one that does not is dropped


@dataclass
class _Worker:
    pid: int
    control: socket.socket
    busy: bool = False
    commands: int = 0
    last_done: float = field(default_factory=time.monotonic)


class Dispatcher:
    def __init__(self, listener: socket.socket, path: Path, idle: float) -> None:
        self.listener = listener
        self.path = path
        self.idle = idle
        self.started_at = time.time()
        self.last_activity = time.monotonic()
        self.workers: list[_Worker] = []
        self.stopping = False
        self.commands = 0
        status = path.stat()
        self._socket_file = (status.st_dev, status.st_ino)  # so it removes its own socket, no other

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._stop_on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent is no terminal's: Ctrl-C comes by message
        try:
            while not self.stopping:
                self._retire_idle_workers()
                if not any(worker.busy for worker in self.workers) and self._idle_for() >= self.idle:
                    break
                controls = {worker.control.fileno(): worker for worker in self.workers}
                listening = self.listener.fileno()
                try:
                    readable, _, _ = select.select([listening, *controls], [], [], self._next_wakeup())
                except InterruptedError:
                    continue
                for ready in readable:
                    if ready == listening:
                        self._accept()
                    else:
                        self._hear(controls[ready])
        finally:
            self._close()

    def _idle_for(self) -> float:
        return time.monotonic() - self.last_activity

    def _next_wakeup(self) -> float:
        return max(0.05, min([self.idle - self._idle_for()] +
                             [self.idle - (time.monotonic() - w.last_done) for w in self.workers if not w.busy]))

    def _retire_idle_workers(self) -> None:
        for worker in [w for w in self.workers if not w.busy and time.monotonic() - w.last_done >= self.idle]:
            self._end(worker)

    def _accept(self) -> None:
        # A worker forked now holds nothing of a client's: forked later, while the agent holds a
        # client's stdout, it would keep that open (and the client's reader waiting) for good.
        spare = self._idle_worker()
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(_ACCEPT_TIMEOUT)
            if _peer_uid(connection) != os.getuid():
                return
            try:
                message, fds = _wire.receive(connection)
            except (OSError, EOFError, ValueError):
                return
            try:
                self._answer(connection, message, fds, spare)
            finally:
                for fd in fds:
                    os.close(fd)

    def _answer(self, connection: socket.socket, message: dict[str, Any], fds: list[int], spare: _Worker) -> None:
        op = message.get("op")
        if op == "status":
            _wire.send(connection, self.status())
        elif op == "stop":
            self.stopping = True
            _wire.send(connection, {"pid": os.getpid()})
        elif op == "run" and len(fds) == 3:
            self.last_activity = time.monotonic()  # only work counts: `agent status` keeps no agent alive
            for attempt in range(2):  # a worker may have died since it last said it was idle
                worker = spare if attempt == 0 else self._idle_worker(holding=[connection.fileno(), *fds])
                try:
                    _wire.send(worker.control, message, [connection.fileno(), *fds])
                except OSError:
                    self._end(worker)
                    continue
                worker.busy = True
                worker.commands += 1
                self.commands += 1
                return

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "idle_timeout": self.idle,
            "idle_for": self._idle_for(),
            "commands": self.commands,
            "workers": [{"pid": w.pid, "busy": w.busy, "commands": w.commands} for w in self.workers],
        }

    def _idle_worker(self, holding: Sequence[int] = ()) -> _Worker:
        for worker in self.workers:
            if not worker.busy:
                return worker  # the oldest idle one: it holds the most open connections
        return self._fork(holding)

    def _fork(self, holding: Sequence[int]) -> _Worker:
        """A new worker; `holding` are descriptors of a client the agent holds, which it must not keep."""
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker: nothing of the dispatcher's is its to use
            status = 1
            try:
                ours.close()
                self.listener.close()
                for other in self.workers:
                    other.control.close()
                for fd in holding:
                    os.close(fd)
                from ._memory import InstanceMemory
                from ._worker import Worker

                status = Worker(theirs, InstanceMemory(self.path.with_suffix(".instances.json"))).serve()
            finally:
                os._exit(status)
        theirs.close()
        worker = _Worker(pid, ours)
        self.workers.append(worker)
        return worker

    def _hear(self, worker: _Worker) -> None:
        try:
            message, fds = _wire.receive(worker.control)
        except (OSError, EOFError, ValueError):
            self._end(worker)  # it died
            return
        for fd in fds:
            os.close(fd)
        if message.get("done"):
            worker.busy = False
            worker.last_done = self.last_activity = time.monotonic()

    def _end(self, worker: _Worker) -> None:
        """Closes the worker's control socket, which ends it once its command, if any, is done."""
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        worker.control.close()
        try:
            os.waitpid(worker.pid, 0 if not worker.busy else os.WNOHANG)
        except ChildProcessError:
            pass

    def _stop_on_signal(self, number: int, frame: object) -> None:
        self.stopping = True

    def _close(self) -> None:
        try:
            status = self.path.stat()
            if (status.st_dev, status.st_ino) == self._socket_file:
                self.path.unlink()
        except OSError:
            pass
        self.listener.close()
        for worker in list(self.workers):
            if worker.busy:
                try:
                    os.kill(worker.pid, signal.SIGTERM)  # its command is interrupted, as by Ctrl-C
                except ProcessLookupError:
                    pass
            self._end(worker)


def _peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return int(uid)
