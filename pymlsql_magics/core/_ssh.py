"""SSH to instances through paramiko: the only module that imports it.

Host keys are pinned per instance id in the tool's own known_hosts file on first contact and
checked on every later one. Scripts run from a temporary file that the wrapper removes however
the script ends; its process groups are killed on timeout or interrupt.
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ._errors import HostKeyMismatchError, PymlsqlError, SshError, WaitTimeoutError
from ._output import OutputSink, StreamDecoder
from ._results import Instance

_PID_MARK = b"pymlsql:pid="
_NO_USER_STATUS = 125
_CHUNK = 32768

# Runs the script (sent on stdin) from a private temporary file, as USER like `su - USER` would, in
# a session of its own whose id is announced first on stderr so it can be killed as a group.
# `su -c` puts the user's shell in yet another session, so killing means the group of the
# announced process and the groups of its children (see _GROUPS).
_WRAPPER = r"""
u={user}
if ! id -u "$u" >/dev/null 2>&1; then
  printf 'pymlsql:pid=0\npymlsql: no user %s\n' "$u" >&2
  exit {no_user}
fi
f=$(mktemp /tmp/.pymlsql-script.XXXXXXXX) || exit 124
trap 'rm -f "$f"' EXIT
cat > "$f" && chmod 0600 "$f" || exit 124
[ "$(id -un)" = "$u" ] || chown "$u" "$f" || exit 124
if [ "$(id -un)" = "$u" ]; then
  (cd ~ && exec setsid /bin/bash "$f" </dev/null) &
else
  setsid su - "$u" -s /bin/bash -c "exec /bin/bash $f" </dev/null &
fi
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
cat > "$f" && chmod 0600 "$f" || {{ rm -f "$f"; exit 124; }}
[ "$(id -un)" = "$u" ] || chown "$u" "$f" || {{ rm -f "$f"; exit 124; }}
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
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SshError(
            f"{path} is not an unencrypted private key",
            hint="Use the key file ECS created for the key pair, without a passphrase.",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        text = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        return paramiko.Ed25519Key(file_obj=io.StringIO(text.decode()))
    raise SshError(f"{path}: unsupported key type {type(key).__name__}")


def public_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


class KnownHosts:
    """The tool's own known_hosts file: host keys pinned per instance id on first contact."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def check(self, instance: Instance, address: str, offered: paramiko.PKey) -> None:
        """Pins `offered` for a new instance; raises HostKeyMismatchError if it differs from the pin."""
        with self._lock:
            keys = self._load()
            pinned = keys.lookup(instance.instance_id)
            if pinned is None or offered.get_name() not in pinned:
                if pinned:
                    # Pinned with another key type: only the pinned types are offered, so this is
                    # a server that holds none of them.
                    self._refuse(instance, address, next(iter(pinned.values())), offered)
                keys.add(instance.instance_id, offered.get_name(), offered)
                self._save(keys)
                return
            if pinned[offered.get_name()] != offered:
                self._refuse(instance, address, pinned[offered.get_name()], offered)

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
        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def _save(self, keys: paramiko.HostKeys) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".known_hosts.")
        os.close(fd)
        keys.save(temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)


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
    ) -> None:
        self.instance = instance
        self.address = instance.address(public=public)
        if not self.address:
            which = "public" if public else "private"
            raise SshError(
                f"{instance.instance_id} has no {which} IP address",
                hint="Start it with --need-public-ip true, or connect from inside its network.",
            )
        self.login = instance.ssh_login
        self._transport = self._connect(key, known_hosts, connect_timeout)

    def _connect(self, key: paramiko.PKey, known_hosts: KnownHosts, timeout: float) -> paramiko.Transport:
        where = f"{self.instance.instance_id} ({self.address}:{self.instance.ssh_port})"
        try:
            sock = socket.create_connection((self.address, self.instance.ssh_port), timeout=timeout)
        except OSError as error:
            raise SshError(f"cannot reach SSH on {where}: {error.strerror or error}", host=self.address) from None
        transport = paramiko.Transport(sock)
        pinned = known_hosts.pinned_types(self.instance.instance_id)
        if pinned:
            options = transport.get_security_options()
            options.key_types = [kind for kind in options.key_types if kind in pinned] or options.key_types
        try:
            transport.start_client(timeout=timeout)
            known_hosts.check(self.instance, self.address, transport.get_remote_server_key())
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
            raise SshError(f"SSH handshake with {where} failed: {error}", host=self.address) from None
        transport.set_keepalive(15)
        return transport

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
    ) -> tuple[int, str, str]:
        """Runs `script` as `user`, streaming to `sink`; returns (exit status, stdout, stderr).

        With `pty`, the script runs on a terminal: programs that need one work, and its stderr
        arrives merged into stdout, as on any terminal.
        """
        source = self.instance.instance_id
        if pty:
            command = _PTY_WRAPPER.format(user=shlex.quote(user), path=shlex.quote(self._stage(script, user)),
                                          groups=_GROUPS)  # fmt: skip
        else:
            command = _WRAPPER.format(user=shlex.quote(user), no_user=_NO_USER_STATUS, groups=_GROUPS)
        channel = self._open()
        out = StreamDecoder(source, "stdout", sink, terminal=pty)
        err = StreamDecoder(source, "stderr", sink)
        header: bytearray | None = bytearray()  # the wrapper's pid line, first on stderr (stdout on a pty)
        pid = 0
        started = time.monotonic()

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
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if cancel is not None and cancel.is_set():
                    self._kill(pid)
                    raise KeyboardInterrupt
                if timeout is not None and time.monotonic() - started > timeout:
                    self._kill(pid)
                    raise WaitTimeoutError(
                        f"the script on {source} did not finish within {timeout:g} s; it was stopped",
                        hint="Raise the timeout, or run long jobs in the background (nohup ... &).",
                    )
                if not busy:
                    channel.status_event.wait(0.02)
            out.feed(bytes(header or b"") if pty else b"", final=True)
            err.feed(b"" if pty else bytes(header or b""), final=True)
            status = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SshError(f"the SSH session to {source} broke: {error}", host=self.address) from None
        finally:
            channel.close()
        if status == _NO_USER_STATUS and err.text.startswith(f"pymlsql: no user {user}"):
            raise SshError(
                f"there is no user {user!r} on {source}",
                host=self.address,
                hint="Create the user first (useradd), or pick another --execute-user.",
            )
        return status, out.text, err.text

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
                hint="Create the user first (useradd), or pick another --execute-user.",
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

    def _open(self) -> paramiko.Channel:
        try:
            return self._transport.open_session(timeout=30)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SshError(
                f"cannot open an SSH session on {self.instance.instance_id}: {error}", host=self.address
            ) from None

    def command(self, command: str) -> tuple[int, str]:
        """Runs a short command as the login user; returns (exit status, stdout + stderr)."""
        channel = self._open()
        try:
            channel.exec_command(command)
            channel.shutdown_write()
            data = channel.makefile("rb").read() + channel.makefile_stderr("rb").read()
            return channel.recv_exit_status(), data.decode(errors="replace")
        finally:
            channel.close()

    def sftp(self) -> paramiko.SFTPClient:
        client = paramiko.SFTPClient.from_transport(self._transport)
        if client is None:
            raise SshError(f"cannot open SFTP on {self.instance.instance_id}", host=self.address)
        return client


def is_dir(mode: int | None) -> bool:
    return mode is not None and stat.S_ISDIR(mode)


ProgressCallback = Callable[[int, int], None]
