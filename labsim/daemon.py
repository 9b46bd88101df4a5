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
Control requests are answered from a table (``labsim.control``): the daemon's operations, the
core's and every system's, plugged-in ones (``DaemonConfig.systems``) included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from labsim import shim, sshd
from labsim.control import ControlServer, ControlTable
from labsim.core import ControlOp, LabOptions
from labsim.core.plugins import load_system
from labsim.health import HealthServer
from labsim.hosts import nixos
from labsim.hosts.nixos.system import NixosSystem
from labsim.hosts.offsite import OFFSITE_HOST, OffsiteSystem
from labsim.inventory import render_inventory
from labsim.keys import free_port, make_ssh_key, make_tls, write_private
from labsim.lab import Lab
from labsim.pve.api.server import ApiServer
from labsim.pve.backups.system import BackupsSystem
from labsim.pve.model import TOKEN_ID
from labsim.pve.system import PveSystem

log = logging.getLogger("labsim")

TICK_SECONDS = 0.05  # how often the ticker fires due timers and finishes tasks
SOCKET_NAME = "labsim.sock"
LAB_JSON = "lab.json"
LOG_NAME = "labsim.log"


@dataclass
class DaemonConfig:
    """What ``python -m labsim daemon`` was asked for; ``systems``: extra systems to plug in
    (``module:factory`` or ``file.py:factory``, see ``labsim.core.plugins``)."""

    dir: Path
    options: LabOptions = field(default_factory=LabOptions)
    api_port: int = 0
    systems: list[str] = field(default_factory=list)


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    """Owns the lab state and every server of one lab folder."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.dir = config.dir.resolve()
        extra = [load_system(spec) for spec in config.systems]
        self.lab = Lab(config.options, extra=extra)  # its host folders are written by start()
        self.nixos = self.lab.system(NixosSystem)
        self.table = ControlTable(self.controls())
        self.health: HealthServer | None = None
        self.droppers: dict[str, Callable[[], None]] = {}
        self.stop_event = threading.Event()
        self.api: ApiServer | None = None
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
        shim.write_shims(bin_dir, self.lab.commands_with_shims(), python=sys.executable)

        # control socket
        self.socket_path.unlink(missing_ok=True)
        self.control_server = ControlServer(self.socket_path, self.table.dispatch)
        threading.Thread(
            target=self.control_server.serve_forever, args=(0.1,), name="control", daemon=True
        ).start()

        # the API
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        self.api = ApiServer(
            ("127.0.0.1", self.config.api_port),
            self.lab,
            ctx,
            TOKEN_ID,
            token_secret,
            self.lab.routes(),
        )
        api_port = self.api.server_address[1]
        self.lab.on_reset.append(self.api.clear_request_log)  # the control op reset
        threading.Thread(
            target=self.api.serve_forever, args=(0.1,), name="api", daemon=True
        ).start()

        # the health endpoint of the NixOS hosts
        self.health = HealthServer(("127.0.0.1", 0), self.nixos.health)
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
        offsite = self.lab.system(OffsiteSystem).folder()
        (d / "inventory.toml").write_text(
            render_inventory(
                api_port,
                ports,
                nixos_hosts,
                health_port,
                storage_paths=self._storage_paths(),
                offsite_path=str(offsite) if offsite is not None else None,
            )
            + "".join(line + "\n" for system in self.lab.systems for line in system.inventory()),
            encoding="utf-8",
        )

        self.info = {
            "pid": os.getpid(),
            "dir": str(d),
            "started": time.time(),
            "python": sys.executable,
            "cluster": self.lab.system(PveSystem).cluster,
            "nodes": list(self.lab.nodes),
            "options": self.config.options.to_json(),
            "systems": list(self.config.systems),  # the plugged-in ones, as asked for
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
            "offsite": {"host": OFFSITE_HOST, "path": str(offsite)},
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
        backups = self.lab.system(BackupsSystem)
        for st in backups.pve.storages.values():
            if "backup" not in st.content:
                continue
            shared = backups.dump_dir(st, None)
            local = backups.dump_dir(st, "NODE")
            if shared is None or local is None:
                continue
            out[st.name] = str(shared) if st.shared else str(local).replace("/NODE/", "/{node}/")
        return out

    def _storage_info(self) -> dict[str, Any]:
        """Where each backup storage keeps its archives (per node when not shared)."""
        out: dict[str, Any] = {}
        backups = self.lab.system(BackupsSystem)
        for st in backups.pve.storages.values():
            item: dict[str, Any] = {
                "type": st.type,
                "shared": st.shared,
                "content": list(st.content),
                "bandwidth": st.bandwidth,
            }
            if "backup" in st.content:
                if st.shared:
                    item["path"] = str(backups.dump_dir(st, None))
                else:
                    item["paths"] = {n: str(backups.dump_dir(st, n)) for n in self.lab.nodes}
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

    def controls(self) -> list[ControlOp]:
        """The daemon's control operations, then the lab's (core and systems)."""

        def api_requests(msg: dict[str, Any]) -> list[dict[str, Any]]:
            assert self.api is not None
            return self.api.request_log(int(msg.get("since") or 0))

        def clear_api_requests(msg: dict[str, Any]) -> None:
            assert self.api is not None
            self.api.clear_request_log()

        ops = [
            ControlOp("ping", lambda msg: {"pid": os.getpid()}),
            ControlOp("info", lambda msg: self.info),
            ControlOp("api_requests", api_requests),
            ControlOp("clear_api_requests", clear_api_requests),
            ControlOp("stop", lambda msg: self.stop_event.set()),
            ControlOp("controls", lambda msg: [op.to_json() for op in self.table.ops.values()]),
        ]
        return ops + self.lab.controls()

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
