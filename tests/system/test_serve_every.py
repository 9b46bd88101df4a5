"""``python -m deployments.serve --every``: every job at once against one lab, briefly.

The short version of issue 15's acceptance run (``--every 60`` for ten minutes): every
deployment served from one process with a short interval, for a bounded time; then the
schedules are paused and the runs already started finish. No run fails because of another
(no failed row blames a lock, a busy target or a scratch guest: a guest another job holds is
a busy row, and its run is not OK), no run crashes, and no scratch guest is left.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.exceptions import ObjectNotFound

from deployments.definitions import DEFINITIONS
from labsim.client import LabClient
from moxflow.guests import SCRATCH_PREFIX, SCRATCH_TAG
from tests.system.stack import PrefectStack, start, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

EVERY = "20"  # seconds between the runs of each deployment
SERVED_FOR = 70.0  # seconds of runs falling due
# what a failure caused by another job says: a Proxmox lock, a moxflow slot or host lock
# another run holds, a snapshot name another run took, the restore test's scratch guest
COLLISION = re.compile(
    r"\blocked\b|held by|another run|already taken|busy|qmrestore|scratch", re.IGNORECASE
)
SERVED = list(DEFINITIONS)
"""Every job, the Proxmox update (off by default) and the Windows jobs included: the roll
reboots the lab's nodes and migrates their guests under the other jobs."""
FAILED_ROWS = {"failed", "partial", "needs attention", "rolled back"}


def test_every_job_served_at_once_never_trips_over_another(
    prefect_stack: PrefectStack, fresh_lab: LabClient, tmp_path: Path
) -> None:
    inventory = fresh_lab.dir / "inventory.toml"
    serve = start(
        "serve",
        [
            *(sys.executable, "-m", "deployments.serve", "--inventory", str(inventory)),
            *("--every", EVERY, "--only", ",".join(d.full_name for d in SERVED)),
        ],
        tmp_path / "serve.log",
        env={**prefect_stack.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        cwd=tmp_path,  # not the checkout: served runs import the installed flows
    )
    try:
        with prefect_stack.client() as client:

            def served() -> list[DeploymentResponse] | None:
                if not serve.alive():
                    pytest.fail(f"deployments.serve exited:\n{serve.tail()}")
                try:
                    deps = [client.read_deployment_by_name(d.full_name) for d in SERVED]
                except ObjectNotFound:
                    return None
                on_interval = all(isinstance(d.schedules[0].schedule, IntervalSchedule)
                                  for d in deps)  # fmt: skip
                return deps if on_interval else None

            deps = wait_for("serve to register every deployment", served, 120, serve.log)
            ids = [d.id for d in deps]
            time.sleep(SERVED_FOR)
            for deployment_id in ids:  # no new runs; the started ones finish
                client.pause_deployment(deployment_id)
            by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=ids))
            for run in client.read_flow_runs(
                deployment_filter=by_deployment,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),
            ):
                client.delete_flow_run(run.id)

            def all_final() -> list[FlowRun] | None:
                runs = client.read_flow_runs(deployment_filter=by_deployment)
                done = all(r.state is not None and r.state.is_final() for r in runs)
                return runs if done else None

            runs = wait_for("the started runs to finish", all_final, 240, serve.log)
            reports = {r.id: _report(client, r.id) for r in runs}
    finally:
        serve.stop()
        with prefect_stack.client() as client:
            for d in SERVED:
                with contextlib.suppress(ObjectNotFound):
                    client.resume_deployment(client.read_deployment_by_name(d.full_name).id)

    ran = {r.deployment_id for r in runs if r.state and not r.state.is_cancelled()}
    assert ran == set(ids), "a job never ran"
    for run in runs:
        assert run.state is not None
        assert run.state.type is not StateType.CRASHED, (run.name, run.state)
        rows = reports[run.id]
        for row in rows:
            if row.get("outcome") in FAILED_ROWS:
                detail = row.get("detail", "")
                assert not COLLISION.search(detail), (run.name, row)  # tripped over another
        if any(row.get("outcome") == "busy" for row in rows):  # a skip is never OK
            assert not run.state.is_completed(), (run.name, run.state, rows)

    # no scratch guest of a restore test is left behind
    guests = fresh_lab.state()["guests"]
    left = [
        vmid for vmid, g in guests.items()
        if str(g.get("name", "")).startswith(SCRATCH_PREFIX) or SCRATCH_TAG in (g.get("tags") or [])
    ]  # fmt: skip
    assert not left, {vmid: guests[vmid] for vmid in left}


def _report(client: SyncPrefectClient, flow_run_id: UUID) -> list[dict[str, str]]:
    """The rows of the run's report table (none when the run made no report)."""
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    rows: list[dict[str, str]] = []
    for artifact in artifacts:
        if artifact.type != "table":
            continue
        data = artifact.data
        rows += json.loads(data) if isinstance(data, str) else data
    return rows
