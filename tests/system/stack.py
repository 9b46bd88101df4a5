"""Helpers of the system tests: background processes, PostgreSQL's binaries, Prefect's API."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

ROOT = Path(__file__).resolve().parents[2]
PG_USER = "postgres"  # the OS user PostgreSQL runs as when the tests run as root
DB_USER = "moxflow"
DB_NAME = "prefect"

T = TypeVar("T")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float, log: Path | None = None
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and a log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                tail = "\n--- " + str(log) + " ---\n" + log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{what} not within {timeout:g} s{tail}")
        time.sleep(0.1)


# -- processes ----------------------------------------------------------------------------


@dataclass
class Service:
    """A background process started by a fixture, in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the whole group (the worker's flow runs too); kill it if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start(
    name: str, argv: list[str], log: Path, *, env: dict[str, str], cwd: Path, **kwargs: Any
) -> Service:
    """Start ``argv`` in the background in a new session, output to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )
    return Service(name, proc, log)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the worker's flow runs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def fail_tank_media_snapshot(lab: Any) -> None:
    """Make one target of a ZFS snapshot run fail: pve1 is out of space for tank/media."""
    lab.fault(
        target="command",
        host="pve1",
        command="zfs snapshot.*tank/media",
        action="error",
        exit=1,
        stderr="cannot create snapshot 'tank/media@x': out of space",
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_ or MOXFLOW_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MOXFLOW_"))}
    env.update(extra)
    return env


# -- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The folder with ``initdb``, ``postgres`` and ``pg_isready``: PATH, else Debian's."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in versions), key=lambda p: int(p.parent.name), reverse=True
    )
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "postgres", "pg_isready")):
            return folder
    return None


@dataclass
class Postgres:
    """A running throwaway cluster."""

    port: int
    service: Service

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect connects with."""
        return f"postgresql+asyncpg://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"


# -- Prefect ------------------------------------------------------------------------------


@dataclass
class PrefectStack:
    """The Prefect server on PostgreSQL, and how to reach it."""

    api_url: str
    home: Path
    env: dict[str, str]
    server: Service

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.api_url)

    def cli(self, *args: str, **extra_env: str) -> str:
        """Run ``prefect ARGS`` against this server from the repository; its output."""
        out = subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            env={**self.env, **extra_env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_for_final(
    client: SyncPrefectClient, flow_run_id: Any, timeout: float, log: Path | None = None
) -> FlowRun:
    """The flow run once it reached a final state."""

    def final() -> FlowRun | None:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(f"flow run {flow_run_id} to finish", final, timeout, log)
