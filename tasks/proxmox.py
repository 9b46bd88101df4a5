"""Prefect tasks for the Proxmox VE API: list guests; a node's guest snapshots as three steps,
list (the facts), snapshot and prune (by a plan, ``moxflow.snapshots.plan_guest_snapshot``).

The guest steps take one node's guests at once, as many at a time as the run's lanes let
through (one Prefect task run per guest costs more than the snapshot on large clusters); the
log has a line per guest and the flow's report a row per guest. A guest that fails for a
passing reason (the API unavailable, the guest locked) fails the step's attempt after the
other guests are done, so that Prefect retries the step; on the last attempt it is reported
instead, and the step completes for the others.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from moxflow.errors import (
    GuestLockedError,
    MoxflowError,
    ProxmoxError,
    ProxmoxUnavailableError,
    TargetBusyError,
)
from moxflow.guests import Guest
from moxflow.naming import description_run, is_moxflow_description
from moxflow.proxmox import GuestSnapshot, ProxmoxClient
from moxflow.pveupdate import parse_running_tasks
from moxflow.snapshots import GuestSnapshotPlan, NodeSnapshotPlan, busy_guest, guests_text
from tasks._retry import attempt, step
from tasks.targets import free_check, guest_target

T = TypeVar("T")
Item = TypeVar("Item")

TASK_TIMEOUT = 600.0
"""Seconds one snapshot or snapshot-delete task may run."""


@task(name="list-guests", cache_policy=NO_CACHE)
def list_guests(client: ProxmoxClient) -> list[Guest]:
    """Every VM and container of the cluster (``/cluster/resources?type=vm``)."""
    return client.resources()


@dataclass(frozen=True, slots=True)
class NodeGuests:
    """The guests of one node a run reads the snapshots of."""

    node: str
    guests: tuple[Guest, ...]

    @property
    def size(self) -> str:
        return guests_text(len(self.guests))


@dataclass(frozen=True, slots=True)
class Listed:
    """A node's facts: each guest's snapshots by VMID, or why they could not be read."""

    snapshots: Mapping[int, tuple[GuestSnapshot, ...]]
    errors: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class GuestTaken:
    """One guest's snapshot step: taken (``error`` empty), or why not; ``locked``: the guest
    was still locked by another operation after the step's tries (busy: not done, not OK)."""

    taken: bool
    seconds: float
    error: str = ""
    locked: bool = False
    elsewhere: bool = False  # another run took it: that run's snapshot, counted there


@dataclass(frozen=True, slots=True)
class AlreadyTaken:
    """A guest's snapshot of this run's name was there already, taken by the flow run
    ``run`` (another run of the same label in the same second)."""

    run: str


def _whole_snapshot(client: ProxmoxClient, guest: Guest, name: str) -> GuestSnapshot | None:
    """The guest's whole (not half made or deleted) snapshot ``name``, if it has one."""
    return next((s for s in client.list_snapshots(guest) if s.name == name and s.complete), None)


@dataclass(frozen=True, slots=True)
class GuestPruned:
    """One guest's prune step: the snapshots deleted, those that could not be, the seconds."""

    removed: tuple[str, ...]
    failures: tuple[str, ...]
    seconds: float


@step("guest-snapshot-list", "{batch.node}: list {batch.size}")
def list_node_snapshots(client: ProxmoxClient, batch: NodeGuests, lanes: Executor) -> Listed:
    """The facts: every guest's snapshots (``GET .../snapshot``), read-only, so retried."""

    def one(guest: Guest) -> tuple[GuestSnapshot, ...]:
        return tuple(client.list_snapshots(guest))

    results = _each(batch.guests, one, lanes)
    failed = _failures([g.label for g in batch.guests], results)
    _retry_if_passing(batch.node, "listing", failed)
    snapshots: dict[int, tuple[GuestSnapshot, ...]] = {}
    errors: dict[int, str] = {}
    for guest, result in zip(batch.guests, results, strict=True):
        if isinstance(result, MoxflowError):
            errors[guest.vmid] = str(result)
        else:
            snapshots[guest.vmid] = result
    return Listed(snapshots, errors)


