"""``python -m deployments.serve``: the schedules run by themselves, from one process.

The served ZFS snapshot deployment gets a short interval (``--every``), and the test waits
for a run the server's scheduler made (not one started by hand) to complete against the lab.
Stopping the process leaves the schedule active (``pause_on_shutdown=False``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.exceptions import ObjectNotFound

from labsim.client import LabClient
from tests.system.stack import PrefectStack, start, wait_for

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
