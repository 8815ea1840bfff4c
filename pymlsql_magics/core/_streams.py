"""Byte streams to and from a command on an instance, for bulk data such as a copy's tar stream.

Large streams go through the OpenSSH client when it is installed: its C packet handling and
AES-GCM move more bytes per second than paramiko can on the same CPU. It checks
the host key against the key this tool pinned (HostKeyAlias = instance id, StrictHostKeyChecking)
and uses the same private key and the same algorithms (see _algorithms, one policy for both
clients). Without it, or for small streams (a handshake costs more than the data), the stream is an
exec channel of the connection already open.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable
from typing import IO, BinaryIO, Protocol, cast

from ._errors import SshError
from ._ssh import SshConnection

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

# A new OpenSSH connection costs about 0.35 s here (client start, handshake, the server's fork and
# PAM session) and then moves ~200 MB/s against ~150 MB/s for paramiko's channel: it pays off only
# for streams of a few hundred megabytes.
OPENSSH_FROM = 256 << 20
_ERRORS_KEPT = 65536
# Pipes this wide let the kernel move 256 KiB per system call between the local tar and ssh, while
# dozens of copies at once stay well within a user's share of pipe memory (pipe-user-pages-soft).
_PIPE_SIZE = 256 << 10
_SPLICE = getattr(os, "splice", None)  # Linux
_SET_PIPE_SIZE = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux


class RemoteStream(Protocol):
    """A running command: its stdin to write, its stdout to read, then its status and stderr."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def pour(self, source: BinaryIO, count: Callable[[int], None]) -> None:
        """Writes everything `source` gives until its end, calling `count` with each amount."""

    def close_input(self) -> None: ...

    def read(self, size: int) -> bytes: ...

    def drain(self, target: BinaryIO, count: Callable[[int], None]) -> None:
        """Writes everything the command prints to `target` until its end, calling `count` with each amount."""

    def finish(self, timeout: float) -> tuple[int, str]: ...

    def abort(self) -> None: ...


def open_stream(connection: SshConnection, command: str, *, size: int) -> RemoteStream:
    """Runs `command` as the login user; `size` is how many bytes are about to move."""
    argv = _openssh_argv(connection, command) if size >= OPENSSH_FROM else None
    if argv is not None:
        return OpenSshStream(argv, where=connection.instance.instance_id)
    return connection.stream(command)


class OpenSshStream:
    """The OpenSSH client as a subprocess; stderr is drained on a thread so it can never block."""

    def __init__(self, argv: list[str], *, where: str) -> None:
        self._where = where
        # A session of its own: a Ctrl-C in the terminal reaches Python, which ends the copy
        # cleanly, instead of killing ssh mid-stream.
        self._process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self._errors = bytearray()
        self._drain = threading.Thread(target=self._read_errors, daemon=True)
        self._drain.start()

    def _read_errors(self) -> None:
        assert self._process.stderr is not None
        errors = cast(io.BufferedReader, self._process.stderr)
        for chunk in iter(lambda: errors.read1(8192), b""):
            if len(self._errors) < _ERRORS_KEPT:
                self._errors += chunk

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(data)

    def pour(self, source: BinaryIO, count: Callable[[int], None]) -> None:
        assert self._process.stdin is not None
        _move(source, self._process.stdin, count)

    def drain(self, target: BinaryIO, count: Callable[[int], None]) -> None:
        assert self._process.stdout is not None
        _move(self._process.stdout, target, count)

    def close_input(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass

    def read(self, size: int) -> bytes:
        return cast(io.BufferedReader, self._process.stdout).read1(size)

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            status = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            return -1, f"no exit status within {timeout:g} s"
        self._close_pipes()
        text = self._errors.decode(errors="replace")
        if status == 255:  # ssh's own failure: the command never ran or the connection broke
            raise SshError(f"the OpenSSH connection to {self._where} failed: {text.strip() or 'exit 255'}")
        return status, text

    def abort(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        self._drain.join(5.0)
        for pipe in (self._process.stdin, self._process.stdout, self._process.stderr):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


def _move(source: IO[bytes], target: IO[bytes], count: Callable[[int], None]) -> None:
    """Everything `source` gives until its end, into `target`, calling `count` with each amount.

    Where the kernel can splice one pipe into another, the bytes never pass through Python.
    """
    target.flush()
    out_of, into = source.fileno(), target.fileno()
    if _SPLICE is not None and _widened(out_of) and _widened(into):
        while moved := _SPLICE(out_of, into, _PIPE_SIZE):
            count(moved)
        return
    while chunk := cast(io.BufferedReader, source).read1(_PIPE_SIZE):
        target.write(chunk)
        count(len(chunk))


def _widened(pipe: int) -> bool:
    """Whether `pipe` is a pipe, made as wide as _PIPE_SIZE if the system lets it."""
    try:
        if not stat.S_ISFIFO(os.fstat(pipe).st_mode):
            return False
        if _SET_PIPE_SIZE is not None:
            fcntl.fcntl(pipe, _SET_PIPE_SIZE, _PIPE_SIZE)
    except OSError:
        pass  # a narrower pipe is only slower
    return True


def _openssh_argv(connection: SshConnection, command: str) -> list[str] | None:
    """The ssh command line for `command`, or None when OpenSSH cannot be used here."""
    ssh = shutil.which("ssh")
    key_path = connection.key_path
    if ssh is None or key_path is None or not os.path.exists(connection.known_hosts_path):
        return None
    try:
        # ssh refuses a key others can read; paramiko does not, so that key still works through it.
        if stat.S_IMODE(os.stat(key_path).st_mode) & 0o077:
            return None
    except OSError:
        return None
    instance = connection.instance
    options = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityFile": str(key_path),
        # The host key must be the one pinned for this instance id on first contact.
        "HostKeyAlias": instance.instance_id,
        "UserKnownHostsFile": str(connection.known_hosts_path),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ConnectTimeout": str(int(connection.connect_timeout)),
        # As the paramiko connections: a silent server is given up on within 1.5 keepalive intervals.
        "ServerAliveInterval": str(max(1, round(connection.keepalive / 2))),
        "ServerAliveCountMax": "3",
        **connection.algorithms.openssh_options(),
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "LogLevel": "ERROR",
    }
    argv = [ssh, "-F", "/dev/null", "-T"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return [*argv, "-p", str(instance.ssh_port), "-l", connection.login, "--", connection.address, command]
