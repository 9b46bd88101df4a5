"""The simulated Proxmox VE API: HTTPS, token auth, schema validation, PVE-shaped answers.

Every request is checked like pveproxy does it (auth, then routing, then parameter
verification against the committed schema subset) and recorded in ``ApiServer.requests``
for the conformance tests. Faults of target ``api`` are applied before anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from labsim import schema
from labsim.core import ApiRoute, LabCore
from labsim.pve.model import PveError

if TYPE_CHECKING:
    from labsim.pve.backups.system import BackupsSystem
    from labsim.pve.system import PveSystem

log = logging.getLogger("labsim.pve")

API_BASE = "/api2/json"
MAX_LOGGED_REQUESTS = 50_000


@dataclass
class Request:
    """One validated API call as handlers see it."""

    lab: LabCore
    method: str
    path: str
    template: str
    params: dict[str, schema.ParamValue]
    user: str

    @property
    def pve(self) -> PveSystem:
        from labsim.pve.system import PveSystem

        return self.lab.system(PveSystem)

    @property
    def backups(self) -> BackupsSystem:
        from labsim.pve.backups.system import BackupsSystem

        return self.lab.system(BackupsSystem)

    def get_str(self, name: str, default: str | None = None) -> str | None:
        v = self.params.get(name)
        if v is None:
            return default
        return v if isinstance(v, str) else v[0]

    def req_str(self, name: str) -> str:
        v = self.get_str(name)
        assert v is not None  # validation guarantees required parameters
        return v

    def get_int(self, name: str, default: int | None = None) -> int | None:
        v = self.get_str(name)
        return default if v is None else int(v)

    def get_bool(self, name: str, default: bool = False) -> bool:
        v = self.get_str(name)
        return default if v is None else v == "1"

    @property
    def node(self) -> str:
        return self.req_str("node")

    @property
    def vmid(self) -> int:
        v = self.get_int("vmid")
        assert v is not None
        return v

    @property
    def gtype(self) -> str:
        # templates look like /nodes/{node}/qemu/... or /nodes/{node}/lxc/...
        return self.template.split("/")[3]


Handler = Callable[[Request], Any]


class RouteTable(list[ApiRoute]):
    """A module's API routes, registered with ``@ROUTES.route(method, *templates)``."""

    def route(
        self, method: str, *templates: str, in_schema: bool = True
    ) -> Callable[[Handler], Handler]:
        """Register a handler for a method on one or more templates (schema ones are checked
        against the schema subset)."""

        def deco(fn: Handler) -> Handler:
            for t in templates:
                if in_schema and schema.endpoint(method, t) is None:
                    raise RuntimeError(f"{method} {t} is not in the schema subset")
                self.append(ApiRoute(method, t, fn, in_schema))
            return fn

        return deco


def both(suffix: str) -> tuple[str, str]:
    """The qemu and the lxc template of a guest path."""
    return (f"/nodes/{{node}}/qemu{suffix}", f"/nodes/{{node}}/lxc{suffix}")


def _compile(template: str) -> re.Pattern[str]:
    parts = [
        f"(?P<{seg[1:-1]}>[^/]+)" if seg.startswith("{") else re.escape(seg)
        for seg in template.strip("/").split("/")
    ]
    return re.compile("^/" + "/".join(parts) + "$")


# --- the HTTP server --------------------------------------------------------------------------


