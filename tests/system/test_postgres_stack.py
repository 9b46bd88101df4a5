"""The self-hosted topology, natively: PostgreSQL, the Prefect server, a process worker.

``prefect deploy --all`` registers every deployment of ``prefect.yaml`` (with its schedule in
the inventory's time zone, its one-at-a-time limit and its parameter descriptions) and a
process worker on the ``moxflow`` pool runs the ZFS snapshot deployment against the lab to
Completed, with its report artifact readable from the API.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule

from deployments.definitions import DEFINITIONS, WORK_POOL
from labsim.client import LabClient
from moxflow.inventory import load_inventory
from tests.system.conftest import SCHEDULES
from tests.system.stack import (
    ROOT,
    PrefectStack,
    Service,
    children,
    fail_tank_media_snapshot,
    start,
    wait_for,
    wait_for_final,
)

pytestmark = pytest.mark.system

REPORT_KEY = "zfs-snapshot-report"


@pytest.fixture(scope="module")
def deployed(prefect_stack: PrefectStack, berlin_inventory: Path) -> dict[str, DeploymentResponse]:
    """What docs/install.md says: create the pool, then ``prefect deploy --all`` from the repo."""
    prefect_stack.cli("work-pool", "create", WORK_POOL, "--type", "process")
    prefect_stack.cli("--no-prompt", "deploy", "--all", MOXFLOW_INVENTORY=str(berlin_inventory))
    with prefect_stack.client() as client:
        return {d.full_name: client.read_deployment_by_name(d.full_name) for d in DEFINITIONS}


@pytest.fixture(scope="module")
def worker(
    prefect_stack: PrefectStack, deployed: dict[str, DeploymentResponse]
) -> Iterator[Service]:
    """``prefect worker start --pool moxflow``, with the schedules paused meanwhile.

    The schedules are paused (and runs they already planned deleted) so that an hourly run
    falling due during the test cannot take the deployment's one slot.
    """
    ids = [d.id for d in deployed.values()]
    with prefect_stack.client() as client:
        for deployment_id in ids:
            client.pause_deployment(deployment_id)
        planned = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        for run in planned:
            client.delete_flow_run(run.id)
    service = start(
        "worker",
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            WORK_POOL,
            "--type",
            "process",
            "--name",
            "system-test",
        ],
        prefect_stack.home / "worker.log",
        env={**prefect_stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        cwd=ROOT,
    )
    try:
        with prefect_stack.client() as client:

            def online() -> bool:
                if not service.alive():
                    pytest.fail(f"the worker exited:\n{service.tail()}")
                return any(
                    w.name == "system-test" for w in client.read_workers_for_work_pool(WORK_POOL)
                )

            wait_for("the worker to register with the pool", online, 60, service.log)
        yield service
    finally:
        service.stop()
        with prefect_stack.client() as client:
            for deployment_id in ids:
                client.resume_deployment(deployment_id)


def test_deploy_all_registers_every_deployment_with_its_schedule(
    deployed: dict[str, DeploymentResponse],
) -> None:
    for d in DEFINITIONS:
        dep = deployed[d.full_name]
        assert dep.work_pool_name == WORK_POOL
        assert dep.entrypoint == d.entrypoint
        assert dep.parameters == dict(d.parameters)
        assert dep.tags == ["moxflow"]
        [schedule] = dep.schedules
        # the inventory's [schedules]: a changed time, one turned off, the rest the defaults
        cron = SCHEDULES.get(d.full_name, "off" if d.off else d.cron)
        assert schedule.active is (cron != "off"), d.full_name
        assert isinstance(schedule.schedule, CronSchedule)
        assert schedule.schedule.cron == (d.cron if cron == "off" else cron)
        assert schedule.schedule.timezone == "Europe/Berlin"  # the inventory's
        # one run at a time; an overlapping one is cancelled
        assert dep.global_concurrency_limit is not None
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options is not None
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        # the UI's form: every parameter is described
        props: dict[str, Any] = dep.parameter_openapi_schema["properties"]
        assert props, d.full_name
        undescribed = [name for name, p in props.items() if not p.get("description")]
        assert not undescribed, f"{d.full_name}: no description for {undescribed}"
        # the worker runs the entrypoint from this checkout
        assert dep.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]


def _report_rows(stack: PrefectStack, flow_run_id: Any) -> list[dict[str, str]]:
    with stack.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[REPORT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "table"
    data = artifacts[0].data
    rows: list[dict[str, str]] = json.loads(data) if isinstance(data, str) else data
    return rows


def test_the_worker_runs_the_zfs_snapshot_deployment_against_the_lab(
    prefect_stack: PrefectStack, worker: Service, fresh_lab: LabClient
) -> None:
    inventory = fresh_lab.dir / "inventory.toml"
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("zfs-snapshot/hourly")
        run = client.create_flow_run_from_deployment(
            dep.id, parameters={"inventory": str(inventory)}
        )
        final = wait_for_final(client, run.id, 90, worker.log)
    assert final.state is not None
    assert final.state.is_completed(), f"{final.state!r}\n{worker.tail()}"
    rows = _report_rows(prefect_stack, run.id)
    datasets = load_inventory(inventory).zfs.datasets
    assert {r["target"] for r in rows} == {f"{d.host}:{d.name}" for d in datasets}
    assert {r["outcome"] for r in rows} == {"ok"}
    hosts = fresh_lab.state()["hosts"]
    for row in rows:
        dataset, snapshot = row["taken"].split("@")
        assert snapshot.startswith("moxflow-hourly-")
        on_host = hosts[row["target"].split(":")[0]]["zfs"]["datasets"][dataset]["snapshots"]
        assert snapshot in {s["name"] for s in on_host}, row


def test_an_overlapping_run_is_cancelled_and_says_why(
    prefect_stack: PrefectStack, worker: Service, fresh_lab: LabClient
) -> None:
    inventory = str(fresh_lab.dir / "inventory.toml")
    fresh_lab.fault(
        target="command", host="pve1", command="^zfs snapshot", action="slow", delay=8, times=1
    )
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("zfs-snapshot/hourly")
        first = client.create_flow_run_from_deployment(dep.id, parameters={"inventory": inventory})

        def running() -> bool:
            state = client.read_flow_run(first.id).state
            assert state is not None and not state.is_final(), state
            return state.is_running()

        wait_for("the first run to start", running, 60, worker.log)
        second = client.create_flow_run_from_deployment(dep.id, parameters={"inventory": inventory})
        cancelled = wait_for_final(client, second.id, 30, worker.log)
        finished = wait_for_final(client, first.id, 60, worker.log)
    assert cancelled.state is not None and cancelled.state.is_cancelled(), cancelled.state
    assert cancelled.state.message == "Deployment concurrency limit reached."
    assert finished.state is not None and finished.state.is_completed(), finished.state


def test_a_run_with_failed_targets_is_failed_not_a_crash_on_the_worker(
    prefect_stack: PrefectStack, worker: Service, fresh_lab: LabClient
) -> None:
    """An expected failure (a target failed) is a Failed run with the report's message; the
    worker's output has no crash and no traceback."""
    inventory = str(fresh_lab.dir / "inventory.toml")
    fail_tank_media_snapshot(fresh_lab)
    start = worker.log.stat().st_size
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("zfs-snapshot/hourly")
        run = client.create_flow_run_from_deployment(dep.id, parameters={"inventory": inventory})
        final = wait_for_final(client, run.id, 90, worker.log)
    assert final.state is not None and final.state.is_failed(), final.state
    assert final.state.message == "1 target(s) failed: pve1:tank/media"

    def output() -> str:
        with worker.log.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    # the run's process says how it ended, then exits (a crash would be logged in between)
    finished = "Finished in state Failed('1 target(s) failed: pve1:tank/media')"
    wait_for("the run's last line", lambda: finished in output(), 30, worker.log)
    wait_for("the run's process to end", lambda: not children(worker.proc.pid), 30, worker.log)
    for sign in ("unexpected exception", "Traceback", "RunFailed"):
        assert sign not in output(), output()
