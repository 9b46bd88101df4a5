"""The zfs-snapshot flow; what it does and its command line: ``flows/zfs_snapshot.py``."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows._run import finish
from flows.params import ZfsSnapshotParams, flow_parameters
from moxflow.errors import MoxflowError
from moxflow.inventory import load_inventory
from moxflow.naming import snapshot_name
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.snapshots import (
    DatasetPlan,
    plan_dataset_jobs,
    plan_dataset_snapshot,
    utc_now,
)
from tasks._retry import tuned
from tasks.zfs import Pruned, Taken, list_dataset, prune_dataset, take_snapshot


@flow(
    name="zfs-snapshot",
    description="Snapshot the configured ZFS datasets and prune moxflow's older snapshots.",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    log_prints=True,
)
@flow_parameters(ZfsSnapshotParams)
def zfs_snapshot(
    *,
    label: str = "hourly",
    only: list[str] | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Snapshot and prune every configured dataset (or those named in ``only``)."""
    p = ZfsSnapshotParams(label=label, only=only, dry_run=dry_run, inventory=inventory)
    label, only, dry_run, inventory = p.label, p.only, p.dry_run, p.inventory
    logger = get_run_logger()
    inv = load_inventory(inventory)
    jobs = plan_dataset_jobs(inv, label, only or ())
    tz = ZoneInfo(inv.timezone)
    now = utc_now()
    snapname = snapshot_name(label, now)
    report = RunReport(job="zfs-snapshot", label=label, dry_run=dry_run)
    logger.info("reading %d dataset(s) for @%s", len(jobs), snapname)

    # facts: each dataset's snapshots, read-only
    listing = tuned(list_dataset, inv)
    facts = {job.target: listing.submit(inv, job) for job in jobs}
    plans: list[DatasetPlan] = []
    for job in jobs:
        try:
            grouped = facts[job.target].result()
        except MoxflowError as exc:
            logger.error("%s: %s", job.target, exc)
            report.add(ReportRow(job.target, Outcome.FAILED, detail=str(exc)))
            continue
        # the plan: pure, from the facts
        plans.append(plan_dataset_snapshot(job, grouped, label, snapname, now, tz))
    if dry_run:
        for plan in plans:
            how = "would snapshot" + (" recursively" if plan.job.recursive else "")
            report.add(
                ReportRow(
                    plan.job.target,
                    Outcome.PLANNED,
                    taken=plan.taken,
                    kept=plan.kept,
                    removed=plan.prune,
                    detail=how,
                )
            )
        return finish(report, artifact_key="zfs-snapshot-report", inv=inv)

    # apply: per dataset, snapshot → prune (the prune waits on its snapshot's result)
    logger.info("snapshotting %d dataset(s) as @%s", len(plans), snapname)
    snap, prune = tuned(take_snapshot, inv), tuned(prune_dataset, inv)
    taken = {p.job.target: snap.submit(inv, p) for p in plans}
    # a future as the argument: Prefect resolves it and draws the edge (its stubs do not say so)
    pruned = {
        p.job.target: prune.submit(inv, p, taken[p.job.target])  # type: ignore[call-overload]
        for p in plans
    }
    for i, plan in enumerate(plans, start=1):
        row = _row(plan, taken[plan.job.target], pruned[plan.job.target])
        logger.info("[%d/%d] %s: %s", i, len(plans), row.target, row.line())
        report.add(row)
    return finish(report, artifact_key="zfs-snapshot-report", inv=inv)


def _row(
    plan: DatasetPlan, taken: PrefectFuture[Taken], pruned: PrefectFuture[Pruned]
) -> ReportRow:
    """How one dataset ended, from its two steps; a snapshot that failed prunes nothing."""
    target = plan.job.target
    try:
        took = taken.result()
    except MoxflowError as exc:
        pruned.wait()  # never started: its snapshot did not complete
        return ReportRow(target, Outcome.FAILED, detail=f"snapshot failed, nothing pruned: {exc}")
    try:
        done = pruned.result()
    except MoxflowError as exc:
        return ReportRow(
            target,
            Outcome.PARTIAL,
            taken=plan.taken,
            seconds=round(took.seconds, 3),
            detail=f"snapshot taken, prune failed: {exc}",
        )
    seconds = round(took.seconds + done.seconds, 3)
    kept = plan.kept + len(done.failures)
    if done.failures:
        detail = "prune incomplete: " + "; ".join(done.failures)
        return ReportRow(target, Outcome.PARTIAL, plan.taken, kept, done.removed, detail, seconds)
    return ReportRow(target, Outcome.OK, plan.taken, kept, done.removed, seconds=seconds)


def check(p: ZfsSnapshotParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the label, ``only``."""
    plan_dataset_jobs(load_inventory(p.inventory), p.label, p.only or ())
