"""Port forwards: a local TCP port on 127.0.0.1 carried to a port of an instance over SSH.

Each local connection becomes one `direct-tcpip` channel of the instance's pinned-host-key SSH
connection, so nothing but port 22 needs to be open to the client: no security-group rule, no
listener on any address but this machine's loopback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import paramiko

from ._errors import ConfigError, PymlsqlError
from ._ssh import SshConnection

_CHUNK = 1 << 16


def check_port(port: int, flag: str) -> int:
    """`port` if it is one (1 to 65535); else ConfigError naming the flag and the value."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag} {port} is not a port: a port is a number from 1 to 65535",
                          hint=f"e.g. {flag} 8080")  # fmt: skip
    return port


class Forward:
    """`http://127.0.0.1:{local_port}/` reaches `remote_host:remote_port` as seen from the instance.

    `connect()` gives the SSH connection to carry each new local connection; a broken one is
    replaced by the next call (the fleet keeps and re-opens its connections).
    """

    def __init__(self, instance_id: str, remote_host: str, remote_port: int, connect: Callable[[], SshConnection],
                 local_port: int = 0) -> None:  # fmt: skip
        self.instance_id = instance_id
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._connect = connect
        connect().open_tunnel(remote_host, remote_port, ("127.0.0.1", 0)).close()  # something listens there
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", local_port))
        except OSError as error:
            self._listener.close()
            raise PymlsqlError(
                f"cannot listen on 127.0.0.1:{local_port} for the forward to {instance_id}: {error.strerror}",
                hint="leave out --local-port to have a free port chosen, or pick another.",
            ) from None
        self._listener.listen(64)
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name=f"forward-{self.local_port}", daemon=True).start()

    def __repr__(self) -> str:
        return f"Forward({self.url} -> {self.instance_id} {self.remote_host}:{self.remote_port})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stops listening and ends the connections it carries."""
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress: closing alone does not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            carried, self._open = list(self._open), set()
        for local in carried:
            try:
                local.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                local, origin = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._carry, args=(local, origin), daemon=True).start()

    def _carry(self, local: socket.socket, origin: tuple[str, int]) -> None:
        try:
            channel = self._connect().open_tunnel(self.remote_host, self.remote_port, origin)
        except PymlsqlError:
            local.close()  # the instance or its service is gone: this connection fails, the forward lives
            return
        with self._lock:
            self._open.add(local)
        upward = threading.Thread(target=_copy, args=(local.recv, channel.sendall, channel.shutdown_write),
                                  daemon=True)  # fmt: skip
        upward.start()
        _copy(channel.recv, local.sendall, lambda: local.shutdown(socket.SHUT_WR))
        upward.join()
        channel.close()
        local.close()
        with self._lock:
            self._open.discard(local)


def _copy(read: Callable[[int], bytes], write: Callable[[bytes], object], finish: Callable[[], object]) -> None:
    """One direction of a carried connection, until its end or a failure; then `finish` the other side."""
    try:
        while data := read(_CHUNK):
            write(data)
    except (OSError, paramiko.SSHException):
        pass
    finally:
        try:
            finish()
        except (OSError, paramiko.SSHException):
            pass
