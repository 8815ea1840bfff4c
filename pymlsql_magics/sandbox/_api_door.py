"""The sandbox's API inside each instance's network, at the same http://127.0.0.1:PORT as outside.

On ECS a process on an instance reaches the region's endpoint by name; here the sandbox opens a
listener on the instance's own loopback and hands each connection to the one HTTP server, so a
client on an instance (a master launching its workers) talks to the same API with the same
signature checks, and nothing else of this machine is reachable from inside.
"""

from __future__ import annotations

import socket
import threading
from socketserver import BaseServer

from ._netns import Namespace

_IP_FREEBIND = 15  # bind before the instance's boot script has brought its loopback up


class ApiDoors:
    """One listener per running instance, feeding `server`."""

    def __init__(self, server: BaseServer, port: int) -> None:
        self.server, self.port = server, port
        self._listeners: dict[str, socket.socket] = {}
        self._lock = threading.Lock()

    def open(self, instance_id: str, namespace: Namespace) -> None:
        listener = namespace.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            old = self._listeners.pop(instance_id, None)
            self._listeners[instance_id] = listener
        if old is not None:
            _close(old)
        threading.Thread(target=self._accept, args=(listener,), name="api-door", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, peer = listener.accept()
            except OSError:
                return  # closed: the instance stopped
            self.server.process_request(connection, peer)  # a thread per request, as for outside callers

    def close(self, instance_id: str) -> None:
        with self._lock:
            listener = self._listeners.pop(instance_id, None)
        if listener is not None:
            _close(listener)

    def close_all(self) -> None:
        with self._lock:
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            _close(listener)


def _close(listener: socket.socket) -> None:
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    except OSError:
        pass
    listener.close()