def wait_for_earlier_task(client: ProxmoxClient, guest: Guest, op: str) -> bool:
    """A guest found locked: when the lock is a task of ``op`` (``snapshot``, ``restore``,
    ...) that this token started and that still runs (a killed earlier run's), wait for it
    to end, naming its UPID and age, and say True (try again now). False: no such task (the
    lock is someone else's; the caller's retries deal with it)."""
    task_type = ("qm" if guest.type == "qemu" else "vz") + op
    orphan = client.running_task(guest.node, task_type, guest.vmid)
    if orphan is None:
        return False
    logger = get_run_logger()
    age = (datetime.now(UTC) - orphan.starttime).total_seconds()
    logger.warning(
        "%s: waiting for task %s of an earlier run (running for %.0fs)", guest.label, orphan, age
    )
    try:
        client.wait_task(str(orphan), timeout=TASK_TIMEOUT, node=guest.node)
    except ProxmoxError as exc:  # its own failure: it ended, which is what this waits for
        if isinstance(exc, ProxmoxUnavailableError):
            raise
        logger.warning("%s: the earlier run's task ended badly: %s", guest.label, exc)
    return True


def finish_half_deleted(client: ProxmoxClient, guest: Guest) -> bool:
    """A guest found locked ``snapshot-delete``: an earlier delete of this token's that still
    runs is waited for; one that failed (PVE then leaves the snapshot in state ``delete``
    and the guest locked, refusing every snapshot and backup) is finished with ``force``
    when the snapshot is moxflow's own and no delete by anyone runs on the guest now (out of
    the config; a disk snapshot the storage would not remove stays there, said in the log).
    True: try again now. False: not moxflow's to finish (someone's delete is at work, or the
    half-deleted snapshot is not moxflow's)."""
    waited = wait_for_earlier_task(client, guest, "delsnapshot")
    task_type = ("qm" if guest.type == "qemu" else "vz") + "delsnapshot"
    running = parse_running_tasks(client.active_tasks(guest.node))
    if any(t.type == task_type and t.id == str(guest.vmid) for t in running):
        return False
    half = [
        s
        for s in client.list_snapshots(guest)
        if s.snapstate == "delete" and is_moxflow_description(s.description)
    ]
    for snap in half:
        get_run_logger().warning(
            "%s: finishing the delete of %s that an earlier run left half done (the guest "
            "was locked snapshot-delete); forced: a disk snapshot the storage kept stays "
            "there (zfs list -t snapshot | grep %s)",
            guest.label,
            snap.name,
            snap.name,
        )
        upid = client.delete_snapshot(guest, snap.name, force=True)
        client.wait_task(upid, timeout=TASK_TIMEOUT, node=guest.node)
    return waited or bool(half)


