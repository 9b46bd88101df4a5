"""ProxmoxClient: UPIDs, error mapping, retries, TLS and the task waiter.

Two fakes, both at the wire: a tiny scripted HTTPS server started here (exact status codes,
reason phrases and timings), and the simulated lab (tests marked ``lab``).
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from labsim.client import LabClient
from moxflow.errors import (
    ConfigError,
    GuestLockedError,
    MoxflowError,
    ParseError,
    ProxmoxAuthError,
    ProxmoxError,
    ProxmoxPermissionError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
    ProxmoxUnavailableError,
    UnsafeNameError,
)
from moxflow.guests import Guest
from moxflow.proxmox import GuestSnapshot, ProxmoxClient, TaskResult, parse_upid, task_succeeded

SECRET = "3c8a1f0e-5b7d-4e2a-9f61-0d2c7b9e4a15"
UPID = "UPID:pve1:0000A1B2:0012C3D4:6565F2A0:qmsnapshot:101:root@pam!moxflow:"

# --- UPIDs ---------------------------------------------------------------------------------


def test_parse_upid_fields() -> None:
    u = parse_upid(UPID)
    assert (u.node, u.type, u.id, u.user) == ("pve1", "qmsnapshot", "101", "root@pam!moxflow")
    assert (u.pid, u.pstart) == (0xA1B2, 0x12C3D4)
    assert u.starttime == dt.datetime.fromtimestamp(0x6565F2A0, tz=dt.UTC)
    assert str(u) == UPID


def test_parse_upid_empty_id_and_nine_digit_pstart() -> None:
    u = parse_upid("UPID:node-2:00000001:100000000:6565F2A0:aptupdate::root@pam:")
    assert (u.node, u.type, u.id, u.pstart) == ("node-2", "aptupdate", "", 0x100000000)


@pytest.mark.parametrize(
    "text",
    [
        "OK",
        "",
        "UPID:pve1:0000A1B2:0012C3D4:6565F2A0:qmsnapshot:101:root@pam",  # no trailing colon
        "UPID:pve1:A1B2:0012C3D4:6565F2A0:qmsnapshot:101:root@pam:",  # short pid
        "UPID:pve 1:0000A1B2:0012C3D4:6565F2A0:qmsnapshot:101:root@pam:",
        "UPID::0000A1B2:0012C3D4:6565F2A0:qmsnapshot:101:root@pam:",
        "UPID:pve1:0000A1B2:0012C3D4:6565F2A0::101:root@pam:",
    ],
)
def test_parse_upid_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_upid(text)


def test_parse_upid_rejects_non_string() -> None:
    with pytest.raises(ParseError):
        parse_upid(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ("OK", True),
        ("WARNINGS: 3", True),
        ("WARNINGS: x", False),
        ("WARNINGS: 3 and more", False),
        ("snapshot failed", False),
        ("", False),
        (None, False),
    ],
)
def test_task_succeeded(status: str | None, ok: bool) -> None:
    assert task_succeeded(status) is ok


def test_snapshot_entry_parsing() -> None:
    s = GuestSnapshot.from_api(
        {"name": "a1", "description": "made by hand\n", "snaptime": 1700000000, "vmstate": 1}
    )
    assert s == GuestSnapshot(
        "a1", "made by hand", dt.datetime.fromtimestamp(1700000000, tz=dt.UTC), True, None
    )
    with pytest.raises(ParseError):
        GuestSnapshot.from_api({"description": "no name"})


@pytest.mark.parametrize("state", ["prepare", "delete"])
def test_a_half_made_or_half_deleted_snapshot_is_not_complete(state: str) -> None:
    # an entry as qemu-server's snapshot_list writes it (src/PVE/API2/Qemu.pm): snapstate is
    # there only while the snapshot is being made or deleted, or after its task died
    item = {
        "name": "moxflow-daily-20261126-020005",
        "snaptime": 1700000000,
        "vmstate": 0,
        "description": "moxflow: daily",
        "parent": "before-upgrade",
        "snapstate": state,
    }
    s = GuestSnapshot.from_api(item)
    assert (s.snapstate, s.complete) == (state, False)
    assert GuestSnapshot.from_api({**item, "snapstate": None}).complete
    del item["snapstate"]
    assert GuestSnapshot.from_api(item).complete


# --- construction --------------------------------------------------------------------------


def test_bad_token_id_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        ProxmoxClient("h", token_id="root@pam", token_secret=SecretStr(SECRET))
    assert info.value.setting == "proxmox.token_id"
    assert "proxmox.token_id" in str(info.value)


def test_missing_ca_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ProxmoxClient(
            "h",
            token_id="root@pam!moxflow",
            token_secret=SecretStr(SECRET),
            ca_file=tmp_path / "nope.pem",
        )
    assert info.value.setting == "proxmox.ca_file"


def test_repr_hides_secret() -> None:
    client = ProxmoxClient("h", token_id="root@pam!moxflow", token_secret=SecretStr(SECRET))
    assert SECRET not in repr(client)
    assert SECRET not in str(client)
    assert SECRET not in repr(vars(client))


def test_verify_tls_off_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    ProxmoxClient(
        "h", token_id="root@pam!moxflow", token_secret=SecretStr(SECRET), verify_tls=False
    )
    assert any(
        r.levelname == "WARNING" and "proxmox.verify_tls" in r.getMessage() for r in caplog.records
    )


def test_bad_paths_are_refused() -> None:
    client = ProxmoxClient("h", token_id="root@pam!moxflow", token_secret=SecretStr(SECRET))
    for path in ("", "/", "/nodes//qemu", "/nodes?x=1"):
        with pytest.raises(ValueError, match="bad API path"):
            client.get(path)


# --- a scripted HTTPS server ---------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer; ``body`` is JSON-encoded, ``hold`` blocks until released."""

    status: int = 200
    reason: str | None = None
    body: Any = None
    hold: threading.Event | None = None


