"""SSH to instances through paramiko: one connection per instance, its commands and streams.

Host keys are checked against the pins in the tool's own known_hosts file (see _known_hosts). A
script comes on the channel's stdin; the login user's shell reads it from there, another user's
runs from a private temporary file removed however the script ends.
Its process groups are killed on timeout or interrupt.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from ._errors import PymlsqlError, SshError, WaitTimeoutError
from ._known_hosts import ExpectedKeys, KnownHosts
from ._output import OutputSink, StreamDecoder
from ._results import Instance
from ._ssh_errors import FAILURES, UNREACHABLE_HINT, os_reason, refused_key, session_errors, ssh_errors

_PID_MARK = b"pymlsql:pid="
T = TypeVar("T")
NO_USER_HINT = (
    "Create the user first (useradd), or pick another user (--execute-user of pymlsql, --user of the magics)."
)

_NO_USER_STATUS = 125
_CHUNK = 32768
_STREAM_WINDOW = 16 << 20
_STREAM_PACKET = 32768
_STREAM_ERRORS_KEPT = 65536
# Seconds of silence after a script's exit status before its output is taken as complete while a
# background process still holds it open (OpenSSH would wait for that process).
_TRAILING_QUIET = 2.0

# The login user's script is read straight from the channel (fd 3), with /dev/null as its stdin,
# by the login shell itself when that is bash and not in POSIX mode (as `ssh instance "$script"`
# runs it), else by /bin/bash: no wrapper process waits around it, on each of many instances at
# once. sshd made that shell a session and process-group leader, so its pid, announced first on
# stderr, names the group to kill. A signal that ends it arrives as "exit-signal" (see _on_request).
_AS_LOGIN_USER = (
    'echo "pymlsql:pid=$$" >&2; cd ~ || exit; '
    'if [ -n "$BASH_VERSION" ] && ! shopt -qo posix; then . /dev/fd/3 3<&0 </dev/null; '
    "else exec /bin/bash /dev/fd/3 3<&0 </dev/null; fi"
)
# Another user's script runs like `su - USER` would, from a private temporary file (mktemp makes it
# 0600) removed however the script ends, in a session of its own whose id is announced first.
# `su -c` puts the user's shell in yet another session, so killing means the group of the
# announced process and the groups of its children (see _GROUPS).
_AS_OTHER_USER = r"""
u={user}
if ! id -u "$u" >/dev/null 2>&1; then
  printf 'pymlsql:pid=0\npymlsql: no user %s\n' "$u" >&2
  exit {no_user}
fi
f=$(mktemp /tmp/.pymlsql-script.XXXXXXXX) || exit 124
trap 'rm -f "$f"' EXIT
cat > "$f" && chown "$u" "$f" || exit 124
setsid su - "$u" -s /bin/bash -c "exec /bin/bash $f" </dev/null &
pid=$!
echo "pymlsql:pid=$pid" >&2
trap 'kill -TERM -- {groups} 2>/dev/null; rm -f "$f"; exit 130' HUP INT TERM
wait $pid
"""
# With a terminal the script cannot come on stdin: it is staged first (_STAGE), then run on the
# pty in the foreground, so it is the terminal's process group and gets its hangup.
_STAGE = r"""
u={user}
if ! id -u "$u" >/dev/null 2>&1; then
  printf 'pymlsql: no user %s\n' "$u" >&2
  exit {no_user}
fi
f=$(mktemp /tmp/.pymlsql-script.XXXXXXXX) || exit 124
cat > "$f" || {{ rm -f "$f"; exit 124; }}
[ "${{USER:-$(id -un)}}" = "$u" ] || chown "$u" "$f" || {{ rm -f "$f"; exit 124; }}
printf '%s' "$f"
"""
_PTY_WRAPPER = r"""
u={user}; f={path}
trap 'rm -f "$f"' EXIT
trap 'kill -TERM -- {groups} 2>/dev/null; rm -f "$f"; exit 130' HUP INT TERM
pid=$$
echo "pymlsql:pid=$pid"
if [ "$(id -un)" = "$u" ]; then
  cd ~ && /bin/bash "$f"
else
  su --pty - "$u" -s /bin/bash -c "exec /bin/bash $f"
