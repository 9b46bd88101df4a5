"""Prefect tasks for ZFS over SSH: snapshot a dataset and prune moxflow's own snapshots."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, tzinfo

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from moxflow.errors import MoxflowError, SshCommandError
from moxflow.inventory import Inventory
from moxflow.report import Outcome, ReportRow
from moxflow.snapshots import DatasetJob
from moxflow.ssh import SshRunner
from moxflow.zfs import (
    ZfsSnapshot,
    destroy_argv,
    list_snapshots_argv,
    parse_snapshot_list,
    plan_dataset_prune,
    snapshot_argv,
)
from tasks.clients import ssh_runner


def _list(runner: SshRunner, job: DatasetJob) -> dict[str, list[ZfsSnapshot]]:
    """moxflow-relevant snapshots of the job's dataset (and descendants), grouped by dataset."""
    result = runner.run(list_snapshots_argv(job.dataset, recursive=job.recursive))
    grouped: dict[str, list[ZfsSnapshot]] = defaultdict(list)
    for snap in parse_snapshot_list(result.stdout):
        grouped[snap.dataset].append(snap)
    return grouped


@task(name="zfs-snapshot-dataset", cache_policy=NO_CACHE, task_run_name="{job.target}")
def snapshot_dataset(
    inv: Inventory,
    job: DatasetJob,
    label: str,
    snapname: str,
    now: datetime,
    tz: tzinfo,
    dry_run: bool = False,
) -> ReportRow:
    """Snapshot one dataset, then prune moxflow's snapshots of ``label`` by the job's policy.

    If the snapshot fails, nothing is pruned there. Never raises: the row says what happened,
    so one dataset failing never stops the others.
    """
    logger = get_run_logger()
    started = time.monotonic()
    taken = f"{job.dataset}@{snapname}"

    took = False

    def row(
        outcome: Outcome, *, kept: int = 0, removed: tuple[str, ...] = (), detail: str = ""
    ) -> ReportRow:
        return ReportRow(
            target=job.target,
            outcome=outcome,
            taken=taken if took or outcome is Outcome.PLANNED else None,
            kept=kept,
            removed=removed,
            detail=detail,
            seconds=round(time.monotonic() - started, 3),
        )

    try:
        with ssh_runner(inv, job.host) as runner:
            if dry_run:
                grouped = _list(runner, job)
                grouped.setdefault(job.dataset, [])
                removed: list[str] = []
                kept = 0
                for dataset, snaps in sorted(grouped.items()):
                    would = [*snaps, ZfsSnapshot(dataset, snapname, now, 0, 0)]
                    plan = plan_dataset_prune(would, dataset, label, job.policy, tz, snapname)
                    removed.extend(f"{dataset}@{n}" for n in plan.remove)
                    kept += len(plan.keep) + len(plan.protected)
                return row(
                    Outcome.PLANNED,
                    kept=kept,
                    removed=tuple(removed),
                    detail="would snapshot" + (" recursively" if job.recursive else ""),
                )

            try:
                runner.run(snapshot_argv(job.dataset, snapname, job.recursive))
            except MoxflowError as exc:
                logger.error("%s: snapshot failed, nothing pruned: %s", job.target, exc)
                return row(Outcome.FAILED, detail=f"snapshot failed, nothing pruned: {exc}")
            took = True
            logger.info("%s: took %s", job.target, taken)

            grouped = _list(runner, job)
            removed = []
            failures: list[str] = []
            kept = 0
            for dataset, snaps in sorted(grouped.items()):
                plan = plan_dataset_prune(snaps, dataset, label, job.policy, tz, snapname)
                kept += len(plan.keep) + len(plan.protected)
                for name in plan.remove:
                    try:
                        runner.run(destroy_argv(dataset, name))
                        removed.append(f"{dataset}@{name}")
                    except SshCommandError as exc:
                        # held or busy since we listed it: keep it and say so
                        failures.append(f"{dataset}@{name}: {(exc.stderr or '').strip()}")
                        kept += 1
            if removed:
                logger.info("%s: pruned %d: %s", job.target, len(removed), ", ".join(removed))
            if failures:
                return row(
                    Outcome.PARTIAL,
                    kept=kept,
                    removed=tuple(removed),
                    detail="prune incomplete: " + "; ".join(failures),
                )
            return row(Outcome.OK, kept=kept, removed=tuple(removed))
    except MoxflowError as exc:
        if took:
            logger.error("%s: snapshot taken, but pruning failed: %s", job.target, exc)
            return row(Outcome.PARTIAL, detail=f"snapshot taken, prune failed: {exc}")
        logger.error("%s: %s", job.target, exc)
        return row(Outcome.FAILED, detail=str(exc))