@step("guest-snapshot", "{plan.node}: snapshot {plan.size}")
def snapshot_node(
    client: ProxmoxClient,
    plan: NodeSnapshotPlan,
    lanes: Executor,
    lock_timeout: float,
) -> dict[int, GuestTaken]:
    """Take each guest's snapshot (``POST .../snapshot``, then wait for the task).

    Retried (Prefect) while a guest failed for a passing reason (locked, the API unavailable)
    and the step started less than ``lock_timeout`` seconds ago; after that such a guest is
    reported (a locked one as busy, with its lock). A guest whose target slot
    (:mod:`tasks.targets`) another moxflow run holds for a chain (a NixOS update of it, a
    restore, a migration) is waited for, then busy after ``lock_timeout``. A retry first
    reads what an earlier attempt did: a guest that has a whole snapshot of this run's name
    is taken, not twice. A snapshot of that name another run took (its description names
    that run: two runs of the same label at once) is that run's, reported as such, never
    counted as taken here.
    """
    logger = get_run_logger()
    tries = attempt().number

    def one(p: GuestSnapshotPlan) -> float | AlreadyTaken:
        free(guest_target(p.guest.vmid), lock_timeout)  # no chain of another run on it
        return take(p)

    def take(p: GuestSnapshotPlan) -> float | AlreadyTaken:
        started = time.monotonic()
        guest = p.guest
        found = _whole_snapshot(client, guest, p.snapname) if tries > 1 else None

        def create() -> None:
            upid = client.create_snapshot(guest, p.snapname, p.description, vmstate=p.vmstate)
            client.wait_task(upid, timeout=TASK_TIMEOUT, node=guest.node)

        if found is None:
            try:
                try:
                    create()
                except GuestLockedError as exc:
                    earlier = wait_for_earlier_task(client, guest, "snapshot") or (
                        "snapshot-delete" in exc.message and finish_half_deleted(client, guest)
                    )
                    if not earlier:
                        raise
                    # the task waited for may have been a chain's (a NixOS update's own
                    # snapshot): never land on top of it while the chain holds the guest
                    free(guest_target(guest.vmid), lock_timeout)
                    create()  # the earlier run's snapshot task has ended: once more
            except MoxflowError as exc:
                if "already used" not in str(exc):
                    raise
                found = _whole_snapshot(client, guest, p.snapname)
                if found is None:
                    raise
        if found is not None:
            owner = description_run(found.description)
            if owner is None:  # by hand, another tool, an older moxflow: not a run's to count
                raise ProxmoxError(
                    f"a snapshot named {p.snapname} that no moxflow run claims is on the guest",
                    hint="rename or delete it; until then the guest gets no snapshot this period",
                )
            if owner != description_run(p.description):
                logger.warning("%s: %s was already taken by run %s", guest.label, p.snapname,
                               owner)  # fmt: skip
                return AlreadyTaken(owner)
        logger.info("%s: took %s", guest.label, p.snapname)
        return time.monotonic() - started

    with free_check() as free:
        results = _each(plan.guests, one, lanes)
    failed = _failures([p.guest.label for p in plan.guests], results)
    _retry_if_passing(plan.node, "snapshot", failed, within=lock_timeout)
    elapsed = attempt().elapsed
    out: dict[int, GuestTaken] = {}
    for p, result in zip(plan.guests, results, strict=True):
        target = p.guest.label
        if isinstance(result, AlreadyTaken):
            why = f"{p.snapname} already taken by run {result.run}; counted by that run"
            out[p.guest.vmid] = GuestTaken(False, 0.0, why, elsewhere=True)
        elif not isinstance(result, MoxflowError):
            out[p.guest.vmid] = GuestTaken(True, round(result, 3))
        elif isinstance(result, TargetBusyError):  # another moxflow run has the guest
            logger.warning("%s: %s", target, result)
            out[p.guest.vmid] = GuestTaken(False, 0.0, str(result), locked=True)
        elif isinstance(result, GuestLockedError):
            why = busy_guest(p.guest, result.message, tries, elapsed)
            logger.warning("%s: still locked after %d tries: %s", target, tries, result)
            out[p.guest.vmid] = GuestTaken(False, 0.0, why, locked=True)
        else:
            why = f"snapshot failed after {tries} tries: {result}" if result.transient else ""
            logger.error("%s: %s", target, why or result)
            out[p.guest.vmid] = GuestTaken(False, 0.0, why or str(result))
    return out


