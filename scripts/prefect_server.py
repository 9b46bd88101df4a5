"""Start a throw-away local Prefect server for the demo and the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.targets import LEASE_STORAGE


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    home: Path,
    env: dict[str, str],
    timeout: float = 90.0,
    *,
    port: int | None = None,
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` with its database in ``home``; set PREFECT_API_URL in env.

    ``port`` (default: a free one); ``detach``: in a session of its own, so that it outlives
    this process (the demo leaves its server running for the UI). Returns once
    ``/api/health`` answers; raises SystemExit with the log's path otherwise.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_UI_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)
    env["PREFECT_API_LOG_RETRYABLE_ERRORS"] = "true"  # counted by busy_refusals
    log_path = home / "server.log"
    with log_path.open("wb") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            start_new_session=detach,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the Prefect server did not start; see {log_path}")
        try:
            with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"the Prefect server did not answer within {timeout:g} s; see {log_path}")


RETRYABLE = "Encountered retryable exception in request"


def busy_refusals(home: Path) -> int:
    """How many requests the server in ``home`` answered 503 because its database was busy
    (SQLite: a write that met another writer). Prefect's client waits 2 s (then 4, 8, ...)
    before it sends such a request again, so each of its own can add seconds to a run;
    moxflow's slot requests ask again after 5 ms (``tasks.targets``)."""
    log_path = home / "server.log"
    if not log_path.exists():
        return 0
    return log_path.read_text(errors="replace").count(RETRYABLE)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server, politely first."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
