"""The vzdump-backup flow; what it does and its command line: ``flows/vzdump_backup.py``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

from prefect import Task, flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.jobs._backups import list_node_backups
from flows.jobs._offsite import copy_offsite_steps, preview_offsite
from flows.params import VzdumpBackupParams, flow_parameters
from moxflow.backups import (
    Archive,
    BackupJob,
    BackupPlan,
    Coverage,
    GuestDump,
    dump_failure,
    plan_backups,
    planned_backup_row,
)
from moxflow.errors import MoxflowError, TargetBusyError
from moxflow.inventory import Inventory, load_inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport, format_names, format_size
from moxflow.retention import KeepPolicy
from moxflow.selection import parse_selection
from moxflow.snapshots import plan_guest_selection, utc_now
from tasks._retry import tuned
from tasks.backups import (
    Dumped,
    GuestPruned,
    OffsitePruned,
    Pruned,
    Verified,
    list_offsite_copies,
    prune_backups,
    publish_coverage,
    report_coverage,
    verify_backup,
    vzdump_guest,
)
from tasks.proxmox import list_guests
from tasks.targets import Reserved, guest_target

MAX_NODES = 64


def backup_job(inv: Inventory, storage: str | None, lock_timeout: float) -> BackupJob:
    """The run's vzdump settings from [backups], with ``--storage`` beating the inventory."""
    b = inv.backups
    return BackupJob(
        storage=storage or b.storage,
        mode=b.mode,
        compress=b.compress,
        notes_template=b.notes_template,
        protected=b.protected,
        bwlimit=b.bwlimit,
        policy=KeepPolicy.parse(b.policy, setting="backups.policy") if b.policy else None,
        size_drop_ratio=b.size_drop_ratio,
        task_timeout=b.task_timeout,
        retry_timeout=lock_timeout,
    )


