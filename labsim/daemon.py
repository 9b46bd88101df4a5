"""The lab daemon: one process per lab folder serving the API, the SSH hosts, the NixOS hosts'
health endpoint and the control socket, until SIGTERM or a ``stop`` on the control socket.

Files it writes into the lab folder (``DIR``): ``pve-root-ca.pem`` (the CA to verify the API
against), ``pve-ssl.pem``/``pve-ssl.key`` (the API's certificate), ``pve-token`` (the token
secret), ``id_ed25519``/``.pub`` (the client key every SSH host accepts), ``known_hosts``,
``hostkeys/``, ``bin/`` (tool shims), ``hosts/<name>/`` (each NixOS host's folder: flake,
profile, state dir), ``inventory.toml``, ``labsim.sock``, ``labsim.log`` and, once everything
answers, ``lab.json``.

A ticker thread calls ``Lab.tick()`` every ``TICK_SECONDS``: tasks end and NixOS dead-man
timers fire on time even when nobody talks to the lab (and while a host's network is cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labsim import nixos, pve, shim, sshd
from labsim.nixos import NixosSpec
from labsim.state import NIXOS_FIELDS, OFFSITE_HOST, TOKEN_ID, Lab, LabOptions

log = logging.getLogger("labsim")

SIMULATED_COMMANDS = ["zfs", *nixos.SHIM_NAMES]
TICK_SECONDS = 0.05  # how often the ticker fires due timers and finishes tasks
SOCKET_NAME = "labsim.sock"
LAB_JSON = "lab.json"
LOG_NAME = "labsim.log"


@dataclass
class DaemonConfig:
    """What ``python -m labsim daemon`` was asked for."""

    dir: Path
    options: LabOptions = field(default_factory=LabOptions)
    api_port: int = 0


# --- key material ----------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by the owner only."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_tls(cert_dir: Path) -> tuple[Path, Path, Path]:
    """A CA (``pve-root-ca.pem``) and a server certificate for 127.0.0.1/localhost (P-256)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "labsim Proxmox Virtual Environment"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(uuid.uuid4())),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PVE Cluster Manager CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PVE Cluster Node"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = cert_dir / "pve-root-ca.pem"
    cert_file = cert_dir / "pve-ssl.pem"
    key_file = cert_dir / "pve-ssl.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return ca_file, cert_file, key_file


