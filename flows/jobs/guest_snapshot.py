"""The guest-snapshot flow; what it does and its command line: ``flows/guest_snapshot.py``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.proxmox import proxmox_client
from flows._run import finish, run_id
from flows.params import GuestSnapshotParams, flow_parameters
from moxflow.errors import (
    MoxflowError,
)
from moxflow.guests import Guest
from moxflow.inventory import load_inventory
from moxflow.naming import snapshot_name, validate_label
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.selection import parse_selection
from moxflow.snapshots import (
    GuestSnapshotPlan,
    NodeSnapshotPlan,
    guests_by_node,
    plan_guest_selection,
    plan_node_snapshots,
    utc_now,
)
from tasks._retry import tuned
from tasks.proxmox import (
    GuestPruned,
    GuestTaken,
    Listed,
    NodeGuests,
    list_guests,
    list_node_snapshots,
    prune_node,
    snapshot_node,
)

MAX_CONCURRENCY = 64
LOOKAHEAD = 2
"""Nodes whose snapshots are being read at once (the one being planned and the next)."""


@flow(
    name="guest-snapshot",
    description="Snapshot the selected Proxmox guests and prune moxflow's older snapshots.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
)
@flow_parameters(GuestSnapshotParams)
def guest_snapshot(
    *,
    label: str = "daily",
    select: str | None = None,
    running_only: bool | None = None,
    vmstate: bool | None = None,
    concurrency: int | None = None,
    lock_timeout: float = 120.0,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Snapshot and prune the selected guests: per node, list → (plan) → snapshot → prune."""
    p = GuestSnapshotParams(
        label=label,
        select=select,
        running_only=running_only,
        vmstate=vmstate,
        concurrency=concurrency,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
        inventory=inventory,
    )
    label, select, running_only, vmstate, concurrency, lock_timeout, dry_run, inventory = (
        p.label,
        p.select,
        p.running_only,
        p.vmstate,
        p.concurrency,
        p.lock_timeout,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    settings = inv.guest_snapshots
    validate_label(label)
    policy = inv.guest_policy(label)
    expr = select if select is not None else settings.select
    parse_selection(expr)  # a bad expression fails before anything is read or changed
    running = settings.running_only if running_only is None else running_only
    with_ram = settings.vmstate if vmstate is None else vmstate
    limit = min(max(1, concurrency or settings.concurrency), MAX_CONCURRENCY)
    tz = ZoneInfo(inv.timezone)
    now = utc_now()
    snapname = snapshot_name(label, now)
    run = run_id()  # written into each snapshot's description: whose snapshot it is

    client = proxmox_client(inv, max_connections=2 * limit + 2)  # the lanes' connections
    chosen = plan_guest_selection(list_guests(client), expr, running_only=running)
    report = RunReport(job="guest-snapshot", label=label, dry_run=dry_run)
    for note in report.add_selection(chosen.unmatched, chosen.skipped):
        logger.warning("%s", note)
    logger.info(
        "%s %d guest(s) as %s, %d at a time (%s)",
        "planning" if dry_run else "snapshotting",
        len(chosen.guests),
        snapname,
        limit,
        expr,
    )

    listing = tuned(list_node_snapshots, inv)
    snap, prune = tuned(snapshot_node, inv), tuned(prune_node, inv)
    batches = [NodeGuests(node, guests) for node, guests in guests_by_node(chosen.guests).items()]
    facts: list[PrefectFuture[Listed]] = []
    applied: list[tuple[NodeSnapshotPlan, PrefectFuture[dict[int, GuestTaken]], Any]] = []
    # the guests' lanes: `limit` threads change guests (snapshot, prune), first come first
    # served across the nodes' steps; `limit` more read the next nodes' snapshots meanwhile
    reads = ThreadPoolExecutor(limit, thread_name_prefix="guest-read")
    changes = ThreadPoolExecutor(limit, thread_name_prefix="guest-change")
    with reads, changes:
        for i, batch in enumerate(batches):
            # facts: the node's guests' snapshots, read-only; the next node's are read
            # meanwhile, so that each node is planned (and snapshotted) as early as it can be
            while len(facts) < min(len(batches), i + LOOKAHEAD):
                facts.append(listing.submit(client, batches[len(facts)], reads))
            try:
                listed = facts[i].result()
            except MoxflowError as exc:
                report.extend(
                    ReportRow(g.label, Outcome.FAILED, detail=str(exc)) for g in batch.guests
                )
                continue
            # the plan: pure, from the facts
            plan = plan_node_snapshots(
                batch.node,
                _readable(batch, listed, report),
                listed.snapshots,
                label=label,
                snapname=snapname,
                now=now,
                policy=policy,
                tz=tz,
                vmstate=with_ram,
                run=run,
            )
            if dry_run:
                report.extend(_planned(gp) for gp in plan.guests)
            elif plan.guests:
                # apply, as soon as the node is planned: snapshot → prune (the prune takes the
                # snapshot's future: Prefect waits for it and draws the edge; its stubs do not
                # say so)
                taken = snap.submit(client, plan, changes, lock_timeout)
                pruned = prune.submit(client, plan, taken, changes)  # type: ignore[call-overload]
                applied.append((plan, taken, pruned))
        for plan, taken, pruned in applied:
            report.extend(_rows(plan, taken, pruned))
    return finish(report, artifact_key="guest-snapshot-report", inv=inv)


def _readable(batch: NodeGuests, listed: Listed, report: RunReport) -> list[Guest]:
    """The node's guests whose snapshots were read; a failed row for each one that was not."""
    out: list[Guest] = []
    for guest in batch.guests:
        error = listed.errors.get(guest.vmid)
        if error is None:
            out.append(guest)
        else:
            report.add(ReportRow(guest.label, Outcome.FAILED, detail=error))
    return out


def _planned(plan: GuestSnapshotPlan) -> ReportRow:
    """A dry run's row: what would be taken, kept and pruned."""
    return ReportRow(
        target=plan.guest.label,
        outcome=Outcome.PLANNED,
        taken=plan.snapname,
        kept=plan.kept,
        removed=plan.prune,
        detail=f"on {plan.guest.node}" + (" with RAM state" if plan.vmstate else ""),
    )


def _rows(
    plan: NodeSnapshotPlan,
    taken: PrefectFuture[dict[int, GuestTaken]],
    pruned: PrefectFuture[dict[int, GuestPruned]],
) -> list[ReportRow]:
    """How each guest of a node ended, from the node's two steps."""
    try:
        took = taken.result()
    except MoxflowError as exc:
        pruned.wait()  # never started: its snapshot step did not complete
        return [ReportRow(p.guest.label, Outcome.FAILED, detail=str(exc)) for p in plan.guests]
    try:
        done: dict[int, GuestPruned] | MoxflowError = pruned.result()
    except MoxflowError as exc:
        done = exc
    rows: list[ReportRow] = []
    for p in plan.guests:
        target, t = p.guest.label, took[p.guest.vmid]
        if not t.taken:
            outcome = Outcome.BUSY if t.locked else Outcome.FAILED
            outcome = Outcome.SKIPPED if t.elsewhere else outcome
            rows.append(ReportRow(target, outcome, detail=t.error, seconds=t.seconds))
        elif isinstance(done, MoxflowError):
            detail = f"snapshot taken, prune failed: {done}"
            rows.append(
                ReportRow(target, Outcome.PARTIAL, p.snapname, detail=detail, seconds=t.seconds)
            )
        else:
            d = done[p.guest.vmid]
            kept = p.kept + len(d.failures)
            seconds = round(t.seconds + d.seconds, 3)
            if d.failures:
                detail = "prune incomplete: " + "; ".join(d.failures)
                outcome = Outcome.PARTIAL
            else:
                detail, outcome = "", Outcome.OK
            rows.append(ReportRow(target, outcome, p.snapname, kept, d.removed, detail, seconds))
    return rows


def check(p: GuestSnapshotParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the label and its keep
    policy, the selection's syntax, then (a wrong token or CA, a guest that is not there)
    the selection against the cluster."""
    inv = load_inventory(p.inventory)
    inv.proxmox_settings()  # no [proxmox] at all: that first, not a missing policy
    validate_label(p.label)
    inv.guest_policy(p.label)
    expr = p.select if p.select is not None else inv.guest_snapshots.select
    parse_selection(expr)  # the syntax first: no API request for a typo in it
    with proxmox_client(inv) as client:
        plan_guest_selection(client.resources(), expr, running_only=False)
