"""The control socket: one JSON object per line in each direction, answered by a table of
control operations (``labsim.core.system.ControlOp``) that the core, every system and the
daemon register."""

from __future__ import annotations

import json
import select
import socket
import socketserver
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labsim.core import ControlOp


class ControlTable:
    """The control operations by name; ``dispatch`` answers one request."""

    def __init__(self, ops: list[ControlOp]) -> None:
        self.ops: dict[str, ControlOp] = {}
        for op in ops:
            if op.name in self.ops:
                raise ValueError(f"two control operations named {op.name!r}")
            self.ops[op.name] = op

    def dispatch(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request; ``{"ok": true, "result": ...}`` or an error."""
        op = self.ops.get(str(msg.get("op")))
        if op is None or op.handler is None:
            raise ValueError(f"unknown op {msg.get('op')!r}")
        result = op.handler(msg)
        if op.raw:
            reply: dict[str, Any] = result
            return reply
        return {"ok": True, "result": result}


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """One JSON object per line in each direction; see ``Daemon.control``."""

    daemon_threads = True

    def __init__(self, path: Path, dispatch: Callable[[dict[str, Any]], dict[str, Any]]):
        self.dispatch = dispatch
        super().__init__(str(path), ControlHandler)


class ControlHandler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        try:
            for raw in self.rfile:
                if not raw.strip():
                    continue
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("a request is a JSON object")
                    if msg.get("op") == "exec":
                        msg["_gone"] = self._gone
                    reply = self.server.dispatch(msg)
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode("utf-8") + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _gone(self) -> bool:
        """Whether the client closed its end while its request runs (a shim killed with
        its SSH session); a client sends one request and then only reads."""
        sock = self.request
        try:
            ready, _, _ = select.select([sock], [], [], 0)
            return bool(ready) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
