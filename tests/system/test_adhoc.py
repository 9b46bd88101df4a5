"""Ad-hoc runs from a shell: a running local server is found and used; without one, a
temporary server is started quietly (its output goes to a log file, not the terminal)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Log
from prefect.client.schemas.sorting import FlowRunSort

from flows._server import find_local_server, server_answers
from labsim.client import LabClient
from tests.system.stack import ROOT, PrefectStack, clean_env, fail_tank_media_snapshot, wait_for


class _Health(http.server.BaseHTTPRequestHandler):
    body = b"true"

    def do_GET(self) -> None:
        status = 200 if self.path == "/api/health" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(self.body if status == 200 else b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    """Something answering ``/api/health`` like Prefect; its API URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_local_server_is_found(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOXFLOW_PREFECT_URL", fake_server)
    assert find_local_server() == fake_server
    monkeypatch.setenv("MOXFLOW_PREFECT_URL", "off")
    assert find_local_server() is None
    monkeypatch.setenv("MOXFLOW_PREFECT_URL", fake_server.replace("/api", "/nope"))
    assert find_local_server() is None


def test_nothing_listening_is_no_server() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert not server_answers(f"http://127.0.0.1:{port}/api")
    assert not server_answers("not a url")


def run_cli(inventory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.zfs_snapshot", "--inventory", str(inventory), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.system
def test_a_run_uses_the_local_server(
    prefect_stack: PrefectStack, fresh_lab: LabClient, tmp_path: Path
) -> None:
    env = clean_env(MOXFLOW_PREFECT_URL=prefect_stack.api_url, PREFECT_HOME=str(tmp_path))

    def recorded() -> int:
        with prefect_stack.client() as client:
            return len(
                client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["zfs-snapshot"]))
                )
            )

    before = recorded()
    out = run_cli(fresh_lab.dir / "inventory.toml", env)
    assert out.returncode == 0, out.stderr
    assert "temporary" not in out.stderr
    assert recorded() == before + 1


@pytest.mark.system
def test_without_a_server_the_run_is_quiet(fresh_lab: LabClient, tmp_path: Path) -> None:
    env = clean_env(MOXFLOW_PREFECT_URL="off", PREFECT_HOME=str(tmp_path))
    out = run_cli(fresh_lab.dir / "inventory.toml", env)
    assert out.returncode == 0, out.stderr
    assert "starting a temporary one" in out.stderr
    text = out.stdout + out.stderr
    for noise in ("Traceback", "database is locked", "Error logging to API", "telemetry"):
        assert noise not in text
    assert "OK (dry run: nothing changed)" in out.stdout
    assert (tmp_path / "moxflow-temporary-server.log").exists()


@pytest.mark.system
def test_guest_snapshot_records_to_the_local_server_and_starts_no_other(
    prefect_stack: PrefectStack, fresh_lab: LabClient, tmp_path: Path
) -> None:
    """Its per-guest threads log into the run on the local server, not a temporary one."""
    env = clean_env(MOXFLOW_PREFECT_URL=prefect_stack.api_url, PREFECT_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "flows.guest_snapshot", "--inventory",
         str(fresh_lab.dir / "inventory.toml"), "--label", "daily", "--select", "100,101"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    for noise in ("temporary server", "Traceback", "telemetry", "Error logging to API"):
        assert noise not in text
    # the lines the per-guest threads logged reached the run's task on the local server
    # (the server stores logs a moment after it accepted them)
    with prefect_stack.client() as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["guest-snapshot"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )

        def took() -> list[Log] | None:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            found = [log for log in logs if ": took moxflow-daily-" in log.message]
            return found if len(found) == 2 else None

        lines = wait_for("the two guests' lines on the server", took, 30)
    assert all(log.task_run_id is not None for log in lines)


@pytest.mark.system
def test_a_run_with_a_failed_target_ends_1_with_its_report_and_no_traceback(
    prefect_stack: PrefectStack, fresh_lab: LabClient, tmp_path: Path
) -> None:
    env = clean_env(MOXFLOW_PREFECT_URL=prefect_stack.api_url, PREFECT_HOME=str(tmp_path))
    fail_tank_media_snapshot(fresh_lab)
    out = subprocess.run(
        [sys.executable, "-m", "flows.zfs_snapshot", "--inventory",
         str(fresh_lab.dir / "inventory.toml"), "--label", "daily"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Finished in state Failed('1 target(s) failed: pve1:tank/media')" in text
    assert "zfs-snapshot [daily] FAILED" in out.stdout  # the report, on the terminal
    for noise in ("Traceback", "unexpected exception", "RunFailed"):
        assert noise not in text, text
