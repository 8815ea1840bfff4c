"""SSH to instances through paramiko: the only module that imports it.

Host keys are pinned per instance id in the tool's own known_hosts file on first contact and
checked on every later one. A script comes on the channel's stdin; the login user's shell reads it
from there, another user's runs from a private temporary file removed however the script ends.
Its process groups are killed on timeout or interrupt.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shlex
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import paramiko
import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.common import MSG_CHANNEL_REQUEST

from ._errors import HostKeyMismatchError, PymlsqlError, SshError, WaitTimeoutError
from ._output import OutputSink, StreamDecoder
from ._results import Instance

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


PrivateKey = paramiko.PKey


def load_private_key(path: Path) -> paramiko.PKey:
    """Reads an unencrypted private key: OpenSSH, PEM or PKCS#8 (as ECS's CreateKeyPair returns)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SshError(
            f"the private key {path} does not exist",
            hint="Pass --key-pair-name for a key in ~/.ssh, or create one with --init-ssh-key true.",
        ) from None
    except PermissionError:
        raise SshError(f"cannot read the private key {path}", hint="Check its owner and mode (600).") from None
    try:
        return paramiko.PKey.from_path(str(path))
    except (paramiko.SSHException, ValueError):
        pass
    try:
        return private_key_from_bytes(data)
    except ValueError:
        raise SshError(
            f"{path} is not an unencrypted private key",
            hint="Use the key file ECS created for the key pair, without a passphrase.",
        ) from None


def private_key_from_bytes(data: bytes) -> paramiko.PKey:
    """An unencrypted private key in OpenSSH, PEM or PKCS#8 form; raises ValueError otherwise."""
    try:
        key: Any = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("not an unencrypted private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        text = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        return paramiko.Ed25519Key(file_obj=io.StringIO(text.decode()))
    raise ValueError(f"unsupported key type {type(key).__name__}")


def public_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


# What cloud-init prints on the serial console at first boot, and ECS's GetInstanceConsoleOutput returns.
_CONSOLE_FINGERPRINTS = re.compile(
    r"-----BEGIN SSH HOST KEY FINGERPRINTS-----(.*?)-----END SSH HOST KEY FINGERPRINTS-----", re.S
)
_CONSOLE_KEYS = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)
_FINGERPRINT = re.compile(r"\bSHA256:[A-Za-z0-9+/]{43}\b")

ExpectedKeys = Callable[[], "set[str] | None"]


def console_fingerprints(console: str) -> set[str] | None:
    """The SHA256 fingerprints of the host keys the console shows, or None if it shows none.

    The last block counts: a re-created instance prints its new keys after the old ones.
    """
    found: set[str] | None = None
    for block in _CONSOLE_FINGERPRINTS.findall(console)[-1:]:
        found = set(_FINGERPRINT.findall(block))
    for block in _CONSOLE_KEYS.findall(console)[-1:]:
        for line in block.strip().splitlines():
            try:
                found = (found or set()) | {_public_key(line).fingerprint}
            except (paramiko.SSHException, ValueError, IndexError):
                continue
    return found or None


def host_keys_in_cloud_config(user_data: str | None) -> list[str]:
    """Public host key lines a `#cloud-config` sets through ssh_keys (derived from private keys if need be)."""
    if not user_data or not user_data.lstrip().startswith("#cloud-config"):
        return []
    try:
        config = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return []
    keys = config.get("ssh_keys") if isinstance(config, dict) else None
    if not isinstance(keys, dict):
        return []
    lines = []
    for name, value in keys.items():
        if not isinstance(value, str):
            continue
        if name.endswith("_public"):
            lines.append(value.strip())
        elif name.endswith("_private") and f"{name[: -len('_private')]}_public" not in keys:
            try:
                lines.append(public_key_line(private_key_from_bytes(value.encode())))
            except (paramiko.SSHException, ValueError):
                continue
    return lines