fi
"""
# The process groups to signal for the announced process $pid: its own and each child's.
_GROUPS = "-$pid $(pgrep -P $pid | sed s/^/-/)"


# The instance's numbers, not this machine's (they differ on macOS; Windows lacks most).
_LINUX_SIGNALS = {name: number for number, name in enumerate(
    "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP TSTP TTIN "
    "TTOU URG XCPU XFSZ VTALRM PROF WINCH IO PWR SYS".split(), start=1)}  # fmt: skip


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
    paramiko.Channel._handle_request(channel, message)


class SshConnection:
    """One authenticated SSH transport to one instance, reused for every command and copy."""

    def __init__(
        self,
        instance: Instance,
        key: paramiko.PKey,
        known_hosts: KnownHosts,
        *,
        public: bool = False,
        connect_timeout: float = 15.0,
        tcp_timeout: float | None = None,
        key_path: Path | None = None,
        keepalive: float = 10.0,
        expected_host_keys: ExpectedKeys | None = None,
    ) -> None:
        self.instance = instance
        self.keepalive = keepalive
        self.key_path = key_path
        self.known_hosts_path = known_hosts.path
        self.connect_timeout = connect_timeout
        self.address = instance.address(public=public)
        if not self.address:
            which = "public" if public else "private"
            raise SshError(
                f"{instance.instance_id} has no {which} IP address",
                hint="Start it with --need-public-ip true, or connect from inside its network.",
            )
        self.login = instance.ssh_login
        self._transport = self._connect(key, known_hosts, connect_timeout, tcp_timeout or connect_timeout,
                                        expected_host_keys)  # fmt: skip

    def _connect(self, key: paramiko.PKey, known_hosts: KnownHosts, timeout: float,
                 tcp_timeout: float, expected: ExpectedKeys | None) -> paramiko.Transport:  # fmt: skip
        where = f"{self.instance.instance_id} ({self.address}:{self.instance.ssh_port})"
        with ssh_errors(f"cannot reach SSH on {where}", host=self.address, reason=os_reason):
            sock = socket.create_connection((self.address, self.instance.ssh_port), timeout=tcp_timeout)
        # Without it, each small request (open a channel, send a script) waits out Nagle's
        # algorithm against the server's delayed ACK: about 40 ms per round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport._channel_handler_table = {**transport._channel_handler_table, MSG_CHANNEL_REQUEST: _on_request}
        options = transport.get_security_options()
        # AES-GCM first: paramiko moves output and copies markedly faster with it than with AES-CTR.
        options.ciphers = [c for c in options.ciphers if "gcm" in c] + [c for c in options.ciphers if "gcm" not in c]
        pinned = known_hosts.pinned_types(self.instance.instance_id)
        if pinned:
            options.key_types = [kind for kind in options.key_types if kind in pinned] or options.key_types
        handshake = ssh_errors(f"SSH handshake with {where} failed", host=self.address, hint=UNREACHABLE_HINT)
        try:
            with handshake, refused_key(where, self.login, host=self.address):
                transport.start_client(timeout=timeout)
                known_hosts.check(self.instance, self.address, transport.get_remote_server_key(), expected)
                transport.auth_publickey(self.login, key)
        except PymlsqlError:
            transport.close()
            raise
        transport.set_keepalive(max(1, int(self.keepalive)))
        return transport

    def check_alive(self) -> None:
        """Raises SshError unless the server answers a request within half the keepalive interval.

        Called after a silence: a cut network or a hung machine gives no error by itself, the
        connection would just wait forever.
        """
        lost = ssh_errors(
            f"lost the connection to {self.instance.instance_id} ({self.address}): no answer for "
            f"{self.keepalive * 1.5:g} s",
            host=self.address,
            hint="The instance may be down or unreachable: check it with `pymlsql list` or %ecs_list, "
            "then run the step again.",
            reason=None,
            cleanup=self._transport.close,
        )
        with lost:
            self._transport.open_session(timeout=self.keepalive / 2).close()

    @property
    def alive(self) -> bool:
        return self._transport.is_active()

    def close(self) -> None:
        self._transport.close()

    def run(
        self,
        script: str,
        *,
        user: str,
        sink: OutputSink,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        pty: bool = False,
        keep: int = 1 << 20,
    ) -> tuple[int, str, str, bool]:
        """Runs `script` as `user`, streaming to `sink`.

        Returns (exit status, stdout, stderr, truncated): of each stream only the last `keep`
        characters are kept, and `truncated` says whether anything was left out.
        With `pty`, the script runs on a terminal: programs that need one work, and its stderr
        arrives merged into stdout, as on any terminal.
        """
        source = self.instance.instance_id
        if pty:
            command = _PTY_WRAPPER.format(user=shlex.quote(user), path=shlex.quote(self._stage(script, user)),
                                          groups=_GROUPS)  # fmt: skip
        elif user == self.login:
            command = _AS_LOGIN_USER
        else:
            command = _AS_OTHER_USER.format(user=shlex.quote(user), no_user=_NO_USER_STATUS, groups=_GROUPS)
        channel = self._open()
        # Woken when output arrives or the channel closes, rather than polling: many scripts run at
        # once, each on a thread of its own.
        wake = threading.Event()
        channel.in_buffer.set_event(wake)
        channel.in_stderr_buffer.set_event(wake)
        out = StreamDecoder(source, "stdout", sink, terminal=pty, keep=keep)
        err = StreamDecoder(source, "stderr", sink, keep=keep)
        header: bytearray | None = bytearray()  # the wrapper's pid line, first on stderr (stdout on a pty)
        pid = 0
        started = heard = last_output = time.monotonic()
        ended_at = 0.0  # when the exit status came

        def announced(chunk: bytes) -> bytes:
            nonlocal header, pid
            if header is None:
                return chunk
            header += chunk
            if b"\n" not in header:
                return b""
            line, _, rest = bytes(header).partition(b"\n")
            if line.rstrip(b"\r").startswith(_PID_MARK):
                pid, chunk = int(line.rstrip(b"\r")[len(_PID_MARK) :] or 0), rest
                if pid == 0:
                    chunk = b""  # the wrapper's complaint that the user does not exist: an error, not output
            else:  # the wrapper failed before announcing: all of it is real output
                pid, chunk = -1, bytes(header)
            header = None
            return chunk

        try:
            with session_errors(source, host=self.address):
                if pty:
                    channel.get_pty(term="xterm", width=160, height=48)
                channel.exec_command(command)
                if not pty:
                    channel.sendall(script.encode())
                    channel.shutdown_write()
                while True:
                    busy = False
                    while channel.recv_ready():
                        chunk = channel.recv(_CHUNK)
                        busy = True
                        if chunk := (announced(chunk) if pty else chunk):
                            out.feed(chunk)
                    while channel.recv_stderr_ready():
                        chunk = channel.recv_stderr(_CHUNK)
                        busy = True
                        if chunk := (chunk if pty else announced(chunk)):
                            err.feed(chunk)
                    # Read before the buffers are looked at: all output is in them once the end came.
                    output_ended = channel.eof_received or channel.closed
                    if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                        # sshd may send the exit status before the last output still in the pipe: wait
                        # for the end of the output, unless a background process keeps it open and quiet.
                        ended_at = ended_at or time.monotonic()
                        if output_ended or time.monotonic() - max(ended_at, last_output) > _TRAILING_QUIET:
                            break
                    if cancel is not None and cancel.is_set():
                        self._kill(pid)
                        raise KeyboardInterrupt
                    if timeout is not None and time.monotonic() - started > timeout:
                        self._kill(pid)
                        raise WaitTimeoutError(
                            f"the script on {source} did not finish within {timeout:g} s; it was stopped",
                            hint="Raise the timeout, or run long jobs in the background (nohup CMD > CMD.log 2>&1 &).",
                        )
                    if busy:
                        heard = last_output = time.monotonic()
                    elif time.monotonic() - heard > self.keepalive:
                        self.check_alive()
                        heard = time.monotonic()
                    elif channel.eof_received and not channel.exit_status_ready():
                        channel.status_event.wait(0.25)  # all output is in; the exit status follows
                    else:
                        wake.wait(0.25)
                out.feed(bytes(header or b"") if pty else b"", final=True)
                err.feed(b"" if pty else bytes(header or b""), final=True)
                status = channel.recv_exit_status()
        finally:
            channel.close()
        if status == _NO_USER_STATUS and pid == 0:
            raise SshError(
                f"there is no user {user!r} on {source}",
                host=self.address,
                hint=NO_USER_HINT,
            )
        return status, out.text, err.text, out.truncated or err.truncated

    def _stage(self, script: str, user: str) -> str:
        """Writes the script to a private temporary file on the instance; returns its path."""
        channel = self._open()
        try:
            with session_errors(self.instance.instance_id, host=self.address):
                channel.exec_command(_STAGE.format(user=shlex.quote(user), no_user=_NO_USER_STATUS))
                channel.sendall(script.encode())
                channel.shutdown_write()
                path = channel.makefile("rb").read().decode().strip()
                problem = channel.makefile_stderr("rb").read().decode().strip()
                status = channel.recv_exit_status()
        finally:
            channel.close()
        if status == _NO_USER_STATUS:
            raise SshError(
                f"there is no user {user!r} on {self.instance.instance_id}",
                host=self.address,
                hint=NO_USER_HINT,
            )
        if status != 0 or not path:
            raise SshError(f"cannot stage the script on {self.instance.instance_id}: {problem}", host=self.address)
        return path

    def _kill(self, pid: int) -> None:
        if pid <= 0:
            return
        # If the connection is gone, so is the session, and with it the script.
        with contextlib.suppress(*FAILURES):
            channel = self._open()
            # Children are listed before anything is signalled: once su is gone they are orphans.
            channel.exec_command(
                f'pid={pid}; groups="{_GROUPS}"; kill -TERM -- $groups 2>/dev/null; sleep 1; '
                "kill -KILL -- $groups 2>/dev/null; true"
            )
            channel.recv_exit_status()
            channel.close()

    def open_channel(self, *, window_size: int | None = None, max_packet_size: int | None = None) -> paramiko.Channel:
        """A new session channel; a wide window lets bulk data flow without waiting for acks."""
        return self._open(window_size=window_size, max_packet_size=max_packet_size)

    def _open(self, *, window_size: int | None = None, max_packet_size: int | None = None) -> paramiko.Channel:
        with ssh_errors(f"cannot open an SSH session on {self.instance.instance_id}", host=self.address):
            return self._transport.open_session(timeout=30, window_size=window_size, max_packet_size=max_packet_size)

    def command(self, command: str) -> tuple[int, str]:
        """Runs a short command as the login user; returns (exit status, stdout + stderr)."""
        channel = self._open()
        output, errors = bytearray(), bytearray()
        try:
            with session_errors(self.instance.instance_id, host=self.address):
                channel.settimeout(self.keepalive)
                channel.exec_command(command)
                channel.shutdown_write()
                while True:
                    try:
                        while channel.recv_stderr_ready():
                            errors += channel.recv_stderr(_CHUNK)
                        chunk = channel.recv(_CHUNK)
                    except socket.timeout:
                        self.check_alive()
                        continue
                    if not chunk:
                        break
                    output += chunk
                while channel.recv_stderr_ready():
                    errors += channel.recv_stderr(_CHUNK)
                return channel.recv_exit_status(), (output + errors).decode(errors="replace")
        finally:
            channel.close()

    def stream(self, command: str) -> ChannelStream:
        """Runs `command` as the login user on a channel made for bulk data."""
        channel = self._open(window_size=_STREAM_WINDOW, max_packet_size=_STREAM_PACKET)
        return ChannelStream(channel, command, self.instance.instance_id, self)


class ChannelStream:
    """A command on an exec channel with a wide window, for bulk data in either direction.

    Its methods raise SshError when the connection breaks.
    """

    def __init__(self, channel: paramiko.Channel, command: str, where: str, connection: SshConnection) -> None:
        self._channel, self._where, self._connection = channel, where, connection
        with self._broken():
            self._channel.settimeout(connection.keepalive)
            self._channel.exec_command(command)

    def _broken(self) -> contextlib.AbstractContextManager[None]:
        return session_errors(self._where, cleanup=self._channel.close)

    def _patiently(self, step: Callable[[], T]) -> T:
        """Runs a blocking step; after each silence of a keepalive interval, checks the server answers."""
        with self._broken():
            while True:
                try:
                    return step()
                except socket.timeout:
                    self._connection.check_alive()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        # Slices of one packet each: paramiko's sendall would copy the remainder after every packet.
        for start in range(0, len(view), _STREAM_PACKET):
            piece = view[start : start + _STREAM_PACKET]
            sent = 0
            while sent < len(piece):
                sent += self._patiently(lambda piece=piece, sent=sent: self._channel.send(piece[sent:]))

    def pour(self, source: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := cast(io.BufferedReader, source).read1(_STREAM_WINDOW // 16):
            self.write(chunk)
            count(len(chunk))

    def close_input(self) -> None:
        if not self._channel.closed:
            with self._broken():
                self._channel.shutdown_write()

    def read(self, size: int) -> bytes:
        return self._patiently(lambda: self._channel.recv(size))

    def drain(self, target: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := self.read(_STREAM_WINDOW // 16):
            target.write(chunk)
            count(len(chunk))

    def finish(self, timeout: float) -> tuple[int, str]:
        if not self._channel.status_event.wait(timeout):
            self._channel.close()
            return -1, f"no exit status within {timeout:g} s"
        errors = bytearray()
        while self._channel.recv_stderr_ready() and len(errors) < _STREAM_ERRORS_KEPT:
            errors += self._channel.recv_stderr(_STREAM_ERRORS_KEPT)
        status = self._channel.recv_exit_status()
        self._channel.close()
        return status, errors.decode(errors="replace")

    def abort(self) -> None:
        self._channel.close()