@dataclass
class Seen:
    method: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Wire:
    """State of the scripted server: queued replies per path, and the requests it saw."""

    port: int
    ca_file: Path
    other_ca_file: Path
    script: dict[str, list[Reply]] = field(default_factory=dict)
    routes: dict[str, Callable[[Seen], Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    releases: list[threading.Event] = field(default_factory=list)

    def queue(self, path: str, *replies: Reply) -> None:
        self.script.setdefault(path, []).extend(replies)

    def answer(self, req: Seen) -> Reply:
        self.seen.append(req)
        queued = self.script.get(req.path)
        if queued:
            return queued.pop(0)
        route = self.routes.get(req.path)
        if route:
            return route(req)
        return Reply(200, body={"data": None})

    def client(self, **kwargs: Any) -> ProxmoxClient:
        kwargs.setdefault("ca_file", self.ca_file)
        kwargs.setdefault("retry_backoff", 0.01)
        kwargs.setdefault("timeout", 5.0)
        return ProxmoxClient(
            "127.0.0.1",
            self.port,
            token_id="root@pam!moxflow",
            token_secret=SecretStr(SECRET),
            **kwargs,
        )

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path == path)


def _make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pve1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca = _make_ca("test PVE root CA")
    _, other_ca = _make_ca("some other CA")
    key, cert = _make_server_cert(ca_key, ca)
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "other-ca.pem").write_bytes(_pem(other_ca))
    (d / "server.pem").write_bytes(_pem(cert))
    (d / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {name: d / name for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key")}


class _QuietServer(ThreadingHTTPServer):
    """The wire's HTTPS server: a client that hung up mid-answer (a test of its timeout) is
    what the test wants, not a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


@pytest.fixture
def wire(tls_material: dict[str, Path]) -> Iterator[Wire]:
    state: Wire | None = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            assert state is not None
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            params = parse_qs(url.query) | parse_qs(raw)
            path = url.path.removeprefix("/api2/json")
            req = Seen(self.command, path, params, dict(self.headers.items()))
            reply = state.answer(req)
            if reply.hold is not None:
                reply.hold.wait(10)
            body = json.dumps(reply.body if reply.body is not None else {"data": None}).encode()
            self.send_response(reply.status, reply.reason)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

    server = _QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_material["server.pem"], tls_material["server.key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state = Wire(
        port=server.server_address[1],
        ca_file=tls_material["ca.pem"],
        other_ca_file=tls_material["other-ca.pem"],
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        for event in state.releases:
            event.set()
        server.shutdown()
        server.server_close()


# --- requests on the wire ------------------------------------------------------------------


def test_token_header_bools_and_lists_on_the_wire(wire: Wire) -> None:
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(body={"data": UPID}))
    client = wire.client()
    assert client.post("/nodes/pve1/qemu/101/snapshot", snapname="s1", vmstate=True) == UPID
    client.get("/cluster/resources", type="vm", full=False, ids=[1, 2], skip=None)
    post, get = wire.seen
    assert post.headers["Authorization"] == f"PVEAPIToken=root@pam!moxflow={SECRET}"
    assert post.params == {"snapname": ["s1"], "vmstate": ["1"]}
    assert get.params == {"type": ["vm"], "full": ["0"], "ids": ["1", "2"]}


def test_401_names_the_settings_and_hides_the_secret(wire: Wire) -> None:
    wire.queue("/cluster/resources", Reply(401, "authentication failure"))
    client = wire.client()
    with pytest.raises(ProxmoxAuthError) as info:
        client.resources()
    err = info.value
    assert (err.status, err.method, err.endpoint) == (401, "GET", "/cluster/resources")
    assert "authentication failure" in str(err)
    assert "proxmox.token_id" in str(err)
    assert "proxmox.token_secret" in str(err)
    for text in (str(err), repr(err), repr(vars(err)), repr(client)):
        assert SECRET not in text
    assert wire.count("GET", "/cluster/resources") == 1  # not transient: no retry


def test_403_permission_hint(wire: Wire) -> None:
    wire.queue(
        "/nodes/pve1/qemu/101/snapshot",
        Reply(403, "Permission check failed (/vms/101, VM.Snapshot)"),
    )
    with pytest.raises(ProxmoxPermissionError) as info:
        wire.client().post("/nodes/pve1/qemu/101/snapshot", snapname="s1")
    assert "VM.Snapshot" in str(info.value)
    assert "root@pam!moxflow" in (info.value.hint or "")


def test_400_carries_parameter_errors(wire: Wire) -> None:
    body = {"data": None, "errors": {"snapname": "invalid format - value does not match"}}
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(400, "Parameter verification failed.", body))
    with pytest.raises(ProxmoxError) as info:
        wire.client().post("/nodes/pve1/qemu/101/snapshot", snapname="Bad Name")
    err = info.value
    assert type(err) is ProxmoxError
    assert err.errors == {"snapname": "invalid format - value does not match"}
    assert "snapname: invalid format" in str(err)


@pytest.mark.parametrize(
    "reason",
    [
        "VM 101 is locked (backup)",
        "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout",
    ],
)
def test_lock_reason_phrases_map_to_guest_locked(wire: Wire, reason: str) -> None:
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(500, reason))
    with pytest.raises(GuestLockedError) as info:
        wire.client().post("/nodes/pve1/qemu/101/snapshot", snapname="s1")
    assert info.value.transient
    assert reason in str(info.value)


def test_get_retries_transient_errors_then_succeeds(wire: Wire) -> None:
    wire.queue("/cluster/resources", Reply(500, "internal error"), Reply(503, "busy"))
    wire.queue(
        "/cluster/resources",
        Reply(body={"data": [{"type": "qemu", "vmid": 7, "name": "x", "node": "pve1"}]}),
    )
    assert [g.vmid for g in wire.client().resources()] == [7]
    assert wire.count("GET", "/cluster/resources") == 3


def test_get_gives_up_after_get_retries(wire: Wire) -> None:
    wire.queue("/version", *[Reply(596, "Connection timed out")] * 5)
    with pytest.raises(ProxmoxUnavailableError) as info:
        wire.client(get_retries=3).get("/version")
    assert info.value.status == 596
    assert wire.count("GET", "/version") == 3


def test_post_is_not_retried(wire: Wire) -> None:
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(500, "internal error"))
    with pytest.raises(ProxmoxUnavailableError):
        wire.client().post("/nodes/pve1/qemu/101/snapshot", snapname="s1")
    assert wire.count("POST", "/nodes/pve1/qemu/101/snapshot") == 1


def test_semantic_500_is_not_retried(wire: Wire) -> None:
    wire.queue(
        "/nodes/pve1/qemu/101/snapshot/nope/config", Reply(500, "snapshot 'nope' does not exist")
    )
    with pytest.raises(ProxmoxError) as info:
        wire.client().get("/nodes/pve1/qemu/101/snapshot/nope/config")
    assert not isinstance(info.value, ProxmoxUnavailableError)
    assert wire.count("GET", "/nodes/pve1/qemu/101/snapshot/nope/config") == 1


def test_595_node_unreachable(wire: Wire) -> None:
    wire.queue("/nodes/pve2/status", *[Reply(595, "No route to host")] * 4)
    with pytest.raises(ProxmoxUnavailableError) as info:
        wire.client().get("/nodes/pve2/status")
    assert info.value.status == 595
    assert "No route to host" in str(info.value)


def test_read_timeout_is_unavailable(wire: Wire) -> None:
    hold = threading.Event()
    wire.releases.append(hold)
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(hold=hold))
    started = time.monotonic()
    with pytest.raises(ProxmoxUnavailableError) as info:
        wire.client(timeout=0.3).post("/nodes/pve1/qemu/101/snapshot", snapname="s1")
    assert time.monotonic() - started < 2
    assert "proxmox.timeout" in str(info.value)


def test_connection_refused_is_unavailable(wire: Wire) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ProxmoxClient(
        "127.0.0.1",
        port,
        token_id="root@pam!moxflow",
        token_secret=SecretStr(SECRET),
        ca_file=wire.ca_file,
        retry_backoff=0.01,
    )
    with pytest.raises(ProxmoxUnavailableError) as info:
        client.get("/version")
    assert "Connection refused" in str(info.value)
    assert info.value.transient


def test_tls_against_system_cas_fails_clearly(wire: Wire) -> None:
    client = wire.client(ca_file=None)
    with pytest.raises(ProxmoxError) as info:
        client.get("/version")
    err = info.value
    assert not err.transient
    assert "TLS" in str(err)
    assert "proxmox.ca_file" in str(err)
    assert wire.seen == []  # nothing was sent, let alone the token


def test_tls_against_the_wrong_ca_names_ca_file(wire: Wire) -> None:
    with pytest.raises(ProxmoxError) as info:
        wire.client(ca_file=wire.other_ca_file).get("/version")
    assert "not signed by proxmox.ca_file" in str(info.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verification_off_still_works(wire: Wire) -> None:
    wire.queue("/version", Reply(body={"data": {"version": "9.1"}}))
    assert wire.client(ca_file=None, verify_tls=False).get("/version") == {"version": "9.1"}


def test_snapshot_helpers_build_the_right_calls(wire: Wire) -> None:
    ct = Guest(vmid=100, name="dns", node="pve1", type="lxc")
    vm = Guest(vmid=101, name="media-vm", node="pve1", type="qemu")
    wire.routes["/nodes/pve1/lxc/100/snapshot"] = lambda req: Reply(
        body={
            "data": [
                {"name": "current", "running": 1, "parent": "b", "description": "You are here!"},
                {"name": "b", "snaptime": 1700000100, "parent": "a", "description": ""},
                {"name": "a", "snaptime": 1700000000, "description": "first"},
            ]
        }
        if req.method == "GET"
        else {"data": UPID}
    )
    wire.routes["/nodes/pve1/qemu/101/snapshot"] = lambda req: Reply(body={"data": UPID})
    wire.routes["/nodes/pve1/qemu/101/snapshot/a1/rollback"] = lambda req: Reply(
        body={"data": UPID}
    )
    wire.routes["/nodes/pve1/qemu/101/snapshot/a1"] = lambda req: Reply(body={"data": UPID})
    client = wire.client()
    snaps = client.list_snapshots(ct)
    assert [(s.name, s.parent) for s in snaps] == [("a", None), ("b", "a")]
    assert client.create_snapshot(ct, "s1", "d", vmstate=True) == UPID
    assert client.create_snapshot(vm, "s1", "d", vmstate=True) == UPID
    assert client.rollback_snapshot(vm, "a1", start=True) == UPID
    assert client.delete_snapshot(vm, "a1") == UPID
    posts = [(s.method, s.path, s.params) for s in wire.seen if s.method != "GET"]
    assert posts == [
        ("POST", "/nodes/pve1/lxc/100/snapshot", {"snapname": ["s1"], "description": ["d"]}),
        (
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            {"snapname": ["s1"], "description": ["d"], "vmstate": ["1"]},
        ),
        ("POST", "/nodes/pve1/qemu/101/snapshot/a1/rollback", {"start": ["1"]}),
        ("DELETE", "/nodes/pve1/qemu/101/snapshot/a1", {}),
    ]


def test_node_update_helpers_build_the_right_calls(wire: Wire) -> None:
    """The calls of the Proxmox update job: each method, path and parameter on the wire, and
    what comes back (raw data, a UPID, or nothing for a reboot)."""
    apt_upid = UPID.replace("qmsnapshot:101", "aptupdate:")
    gets: dict[str, Any] = {
        "/nodes/pve1/status": {"uptime": 42, "current-kernel": {"release": "6.14.11-5-pve"}},
        "/nodes/pve1/apt/versions": [{"Package": "pve-manager", "OldVersion": "9.1.1"}],
        "/cluster/status": [{"type": "cluster", "quorate": 1}],
        "/cluster/config/qdevice": {},
        "/cluster/ha/status/manager_status": {"manager_status": {"master_node": "pve2"}},
        "/nodes/pve1/tasks": [{"upid": UPID, "type": "vzdump"}],
        "/nodes/pve1/qemu/101/migrate": {"running": 1, "allowed_nodes": ["pve2"]},
    }
    for path, data in gets.items():
        wire.routes[path] = lambda req, data=data: Reply(body={"data": data})
    posts = {
        "/nodes/pve1/status": None,
        "/nodes/pve1/apt/update": apt_upid,
        "/nodes/pve1/qemu/101/migrate": UPID,
        "/nodes/pve1/lxc/100/migrate": UPID,
        "/nodes/pve1/qemu/101/status/shutdown": UPID,
    }
    for path, upid in posts.items():
        get = gets.get(path)
        wire.routes[path] = lambda req, get=get, upid=upid: Reply(
            body={"data": get if req.method == "GET" else upid}
        )
    client = wire.client()
    assert client.node_status("pve1")["uptime"] == 42
    assert client.apt_versions("pve1") == gets["/nodes/pve1/apt/versions"]
    assert client.cluster_status() == gets["/cluster/status"]
    assert client.qdevice() == {}
    assert client.ha_manager_status() == gets["/cluster/ha/status/manager_status"]
    assert client.active_tasks("pve1") == gets["/nodes/pve1/tasks"]
    assert client.migrate_precheck("pve1", "qemu", 101)["allowed_nodes"] == ["pve2"]
    assert client.reboot_node("pve1") is None
    assert client.apt_update("pve1") == apt_upid
    assert client.migrate("pve1", "qemu", 101, "pve2", online=True) == UPID
    assert client.migrate("pve1", "lxc", 100, "pve2", restart=True, timeout=60) == UPID
    assert client.shutdown("pve1", "qemu", 101, timeout=180) == UPID
    assert [(s.path, s.params) for s in wire.seen if s.method == "GET"] == [
        *((path, {"source": ["active"]} if path.endswith("/tasks") else {}) for path in gets)
    ]
    assert [(s.method, s.path, s.params) for s in wire.seen if s.method != "GET"] == [
        ("POST", "/nodes/pve1/status", {"command": ["reboot"]}),
        ("POST", "/nodes/pve1/apt/update", {}),
        ("POST", "/nodes/pve1/qemu/101/migrate", {"target": ["pve2"], "online": ["1"]}),
        (
            "POST",
            "/nodes/pve1/lxc/100/migrate",
            {"target": ["pve2"], "restart": ["1"], "timeout": ["60"]},
        ),
        ("POST", "/nodes/pve1/qemu/101/status/shutdown", {"timeout": ["180"], "forceStop": ["1"]}),
    ]


def test_a_node_update_call_answered_with_the_wrong_shape_is_a_parse_error(wire: Wire) -> None:
    wire.queue("/cluster/status", Reply(body={"data": {"quorate": 1}}))
    wire.queue("/nodes/pve1/apt/update", Reply(body={"data": None}))
    with pytest.raises(ParseError):
        wire.client().cluster_status()
    with pytest.raises(ParseError, match="instead of a task id"):
        wire.client().apt_update("pve1")


@pytest.mark.parametrize("name", ["../../status/stop", "a", "current", "Snap 1", "x" * 41])
def test_a_snapshot_name_proxmox_would_refuse_never_reaches_the_url(wire: Wire, name: str) -> None:
    vm = Guest(vmid=101, name="media-vm", node="pve1", type="qemu")
    client = wire.client()
    for call in (client.delete_snapshot, client.rollback_snapshot, client.create_snapshot):
        with pytest.raises(UnsafeNameError):
            call(vm, name)
    assert wire.seen == []


def test_a_non_upid_answer_is_a_parse_error(wire: Wire) -> None:
    wire.queue("/nodes/pve1/qemu/101/snapshot", Reply(body={"data": "OK"}))
    with pytest.raises(ParseError, match="instead of a task id"):
        wire.client().create_snapshot(Guest(101, "m", "pve1", "qemu"), "s1")


def test_unknown_vmid_is_a_config_error(wire: Wire) -> None:
    wire.queue("/cluster/resources", Reply(body={"data": []}))
    with pytest.raises(ConfigError, match="no guest with VMID 999"):
        wire.client().guest(999)


# --- the task waiter on the wire -----------------------------------------------------------


def _task_route(
    finish_after: float,
    exitstatus: str = "OK",
    log: list[str] | None = None,
    flaky: int = 0,
) -> tuple[Callable[[Seen], Reply], Callable[[Seen], Reply]]:
    """A task that is ``running`` for ``finish_after`` s after the first poll."""
    t0: list[float] = []
    failures = [flaky]

    def status(req: Seen) -> Reply:
        if failures[0] > 0:
            failures[0] -= 1
            return Reply(595, "Connection refused")
        if not t0:
            t0.append(time.monotonic())
        if time.monotonic() - t0[0] < finish_after:
            return Reply(body={"data": {"status": "running", "upid": UPID, "type": "qmsnapshot"}})
        data = {"status": "stopped", "exitstatus": exitstatus, "upid": UPID, "type": "qmsnapshot"}
        return Reply(body={"data": data | {"id": "101", "node": "pve1"}})

    def task_log(req: Seen) -> Reply:
        lines = log or []
        return Reply(body={"data": [{"n": i + 1, "t": t} for i, t in enumerate(lines)]})

    return status, task_log


STATUS = f"/nodes/pve1/tasks/{UPID}/status"
LOG = f"/nodes/pve1/tasks/{UPID}/log"


def test_wait_task_short_task_is_seen_promptly(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0.2)
    started = time.monotonic()
    result = wire.client().wait_task(UPID, timeout=5)
    elapsed = time.monotonic() - started
    assert result == TaskResult(UPID, "pve1", "qmsnapshot", "101", "stopped", "OK", result.duration)
    assert 0.2 <= elapsed < 0.2 * 1.1 + 0.1
    assert result.warnings == 0


def test_wait_task_polls_less_as_time_passes(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(1.0)
    wire.client().wait_task(UPID, timeout=5)
    polls = wire.count("GET", STATUS)
    # fixed 20 ms polling would need ~50 requests; a tenth of the elapsed time needs ~27
    assert polls < 35


def test_wait_task_accepts_warnings_and_legacy_signature(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0, exitstatus="WARNINGS: 2")
    result = wire.client().wait_task("pve1", UPID, timeout=5)
    assert result.exitstatus == "WARNINGS: 2"
    assert result.warnings == 2


def test_wait_task_failure_carries_the_log(wire: Wire) -> None:
    lines = [f"line {i}" for i in range(30)] + ["TASK ERROR: snapshot failed: out of space"]
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0, "snapshot failed: out of space", lines)
    with pytest.raises(ProxmoxTaskError) as info:
        wire.client().wait_task(UPID, timeout=5)
    err = info.value
    assert err.upid == UPID
    assert err.exitstatus == "snapshot failed: out of space"
    assert "TASK ERROR: snapshot failed: out of space" in str(err)
    assert "line 29" in str(err)
    assert "line 5 " not in str(err)


def test_wait_task_lock_failure_is_guest_locked(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0, "VM is locked (snapshot)")
    with pytest.raises(GuestLockedError) as info:
        wire.client().wait_task(UPID, timeout=5)
    assert info.value.upid == UPID


def test_a_vzdump_of_a_locked_guest_is_guest_locked_by_its_log(wire: Wire) -> None:
    """vzdump says "job errors" and puts the lock only in its log, as PVE does."""
    log = [
        "INFO: Starting Backup of VM 101 (qemu)",
        "ERROR: Backup of VM 101 failed - VM is locked (snapshot)",
        "INFO: Failed at 2026-12-06 01:00:00",
        "TASK ERROR: job errors",
    ]
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0, "job errors", log=log)
    with pytest.raises(GuestLockedError, match=r"VM is locked \(snapshot\)") as info:
        wire.client().wait_task(UPID, timeout=5)
    assert info.value.upid == UPID


def test_wait_task_times_out_with_upid(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(3600)
    started = time.monotonic()
    with pytest.raises(ProxmoxTaskTimeout) as info:
        wire.client().wait_task(UPID, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 0.9
    assert info.value.upid == UPID
    assert UPID in str(info.value)


def test_wait_task_tolerates_transient_poll_errors(wire: Wire) -> None:
    wire.routes[STATUS], wire.routes[LOG] = _task_route(0.1, flaky=3)
    assert wire.client().wait_task(UPID, timeout=5).exitstatus == "OK"


def test_wait_task_does_not_hide_auth_errors(wire: Wire) -> None:
    wire.queue(STATUS, Reply(401, "authentication failure"))
    with pytest.raises(ProxmoxAuthError):
        wire.client().wait_task(UPID, timeout=5)


def test_every_error_is_a_moxflow_error(wire: Wire) -> None:
    wire.queue("/x", Reply(418, "teapot"))
    with pytest.raises(MoxflowError):
        wire.client().get("/x")


# --- against the simulated lab -------------------------------------------------------------


@pytest.fixture
def faulty_lab(fresh_lab: LabClient) -> Iterator[LabClient]:
    """A fresh lab for a test that breaks it; reset again afterwards for the tests that follow."""
    yield fresh_lab
    fresh_lab.reset()


def lab_client(lab: LabClient, **kwargs: Any) -> ProxmoxClient:
    kwargs.setdefault("ca_file", lab.ca_file)
    kwargs.setdefault("retry_backoff", 0.01)
    kwargs.setdefault("timeout", 10.0)
    secret = kwargs.pop("token_secret", lab.token_secret())
    return ProxmoxClient(
        "127.0.0.1",
        int(lab.info["api"]["port"]),
        token_id=lab.info["api"]["token_id"],
        token_secret=SecretStr(secret),
        **kwargs,
    )


def _requests(lab: LabClient, method: str, path: str) -> list[dict[str, Any]]:
    return [r for r in lab.api_requests() if r["method"] == method and r["path"] == path]


@pytest.mark.lab
def test_lab_resources_are_guests(lab: LabClient) -> None:
    guests = {g.vmid: g for g in lab_client(lab).resources()}
    assert guests[101] == Guest(
        vmid=101,
        name="media-vm",
        node="pve1",
        type="qemu",
        status="running",
        tags=("media",),
        pool="apps",
        maxdisk=guests[101].maxdisk,
    )
    assert guests[100].type == "lxc"
    assert set(guests[100].tags) == {"infra", "dns"}
    assert guests[9000].template
    assert sorted(guests) == [100, 101, 102, 103, 104, 105, 9000]


@pytest.mark.lab
def test_lab_snapshot_create_wait_list_delete(faulty_lab: LabClient) -> None:
    client = lab_client(faulty_lab)
    for guest in (client.guest(101), client.guest(100)):
        upid = client.create_snapshot(guest, "moxflow-test-1", "made by a test")
        result = client.wait_task(upid, timeout=30)
        assert result.exitstatus == "OK"
        assert result.node == guest.node
        assert parse_upid(upid).id == str(guest.vmid)
        snaps = {s.name: s for s in client.list_snapshots(guest)}
        assert "current" not in snaps
        assert snaps["moxflow-test-1"].description == "made by a test"
        assert snaps["moxflow-test-1"].snaptime is not None
        assert "moxflow-test-1" in faulty_lab.guest(guest.vmid)["snapshots"]

        client.wait_task(client.rollback_snapshot(guest, "moxflow-test-1"), timeout=30)
        client.wait_task(client.delete_snapshot(guest, "moxflow-test-1"), timeout=30)
        assert "moxflow-test-1" not in {s.name for s in client.list_snapshots(guest)}
        assert "moxflow-test-1" not in faulty_lab.guest(guest.vmid)["snapshots"]
    assert "before-upgrade" in {s.name for s in client.list_snapshots(client.guest(101))}


@pytest.mark.lab
def test_lab_wrong_token_is_an_auth_error_without_the_secret(lab: LabClient) -> None:
    wrong = "00000000-dead-beef-0000-000000000000"
    client = lab_client(lab, token_secret=wrong)
    with pytest.raises(ProxmoxAuthError) as info:
        client.resources()
    err = info.value
    assert err.status == 401
    assert "proxmox.token_secret" in str(err)
    for secret in (wrong, lab.token_secret()):
        for text in (str(err), repr(err), repr(vars(err)), repr(client), str(client)):
            assert secret not in text


@pytest.mark.lab
def test_lab_tls_needs_the_lab_ca(lab: LabClient) -> None:
    with pytest.raises(ProxmoxError) as info:
        lab_client(lab, ca_file=None).get("/version")
    assert "proxmox.ca_file" in str(info.value)
    assert "/etc/pve/pve-root-ca.pem" in str(info.value)
    assert lab_client(lab).get("/version")


@pytest.mark.lab
def test_lab_get_retried_post_not(faulty_lab: LabClient) -> None:
    client = lab_client(faulty_lab)
    faulty_lab.fault(
        target="api",
        method="GET",
        path="^/cluster/resources$",
        action="error",
        status=500,
        message="internal error",
        times=2,
    )
    assert 101 in {g.vmid for g in client.resources()}
    assert [r["status"] for r in _requests(faulty_lab, "GET", "/cluster/resources")] == [
        500,
        500,
        200,
    ]
    guest = client.guest(101)
    path = "/nodes/pve1/qemu/101/snapshot"
    faulty_lab.fault(
        target="api",
        method="POST",
        path=f"^{path}$",
        action="error",
        status=500,
        message="internal error",
        times=2,
    )
    with pytest.raises(ProxmoxUnavailableError) as info:
        client.create_snapshot(guest, "moxflow-test-2")
    assert info.value.status == 500
    assert len(_requests(faulty_lab, "POST", path)) == 1
    assert "moxflow-test-2" not in faulty_lab.guest(101)["snapshots"]


@pytest.mark.lab
def test_lab_failed_task_carries_its_log(faulty_lab: LabClient) -> None:
    faulty_lab.fault(
        target="task",
        type="qmsnapshot",
        id="101",
        action="error",
        exitstatus="snapshot failed: out of space",
    )
    client = lab_client(faulty_lab)
    upid = client.create_snapshot(client.guest(101), "moxflow-test-3")
    with pytest.raises(ProxmoxTaskError) as info:
        client.wait_task(upid, timeout=30)
    err = info.value
    assert err.upid == upid
    assert err.exitstatus == "snapshot failed: out of space"
    assert "TASK ERROR: snapshot failed: out of space" in str(err)


@pytest.mark.lab
def test_lab_locked_guest(faulty_lab: LabClient) -> None:
    faulty_lab.set_guest(101, lock="backup")
    client = lab_client(faulty_lab)
    guest = client.guest(101)
    assert guest.lock == "backup"
    # like PVE, the lab checks the lock inside the task: the POST succeeds, the task fails
    upid = client.create_snapshot(guest, "moxflow-test-4")
    with pytest.raises(GuestLockedError) as info:
        client.wait_task(upid, timeout=30)
    assert info.value.transient
    assert info.value.upid == upid
    assert "is locked (backup)" in str(info.value)
    assert "moxflow-test-4" not in faulty_lab.guest(101)["snapshots"]


@pytest.mark.lab
def test_lab_hanging_task_times_out(faulty_lab: LabClient) -> None:
    faulty_lab.fault(target="task", type="qmsnapshot", id="101", action="hang")
    client = lab_client(faulty_lab)
    upid = client.create_snapshot(client.guest(101), "moxflow-test-5")
    started = time.monotonic()
    with pytest.raises(ProxmoxTaskTimeout) as info:
        client.wait_task(upid, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.2
    assert info.value.upid == upid


@pytest.mark.lab
def test_lab_unreachable_node(faulty_lab: LabClient) -> None:
    faulty_lab.fault(
        target="api", path="^/nodes/pve2/", action="error", status=595, message="No route to host"
    )
    client = lab_client(faulty_lab, get_retries=2)
    guest = client.guest(102)
    with pytest.raises(ProxmoxUnavailableError) as info:
        client.list_snapshots(guest)
    err = info.value
    assert err.status == 595
    assert err.transient
    assert "No route to host" in str(err)
    assert len(_requests(faulty_lab, "GET", "/nodes/pve2/qemu/102/snapshot")) == 2


@pytest.mark.lab
def test_lab_dropped_get_is_retried(faulty_lab: LabClient) -> None:
    faulty_lab.fault(target="api", method="GET", path="^/version$", action="drop", times=1)
    assert lab_client(faulty_lab).get("/version")
    assert len(_requests(faulty_lab, "GET", "/version")) == 2