class ApiServer(ThreadingHTTPServer):
    """The HTTPS API; TLS handshakes happen in the request threads, not the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        lab: LabCore,
        ssl_context: ssl.SSLContext,
        token_id: str,
        token_secret: str,
        routes: list[ApiRoute],
    ) -> None:
        super().__init__(address, ApiHandler)
        self.lab = lab
        self.routes: dict[tuple[str, str], Handler] = {}
        self.lab_routes: list[tuple[str, re.Pattern[str], str]] = []  # outside the schema
        for r in routes:
            if r.in_schema and schema.endpoint(r.method, r.template) is None:
                raise RuntimeError(f"{r.method} {r.template} is not in the schema subset")
            self.routes[(r.method, r.template)] = r.handler
            if not r.in_schema:
                self.lab_routes.append((r.method, _compile(r.template), r.template))
        self.ssl_context = ssl_context
        self.token_id = token_id
        self.auth_value = f"PVEAPIToken={token_id}={token_secret}"
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._seq = 0
        self._log_lock = threading.Lock()

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)

    def record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.requests.append(entry)

    def request_log(self, since: int = 0) -> list[dict[str, Any]]:
        with self._log_lock:
            return [dict(e) for e in self.requests if e["seq"] > since]

    def clear_request_log(self) -> None:
        with self._log_lock:
            self.requests.clear()


class _DroppedError(Exception):
    """The connection is to be closed without an answer."""


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections give their thread back after this
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request noise; the request log is kept in memory

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection closed: %s", exc)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # -- plumbing ------------------------------------------------------------------------------

    def _read_params(self, method: str, query: str) -> dict[str, schema.ParamValue]:
        pairs = parse_qsl(query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if body:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                data = json.loads(body.decode("utf-8") or "{}")
                for k, v in (data or {}).items():
                    for item in v if isinstance(v, list) else [v]:
                        if isinstance(item, bool):
                            item = int(item)
                        pairs.append((k, str(item)))
            else:
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        grouped: dict[str, list[str]] = {}
        for k, v in pairs:
            grouped.setdefault(k, []).append(v)
        return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}

    def _send(
        self, status: int, reason: str, data: Any = None, errors: dict[str, str] | None = None
    ) -> None:
        body_obj: dict[str, Any] = {"data": data}
        if errors:
            body_obj["errors"] = errors
        body = json.dumps(body_obj).encode("utf-8")
        reason = " ".join(reason.split())[:500].encode("latin-1", "replace").decode("latin-1")
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _DroppedError

    def _apply_fault(self, fault: dict[str, Any]) -> None:
        lab = self.server.lab
        action = fault["action"]
        delay = fault.get("delay")
        if action == "drop":
            self._drop()
        if action == "hang":
            lab.release.wait(None if delay is None else float(delay))
            self._drop()
        if action == "slow":
            lab.release.wait(float(delay or 0))
            return
        if action == "error":
            raise PveError(
                int(fault.get("status", 500)), str(fault.get("message", "internal error"))
            )

    def _serve(self, method: str) -> None:
        t0 = time.monotonic()
        url = urlsplit(self.path)
        full_path = unquote(url.path)
        rel = full_path[len(API_BASE) :] if full_path.startswith(API_BASE) else full_path
        rel = rel or "/"
        # the log keeps an escaped "/" inside a segment (a volume ID) escaped, so that the
        # logged path still splits into the segments the client sent
        logged = unquote(url.path.replace("%2F", "%252F").replace("%2f", "%252F"))
        logged = logged[len(API_BASE) :] if logged.startswith(API_BASE) else logged
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": method,
            "path": logged or "/",
            "template": None,
            "params": {},
            "status": None,
        }
        # a request is in the log before its answer leaves: a test that clears the log after
        # a call returned must never see that call again
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                entry["duration"] = round(time.monotonic() - t0, 6)
                self.server.record(entry)

        try:
            params = self._read_params(method, url.query)
            entry["params"] = params
            status, reason, data, errors = self._dispatch(method, full_path, rel, params, entry)
            entry.update(status=status, reason=reason)
            if errors:
                entry["errors"] = errors
            record()
            self._send(status, reason, data, errors)
        except _DroppedError:
            entry.update(status=None, reason="dropped")
        except (ValueError, UnicodeDecodeError) as exc:
            entry.update(status=400, reason=f"bad request: {exc}")
            record()
            self._send(400, f"bad request: {exc}")
        finally:
            record()

    def _lab_route(self, method: str, rel: str) -> schema.Route | None:
        """A lab-only route (outside PVE's schema) that ``rel`` matches, if any."""
        for m, rx, template in self.server.lab_routes:
            found = rx.match("/" + rel.strip("/")) if m == method else None
            if found is not None:
                return schema.Route(template, found.groupdict())
        return None

    def _dispatch(
        self,
        method: str,
        full_path: str,
        rel: str,
        params: dict[str, schema.ParamValue],
        entry: dict[str, Any],
    ) -> tuple[int, str, Any, dict[str, str] | None]:
        lab = self.server.lab
        try:
            fault = lab.take_fault("api", method=method, path=rel)
            if fault is not None:
                entry["fault_id"] = fault["fault_id"]
                self._apply_fault(fault)
            auth = self.headers.get("Authorization")
            if not auth:
                raise PveError(401, "No ticket")
            if auth.strip() != self.server.auth_value:
                raise PveError(401, "authentication failure")
            found = None
            if full_path.startswith(API_BASE):
                found = schema.match_path(rel)
                if found is None and "%2f" in self.path.lower():  # a volume ID in the path
                    raw = urlsplit(self.path).path[len(API_BASE) :]
                    found = schema.match_path(raw)
                    if found is not None:
                        found = schema.Route(
                            found.template, {k: unquote(v) for k, v in found.path_params.items()}
                        )
            validate = True
            if found is None or (method, found.template) not in self.server.routes:
                own = self._lab_route(method, rel) if full_path.startswith(API_BASE) else None
                if own is not None:
                    found, validate = own, False
            handler = self.server.routes.get((method, found.template)) if found else None
            if found is None or handler is None:
                raise PveError(501, f"Method '{method} {rel}' not implemented")
            entry["template"] = found.template
            all_params: dict[str, schema.ParamValue] = {**params, **found.path_params}
            errors = schema.validate(method, found.template, all_params) if validate else {}
            if errors:
                raise PveError(400, "Parameter verification failed.", errors)
            # a test acting as another user (root@pam in the GUI, say): that user's tasks
            user = self.headers.get("X-Lab-User") or self.server.token_id
            req = Request(lab, method, rel, found.template, all_params, user)
            with lab.lock:
                lab.tick()
                data = handler(req)
            return 200, "OK", data, None
        except PveError as exc:
            return exc.status, exc.message, None, exc.errors
        except _DroppedError:
            raise
        except Exception as exc:
            log.error("internal error on %s %s:\n%s", method, rel, traceback.format_exc())
            return 500, f"internal error: {exc}", None, None