@flow(
    name="vzdump-backup",
    description="Back up the selected guests with vzdump; verify, prune, copy offsite, report.",
    # per node two guests' vzdump and verify steps, and the other steps
    task_runner=ThreadPoolTaskRunner(max_workers=4 * MAX_NODES + 4),  # type: ignore[arg-type]
)
@flow_parameters(VzdumpBackupParams)
def vzdump_backup(
    *,
    select: str | None = None,
    storage: str | None = None,
    offsite: bool = True,
    lock_timeout: float = 120.0,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Back up, verify, prune and copy the selected guests; end with a coverage table."""
    p = VzdumpBackupParams(
        select=select,
        storage=storage,
        offsite=offsite,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
        inventory=inventory,
    )
    select, storage, offsite, lock_timeout, dry_run, inventory = (
        p.select,
        p.storage,
        p.offsite,
        p.lock_timeout,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    expr = select if select is not None else inv.backups.select
    parse_selection(expr)
    job = backup_job(inv, storage, lock_timeout)
    tz = inv.tz
    report = RunReport(job="vzdump-backup", label=job.storage, dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv, max_connections=MAX_NODES + 2)

    # facts: the guests, each node's backups on the storage, the offsite folder; read-only
    chosen = plan_guest_selection(list_guests(client), expr, running_only=False)
    for note in report.add_selection(chosen.unmatched, chosen.skipped):
        logger.warning("%s", note)
    off = inv.offsite if offsite else None
    if not offsite:
        report.notes.append("offsite copy skipped (--no-offsite)")
    offsite_facts = (
        tuned(list_offsite_copies, inv).submit(inv, off.host)
        if off is not None and chosen.guests
        else None
    )
    listed, found = list_node_backups(inv, client, chosen.guests, job.storage, report)
    before: dict[int, list[Archive]] = {g.vmid: [] for g in chosen.guests} | found

    # the plan: pure, from the facts
    plan = plan_backups(listed, before, job.storage, job.policy, tz)
    logger.info(
        "%s %d guest(s) on %d node(s) to %s (%s)",
        "planning" if dry_run else "backing up",
        len(plan.dumps),
        len(plan.queues),
        job.storage,
        expr,
    )
    if dry_run:
        for dump in plan.dumps:
            removed = plan.would_remove.get(dump.guest.vmid, ())
            report.add(planned_backup_row(dump, job, removed))
        present: list[str] | None = None
        if off is not None and offsite_facts is not None:
            present = preview_offsite(report, off, offsite_facts, listed, before, tz)
        coverage = Coverage.of(
            chosen.guests,
            before,
            present,
            now=utc_now(),
            max_age_hours=inv.backups.max_age_hours,
            tz=tz,
        )
        report.notes.extend(coverage.text())
        publish_coverage(coverage)
        return finish(report, artifact_key="vzdump-backup-report", inv=inv)

    # apply: per guest vzdump → verify, the vzdumps of a node one after the other
    cap = inv.backups.max_per_storage
    gate = threading.Semaphore(cap) if cap > 0 else None
    dumps, verifies = _back_up(client, plan, job, gate, tuned(verify_backup, inv))
    # per storage: prune, once every verify step has ended (a failed one is passed over)
    pruned = (
        tuned(prune_backups, inv).submit(
            client,
            job.storage,
            job.policy,
            job.task_timeout,
            [allow_failure(f) for f in verifies.values()],
        )
        if job.policy is not None and verifies
        else None
    )
    archives = dict(before)
    verified: dict[int, bool] = {}
    results: dict[int, Verified] = {}
    prune_error, by_guest = _pruned(pruned)
    for dump in plan.dumps:
        vmid = dump.guest.vmid
        row, result = _row(dump, job, dumps[vmid], verifies[vmid], prune_error, by_guest)
        logger.info(
            "[%s %d/%d] %s: %s", dump.guest.node, dump.position, dump.count, row.target, row.line()
        )
        report.add(row)
        if result is None:
            continue
        verified[vmid] = result.ok
        archives[vmid] = list(by_guest[vmid].archives if vmid in by_guest else result.archives)
        if result.ok:
            results[vmid] = result

    # per archive: offsite copy, after its guest's verify step and the storage's prune
    present = None
    copied: dict[int, bool] = {}
    offsite_done: PrefectFuture[OffsitePruned] | None = None
    if off is not None and offsite_facts is not None and results:
        present, copied, offsite_done = copy_offsite_steps(
            inv,
            off,
            report,
            offsite_facts,
            [r.dump.guest for r in results.values()],
            archives,
            verifies,
            pruned,
            tz,
        )

    # then coverage
    after = [allow_failure(f) for f in (pruned, offsite_done) if f is not None]
    coverage = report_coverage.submit(
        job.storage,
        list(chosen.guests),
        archives,
        present,
        inv.backups.max_age_hours,
        tz,
        verified,
        copied,
        return_state=False,
        wait_for=after,
    ).result()
    report.extend(coverage.stale_rows())
    report.notes.extend(coverage.text())
    return finish(report, artifact_key="vzdump-backup-report", inv=inv)


def _back_up(
    client: ProxmoxClient,
    plan: BackupPlan,
    job: BackupJob,
    gate: threading.Semaphore | None,
    verify: Task[..., Verified],
) -> tuple[dict[int, PrefectFuture[Dumped]], dict[int, PrefectFuture[Verified]]]:
    """Submit each guest's vzdump and its verify step; a node's vzdumps one after the other,
    each after the one before it (an edge of the graph). A verify step runs while the node's
    next vzdump does. The guest's slot is asked for meanwhile too (:class:`Reserved`): its
    request, and the server's busy answers under a busy run (SQLite), are off the node's
    critical path; a guest another run holds then is waited for from the step's start.

    A node has at most two guests' steps submitted at a time: the running ones, and the
    next guest's, waiting to start the moment the vzdump before ends. Submitting them all at
    once would hold a worker thread per waiting step, and a node with many small guests
    could then wait for a thread while one with a large guest holds them."""
    ended: queue.SimpleQueue[str] = queue.SimpleQueue()
    dumps: dict[int, PrefectFuture[Dumped]] = {}
    verifies: dict[int, PrefectFuture[Verified]] = {}
    waiting = {node: list(q) for node, q in plan.queues.items()}
    last: dict[str, PrefectFuture[Dumped]] = {}

    def submit_next(node: str) -> None:
        if not waiting[node]:
            return
        dump = waiting[node].pop(0)
        vmid = dump.guest.vmid
        after = [allow_failure(last[node])] if node in last else None
        slot = Reserved([guest_target(vmid)], wait=job.retry_timeout)
        try:
            dumps[vmid] = last[node] = vzdump_guest.submit(
                client, dump, job, gate, slot, return_state=False, wait_for=after
            )
        except BaseException:
            slot.cancel()
            raise
        dumps[vmid].add_done_callback(lambda _f: slot.cancel())  # a step that never took it
        dumps[vmid].add_done_callback(lambda _f: ended.put(node))
        # a future as the argument: Prefect resolves it and draws the edge
        verifies[vmid] = verify.submit(client, dump, job, dumps[vmid])

    for node in waiting:
        submit_next(node)
        submit_next(node)
    for _ in plan.dumps:
        submit_next(ended.get())
    return dumps, verifies


def _pruned(
    pruned: PrefectFuture[Pruned] | None,
) -> tuple[MoxflowError | None, Mapping[int, GuestPruned]]:
    """The storage's prune step's error (it failed as a whole), or what it did per guest."""
    if pruned is None:
        return None, {}
    try:
        return None, pruned.result().guests
    except MoxflowError as exc:
        return exc, {}


def _row(
    dump: GuestDump,
    job: BackupJob,
    dumped: PrefectFuture[Dumped],
    verified: PrefectFuture[Verified],
    prune_error: MoxflowError | None,
    pruned: Mapping[int, GuestPruned],
) -> tuple[ReportRow, Verified | None]:
    """How one guest's backup ended, from its steps; and the verify step's verdict."""
    guest, storage = dump.guest, job.storage
    try:
        took = dumped.result()
    except MoxflowError as exc:
        verified.wait()  # never started: its vzdump failed
        detail = dump_failure(exc, job.retry_timeout)
        busy = isinstance(exc, TargetBusyError)  # not done, and not OK: another run holds the guest
        return ReportRow(dump.target, Outcome.BUSY if busy else Outcome.FAILED, detail=detail), None
    try:
        v = verified.result()
    except MoxflowError as exc:
        return ReportRow(dump.target, Outcome.FAILED, detail=f"backup not verified: {exc}"), None
    outcome, kept = Outcome.OK, len(v.archives)
    removed: tuple[str, ...] = ()
    if not v.ok:
        outcome, kept, detail = Outcome.FAILED, 0, f"backup not verified: {v.problem}"
    elif job.policy is None:
        detail = f"verified, on {guest.node}; {kept} backup(s) on {storage}"
    elif (done := pruned.get(guest.vmid)) is None or done.error is not None:
        why = prune_error or (done.error if done else "not pruned")
        outcome, kept, detail = Outcome.PARTIAL, 0, f"backup verified, prune failed: {why}"
    else:
        kept, removed = len(done.archives), done.removed
        names = f", pruned {len(removed)}: {format_names(removed)}" if removed else ""
        detail = f"verified, on {guest.node}; {kept} backup(s) on {storage}{names}"
    if took.adopted:  # recovered from an earlier run: say so
        detail = f"{took.adopted}; {detail}"
    new = v.archive
    row = ReportRow(
        target=dump.target,
        outcome=outcome,
        taken=new.filename if new else None,
        kept=kept,
        removed=removed,
        detail=detail,
        seconds=round(took.seconds + v.seconds, 3),
        cells={
            "archive": new.filename if new else "",
            "size": format_size(new.size) if new else "",
        },
    )
    return row, v


def check(p: VzdumpBackupParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the selection's syntax,
    the run's vzdump settings, then (a wrong token or CA, a guest that is not there) the
    selection against the cluster."""
    inv = load_inventory(p.inventory)
    expr = p.select if p.select is not None else inv.backups.select
    parse_selection(expr)  # the syntax first: no API request for a typo in it
    backup_job(inv, p.storage, p.lock_timeout)
    with proxmox_client(inv) as client:
        plan_guest_selection(client.resources(), expr, running_only=False)
