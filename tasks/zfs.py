"""Prefect tasks for ZFS over SSH, one step each: list a dataset's snapshots (the facts),
take a snapshot, prune moxflow's own by a plan (``moxflow.snapshots.plan_dataset_snapshot``)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from prefect.logging import get_run_logger

from blocks.ssh import ssh_runner
from moxflow.errors import SshCommandError
from moxflow.inventory import Inventory
from moxflow.snapshots import DatasetJob, DatasetPlan
from moxflow.ssh import SshRunner
from moxflow.zfs import (
    ZfsSnapshot,
    destroy_argv,
    list_snapshots_argv,
    parse_snapshot_list,
    snapshot_argv,
)
from tasks._retry import step


def _list(runner: SshRunner, job: DatasetJob) -> dict[str, list[ZfsSnapshot]]:
    """moxflow-relevant snapshots of the job's dataset (and descendants), grouped by dataset."""
    result = runner.run(list_snapshots_argv(job.dataset, recursive=job.recursive))
    grouped: dict[str, list[ZfsSnapshot]] = defaultdict(list)
    for snap in parse_snapshot_list(result.stdout):
        grouped[snap.dataset].append(snap)
    return grouped


@step("zfs-list", "{job.target}: list")
def list_dataset(inv: Inventory, job: DatasetJob) -> dict[str, list[ZfsSnapshot]]:
    """The facts: the snapshots of the dataset (and its children when recursive), read-only."""
    with ssh_runner(inv, job.host) as runner:
        return dict(_list(runner, job))


@step("zfs-snapshot", "{plan.job.target}: snapshot")
def take_snapshot(inv: Inventory, plan: DatasetPlan) -> Taken:
    """``zfs snapshot [-r] DATASET@NAME``: the snapshot's full name, and how long it took.

    Retried (Prefect) when the connection drops. The name carries this run's timestamp, so
    one that already exists is an earlier attempt's of this run that got through before
    the drop: taken, not taken twice.
    """
    job = plan.job
    started = time.monotonic()
    with ssh_runner(inv, job.host) as runner:
        try:
            runner.run(snapshot_argv(job.dataset, plan.snapname, job.recursive))
        except SshCommandError as exc:
            if "dataset already exists" not in (exc.stderr or ""):
                raise
    get_run_logger().info("%s: took %s", job.target, plan.taken)
    return Taken(plan.taken, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Taken:
    """A snapshot taken: ``dataset@name``, and the seconds it took."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Pruned:
    """What pruning did: destroyed, what could not be (held or busy since the plan), and
    the seconds it took."""

    removed: tuple[str, ...]
    failures: tuple[str, ...]
    seconds: float


@step("zfs-prune", "{plan.job.target}: prune")
def prune_dataset(inv: Inventory, plan: DatasetPlan, taken: Taken) -> Pruned:
    """Destroy the snapshots the plan lets go, once ``taken`` exists (its task's result).

    Idempotent, so retried (Prefect) when the connection drops: a snapshot already gone is
    counted as removed. One that is held or busy since the plan is kept and said.
    """
    logger = get_run_logger()
    started = time.monotonic()
    removed: list[str] = []
    failures: list[str] = []
    with ssh_runner(inv, plan.job.host) as runner:
        for full in plan.prune:
            dataset, _, name = full.partition("@")
            try:
                runner.run(destroy_argv(dataset, name))
            except SshCommandError as exc:
                stderr = (exc.stderr or "").strip()
                if not any(gone in stderr for gone in GONE):
                    failures.append(f"{full}: {stderr}")
                    continue
            removed.append(full)
    if removed:
        logger.info("%s: pruned %d: %s", plan.job.target, len(removed), ", ".join(removed))
    return Pruned(tuple(removed), tuple(failures), time.monotonic() - started)


GONE = ("could not find any snapshots to destroy", "dataset does not exist")
"""What ``zfs destroy`` says of a snapshot that is not there (any more)."""
