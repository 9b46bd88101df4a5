"""Several workers: the runs spread across them and never interleave on one target.

Two process workers (separate processes, two runs each at most) serve the ``moxflow`` pool
of a real ``prefect server start`` on PostgreSQL. Four overlapping runs are started at once
on the same guests: two guest snapshots of one label (the deployed ``guest-snapshot/daily``
and a copy of it without its one-run limit, as a second schedule of the job would be) and two
backups (``vzdump-backup/nightly`` and such a copy). Each worker has at most two, so both
run some; the guests' Prefect slots (``tasks/targets.py``: a backup holds its guest's, a
snapshot waits for it to be free) and Proxmox's guest lock keep the runs apart: no two
Proxmox tasks of the lab on one guest work at the same time (a task refused on the lock did
nothing), and every report adds up to the lab's state.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType

from deployments.definitions import DEFINITIONS, WORK_POOL
from labsim.client import LabClient
from tests.system.stack import ROOT, PrefectStack, Service, start, wait_for, wait_for_final

pytestmark = pytest.mark.system

WORKERS = ("worker-a", "worker-b")
SNAPSHOTS = "100,101,104"  # the guest snapshot runs' selection
BACKUPS = "101,104,105"  # the backups': two guests shared with the snapshots
LABEL = "daily"
COPY = "again"  # the copies' deployment name
SUBMITTED = re.compile(r"Worker '([^']+)' submitting flow run")
GUEST_TASKS = {"qmsnapshot", "vzsnapshot", "qmdelsnapshot", "vzdelsnapshot", "vzdump"}


@pytest.fixture(scope="module")
def deployments(prefect_stack: PrefectStack, lab: LabClient) -> Iterator[dict[str, UUID]]:
    """Every job deployed (``prefect deploy --all``), their schedules paused, and copies of
    the guest snapshot and backup deployments without the one-run limit: name -> id."""
    prefect_stack.cli("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    inventory = str(lab.dir / "inventory.toml")
    prefect_stack.cli("--no-prompt", "deploy", "--all", MOXFLOW_INVENTORY=inventory)
    with prefect_stack.client() as client:
        ids = {d.full_name: client.read_deployment_by_name(d.full_name).id for d in DEFINITIONS}
        for deployment_id in ids.values():
            client.pause_deployment(deployment_id)
        _delete_planned(client, list(ids.values()))
        for name in ("guest-snapshot/daily", "vzdump-backup/nightly"):
            ids[name.split("/")[0] + "/" + COPY] = _copy(client, name)
    try:
        yield ids
    finally:
        with prefect_stack.client() as client:
            for name, deployment_id in ids.items():
                if name.endswith("/" + COPY):
                    client.delete_deployment(deployment_id)
                else:
                    client.resume_deployment(deployment_id)


def _delete_planned(client: SyncPrefectClient, ids: list[UUID]) -> None:
    """Delete the runs the schedules planned: a scheduled run must not join the test's."""
    planned = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    for run in planned:
        client.delete_flow_run(run.id)


def _copy(client: SyncPrefectClient, name: str) -> UUID:
    """The deployment ``name`` again, as ``flow/again``: no schedule, no one-run limit."""
    dep = client.read_deployment_by_name(name)
    return client.create_deployment(
        flow_id=dep.flow_id,
        name=COPY,
        entrypoint=dep.entrypoint,
        work_pool_name=dep.work_pool_name,
        parameters=dep.parameters,
        parameter_openapi_schema=dep.parameter_openapi_schema,
        pull_steps=dep.pull_steps,
        tags=dep.tags,
    )


@pytest.fixture(scope="module")
def workers(prefect_stack: PrefectStack, deployments: dict[str, UUID]) -> Iterator[list[Service]]:
    """Two ``prefect worker start --pool moxflow`` processes, at most two runs each."""
    started: list[Service] = []
    try:
        for name in WORKERS:
            argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL]
            argv += ["--type", "process", "--name", name, "--limit", "2"]
            env = {**prefect_stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
            log = prefect_stack.home / f"{name}.log"
            started.append(start(name, argv, log, env=env, cwd=ROOT))
        with prefect_stack.client() as client:

            def online() -> bool:
                for service in started:
                    if not service.alive():
                        pytest.fail(f"{service.name} exited:\n{service.tail()}")
                names = {w.name for w in client.read_workers_for_work_pool(WORK_POOL)}
                return names >= set(WORKERS)

            wait_for("both workers to register with the pool", online, 60, started[0].log)
        yield started
    finally:
        for service in started:
            service.stop()


def _rows(client: SyncPrefectClient, flow_run_id: UUID, job: str) -> list[dict[str, str]]:
    """The rows of the run's report table (artifact ``JOB-report``)."""
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"{job}-report"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        )
    )
    if len(found) != 1:  # say why: the run's end state and the last lines of its log
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        tail = [entry.message[:300] for entry in logs][-8:]
        raise AssertionError(f"{job} run {flow_run_id}: no report; {run.state}; log: {tail}")
    [artifact] = found
    data = artifact.data
    rows: list[dict[str, str]] = json.loads(data) if isinstance(data, str) else data
    return rows