def make_ssh_key(path: Path, comment: str) -> str:
    """Write an ed25519 private key (OpenSSH format) and ``path.pub``; the public key line."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.unlink(missing_ok=True)
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    pub = key.export_public_key().decode("ascii").strip()
    path.with_name(path.name + ".pub").write_text(pub + "\n", encoding="ascii")
    return " ".join(pub.split()[:2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the inventory -------------------------------------------------------------------------


def _q(value: str) -> str:
    return json.dumps(value)


def render_inventory(
    api_port: int,
    hosts: dict[str, int],
    nixos_hosts: list[tuple[NixosSpec, Path]] | None = None,
    health_port: int = 0,
    storage_paths: dict[str, str] | None = None,
    offsite_path: str | None = None,
) -> str:
    """A working ``inventory.toml`` for this lab (the shape of docs/internals.md and, for
    the NixOS hosts, docs/internals-nixos.md). ``nixos_hosts``: (spec, host folder);
    ``storage_paths``: each backup storage's real folder ({node} for a node-local one);
    ``offsite_path``: the offsite host's real folder."""
    lines = [
        "# Written by labsim for this lab; paths are relative to this file.",
        'timezone = "UTC"',
        "",
        "[proxmox]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        f"token_id = {_q(TOKEN_ID)}",
        'token_secret = "file:pve-token"',
        'ca_file = "pve-root-ca.pem"',
        "verify_tls = true",
        "timeout = 30.0",
        "",
        "[ssh]",
        'user = "root"',
        'key_file = "id_ed25519"',
        'known_hosts = "known_hosts"',
        "strict_host_keys = true",
        "connect_timeout = 10.0",
        "command_timeout = 300.0",
        "",
    ]
    for name, port in hosts.items():
        lines += [f"[hosts.{name}]", 'address = "127.0.0.1"', f"port = {port}", ""]
    lines += [
        "[zfs.policies]",
        'hourly = "keep-hourly=24"',
        'daily = "keep-daily=7,keep-weekly=4"',
        "",
    ]
    datasets = [
        ("pve1", "rpool/data", True),
        ("pve1", "tank/media", False),
        ("pve2", "rpool/data", True),
        ("nas", "tank/backups", False),
    ]
    for host, name, recursive in datasets:
        if host not in hosts:
            continue
        lines += [
            "[[zfs.datasets]]",
            f"host = {_q(host)}",
            f"name = {_q(name)}",
            f"recursive = {'true' if recursive else 'false'}",
            "",
        ]
    lines += [
        "[guest_snapshots]",
        'select = "@all,-@tag-nosnap"',
        "running_only = false",
        "vmstate = false",
        "concurrency = 8",
        "",
        "[guest_snapshots.policies]",
        'hourly = "keep-last=3,keep-hourly=24"',
        'daily = "keep-daily=7"',
    ]
    if storage_paths is not None:
        lines += [
            "",
            "[backups]",
            'select = "@all"',
            'storage = "nas-backup"',
            'mode = "snapshot"',
            'compress = "zstd"',
            'policy = "keep-last=3,keep-daily=7"',
            "max_age_hours = 26.0",
            "size_drop_ratio = 0.5",
            "",
            "[backups.storage_paths]",
            *(f"{_q(name)} = {_q(path)}" for name, path in sorted(storage_paths.items())),
        ]
    if offsite_path is not None and OFFSITE_HOST in hosts:
        lines += [
            "",
            "[offsite]",
            f"host = {_q(OFFSITE_HOST)}",
            f"path = {_q(offsite_path)}",
            'policy = "keep-last=2,keep-daily=7"',
        ]
    if nixos_hosts:
        lines += ["", *_render_nixos(nixos_hosts, health_port)]
    return "\n".join(lines) + "\n"


def _render_nixos(nixos_hosts: list[tuple[NixosSpec, Path]], health_port: int) -> list[str]:
    # confirm_timeout and health_grace are real numbers: the lab runs a dead-man timer for
    # on-active × time_scale seconds, so 120 s take 3 s at the tests' time scale of 0.025.
    lines = [
        "[nixos]",
        "confirm_timeout = 120.0",
        "health_grace = 30.0",
        "max_parallel = 2",
        "lock_wait = 0.0",
        f"profile = {_q(nixos.CANONICAL_PROFILE)}",
        'state_dir = "/var/lib/moxflow"',
    ]
    for spec, root in nixos_hosts:
        snapshot = (
            f'{{ method = "proxmox", vmid = {spec.vmid} }}'
            if spec.vmid is not None
            else '{ method = "none" }'
        )
        lines += [
            "",
            f"[nixos.hosts.{spec.name}]",
            f"flake = {_q(str(root / nixos.FLAKE_REL))}",
            f"attr = {_q(spec.name)}",
            f"canary = {'true' if spec.canary else 'false'}",
            f"after = [{', '.join(_q(a) for a in spec.after)}]",
            "commit_lock_file = false",
            f"profile = {_q(str(root / nixos.PROFILE_REL))}",
            f"state_dir = {_q(str(root / nixos.STATE_REL))}",
            f"snapshot = {snapshot}",
            "",
            f"[[nixos.hosts.{spec.name}.health]]",
            f"http = {_q(f'http://127.0.0.1:{health_port}/health/{spec.name}')}",
            "expect_status = 200",
            'expect_text = "ok"',
        ]
    return lines


# --- the health endpoint -----------------------------------------------------------------------