def _public_key(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class KnownHosts:
    """The tool's own known_hosts file: host keys pinned per instance id.

    A new instance's key is checked against the fingerprints its console shows when it shows
    some, so first contact is not blind trust; keys known in advance (cloud-config ssh_keys) are
    pinned before any connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: paramiko.HostKeys | None = None
        self._read_as: tuple[int, int, int] | None = None  # the file's inode, mtime and size then

    def check(self, instance: Instance, address: str, offered: paramiko.PKey,
              expected: ExpectedKeys | None = None) -> None:  # fmt: skip
        """Pins `offered` for a new instance; raises HostKeyMismatchError if it differs from the pin,
        or, on first contact, if it is not among the fingerprints `expected()` gives."""
        with self._lock:
            pinned = self._load().lookup(instance.instance_id)
        if pinned is not None and offered.get_name() in pinned:
            if pinned[offered.get_name()] != offered:
                self._refuse(instance, address, pinned[offered.get_name()], offered)
            return
        if pinned:
            # Pinned with another key type: only the pinned types are offered, so this is a server
            # that holds none of them.
            self._refuse(instance, address, next(iter(pinned.values())), offered)
        shown = expected() if expected is not None else None
        if shown is not None and offered.fingerprint not in shown:
            raise HostKeyMismatchError(
                f"the SSH host key {offered.fingerprint} offered by {instance.instance_id} ({address}) is not "
                "one its console output shows; refusing to connect",
                host=address,
                hint="Someone may be impersonating the instance. Compare the keys in the ECS console "
                "(GetInstanceConsoleOutput) with the instance before trusting it.",
            )
        self.pin(instance.instance_id, [public_key_line(offered)])

    def pin(self, instance_id: str, public_lines: list[str]) -> None:
        """Pins keys known without connecting, such as those a cloud-config gave the instance."""
        parsed = [_public_key(line) for line in public_lines]  # a bad line changes nothing
        with self._lock:
            keys = self._load()
            new = instance_id not in keys and self._read_as is not None
            for key in parsed:
                keys.add(instance_id, key.get_name(), key)
            if new:
                # A first pin is a line at the end: rewriting the whole file for each of a hundred
                # instances being started costs more than their handshakes.
                self._append(keys, [f"{instance_id} {key.get_name()} {key.get_base64()}\n"
                                    for key in keys.lookup(instance_id).values()])  # fmt: skip
            else:
                self._save(keys)

    def pinned_types(self, instance_id: str) -> list[str]:
        with self._lock:
            pinned = self._load().lookup(instance_id)
        return list(pinned.keys()) if pinned else []

    def forget(self, instance_ids: list[str]) -> None:
        with self._lock:
            keys = self._load()
            for instance_id in instance_ids:
                if instance_id in keys:
                    del keys[instance_id]
            self._save(keys)

    def _refuse(self, instance: Instance, address: str, pinned: paramiko.PKey, offered: paramiko.PKey) -> None:
        raise HostKeyMismatchError(
            f"the SSH host key of {instance.instance_id} ({address}) changed: pinned "
            f"{pinned.fingerprint}, offered {offered.fingerprint}; refusing to connect",
            host=address,
            hint=(
                "If the instance was re-created or its host keys were replaced on purpose, remove the "
                f"line for {instance.instance_id} from {self.path}; otherwise someone may be impersonating it."
            ),
        )

    def _load(self) -> paramiko.HostKeys:
        """The pinned keys, parsed again only when the file changed (another process may pin too):
        a start of a hundred instances reads them three times per instance."""
        now = self._signature()
        if self._keys is None or now != self._read_as:
            keys = paramiko.HostKeys()
            if now is not None:
                keys.load(str(self.path))
            self._keys, self._read_as = keys, now
        return self._keys

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def _append(self, keys: paramiko.HostKeys, lines: list[str]) -> None:
        before, self._keys = self._read_as, None  # changed in memory: read again unless the file holds it
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)  # never created here: _save makes it 0600
        except FileNotFoundError:
            self._save(keys)
            return
        with os.fdopen(fd, "r+b") as file:
            # A line removed by hand may have taken the last newline with it.
            ends_a_line = file.seek(0, os.SEEK_END) == 0 or os.pread(fd, 1, file.tell() - 1) == b"\n"
            text = ("" if ends_a_line else "\n") + "".join(lines)
            file.write(text.encode("ascii"))
        after = self._signature()
        if before is not None and after is not None and after[0] == before[0] and after[2] == before[2] + len(text):
            self._keys, self._read_as = keys, after  # nobody else wrote meanwhile

    def _save(self, keys: paramiko.HostKeys) -> None:
        self._keys = None  # changed in memory: read again unless the file now holds the change
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".known_hosts.")
        os.close(fd)
        keys.save(temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
        self._keys, self._read_as = keys, self._signature()


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
        try:
            sock = socket.create_connection((self.address, self.instance.ssh_port), timeout=tcp_timeout)
        except OSError as error:
            raise SshError(f"cannot reach SSH on {where}: {error.strerror or error}", host=self.address) from None
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
        try:
            transport.start_client(timeout=timeout)
            known_hosts.check(self.instance, self.address, transport.get_remote_server_key(), expected)
            transport.auth_publickey(self.login, key)
        except PymlsqlError:
            transport.close()
            raise
        except paramiko.AuthenticationException:
            transport.close()
            raise SshError(
                f"{where} refused the key for {self.login}",
                host=self.address,
                hint="Use the private key of the key pair the instance was started with (--key-pair-name).",
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as error:
            transport.close()
            raise SshError(
                f"SSH handshake with {where} failed: {error}",
                host=self.address,
                hint="The instance may be down, busy or unreachable: check it with `pymlsql list` or %ecs_list, "
                "then try again.",
            ) from None
        transport.set_keepalive(max(1, int(self.keepalive)))
        return transport

    def check_alive(self) -> None:
        """Raises SshError unless the server answers a request within half the keepalive interval.

        Called after a silence: a cut network or a hung machine gives no error by itself, the
        connection would just wait forever.
        """
        try:
            self._transport.open_session(timeout=self.keepalive / 2).close()
        except (paramiko.SSHException, OSError, EOFError):
            self._transport.close()
            raise SshError(
                f"lost the connection to {self.instance.instance_id} ({self.address}): no answer for "
                f"{self.keepalive * 1.5:g} s",
                host=self.address,
                hint="The instance may be down or unreachable: check it with `pymlsql list` or %ecs_list, "
                "then run the step again.",
            ) from None

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
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SshError(f"the SSH session to {source} broke: {error}", host=self.address) from None
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
            channel.exec_command(_STAGE.format(user=shlex.quote(user), no_user=_NO_USER_STATUS))
            channel.sendall(script.encode())
            channel.shutdown_write()
            path = channel.makefile("rb").read().decode().strip()
            problem = channel.makefile_stderr("rb").read().decode().strip()
            status = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SshError(
                f"the SSH session to {self.instance.instance_id} broke: {error}", host=self.address
            ) from None
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
        try:
            channel = self._open()
            # Children are listed before anything is signalled: once su is gone they are orphans.
            channel.exec_command(
                f'pid={pid}; groups="{_GROUPS}"; kill -TERM -- $groups 2>/dev/null; sleep 1; '
                "kill -KILL -- $groups 2>/dev/null; true"
            )
            channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass  # the connection is gone, and with it the session

    def open_channel(self, *, window_size: int | None = None, max_packet_size: int | None = None) -> paramiko.Channel:
        """A new session channel; a wide window lets bulk data flow without waiting for acks."""
        return self._open(window_size=window_size, max_packet_size=max_packet_size)

    def _open(self, *, window_size: int | None = None, max_packet_size: int | None = None) -> paramiko.Channel:
        try:
            return self._transport.open_session(timeout=30, window_size=window_size, max_packet_size=max_packet_size)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SshError(
                f"cannot open an SSH session on {self.instance.instance_id}: {error}", host=self.address
            ) from None

    def command(self, command: str) -> tuple[int, str]:
        """Runs a short command as the login user; returns (exit status, stdout + stderr)."""
        channel = self._open()
        output, errors = bytearray(), bytearray()
        try:
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
        except (paramiko.SSHException, OSError, EOFError) as error:
            where = self.instance.instance_id
            raise SshError(f"the SSH session to {where} broke: {error}", host=self.address) from None
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

    @contextlib.contextmanager
    def _broken(self) -> Iterator[None]:
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as error:
            self._channel.close()
            raise SshError(f"the SSH session to {self._where} broke: {error}") from None

    def _patiently(self, step: Callable[[], T]) -> T:
        """Runs a blocking step; after each silence of a keepalive interval, checks the server answers."""
        while True:
            try:
                return step()
            except socket.timeout:
                self._connection.check_alive()
            except (paramiko.SSHException, OSError, EOFError) as error:
                self._channel.close()
                raise SshError(f"the SSH session to {self._where} broke: {error}") from None

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