def _worker_of(client: SyncPrefectClient, flow_run_id: UUID, workers: list[Service]) -> str:
    """The worker that ran the flow run, from the run's log (the worker writes it there).
    Two workers may both pick a run up; the server lets one have it, and the other says
    "Aborted submission of flow run ..." in its own output."""
    logs = client.read_logs(
        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
    )
    found = {m.group(1) for log in logs if (m := SUBMITTED.search(log.message))}
    aborted = f"Aborted submission of flow run '{flow_run_id}'"
    for name, worker in zip(WORKERS, workers, strict=True):
        if len(found) > 1 and aborted in worker.log.read_text(errors="replace"):
            found.discard(name)
    assert len(found) == 1, f"flow run {flow_run_id}: submitted by {found or 'no worker'}"
    return found.pop()


def _overlaps(tasks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of the lab's Proxmox tasks on the same guest that ran at the same time."""
    by_guest: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        # a task Proxmox refused on the guest's lock ("VM is locked (snapshot)") did nothing:
        # the lock is what keeps single-task steps apart (tasks/targets.py, wait_free)
        if any("is locked" in line for line in [t["exitstatus"] or "", *t["log"]]):
            continue
        if t["type"] in GUEST_TASKS and t["id"]:
            by_guest.setdefault(t["id"], []).append(t)
    found = []
    for guest_tasks in by_guest.values():
        guest_tasks.sort(key=lambda t: t["begun"])
        for a, b in itertools.pairwise(guest_tasks):
            if b["begun"] < (a["ended"] or math.inf):
                found.append((a["upid"], b["upid"]))
    return found


def test_overlapping_runs_spread_across_two_workers_and_never_share_a_guest(
    prefect_stack: PrefectStack, workers: list[Service], deployments: dict[str, UUID],
    fresh_lab: LabClient,
) -> None:  # fmt: skip
    inventory = str(fresh_lab.dir / "inventory.toml")
    snapshot = {"inventory": inventory, "label": LABEL, "select": SNAPSHOTS}
    backup = {"inventory": inventory, "select": BACKUPS, "offsite": False}
    planned = [
        ("guest-snapshot/daily", snapshot),
        (f"guest-snapshot/{COPY}", snapshot),
        ("vzdump-backup/nightly", backup),
        (f"vzdump-backup/{COPY}", backup),
    ]
    # the first Proxmox task on guest 101 takes 8 s, whichever run gets there first (a
    # snapshot, or a backup: which one depends on how the workers start them): every other
    # run wanting the guest meanwhile has to wait for it (Proxmox's lock, the backup's slot)
    fresh_lab.fault(target="task", id="101", action="slow", delay=8, times=1)
    with prefect_stack.client() as client:
        runs = {
            client.create_flow_run_from_deployment(deployments[name], parameters=params).id: name
            for name, params in planned
        }
        finals = {i: wait_for_final(client, i, 240, workers[0].log) for i in runs}
        ran_on = {i: _worker_of(client, i, workers) for i in runs}
        rows = {i: _rows(client, i, runs[i].split("/")[0]) for i in runs}

    for i, run in finals.items():
        assert run.state is not None and run.state.type in (StateType.COMPLETED, StateType.FAILED)
        if run.state.is_failed():  # only a busy guest may fail it, and the report says so
            assert {r["outcome"] for r in rows[i]} <= {"ok", "busy"}, (runs[i], rows[i])
    assert set(ran_on.values()) == set(WORKERS), ran_on

    # one Proxmox task at a time on each guest, across the four runs and the two workers ...
    state = fresh_lab.state()
    assert not _overlaps(state["tasks"]), _overlaps(state["tasks"])
    # ... though every run was running while the slow task held guest 101
    [slow] = [t for t in state["tasks"] if (t["ended"] or math.inf) - t["begun"] > 5]
    for i, run in finals.items():
        assert run.start_time is not None and run.end_time is not None
        during = run.start_time.timestamp() < slow["ended"] < run.end_time.timestamp()
        assert during, (runs[i], run.start_time, run.end_time, slow)

    # the snapshot runs: each guest once per run, taken, busy, or taken by the other run;
    # what the reports say was taken and not pruned is what the guests have
    taken: dict[str, set[str]] = {}
    removed: dict[str, set[str]] = {}  # per guest: a run gives every guest the same name
    for i, name in runs.items():
        if not name.startswith("guest-snapshot/"):
            continue
        assert sorted(r["target"].split()[0] for r in rows[i]) == sorted(SNAPSHOTS.split(","))
        for r in rows[i]:
            assert r["outcome"] in ("ok", "busy", "skipped"), r
            if r["outcome"] == "skipped":
                assert "already taken by run" in r["detail"], r
            if r["outcome"] == "ok":
                taken.setdefault(r["target"].split()[0], set()).add(r["taken"])
                vmid = r["target"].split()[0]
                gone = {n for n in r.get("removed", "").split(", ") if n and n != "—"}
                removed.setdefault(vmid, set()).update(gone)
    for vmid in SNAPSHOTS.split(","):
        assert taken.get(vmid), f"guest {vmid}: no run took its snapshot"
        snapshots = state["guests"][vmid]["snapshots"]
        on_guest = {name for name in snapshots if name.startswith(f"moxflow-{LABEL}-")}
        gone = removed.get(vmid, set())
        assert on_guest == taken[vmid] - gone, (vmid, taken[vmid], gone, on_guest)

    # the backup runs: each guest backed up (or busy) once per run; each archive is there
    archives = {a["filename"] for a in state["storages"]["nas-backup"]["archives"]}
    for i, name in runs.items():
        if name.startswith("vzdump-backup/"):
            assert sorted(r["target"].split()[0] for r in rows[i]) == sorted(BACKUPS.split(","))
            for r in rows[i]:
                assert r["outcome"] in ("ok", "busy"), r
                assert r["outcome"] == "busy" or r["archive"] in archives, r