class HealthServer(ThreadingHTTPServer):
    """``GET /health/<host>``: 200 ``ok``, 503 ``unhealthy: ...``, or no answer at all while
    the host is off or its network is cut. Plain HTTP on 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], lab: Lab) -> None:
        super().__init__(address, HealthHandler)
        self.lab = lab

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
        answer = self.server.lab.health(parts[1])
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


# --- the control socket ----------------------------------------------------------------------


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
                    reply = self.server.dispatch(msg)
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode("utf-8") + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    """Owns the lab state and every server of one lab folder."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.dir = config.dir.resolve()
        self.lab = Lab(config.options)  # its host folders are written by start()
        self.health: HealthServer | None = None
        self.droppers: dict[str, Callable[[], None]] = {}
        self.stop_event = threading.Event()
        self.api: pve.ApiServer | None = None
        self.control_server: ControlServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.acceptors: list[asyncssh.SSHAcceptor] = []
        self.info: dict[str, Any] = {}
        self.socket_path = self.dir / SOCKET_NAME
        self.owns_files = False  # lab.json and the socket are ours to remove

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > 100:
            raise RuntimeError(f"lab folder path too long for a unix socket: {self.socket_path}")
        if _socket_answers(self.socket_path):
            raise RuntimeError(f"a lab is already running in {d}")
        self.owns_files = True
        (d / LAB_JSON).unlink(missing_ok=True)
        t0 = time.monotonic()
        self.lab.root = d
        self.lab.reset()  # now with the NixOS host folders in DIR/hosts/
        self.lab.on_unreachable = self._drop_connections

        token_secret = str(uuid.uuid4())
        write_private(d / "pve-token", (token_secret + "\n").encode())
        ca_file, cert_file, key_file = make_tls(d)
        client_pub = make_ssh_key(d / "id_ed25519", "labsim-client")
        (d / "authorized_keys").write_text(client_pub + " labsim-client\n", encoding="ascii")
        keys_dir = d / "hostkeys"
        keys_dir.mkdir(exist_ok=True)
        host_pubs = {
            name: make_ssh_key(keys_dir / f"ssh_host_{name}_ed25519_key", f"root@{name}")
            for name in self.lab.hosts
        }
        bin_dir = d / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim.write_shims(bin_dir, SIMULATED_COMMANDS, python=sys.executable)

        # control socket
        self.socket_path.unlink(missing_ok=True)
        self.control_server = ControlServer(self.socket_path, self.control)
        threading.Thread(
            target=self.control_server.serve_forever, args=(0.1,), name="control", daemon=True
        ).start()

        # the API
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        self.api = pve.ApiServer(
            ("127.0.0.1", self.config.api_port), self.lab, ctx, TOKEN_ID, token_secret
        )
        api_port = self.api.server_address[1]
        threading.Thread(
            target=self.api.serve_forever, args=(0.1,), name="api", daemon=True
        ).start()

        # the health endpoint of the NixOS hosts
        self.health = HealthServer(("127.0.0.1", 0), self.lab)
        health_port = self.health.server_address[1]
        threading.Thread(
            target=self.health.serve_forever, args=(0.1,), name="health", daemon=True
        ).start()

        # the ticker: timers fire even when nobody talks to the lab
        threading.Thread(target=self._tick_loop, name="ticker", daemon=True).start()

        # the SSH hosts
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run_loop, name="ssh", daemon=True).start()
        ports: dict[str, int] = {}
        for name in self.lab.hosts:
            ports[name] = self._start_ssh(name, keys_dir / f"ssh_host_{name}_ed25519_key", bin_dir)
            self.lab.hosts[name].port = ports[name]
        (d / "known_hosts").write_text(
            "".join(f"[127.0.0.1]:{ports[n]} {host_pubs[n]}\n" for n in ports), encoding="ascii"
        )
        nixos_hosts = [(spec, d / "hosts" / spec.name) for spec in self.lab.nixos_specs()]
        offsite = self.lab.offsite_dir()
        (d / "inventory.toml").write_text(
            render_inventory(
                api_port,
                ports,
                nixos_hosts,
                health_port,
                storage_paths=self._storage_paths(),
                offsite_path=str(offsite) if offsite is not None else None,
            ),
            encoding="utf-8",
        )

        self.info = {
            "pid": os.getpid(),
            "dir": str(d),
            "started": time.time(),
            "python": sys.executable,
            "cluster": self.lab.cluster,
            "nodes": list(self.lab.nodes),
            "options": self.config.options.to_json(),
            "api": {
                "host": "127.0.0.1",
                "port": api_port,
                "url": f"https://127.0.0.1:{api_port}/api2/json",
                "token_id": TOKEN_ID,
                "token_file": str(d / "pve-token"),
                "ca_file": str(ca_file),
            },
            "ssh": {
                "user": "root",
                "key_file": str(d / "id_ed25519"),
                "known_hosts": str(d / "known_hosts"),
            },
            "hosts": {n: {"address": "127.0.0.1", "port": p} for n, p in ports.items()},
            "health_port": health_port,
            "health_url": f"http://127.0.0.1:{health_port}/health/",
            "nixos": {
                spec.name: {
                    "root": str(root),
                    "flake": str(root / nixos.FLAKE_REL),
                    "profile": str(root / nixos.PROFILE_REL),
                    "state_dir": str(root / nixos.STATE_REL),
                    "vmid": spec.vmid,
                }
                for spec, root in nixos_hosts
            },
            "storages": self._storage_info(),
            "offsite": {"host": OFFSITE_HOST, "path": str(self.lab.offsite_dir())},
            "socket": str(self.socket_path),
            "inventory": str(d / "inventory.toml"),
            "bin_dir": str(bin_dir),
            "log": str(d / LOG_NAME),
        }
        tmp = d / (LAB_JSON + ".tmp")
        tmp.write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")
        tmp.replace(d / LAB_JSON)
        log.info(
            "lab ready in %.2fs: API on %d, SSH %s",
            time.monotonic() - t0,
            api_port,
            ", ".join(f"{n}:{p}" for n, p in ports.items()),
        )

    def _storage_paths(self) -> dict[str, str]:
        """Each backup storage's folder for the inventory ({node}: a node-local one's node)."""
        out: dict[str, str] = {}
        for st in self.lab.storages.values():
            if "backup" not in st.content:
                continue
            shared = self.lab.dump_dir(st, None)
            local = self.lab.dump_dir(st, "NODE")
            if shared is None or local is None:
                continue
            out[st.name] = str(shared) if st.shared else str(local).replace("/NODE/", "/{node}/")
        return out

    def _storage_info(self) -> dict[str, Any]:
        """Where each backup storage keeps its archives (per node when not shared)."""
        out: dict[str, Any] = {}
        for st in self.lab.storages.values():
            item: dict[str, Any] = {
                "type": st.type,
                "shared": st.shared,
                "content": list(st.content),
                "bandwidth": st.bandwidth,
            }
            if "backup" in st.content:
                if st.shared:
                    item["path"] = str(self.lab.dump_dir(st, None))
                else:
                    item["paths"] = {n: str(self.lab.dump_dir(st, n)) for n in self.lab.nodes}
            out[st.name] = item
        return out

    def _run_loop(self) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _start_ssh(self, name: str, host_key: Path, bin_dir: Path) -> int:
        assert self.loop is not None
        last: Exception | None = None
        for _ in range(5):
            port = free_port()
            coro = sshd.start_ssh_host(
                name=name,
                port=port,
                host_key=host_key,
                authorized_keys=self.dir / "authorized_keys",
                bin_dir=bin_dir,
                socket_path=self.socket_path,
                fault_hook=self.fault_hook,
                droppers=self.droppers,
            )
            try:
                acceptor = asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)
            except OSError as exc:  # somebody took the port in between: try another
                last = exc
                continue
            self.acceptors.append(acceptor)
            return port
        raise RuntimeError(f"cannot start the SSH server of {name}: {last}")

    def _tick_loop(self) -> None:
        while not self.stop_event.wait(TICK_SECONDS):
            try:
                self.lab.tick()
            except Exception:
                log.exception("tick failed")

    def _drop_connections(self, host: str) -> None:
        """Drop every SSH connection of ``host`` (called under the lab's lock)."""
        drop = self.droppers.get(host)
        if drop is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(drop)

    def fault_hook(self, host: str, command: str | None) -> dict[str, Any] | None:
        """Called by the SSH servers: on connect (command None) and on each exec."""
        if self.lab.ssh_refused(host):  # a NixOS host that is off or has no network
            return {"action": "drop"}
        if command is None:
            return self.lab.take_fault("connect", host=host)
        self.lab.record_command(host, command)
        return self.lab.take_fault("command", host=host, command=command)

    # -- control -------------------------------------------------------------------------------

    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request; ``{"ok": true, "result": ...}`` or an error."""
        op = msg.get("op")
        lab = self.lab
        if op == "exec":
            argv = msg.get("argv")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("exec needs argv, a list of strings")
            cwd = msg.get("cwd")
            rc, out, err = lab.exec(
                str(msg.get("host", "")),
                argv,
                msg.get("stdin"),
                cwd if isinstance(cwd, str) else None,
            )
            return {"ok": True, "rc": rc, "stdout": out, "stderr": err}
        result: Any = None
        if op == "ping":
            result = {"pid": os.getpid()}
        elif op == "info":
            result = self.info
        elif op == "state":
            result = lab.to_json()
        elif op == "fault":
            spec = msg.get("spec")
            if not isinstance(spec, dict):
                raise ValueError("fault needs spec, an object")
            result = lab.add_fault(spec)
        elif op == "clear_faults":
            lab.clear_faults()
        elif op == "reset":
            lab.reset()
            if self.api is not None:
                self.api.clear_request_log()
        elif op == "time_scale":
            lab.set_time_scale(float(msg["value"]))
        elif op == "set_guest":
            fields = msg.get("fields") or {}
            with lab.lock:
                result = lab.set_guest(int(msg["vmid"]), dict(fields)).to_json(time.time())
        elif op == "set_storage":
            fields = msg.get("fields") or {}
            if not isinstance(fields, dict):
                raise ValueError("set_storage needs fields, an object")
            with lab.lock:
                result = lab.set_storage(str(msg.get("storage", "")), dict(fields)).to_json()
        elif op == "nixos":
            fields = msg.get("fields") or {}
            if not isinstance(fields, dict):
                raise ValueError("nixos needs fields, an object")
            result = lab.nixos_configure(str(msg.get("host", "")), dict(fields))
        elif op == "nixos_upstream":
            result = lab.nixos_configure(str(msg.get("host", "")), {"upstream": msg["rev"]})
        elif op == "nixos_fields":
            result = list(NIXOS_FIELDS)
        elif op == "api_requests":
            assert self.api is not None
            result = self.api.request_log(int(msg.get("since") or 0))
        elif op == "commands":
            with lab.lock:
                result = list(lab.commands)
        elif op == "clear_api_requests":
            assert self.api is not None
            self.api.clear_request_log()
        elif op == "stop":
            self.stop_event.set()
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"ok": True, "result": result}

    # -- run and stop --------------------------------------------------------------------------

    def wait(self) -> None:
        while not self.stop_event.wait(0.5):
            pass

    def shutdown(self) -> None:
        log.info("shutting down")
        self.lab.release_waiters()
        self.lab.interrupt_waits()
        self.stop_event.set()
        if self.health is not None:
            self.health.shutdown()
            self.health.server_close()
        if self.owns_files:
            (self.dir / LAB_JSON).unlink(missing_ok=True)
        if self.api is not None:
            self.api.shutdown()
            self.api.server_close()
        if self.loop is not None:
            loop = self.loop

            async def close_all() -> None:
                for acc in self.acceptors:
                    acc.close()
                for acc in self.acceptors:
                    await acc.wait_closed()

            try:
                asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
            except Exception:
                log.warning("SSH servers did not close cleanly", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        if self.control_server is not None:
            self.control_server.shutdown()
            self.control_server.server_close()
        if self.owns_files:
            self.socket_path.unlink(missing_ok=True)
        log.info("stopped")


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def run(config: DaemonConfig) -> int:
    """Run a lab daemon in this process until SIGTERM/SIGINT or a ``stop`` request."""
    config.dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(config.dir / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    daemon = Daemon(config)

    def on_signal(signum: int, frame: Any) -> None:
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except Exception:
        log.exception("the lab failed to start")
        daemon.shutdown()
        return 1
    daemon.wait()
    daemon.shutdown()
    return 0
