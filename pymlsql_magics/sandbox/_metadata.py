"""The instance metadata service, at http://100.100.100.200/ inside each instance's network only.

It answers what ECS's answers under /latest/meta-data/ (one value per path, a listing for the
folder), and the token of /latest/api/token (IMDSv2), which it accepts without requiring it.
The address exists in no namespace but the instances': nothing on this machine can reach it.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ._netns import Namespace

ADDRESS = "100.100.100.200"
_PREFIX = "/latest/meta-data/"
_IP_FREEBIND = 15  # bind before the instance's boot script has put the address on its loopback

# (instance id, path under /latest/meta-data/) -> the answer, or None for 404
Answer = Callable[[str, str], "str | None"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    instance_id = ""
    answer: Answer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.rstrip("/") == _PREFIX.rstrip("/"):
            text = self.server.answer(self.server.instance_id, "")
        elif path.startswith(_PREFIX):
            text = self.server.answer(self.server.instance_id, path[len(_PREFIX):])
        else:
            text = None
        if text is None:
            self._send(404, "Not Found")
        else:
            self._send(200, text)

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/latest/api/token" and self.headers.get("X-aliyun-ecs-metadata-token-ttl-seconds"):
            self._send(200, secrets.token_urlsafe(32))
        else:
            self._send(400, "Bad Request")

    def _send(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


class MetadataService:
    """One small HTTP server per running instance, listening inside its namespace."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()

    def serve(self, instance_id: str, namespace: Namespace) -> None:
        listener = namespace.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        listener.bind((ADDRESS, 80))
        listener.listen(16)
        server = _Server((ADDRESS, 80), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
        server.instance_id = instance_id
        server.answer = self._answer
        with self._lock:
            old = self._servers.pop(instance_id, None)
            self._servers[instance_id] = server
        if old is not None:
            _stop(old)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metadata",
                         daemon=True).start()  # fmt: skip

    def stop(self, instance_id: str) -> None:
        with self._lock:
            server = self._servers.pop(instance_id, None)
        if server is not None:
            _stop(server)

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            _stop(server)


def _stop(server: _Server) -> None:
    def stop() -> None:
        server.shutdown()  # waits for its loop, up to its poll interval: not on the caller's time
        server.server_close()

    threading.Thread(target=stop, daemon=True).start()
