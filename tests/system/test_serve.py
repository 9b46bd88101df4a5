"""``python -m deployments.serve``: the schedules run by themselves, from one process.

The served ZFS snapshot deployment gets a short interval (``--every``), and the test waits
for a run the server's scheduler made (not one started by hand) to complete against the lab.
Stopping the process leaves the schedule active (``pause_on_shutdown=False``).

Without PREFECT_API_URL, serve registers with the Prefect server running on this machine (the
way ad-hoc runs find it, here a real ``prefect server start`` on SQLite as docs/install.md's
"trying it without a homelab" runs it), or refuses to start when there is none: a temporary
server would forget every run. A run whose targets fail ends Failed with the report's message,
not a crash with a traceback in serve's output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.exceptions import ObjectNotFound

from labsim.client import LabClient
from tests.system.stack import (
    ROOT,
    PrefectStack,
    Service,
    children,
    clean_env,
    fail_tank_media_snapshot,
    free_port,
    start,
    wait_for,
    wait_for_final,
)

pytestmark = pytest.mark.system

SERVED = "zfs-snapshot/daily"


def lab_snapshots(lab: LabClient) -> set[str]:
    """``host:dataset@snapshot`` for every ZFS snapshot in the lab."""
    return {
        f"{host}:{ds}@{snap['name']}"
        for host, h in lab.state()["hosts"].items()
        for ds, d in ((h.get("zfs") or {}).get("datasets") or {}).items()
        for snap in d["snapshots"]
    }


def test_served_schedule_runs_by_itself(
    prefect_stack: PrefectStack, fresh_lab: LabClient, tmp_path: Path
) -> None:
    inventory = fresh_lab.dir / "inventory.toml"
    before = lab_snapshots(fresh_lab)
    serve = start(
        "serve",
        [
            *(sys.executable, "-m", "deployments.serve", "--inventory", str(inventory)),
            *("--only", SERVED, "--every", "30"),
        ],
        tmp_path / "serve.log",
        env={**prefect_stack.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        cwd=tmp_path,  # not the checkout: served runs import the installed flows
    )
    try:
        with prefect_stack.client() as client:

            def completed_scheduled_run() -> FlowRun | None:
                if not serve.alive():
                    pytest.fail(f"deployments.serve exited:\n{serve.tail()}")
                try:
                    dep = client.read_deployment_by_name(SERVED)
                except ObjectNotFound:  # not registered yet
                    return None
                if not isinstance(dep.schedules[0].schedule, IntervalSchedule):
                    return None  # still the cron schedule of an earlier `prefect deploy`
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
                )
                done = [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]
                return done[0] if done else None

            run = wait_for(
                "a scheduled run of the served deployment", completed_scheduled_run, 60, serve.log
            )
            assert run.parameters == {"label": "daily", "inventory": str(inventory)}
    finally:
        serve.stop()
    taken = lab_snapshots(fresh_lab) - before
    assert taken, "the served run took no snapshot"
    assert all("@moxflow-daily-" in name for name in taken), taken
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name(SERVED)
    assert not dep.paused
    assert all(s.active for s in dep.schedules), "stopping serve paused the schedule"


CRASH_SIGNS = ("unexpected exception", "Traceback", "Starting temporary server")


def _serve(inventory: Path, env: dict[str, str], log: Path, *only: str) -> Service:
    argv = [sys.executable, "-m", "deployments.serve", "--inventory", str(inventory)]
    for name in only:
        argv += ["--only", name]
    return start("serve", argv, log, env=env, cwd=ROOT)


def _deployment(client: SyncPrefectClient, name: str) -> DeploymentResponse | None:
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def test_serve_without_a_server_says_how_to_start_one(lab_inventory: Path, tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/api"
    env = clean_env(MOXFLOW_PREFECT_URL=nobody, PREFECT_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--inventory", str(lab_inventory),
         "--wait", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "waiting up to 2 s for the Prefect server at" in out.stdout
    assert "no Prefect server answers" in out.stderr
    assert nobody in out.stderr and "prefect server start" in out.stderr
    assert "temporary server on" not in out.stdout + out.stderr  # none was started


def test_serve_registers_with_the_local_server_and_a_failed_run_is_no_crash(
    local_server: str, fresh_lab: LabClient, tmp_path: Path
) -> None:
    inventory = fresh_lab.dir / "inventory.toml"
    env = clean_env(
        MOXFLOW_PREFECT_URL=local_server,
        PREFECT_HOME=str(tmp_path),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    serve = _serve(inventory, env, tmp_path / "serve.log", "zfs-snapshot/hourly")
    try:
        with SyncPrefectClient(local_server) as client:

            def registered() -> DeploymentResponse | None:
                assert serve.alive(), serve.log.read_text()
                return _deployment(client, "zfs-snapshot/hourly")

            dep = wait_for("serve to register zfs-snapshot/hourly", registered, 90, serve.log)
            fail_tank_media_snapshot(fresh_lab)
            run = client.create_flow_run_from_deployment(
                dep.id, parameters={"inventory": str(inventory)}
            )
            final = wait_for_final(client, run.id, 90, serve.log)
        # the run's process says how it ended, then exits (a crash would be logged in between)
        finished = "Finished in state Failed('1 target(s) failed: pve1:tank/media')"
        wait_for("the run's last line", lambda: finished in serve.log.read_text(), 30, serve.log)
        wait_for("the run's process to end", lambda: not children(serve.proc.pid), 30, serve.log)
    finally:
        serve.stop()
    assert final.state is not None and final.state.is_failed(), final.state
    assert final.state.message == "1 target(s) failed: pve1:tank/media"
    log = serve.log.read_text()
    assert f"from the Prefect server at {local_server}" in log
    for sign in CRASH_SIGNS:
        assert sign not in log, log
