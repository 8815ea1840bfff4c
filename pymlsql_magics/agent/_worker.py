"""A worker of the agent: runs one command at a time, as `pymlsql` would run it in the client.

The client's stdin, stdout and stderr become this process's descriptors 0, 1 and 2 for the
command, written with the client's encoding and buffering; the command runs in the client's working
directory with its umask, in this process's main thread, where a Ctrl-C of the client arrives as
SIGINT. Between commands the worker keeps its Fleets, and so their SSH connections, open.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any, TextIO

from ..core import EcsConfig, Fleet
from . import _wire
from ._memory import InstanceMemory, RememberingFleet, load_sdk_meanwhile


class FleetCache:
    """The worker's Fleets, kept open between commands, one per setting of EcsConfig: a command
    reuses the SSH connections of the ones before it."""

    def __init__(self, memory: InstanceMemory) -> None:
        self._memory = memory
        self._fleets: dict[EcsConfig, Fleet] = {}

    def open(self, config: EcsConfig) -> Fleet:
        from .. import cli

        if config not in self._fleets:
            fleet = cli.new_fleet(config, RememberingFleet)
            assert isinstance(fleet, RememberingFleet)
            fleet.memory = self._memory
            self._fleets[config] = fleet
        return self._fleets[config]

    def close(self) -> None:
        fleets, self._fleets = list(self._fleets.values()), {}
        for fleet in fleets:
            fleet.close()


class Worker:
    def __init__(self, control: socket.socket, memory: InstanceMemory) -> None:
        self.control = control
        self.memory = memory
        # Where 0, 1 and 2 point between commands: /dev/null, /dev/null, the agent's log.
        self._own = [os.dup(fd) for fd in (0, 1, 2)]
        self._own_streams = (sys.stdin, sys.stdout, sys.stderr)

    def serve(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _interrupt_on_terminate)
        fleets = FleetCache(self.memory)
        try:
            while True:
                try:
                    message, fds = _wire.receive(self.control)
                except (OSError, EOFError, ValueError):
                    return 0  # the agent closed us: it is idle, stopping, or gone
                connection = socket.socket(fileno=fds[0])
                connection.setblocking(True)  # the agent waited on it with a timeout, which made it non-blocking
                try:
                    _Command(message, connection, fds[1:], fleets).run()
                finally:
                    self._restore()
                    connection.close()
                _wire.send(self.control, {"done": True})
                load_sdk_meanwhile()
        finally:
            fleets.close()

    def _restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd, own in enumerate(self._own):
            os.dup2(own, fd)
        sys.stdin, sys.stdout, sys.stderr = self._own_streams
        os.chdir("/")  # hold no folder of the client's


class _Command:
    def __init__(self, message: dict[str, Any], connection: socket.socket, stdio: list[int],
                 fleets: FleetCache) -> None:  # fmt: skip
        self.message = message
        self.connection = connection
        self.stdio = stdio
        self.fleets = fleets
        self._lock = threading.Lock()
        self._running = False

    def run(self) -> None:
        try:
            os.chdir(self.message["cwd"])
            os.umask(int(self.message["umask"]))
        except (OSError, KeyError, ValueError):
            for fd in self.stdio:
                os.close(fd)
            _wire.send(self.connection, {"kind": "refused"})  # the client runs it itself
            return
        for fd, target in zip(self.stdio, (0, 1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
        streams = self.message["streams"]
        sys.stdin = _stream(0, "r", streams["stdin"])
        sys.stdout = _stream(1, "w", streams["stdout"])
        sys.stderr = _stream(2, "w", streams["stderr"])
        self._running = True
        try:
            _wire.send(self.connection, {"kind": _wire.STARTED})
        except OSError:
            return  # the client left before its command started: nothing to do

        watcher = threading.Thread(target=self._watch, name="pymlsql-agent-client", daemon=True)
        watcher.start()
        status = self._main(self.message["argv"])
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            _wire.send(self.connection, {"kind": _wire.ENDED, "status": status})
        except OSError:
            pass  # the client is gone
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # wakes the watcher
        except OSError:
            pass
        watcher.join()

    def _main(self, argv: list[str]) -> int:
        from .. import cli

        main_thread = threading.main_thread().ident
        assert main_thread == threading.get_ident()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            try:
                return cli.main(argv, fleets=self.fleets)
            except SystemExit as leaving:
                return _status_of(leaving)
            except KeyboardInterrupt:
                traceback.print_exc()  # as Python reports one that no code caught
                return 130
            except BaseException:
                traceback.print_exc()
                return 1
            finally:
                with self._lock:
                    self._running = False
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except KeyboardInterrupt:
            return 130  # a Ctrl-C that arrived as the command ended

    def _watch(self) -> None:
        """Passes each Ctrl-C of the client on as SIGINT; a client that left is treated as one
        interrupted whose terminal is gone."""
        main_thread = threading.main_thread().ident
        assert main_thread is not None
        while True:
            try:
                data = self.connection.recv(64)
            except OSError:
                data = b""
            with self._lock:
                if not self._running:
                    return
                if not data:
                    with open(os.devnull, "wb") as nothing:
                        for fd in (0, 1, 2):
                            os.dup2(nothing.fileno(), fd)
                    signal.pthread_kill(main_thread, signal.SIGINT)
                    return
                for _ in range(data.count(_wire.INTERRUPT)):
                    signal.pthread_kill(main_thread, signal.SIGINT)


def _stream(fd: int, mode: str, how: dict[str, Any]) -> TextIO:
    stream = open(fd, mode, encoding=how["encoding"], errors=how["errors"], closefd=False)  # noqa: SIM115
    assert isinstance(stream, io.TextIOWrapper)
    if mode == "w":
        stream.reconfigure(line_buffering=how["line_buffering"], write_through=how["write_through"])
    return stream


def _status_of(leaving: SystemExit) -> int:
    """The exit status Python gives for this SystemExit."""
    if leaving.code is None:
        return 0
    if isinstance(leaving.code, int):
        return leaving.code
    print(leaving.code, file=sys.stderr)
    return 1


def _interrupt_on_terminate(number: int, frame: object) -> None:
    """`pymlsql agent stop` while a command runs: the command is interrupted, as by Ctrl-C."""
    raise KeyboardInterrupt
