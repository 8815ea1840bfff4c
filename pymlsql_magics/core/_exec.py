"""One script's exec session: its output pumped to a sink until it ends, its deadlines kept.

The end of a script is not one event. sshd may send the exit status before the last output still
in the pipe, so the output is read on until its end; but a background process the script started
may hold the output open and quiet, so once the status has come, a trailing quiet of _TRAILING_QUIET
seconds ends it too. A server that falls silent is asked whether it is still there after each
keepalive interval; those checks are not output, and do not restart the trailing quiet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from ._errors import WaitTimeoutError
from ._output import OutputSink, StreamDecoder
from ._remote import PidHeader

_CHUNK = 32768
# Seconds of silence after a script's exit status before its output is taken as complete while a
# background process still holds it open (OpenSSH would wait for that process).
_TRAILING_QUIET = 2.0
_NAP = 0.25

# The instance's numbers, not this machine's (they differ on macOS; Windows lacks most).
_LINUX_SIGNALS = {name: number for number, name in enumerate(
    "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP TSTP TTIN "
    "TTOU URG XCPU XFSZ VTALRM PROF WINCH IO PWR SYS".split(), start=1)}  # fmt: skip


def hear_exit_signals(transport: paramiko.Transport) -> None:
    """Makes the transport's channels take "exit-signal" as an exit status (see _on_request)."""
    table = transport._channel_handler_table  # type: ignore[attr-defined]  # paramiko has no public hook
    transport._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: _on_request}  # type: ignore[attr-defined]


def _on_request(channel: paramiko.Channel, message: paramiko.Message) -> None:
    """paramiko drops "exit-signal" (RFC 4254, 6.10): a script ended by a signal gets the status
    bash would give it, 128 + the signal's number, instead of none."""
    start = message.packet.tell()
    if message.get_text() == "exit-signal":
        message.get_boolean()  # want reply: never, for this request
        number = _LINUX_SIGNALS.get(message.get_text())
        channel.exit_status = 128 + number if number is not None else 255
        channel.status_event.set()
        return
    message.packet.seek(start)
    paramiko.Channel._handle_request(channel, message)  # type: ignore[attr-defined]  # paramiko's own handling


class ExecSession:
    """A script on a fresh exec channel, from its start to its exit status.

    Its wrapper (see _remote) announces the pid to kill first, on stderr, or on stdout with a pty,
    where stderr arrives merged into stdout. paramiko's failures are left to the caller to translate.
    """

    def __init__(
        self,
        channel: paramiko.Channel,
        *,
        source: str,
        sink: OutputSink,
        pty: bool,
        keep: int,
        keepalive: float,
        check_alive: Callable[[], None],
        kill: Callable[[int], None],
    ) -> None:
        self._channel, self._source, self._pty = channel, source, pty
        self._keepalive, self._check_alive, self._kill = keepalive, check_alive, kill
        # Woken when output arrives or the channel closes, rather than polling: many scripts run at
        # once, each on a thread of its own.
        self._wake = threading.Event()
        channel.in_buffer.set_event(self._wake)
        channel.in_stderr_buffer.set_event(self._wake)
        self.stdout = StreamDecoder(source, "stdout", sink, terminal=pty, keep=keep)
        self.stderr = StreamDecoder(source, "stderr", sink, keep=keep)
        self.header = PidHeader()
        self._started = self._heard = self._last_output = time.monotonic()
        self._ended_at = 0.0  # when the exit status came

    @property
    def truncated(self) -> bool:
        return self.stdout.truncated or self.stderr.truncated

    def run(self, command: str, script: bytes | None, *, timeout: float | None,
            cancel: threading.Event | None) -> int:  # fmt: skip
        """Starts `command`, sends `script` to its stdin (none with a pty), and returns its exit status.

        Raises WaitTimeoutError past `timeout`, KeyboardInterrupt once `cancel` is set, the
        script's processes killed first either way.
        """
        if self._pty:
            self._channel.get_pty(term="xterm", width=160, height=48)
        self._channel.exec_command(command)
        if script is not None:
            self._channel.sendall(script)
            self._channel.shutdown_write()
        while True:
            busy = self._pump()
            if self._ended():
                break
            self._keep_deadlines(timeout, cancel)
            self._wait(busy)
        leftover = self.header.leftover()
        self.stdout.feed(leftover if self._pty else b"", final=True)
        self.stderr.feed(b"" if self._pty else leftover, final=True)
        return self._channel.recv_exit_status()

    def _pump(self) -> bool:
        """Passes on all output waiting now; says whether there was any."""
        channel, busy = self._channel, False
        for ready, receive, decoder in ((channel.recv_ready, channel.recv, self.stdout),
                                        (channel.recv_stderr_ready, channel.recv_stderr, self.stderr)):  # fmt: skip
            announces = (decoder is self.stdout) == self._pty
            while ready():
                chunk = receive(_CHUNK)
                busy = True
                if chunk := (self.header.feed(chunk) if announces else chunk):
                    decoder.feed(chunk)
        return busy

    def _ended(self) -> bool:
        """Whether the script is over and all its output passed on."""
        channel = self._channel
        # Read before the buffers are looked at: all output is in them once the end came.
        output_ended = bool(channel.eof_received or channel.closed)
        if not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
            return False
        # sshd may send the exit status before the last output still in the pipe: wait for the end
        # of the output, unless a background process keeps it open and quiet.
        self._ended_at = self._ended_at or time.monotonic()
        return output_ended or time.monotonic() - max(self._ended_at, self._last_output) > _TRAILING_QUIET

    def _keep_deadlines(self, timeout: float | None, cancel: threading.Event | None) -> None:
        if cancel is not None and cancel.is_set():
            self._kill(self.header.pid)
            raise KeyboardInterrupt
        if timeout is not None and time.monotonic() - self._started > timeout:
            self._kill(self.header.pid)
            raise WaitTimeoutError(
                f"the script on {self._source} did not finish within {timeout:g} s; it was stopped",
                hint="Raise the timeout, or run long jobs in the background (nohup CMD > CMD.log 2>&1 &).",
            )

    def _wait(self, busy: bool) -> None:
        """Waits for more to happen, asking a silent server whether it is still there."""
        if busy:
            self._heard = self._last_output = time.monotonic()
        elif time.monotonic() - self._heard > self._keepalive:
            self._check_alive()
            self._heard = time.monotonic()  # an answer, not output: the trailing quiet goes on
        elif self._channel.eof_received and not self._channel.exit_status_ready():
            self._channel.status_event.wait(_NAP)  # all output is in; the exit status follows
        else:
            self._wake.wait(_NAP)
