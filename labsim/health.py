"""The health endpoint of the lab's NixOS hosts: plain HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("labsim")


class HealthServer(ThreadingHTTPServer):
    """``GET /health/<host>``: 200 ``ok``, 503 ``unhealthy: ...``, or no answer at all while
    the host is off or its network is cut. Plain HTTP on 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], health: Callable[[str], tuple[int, str] | None]
    ) -> None:
        super().__init__(address, HealthHandler)
        self.health = health

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("health connection error from %s", client_address, exc_info=True)


class HealthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "labsim-health/1.0"
    sys_version = ""
    server: HealthServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "health":
            self._answer(404, "not found: use /health/<host>\n")
            return
        answer = self.server.health(parts[1])
        if answer is None:  # off, or the network is cut: the client gets nothing
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(*answer)

    def _answer(self, status: int, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
