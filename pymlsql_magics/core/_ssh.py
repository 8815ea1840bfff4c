"""SSH to instances through paramiko: one connection per instance, its commands and streams.

Host keys are checked against the pins in the tool's own known_hosts file (see _known_hosts). A
script comes on the channel's stdin; the login user's shell reads it from there, another user's
runs from a private temporary file removed however the script ends.
Its process groups are killed on timeout or interrupt.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from pathlib import Path

import paramiko

from . import _remote as remote
from ._algorithms import DEFAULT_ALGORITHMS, SshAlgorithms
from ._channel_stream import STREAM_PACKET, STREAM_WINDOW, ChannelStream
from ._errors import PymlsqlError, SshError
from ._exec import ExecSession, hear_exit_signals
from ._face import PYTHON, Face
from ._known_hosts import ExpectedKeys, KnownHosts
from ._output import OutputSink
from ._results import Instance
from ._ssh_errors import FAILURES, os_reason, refused_key, session_errors, ssh_errors

_CHUNK = 32768
# paramiko's transport thread logs the failures this module turns into one clear SshError (a
# reset during the banner while an instance boots, say); with no logging set up, Python would
# print them as tracebacks. An application that configures logging still gets them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
        algorithms: SshAlgorithms = DEFAULT_ALGORITHMS,
        face: Face = PYTHON,
    ) -> None:
        self.instance = instance
        self.face = face
        self.algorithms = algorithms
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
        self._key_fingerprint = key.fingerprint
        self._transport = self._connect(key, known_hosts, connect_timeout, tcp_timeout or connect_timeout,
                                        expected_host_keys)  # fmt: skip

    def serves(self, instance: Instance, public: bool, key: paramiko.PKey) -> bool:
        """Whether this connection is the one a new connection to `instance` with `key` would make."""
        return (instance.address(public=public) == self.address and instance.ssh_port == self.instance.ssh_port
                and instance.ssh_login == self.login and key.fingerprint == self._key_fingerprint)  # fmt: skip

    def _connect(self, key: paramiko.PKey, known_hosts: KnownHosts, timeout: float,
                 tcp_timeout: float, expected: ExpectedKeys | None) -> paramiko.Transport:  # fmt: skip
        where = f"{self.instance.instance_id} ({self.address}:{self.instance.ssh_port})"
        with ssh_errors(f"cannot reach SSH on {where}", host=self.address, reason=os_reason):
            sock = socket.create_connection((self.address, self.instance.ssh_port), timeout=tcp_timeout)
        # Without it, each small request (open a channel, send a script) waits out Nagle's
        # algorithm against the server's delayed ACK: about 40 ms per round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        hear_exit_signals(transport)
        options = transport.get_security_options()
        options.ciphers = self.algorithms.paramiko_ciphers(options.ciphers)
        transport.use_compression(self.algorithms.compression)
        pinned = known_hosts.pinned_types(self.instance.instance_id)
        if pinned:
            options.key_types = [kind for kind in options.key_types if kind in pinned] or options.key_types
        unreachable = self.face.unreachable_hint()
        handshake = ssh_errors(f"SSH handshake with {where} failed", host=self.address, hint=unreachable)
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
            hint=self.face.unreachable_hint("run the step again"),
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
            command = remote.on_terminal(user, self._stage(script, user))
        else:
            command = remote.as_login_user() if user == self.login else remote.as_other_user(user)
        channel = self._open()
        session = ExecSession(channel, source=source, sink=sink, pty=pty, keep=keep, keepalive=self.keepalive,
                              check_alive=self.check_alive, kill=self._kill)  # fmt: skip
        try:
            with session_errors(source, host=self.address):
                status = session.run(command, None if pty else script.encode(), timeout=timeout, cancel=cancel)
        finally:
            channel.close()
        if status == remote.NO_USER_STATUS and session.header.pid == 0:
            raise remote.no_user_error(user, source, host=self.address, face=self.face)
        return status, session.stdout.text, session.stderr.text, session.truncated

    def _stage(self, script: str, user: str) -> str:
        """Writes the script to a private temporary file on the instance; returns its path."""
        channel = self._open()
        try:
            with session_errors(self.instance.instance_id, host=self.address):
                channel.exec_command(remote.stage(user))
                channel.sendall(script.encode())
                channel.shutdown_write()
                path = channel.makefile("rb").read().decode().strip()
                problem = channel.makefile_stderr("rb").read().decode().strip()
                status = channel.recv_exit_status()
        finally:
            channel.close()
        if status == remote.NO_USER_STATUS:
            raise remote.no_user_error(user, self.instance.instance_id, host=self.address, face=self.face)
        if status != 0 or not path:
            raise SshError(f"cannot stage the script on {self.instance.instance_id}: {problem}", host=self.address)
        return path

    def _kill(self, pid: int) -> None:
        if pid <= 0:
            return
        # If the connection is gone, so is the session, and with it the script.
        with contextlib.suppress(*FAILURES):
            channel = self._open()
            channel.exec_command(remote.kill_groups(pid))
            channel.recv_exit_status()
            channel.close()

    def open_channel(self, *, window_size: int | None = None, max_packet_size: int | None = None) -> paramiko.Channel:
        """A new session channel; a wide window lets bulk data flow without waiting for acks."""
        return self._open(window_size=window_size, max_packet_size=max_packet_size)

    def open_tunnel(self, host: str, port: int, origin: tuple[str, int]) -> paramiko.Channel:
        """A `direct-tcpip` channel: sshd on the instance connects to HOST:PORT (as seen from there).

        Raises SshError naming the target when nothing accepts the connection there.
        """
        with ssh_errors(f"nothing answers on {host}:{port} as seen from {self.instance.instance_id}",
                        host=self.address,
                        hint=f"start the service on the instance first (is it listening on {host}:{port}?)",
                        reason=None):  # fmt: skip
            return self._transport.open_channel("direct-tcpip", (host, port), origin, timeout=30)

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
        channel = self._open(window_size=STREAM_WINDOW, max_packet_size=STREAM_PACKET)
        return ChannelStream(channel, command, where=self.instance.instance_id, keepalive=self.keepalive,
                             check_alive=self.check_alive)  # fmt: skip
