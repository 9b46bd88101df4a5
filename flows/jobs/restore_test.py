"""The restore-test flow; what it does and its command line: ``flows/restore_test.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import allow_failure, flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from blocks.proxmox import proxmox_client
from flows._run import finish, run_id
from flows.params import RestoreTestParams, flow_parameters
from moxflow.errors import MoxflowError, TargetBusyError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, load_inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.restore import (
    RestoreTestPlan,
    check_scratch_vmid,
    leftover_scratch,
    plan_restore_test,
)
from moxflow.selection import parse_selection
from moxflow.snapshots import plan_guest_selection
from tasks._retry import tuned
from tasks.proxmox import list_guests
from tasks.restore import (
    Booted,
    Restored,
    Started,
    destroy_leftover,
    destroy_scratch,
    list_guest_archives,
    record_passed,
    restore_scratch,
    scratch_of,
    start_scratch,
    wait_agent,
)
from tasks.targets import SCRATCH_TARGET, hold


@flow(
    name="restore-test",
    description="Restore the newest backup of each selected guest to a scratch VMID, boot, "
    "check and destroy it; the original is never touched.",
)
@flow_parameters(RestoreTestParams)
def restore_test(
    *,
    select: str | None = None,
    storage: str | None = None,
    scratch_vmid: int | None = None,
    lock_timeout: float = 120.0,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Restore-test the selected guests' newest backups: per guest list → (plan) → restore →
    start → wait-agent → destroy → record, one guest after the other."""
    p = RestoreTestParams(
        select=select,
        storage=storage,
        scratch_vmid=scratch_vmid,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
        inventory=inventory,
    )
    select, storage, scratch_vmid, dry_run, inventory = (
        p.select,
        p.storage,
        p.scratch_vmid,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    rt = inv.restore_test
    expr = select if select is not None else rt.select
    parse_selection(expr)
    backup_storage = storage or inv.backups.storage
    report = RunReport(job="restore-test", label=backup_storage, dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv)
    all_guests = list_guests(client)
    # scratch guests an earlier run left behind (moxflow's mark on a scratch VMID says which)
    # go first, and count as free; any other guest on the scratch VMID is refused
    scratch_vmids = [*rt.vmid_range(), *([scratch_vmid] if scratch_vmid is not None else [])]
    leftovers = leftover_scratch(all_guests, scratch_vmids)
    if scratch_vmid is not None:  # refused before anything is restored
        check_scratch_vmid(scratch_vmid, [g for g in all_guests if not g.scratch])
    chosen = plan_guest_selection(all_guests, expr, running_only=False)
    for note in report.add_selection(chosen.unmatched, chosen.skipped):
        logger.warning("%s", note)
    logger.info(
        "%s %d guest(s) from %s on %s (%s)",
        "planning restore tests of" if dry_run else "restore-testing",
        len(chosen.guests),
        backup_storage,
        rt.scratch_storage,
        expr,
    )

    # facts: each guest's backups, read-only
    listing = tuned(list_guest_archives, inv)
    facts = [(g, listing.submit(client, g, backup_storage)) for g in chosen.guests]
    plans: list[RestoreTestPlan] = []
    run = run_id()
    for guest, fut in facts:
        # the plan: pure, from the facts; a guest that cannot be tested fails here
        try:
            plans.append(
                plan_restore_test(
                    guest,
                    fut.result(),
                    all_guests,
                    backup_storage=backup_storage,
                    scratch_storage=rt.scratch_storage,
                    scratch_vmids=rt.vmid_range(),
                    scratch_vmid=scratch_vmid,
                    run=run,
                )
            )
        except MoxflowError as exc:
            logger.error("%s: %s", guest.label, exc)
            report.add(ReportRow(guest.label, Outcome.FAILED, detail=str(exc)))
    if dry_run:
        for g in leftovers:
            report.notes.append(f"would destroy leftover scratch guest {g.label} first")
        for plan in plans:
            report.add(_row(plan, Outcome.PLANNED, plan.describe()))
        return finish(report, artifact_key="restore-test-report", inv=inv)

    # the scratch guests' slot is held for the whole apply: two restore tests never pick the
    # same scratch VMID or destroy each other's scratch guest (no other job selects one)
    try:
        with hold([SCRATCH_TARGET], wait=p.lock_timeout):
            _apply(report, inv, client, leftovers, plans, run)
    except TargetBusyError as exc:
        logger.error("%s", exc)
        for plan in plans:
            report.add(_row(plan, Outcome.BUSY, f"not tested: {exc}"))
    return finish(report, artifact_key="restore-test-report", inv=inv)


def _apply(
    report: RunReport,
    inv: Inventory,
    client: ProxmoxClient,
    leftovers: list[Guest],
    plans: list[RestoreTestPlan],
    run: str,
) -> None:
    """Destroy the leftovers, then per guest restore → start → wait-agent → destroy → record;
    each guest's row goes to ``report``."""
    logger = get_run_logger()
    rt = inv.restore_test
    # the leftovers first (each one's mark read again right before), then the tests
    clear = tuned(destroy_leftover, inv)
    cleared = [(g, clear.submit(client, g, rt.task_timeout, run)) for g in leftovers]
    for g, done in cleared:
        try:
            note = done.result()
        except MoxflowError as exc:
            logger.error("%s: leftover scratch guest NOT destroyed: %s", g.label, exc)
            detail = f"leftover scratch guest NOT destroyed, remove it by hand: {exc}"
            report.add(ReportRow(g.label, Outcome.NEEDS_ATTENTION, detail=detail))
        else:
            logger.warning("%s", note)
            report.notes.append(note)

    # apply, per guest: restore → start → wait-agent → destroy (→ record). Each step takes the
    # one before's future (Prefect waits for it and draws the edge; a step whose upstream
    # failed never runs), except destroy: it takes the restore's outcome, failed or not, and
    # waits for the others whatever they did, so the scratch guest is always removed. The next
    # guest's restore waits for this destroy: one scratch guest at a time.
    start, agent = tuned(start_scratch, inv), tuned(wait_agent, inv)
    remove, record = tuned(destroy_scratch, inv), tuned(record_passed, inv)
    steps: list[_Steps] = []
    previous: list[Any] = []
    # futures as arguments: Prefect resolves them and draws the edges (its stubs do not say so)
    for plan in plans:
        restored: PrefectFuture[Restored] = restore_scratch.submit(  # type: ignore[call-overload]
            client, plan, rt.task_timeout, wait_for=previous
        )
        started = start.submit(client, plan, restored)  # type: ignore[call-overload]
        booted = agent.submit(client, plan, restored, started, rt.boot_timeout)  # type: ignore[call-overload]
        cleanup: PrefectFuture[str] = remove.submit(  # type: ignore[call-overload]
            client,
            plan,
            allow_failure(restored),
            rt.task_timeout,
            wait_for=[allow_failure(started), allow_failure(booted)],
        )
        noted = record.submit(client, plan, booted, cleanup)  # type: ignore[call-overload]
        steps.append(_Steps(plan, restored, started, booted, cleanup, noted))
        previous = [allow_failure(cleanup)]
    for s in steps:
        row = s.row()
        log = logger.info if row.outcome is Outcome.OK else logger.error
        log("%s: %s", row.target, row.detail)
        report.add(row)


def _row(
    plan: RestoreTestPlan,
    outcome: Outcome,
    detail: str,
    *,
    scratch: int | None = None,
    boot: str = "",
    agent: str = "",
    seconds: float = 0.0,
) -> ReportRow:
    """A guest's row: the archive restored, the scratch VMID, the boot time, the agent."""
    shown = plan.scratch if scratch is None else scratch
    return ReportRow(
        target=plan.target,
        outcome=outcome,
        taken=plan.archive.filename,
        detail=detail,
        seconds=seconds,
        cells={
            "archive": plan.archive.filename,
            "scratch": str(shown),
            "boot": boot,
            "agent": agent,
        },
    )


@dataclass(frozen=True, slots=True)
class _Steps:
    """One guest's steps, as futures."""

    plan: RestoreTestPlan
    restored: PrefectFuture[Restored]
    started: PrefectFuture[Started]
    booted: PrefectFuture[Booted]
    cleanup: PrefectFuture[str]
    noted: PrefectFuture[Any]

    def row(self) -> ReportRow:
        """How the guest's test ended, from its steps."""
        plan = self.plan
        seconds = 0.0
        boot = agent = ""
        outcome, detail = Outcome.FAILED, ""
        try:
            restored = self.restored.result()
            seconds += restored.seconds
            started = self.started.result()
            seconds += started.seconds
            boot = "not up"
            try:
                booted = self.booted.result()
            except MoxflowError:
                agent = "no answer" if plan.guest.type == "qemu" else ""
                raise
            seconds += booted.seconds
            boot, agent = f"{started.seconds + booted.seconds:.1f}s", booted.agent
            outcome, detail = Outcome.OK, "booted"
        except MoxflowError as exc:
            detail = str(exc)
        scratch = _made(self.restored)
        try:
            cleanup = self.cleanup.result()
        except MoxflowError as exc:
            outcome = Outcome.NEEDS_ATTENTION
            detail += f"; scratch guest {scratch} NOT cleaned up, remove it by hand: {exc}"
        else:
            if cleanup:
                detail += "; scratch guest destroyed" if cleanup == "destroyed" else f"; {cleanup}"
        if outcome is Outcome.OK:
            try:
                self.noted.result()
            except MoxflowError as exc:
                get_run_logger().warning(
                    "%s: cannot note the passed test on %s: %s", plan.target, plan.archive, exc
                )
                detail += f"; not noted on the backup ({exc})"
        else:
            self.noted.wait()  # never started: the guest did not pass
        return _row(
            plan,
            outcome,
            detail,
            scratch=scratch,
            boot=boot,
            agent=agent,
            seconds=round(seconds, 3),
        )


def _made(restored: PrefectFuture[Restored]) -> int | None:
    """The scratch VMID the restore step made (None: it made none)."""
    state = restored.state
    return scratch_of(state.result(raise_on_failure=False) if state.is_final() else None)


def check(p: RestoreTestParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the selection (its syntax
    first, then against the cluster: the token too), the scratch VMID."""
    inv = load_inventory(p.inventory)
    expr = p.select if p.select is not None else inv.restore_test.select
    parse_selection(expr)  # the syntax first: no API request for a typo in it
    with proxmox_client(inv) as client:
        guests = client.resources()
    plan_guest_selection(guests, expr, running_only=False)
    if p.scratch_vmid is not None:
        check_scratch_vmid(p.scratch_vmid, [g for g in guests if not g.scratch])
