"""The sandbox's HTTP server: the ECS RPC API on `/`, its own controls under `/_sandbox/`."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from ._control import CONTROL_KEY_HEADER, CONTROL_PREFIX
from ._dispatch import LOST, handle_api
from ._faults import FaultOrder
from ._model import World


class Served(Protocol):
    """What the server needs of the sandbox it serves."""

    @property
    def access_key_id(self) -> str: ...

    @property
    def access_key_secret(self) -> str: ...

    @property
    def world(self) -> World | None: ...

    def status(self) -> dict[str, Any]: ...

    def log(self) -> dict[str, Any]: ...

    def fault(self, order: FaultOrder) -> None: ...

    def close(self) -> None: ...


def serve(sandbox: Served, port: int) -> ThreadingHTTPServer:
    """Serves `sandbox` on 127.0.0.1:`port` (0: a free one) from a thread of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(sandbox))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sandbox-http", daemon=True).start()
    return server


def _handler_for(sandbox: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pymlsql-sandbox"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the request log is served by /_sandbox/log

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            if parts.path.startswith(CONTROL_PREFIX):
                self._control(parts.path[len(CONTROL_PREFIX) :], headers, body)
                return
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            if parts.path not in ("", "/"):
                # RPC actions live on "/" only: any other path names no action.
                headers["x-acs-action"] = ""
                query.pop("Action", None)
            world = sandbox.world
            assert world is not None
            access_keys = {sandbox.access_key_id: sandbox.access_key_secret}
            status, answer = handle_api(world, access_keys, self.command, query, headers, body)
            if status == LOST:
                self.close_connection = True  # done, but the caller never hears of it
                return
            self._send(status, answer)

        def _control(self, name: str, headers: dict[str, str], body: bytes) -> None:
            given = headers.get(CONTROL_KEY_HEADER, "")
            if not secrets.compare_digest(given.encode(), sandbox.access_key_secret.encode()):
                self._send(403, {"error": "the sandbox's control key is missing or wrong"})
                return
            try:
                order = json.loads(body or b"{}")
                if name == "status":
                    self._send(200, sandbox.status())
                elif name == "log":
                    self._send(200, sandbox.log())
                elif name == "fault":
                    sandbox.fault(FaultOrder.from_json(order))
                    self._send(200, {"ok": True})
                elif name == "shutdown":
                    self._send(200, {"ok": True})
                    threading.Thread(target=sandbox.close, daemon=True).start()
                else:
                    self._send(404, {"error": f"no control named {name!r}"})
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": str(exc)})

        def _send(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
