"""Public addresses: the NAT in front of instances, with their security groups and bandwidth.

The machine the sandbox runs on is "the internet". A public address is a loopback address of
this machine; what listens there is this relay, never the instance: on each port its groups'
ingress rules open and the instance itself listens on (looked up every tick, so a port nobody
listens on refuses the connection, as it would on ECS), a connection from a source the rules admit
is carried into the instance's own network namespace, to its private address, through the
instance's bandwidth caps and the client's link. Any other connection is refused. The private
addresses themselves are not on this machine's network at all: they exist only inside the
namespaces.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ._netns import Namespace
from ._throttle import Link

_TICK = 0.1
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


@dataclass
class Exposure:
    """One public address in front of one running instance."""

    instance_id: str
    public_ip: str
    private_ip: str
    namespace: Namespace
    outbound: Link | None  # instance -> internet (InternetMaxBandwidthOut)
    inbound: Link | None  # internet -> instance (InternetMaxBandwidthIn)
    listeners: dict[int, socket.socket] = field(default_factory=dict)
    listening: frozenset[int] = frozenset()  # where the instance listened at the last look
    carried: set[socket.socket] = field(default_factory=set)


class Gate:
    """What the security groups allow, and what the metadata service says: the World answers."""

    def open_ranges(self, instance_id: str) -> list[tuple[int, int]]:
        raise NotImplementedError

    def admits(self, instance_id: str, port: int, source: str) -> bool:
        raise NotImplementedError

    def metadata(self, instance_id: str, key: str) -> str | None:
        """What the metadata service answers at /latest/meta-data/KEY ("" for the listing)."""
        raise NotImplementedError


class PublicAddresses:
    def __init__(self, gate: Gate, client_up: Link | None = None, client_down: Link | None = None) -> None:
        self._gate = gate
        self._client_up = client_up
        self._client_down = client_down
        self._lock = threading.Lock()
        self._exposed: dict[str, Exposure] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._pending: list[Callable[[], None]] = []
        self._closed = False
        self._loop = threading.Thread(target=self._serve, name="public-addresses", daemon=True)
        self._loop.start()

    # -- what the World tells it ------------------------------------------------------------

    def expose(self, exposure: Exposure) -> None:
        with self._lock:
            self._exposed[exposure.instance_id] = exposure
        self.refresh(exposure.instance_id)

    def withdraw(self, instance_id: str) -> None:
        """The machine is halting: its public address stops answering, its sessions end."""
        with self._lock:
            exposure = self._exposed.pop(instance_id, None)
        if exposure is None:
            return
        self._in_loop(lambda: self._close_listeners(exposure, set(exposure.listeners)))
        with self._lock:
            carried = list(exposure.carried)
        for connection in carried:
            _cut(connection)
        exposure.namespace.close()

    def refresh(self, *instance_ids: str) -> None:
        """Rules changed: listen on what they now open (all exposed instances when none named)."""
        self._in_loop(lambda: self._relisten(instance_ids or None))

    def close(self) -> None:
        with self._lock:
            ids = list(self._exposed)
        for instance_id in ids:
            self.withdraw(instance_id)
        self._closed = True
        self._wake()
        self._loop.join(timeout=5)

    # -- the loop: listening sockets, accepted connections ----------------------------------

    def _in_loop(self, change: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(change)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select(timeout=_TICK):
                if key.data is None:
                    self._wake_read.recv(4096)
                else:
                    self._accept(key.fileobj, *key.data)  # type: ignore[arg-type]
            with self._lock:
                pending, self._pending = self._pending, []
            for change in pending:
                change()
            self._relisten(None, changed_only=True)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def _relisten(self, instance_ids: tuple[str, ...] | None, *, changed_only: bool = False) -> None:
        """Listens where the rules open and the instance listens; at a tick (`changed_only`), only for
        the instances whose own listeners changed: the rules' changes come through refresh()."""
        with self._lock:
            exposures = [e for i, e in self._exposed.items() if instance_ids is None or i in instance_ids]
        for exposure in exposures:
            listening = frozenset(exposure.namespace.listening_ports(exposure.private_ip))
            if changed_only and listening == exposure.listening:
                continue
            exposure.listening = listening
            ranges = self._gate.open_ranges(exposure.instance_id)
            wanted = {port for port in listening if _within(port, ranges)}
            self._close_listeners(exposure, set(exposure.listeners) - wanted)
            for port in sorted(wanted - set(exposure.listeners)):
                self._listen(exposure, port)

    def _listen(self, exposure: Exposure, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((exposure.public_ip, port))
            listener.listen(128)
        except OSError:
            listener.close()  # taken on this machine: that port of the address stays closed
            return
        listener.setblocking(False)
        exposure.listeners[port] = listener
        self._selector.register(listener, selectors.EVENT_READ, (exposure, port))

    def _close_listeners(self, exposure: Exposure, ports: set[int]) -> None:
        for port in ports:
            listener = exposure.listeners.pop(port, None)
            if listener is not None:
                self._selector.unregister(listener)
                listener.close()

    def _accept(self, listener: socket.socket, exposure: Exposure, port: int) -> None:
        try:
            client, (source, _) = listener.accept()
        except (BlockingIOError, OSError):
            return
        client.setblocking(True)
        threading.Thread(
            target=self._carry, args=(client, source, exposure, port), name="public-connection", daemon=True
        ).start()

    def _carry(self, client: socket.socket, source: str, exposure: Exposure, port: int) -> None:
        if not self._gate.admits(exposure.instance_id, port, source):
            _refuse(client)
            return
        inside = exposure.namespace.socket()
        inside.settimeout(10)
        try:
            inside.connect((exposure.private_ip, port))
        except OSError:
            inside.close()
            _refuse(client)
            return
        inside.settimeout(None)
        for connection in (client, inside):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._exposed.get(exposure.instance_id) is not exposure:
                inside.close()
                _refuse(client)
                return
            exposure.carried.update((client, inside))
        up = [link for link in (exposure.inbound, self._client_up) if link]
        down = [link for link in (exposure.outbound, self._client_down) if link]
        upward = threading.Thread(target=_pump, args=(client, inside, up), name="public-up", daemon=True)
        upward.start()
        _pump(inside, client, down)
        upward.join()
        with self._lock:
            exposure.carried.difference_update((client, inside))
        client.close()
        inside.close()


def _pump(source: socket.socket, target: socket.socket, links: list[Link]) -> None:
    """Moves bytes from `source` to `target` through a pipe (splice: no copy through Python)."""
    chunk = min([_PIPE_BYTES, *(link.chunk for link in links)])
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        chunk = min(chunk, 65536)
    try:
        while True:
            count = os.splice(source.fileno(), write_end, chunk)
            if count == 0:
                break
            for link in links:
                link.spend(count)
            while count:
                count -= os.splice(read_end, target.fileno(), count)
    except OSError:
        pass  # either side went away: end both directions
    finally:
        os.close(read_end)
        os.close(write_end)
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _refuse(connection: socket.socket) -> None:
    """Closes with a reset, as a port nobody listens on answers."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _within(port: int, ranges: list[tuple[int, int]]) -> bool:
    return any((low, high) == (-1, -1) or low <= port <= high for low, high in ranges)
