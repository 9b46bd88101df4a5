"""Start, query, break and stop a lab from Python (tests, benchmarks, the CLI).

``start_lab(dir)`` runs ``python -m labsim daemon`` in the background and returns a
``LabClient`` once the API answers and every SSH port accepts connections. ``LabClient(dir)``
talks to a running lab through ``DIR/labsim.sock`` (one JSON object per line).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

SOCKET_NAME = "labsim.sock"
LAB_JSON = "lab.json"
LOG_NAME = "labsim.log"

T = TypeVar("T")


class LabError(Exception):
    """The lab refused a request or could not be reached."""


class LabNotRunningError(LabError):
    """No daemon answers in the lab folder."""

    def __init__(self, lab_dir: Path) -> None:
        super().__init__(
            f"no lab running in {lab_dir}; start one with python -m labsim up --dir {lab_dir}"
        )
        self.lab_dir = lab_dir


class LabStartError(LabError):
    """The daemon did not come up; the message ends with the tail of its log."""


def wait_until(
    condition: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError after
    ``timeout`` seconds. The interval grows gently so long waits cost few polls."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout:g}s")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LabClient:
    """A handle on a running lab folder."""

    def __init__(
        self,
        lab_dir: Path | str,
        *,
        timeout: float = 30.0,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.dir = Path(lab_dir).resolve()
        self.socket_path = self.dir / SOCKET_NAME
        self.timeout = timeout
        self._process = process
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"LabClient({str(self.dir)!r})"

    # -- wire ----------------------------------------------------------------------------------

    def _request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if not self.socket_path.exists():
            raise LabNotRunningError(self.dir)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            try:
                sock.connect(str(self.socket_path))
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                raise LabNotRunningError(self.dir) from exc
            sock.sendall(json.dumps(msg).encode("utf-8") + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise LabError(f"the lab closed the control connection during {msg['op']!r}")
                buf += chunk
        finally:
            sock.close()
        reply: dict[str, Any] = json.loads(buf)
        if not reply.get("ok"):
            raise LabError(str(reply.get("error") or "the lab refused the request"))
        return reply

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Send one control request and return its ``result``."""
        return self._request({"op": op, **args}, timeout)["result"]

    def control(self, op: str, **args: Any) -> Any:
        """Run the control operation ``op`` (the core's, the daemon's or any system's, plugged
        in ones too; ``python -m labsim`` lists those with a command) and return its result."""
        return self.call(op, **args)

    # -- what the lab is -----------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """``DIR/lab.json``: pid, API port and URL, SSH hosts and ports, file paths."""
        if self._info is None:
            path = self.dir / LAB_JSON
            if not path.exists():
                raise LabNotRunningError(self.dir)
            self._info = json.loads(path.read_text(encoding="utf-8"))
        return self._info

    @property
    def api_url(self) -> str:
        url: str = self.info["api"]["url"]
        return url

    @property
    def ca_file(self) -> Path:
        return self.dir / "pve-root-ca.pem"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.toml"

    def token_secret(self) -> str:
        return (self.dir / "pve-token").read_text(encoding="utf-8").strip()

    @property
    def auth_header(self) -> dict[str, str]:
        """The ``Authorization`` header of the lab's API token."""
        return {
            "Authorization": f"PVEAPIToken={self.info['api']['token_id']}={self.token_secret()}"
        }

    def is_running(self) -> bool:
        try:
            self.call("ping", timeout=2.0)
        except (LabError, OSError):
            return False
        return True

    # -- the control operations ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The whole lab state (nodes, guests, storages, tasks, hosts, faults)."""
        result: dict[str, Any] = self.control("state")
        return result

    def fault(self, **spec: Any) -> int:
        """Inject a fault (see docs/internals.md); returns its id."""
        fault_id: int = self.control("fault", spec=spec)
        return fault_id

    def clear_faults(self) -> None:
        self.control("clear_faults")

    def reset(self) -> None:
        """Back to the initial state: tasks, faults and the API request log cleared."""
        self.control("reset")

    def set_time_scale(self, scale: float) -> None:
        self.control("time_scale", value=scale)

    def set_guest(self, vmid: int, **fields: Any) -> dict[str, Any]:
        """Change a guest directly, e.g. ``set_guest(101, lock="backup")``; its new state."""
        result: dict[str, Any] = self.control("set_guest", vmid=vmid, fields=fields)
        return result

    def set_storage(self, storage: str, **fields: Any) -> dict[str, Any]:
        """Change a storage directly: ``total``, ``used`` (other data), ``bandwidth``
        (bytes per second before the time scale); its new state."""
        result: dict[str, Any] = self.control("set_storage", storage=storage, fields=fields)
        return result

    def guest(self, vmid: int) -> dict[str, Any]:
        """One guest of ``state()``."""
        result: dict[str, Any] = self.state()["guests"][str(vmid)]
        return result

    def api_requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Every API request received (method, path, template, params, status, errors)."""
        result: list[dict[str, Any]] = self.control("api_requests", since=since)
        return result

    def commands(self) -> list[dict[str, Any]]:
        """Every command the SSH hosts were asked to run since the last reset (host, command)."""
        result: list[dict[str, Any]] = self.control("commands")
        return result

    def clear_api_requests(self) -> None:
        self.control("clear_api_requests")

    def exec(
        self, host: str, argv: list[str], stdin: str | None = None, cwd: str | None = None
    ) -> tuple[int, str, str]:
        """Run a simulated command on a host directly (no SSH, like its console):
        (rc, stdout, stderr)."""
        msg: dict[str, Any] = {"op": "exec", "host": host, "argv": argv, "stdin": stdin}
        if cwd is not None:
            msg["cwd"] = cwd
        reply = self._request(msg, timeout=max(self.timeout, 600.0))
        return int(reply["rc"]), str(reply["stdout"]), str(reply["stderr"])

    # -- NixOS hosts ---------------------------------------------------------------------------

    def nixos(self, host: str, **fields: Any) -> dict[str, Any]:
        """Set what a NixOS host's next generation does, its upstream revision or build time;
        its ``nixos`` state. Fields: ``upstream`` (a revision; anything but 40 hex digits is
        turned into one), ``build_fails``, ``failed_units`` (list or "a,b"),
        ``health_broken``, ``cut_network``, ``deadman_broken``, ``build_seconds`` (before the
        time scale), ``healthy`` (reset the behaviour first). Unset fields keep their value.
        ``host="*"``: every NixOS host (then a dict by host name)."""
        result: dict[str, Any] = self.control("nixos", host=host, fields=fields)
        return result

    def nixos_upstream(self, host: str, rev: str) -> dict[str, Any]:
        """Move a host's upstream nixpkgs (what ``nix flake update`` locks next)."""
        result: dict[str, Any] = self.control("nixos_upstream", host=host, rev=rev)
        return result

    def nixos_state(self, host: str) -> dict[str, Any]:
        """The ``nixos`` part of one host's state."""
        result: dict[str, Any] = self.state()["hosts"][host]["nixos"]
        return result

    @property
    def health_port(self) -> int:
        return int(self.info["health_port"])

    def health_url(self, host: str) -> str:
        """The lab's health endpoint of a NixOS host (what the inventory checks)."""
        return f"http://127.0.0.1:{self.health_port}/health/{host}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon and wait until its process has exited."""
        pid: int | None
        try:
            pid = int(self.info["pid"])
        except LabNotRunningError:
            pid = self._process.pid if self._process is not None else None
        with contextlib.suppress(LabError, OSError):
            self.call("stop", timeout=5.0)
        if not self._wait_exit(pid, timeout) and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, 5.0)
        self._info = None

    def _wait_exit(self, pid: int | None, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        if pid is None:
            return True
        try:
            wait_until(lambda: not _pid_alive(pid), timeout, 0.02)
        except TimeoutError:
            return False
        return True


def lab_running(lab_dir: Path | str) -> LabClient | None:
    """A client for the lab running in ``lab_dir``, or None."""
    client = LabClient(lab_dir)
    return client if client.is_running() else None


def _log_tail(lab_dir: Path, lines: int = 30) -> str:
    try:
        text = (lab_dir / LOG_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _api_answers(info: dict[str, Any], lab_dir: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(lab_dir / "pve-root-ca.pem"))
    secret = (lab_dir / "pve-token").read_text(encoding="utf-8").strip()
    conn = http.client.HTTPSConnection(
        "127.0.0.1", int(info["api"]["port"]), timeout=2.0, context=ctx
    )
    try:
        conn.request(
            "GET",
            "/api2/json/version",
            headers={"Authorization": f"PVEAPIToken={info['api']['token_id']}={secret}"},
        )
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def start_lab(
    lab_dir: Path | str,
    *,
    nodes: int | None = None,
    guests_per_node: int = 10,
    time_scale: float = 1.0,
    snapshot_seconds: float | None = None,
    nixos_hosts: int = 0,
    api_port: int = 0,
    timeout: float = 20.0,
    detach: bool = False,
    python: str = sys.executable,
    systems: list[str] | None = None,
) -> LabClient:
    """Start a lab daemon for ``lab_dir`` and wait until it serves; raise LabStartError with
    the tail of its log when it does not within ``timeout`` seconds.

    ``detach`` starts it in its own session so it outlives this process (the CLI's ``up``).
    ``systems``: extra systems to plug in, ``module:factory`` or ``path/to/file.py:factory``
    (see ``labsim.core.plugins``).
    """
    d = Path(lab_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if lab_running(d):
        raise LabError(f"a lab is already running in {d}")
    (d / LAB_JSON).unlink(missing_ok=True)
    cmd = [python, "-m", "labsim", "daemon", "--dir", str(d), "--time-scale", repr(time_scale)]
    if nodes is not None:
        cmd += ["--nodes", str(nodes), "--guests-per-node", str(guests_per_node)]
    if snapshot_seconds is not None:
        cmd += ["--snapshot-seconds", repr(snapshot_seconds)]
    if nixos_hosts:
        cmd += ["--nixos-hosts", str(nixos_hosts)]
    if api_port:
        cmd += ["--api-port", str(api_port)]
    for system in systems or []:
        cmd += ["--system", system]
    with open(d / LOG_NAME, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            close_fds=True,
        )
    client = LabClient(d, process=None if detach else proc)
    deadline = time.monotonic() + timeout

    def ready() -> bool:
        if proc.poll() is not None:
            raise LabStartError(
                f"the lab daemon exited with status {proc.returncode} while starting; "
                f"last lines of {d / LOG_NAME}:\n{_log_tail(d)}"
            )
        path = d / LAB_JSON
        if not path.exists():
            return False
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return False
        if info.get("pid") != proc.pid:
            return False
        return (
            client.is_running()
            and _api_answers(info, d)
            and all(_port_accepts(h["port"]) for h in info["hosts"].values())
        )

    try:
        wait_until(ready, max(0.0, deadline - time.monotonic()), 0.02)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        raise LabStartError(
            f"the lab did not become ready within {timeout:g}s; "
            f"last lines of {d / LOG_NAME}:\n{_log_tail(d)}"
        ) from None
    return client