@step("guest-prune", "{plan.node}: prune {plan.size}")
def prune_node(
    client: ProxmoxClient,
    plan: NodeSnapshotPlan,
    taken: Mapping[int, GuestTaken],
    lanes: Executor,
) -> dict[int, GuestPruned]:
    """Delete the snapshots each plan lets go, on the guests whose snapshot was taken
    (``taken``: the snapshot step's result).

    Idempotent, so retried (Prefect) while a delete failed for a passing reason: a snapshot
    already gone counts as removed. One that cannot be deleted is kept and said.
    """
    logger = get_run_logger()
    todo = [p for p in plan.guests if p.prune and taken.get(p.guest.vmid, _NOT_TAKEN).taken]

    # no slot check here: deleting an older snapshot never breaks another run's chain (its
    # own snapshot stays the newest), and Proxmox's guest lock keeps the task to itself
    def one(p: GuestSnapshotPlan) -> tuple[GuestPruned, list[MoxflowError]]:
        started = time.monotonic()
        removed: list[str] = []
        failures: list[str] = []
        passing: list[MoxflowError] = []  # worth another try: the step's retry deletes them
        for name in p.prune:
            try:
                upid = client.delete_snapshot(p.guest, name)
                client.wait_task(upid, timeout=TASK_TIMEOUT, node=p.guest.node)
            except MoxflowError as exc:
                if exc.transient:
                    passing.append(exc)
                    continue
                if f"snapshot '{name}' does not exist" not in str(exc):
                    failures.append(f"{name}: {exc}")
                    continue
            removed.append(name)
        if removed:
            logger.info("%s: pruned %d: %s", p.guest.label, len(removed), ", ".join(removed))
        seconds = round(time.monotonic() - started, 3)
        return GuestPruned(tuple(removed), tuple(failures), seconds), passing

    results = _each(todo, one, lanes)
    failed: dict[str, object] = {}
    for p, result in zip(todo, results, strict=True):
        if isinstance(result, MoxflowError):
            failed[p.guest.label] = result
        elif result[1]:
            failed[p.guest.label] = result[1][0]
    _retry_if_passing(plan.node, "prune", failed)
    out = {p.guest.vmid: _NOTHING for p in plan.guests if taken.get(p.guest.vmid, _NOT_TAKEN).taken}
    for p, result in zip(todo, results, strict=True):
        if isinstance(result, MoxflowError):
            out[p.guest.vmid] = GuestPruned((), (str(result),), 0.0)
            continue
        done, passing = result
        more = tuple(str(exc) for exc in passing)
        out[p.guest.vmid] = GuestPruned(done.removed, done.failures + more, done.seconds)
    return out


_NOT_TAKEN = GuestTaken(False, 0.0)
_NOTHING = GuestPruned((), (), 0.0)


def _failures(targets: Sequence[str], results: Sequence[object]) -> dict[str, MoxflowError]:
    """The targets whose result is an error, with it."""
    return {t: r for t, r in zip(targets, results, strict=True) if isinstance(r, MoxflowError)}


def _each(
    items: Sequence[Item], fn: Callable[[Item], T], lanes: Executor
) -> list[T | MoxflowError]:
    """``fn`` on every item in the run's ``lanes`` (a pool of as many threads as guests may be
    worked on at once, shared by every node's step, first come first served); an item's
    ``MoxflowError`` is its result, so one guest never stops the others."""

    def one(item: Item) -> T | MoxflowError:
        try:
            return fn(item)
        except MoxflowError as exc:
            return exc

    # Each item runs in a copy of this task's context: Prefect's settings (the API URL an
    # ad-hoc run chose) and run context live in context variables, which a bare thread lacks;
    # without them a log line from a thread would start a temporary Prefect server of its own
    # (and with them it is logged into this task run).
    futures = [lanes.submit(contextvars.copy_context().run, one, item) for item in items]
    return [f.result() for f in futures]


def _retry_if_passing(
    node: str, what: str, failed: Mapping[str, object], *, within: float | None = None
) -> None:
    """Fail this attempt, for Prefect to retry the step, when a guest failed for a passing
    reason and a retry is left (and, with ``within``, the step is younger than that)."""
    passing = {t: e for t, e in failed.items() if isinstance(e, MoxflowError) and e.transient}
    if not passing:
        return
    now = attempt()
    retry_left, elapsed = now.retry_left, now.elapsed
    if not retry_left or (within is not None and elapsed >= within):
        return
    locked = all(isinstance(e, GuestLockedError) for e in passing.values())
    kind = GuestLockedError if locked else ProxmoxUnavailableError
    detail = "; ".join(f"{t}: {e}" for t, e in passing.items())
    raise kind(f"{node}: {what} of {guests_text(len(passing))} failed for now: {detail}")
