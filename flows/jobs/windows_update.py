"""The windows-update flow; what it does and its command line: ``flows/windows_update.py``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed

from blocks.proxmox import proxmox_client
from flows._run import finish, run_id
from flows.params import WindowsUpdateParams, flow_parameters
from moxflow.errors import MoxflowError, TargetBusyError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, load_inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.snapshots import utc_now
from moxflow.windows import VmPlan, plan_vm, require_vms, select_vms
from tasks._retry import tuned
from tasks.targets import guest_target, hold
from tasks.windows import (
    LeftAlone,
    VmFacts,
    VmRun,
    commit,
    install_round,
    preflight,
    reboot,
    rollback,
    snapshot,
    verify,
)

JOB = "windows-update"

SNAPSHOT_KINDS = {
    "ram": "with RAM",
    "disk-live": "disk only",
    "disk-shutdown": "disk only, shut down",
}


def _plan_cells(plan: VmPlan) -> dict[str, str]:
    """The report cells of a VM the run did not change."""
    count = len(plan.install)
    snap = f"none yet ({SNAPSHOT_KINDS[plan.snapshot.kind]})" if not plan.skip else ""
    return {"updates": f"{count} to install" if count else "", "snapshot": snap}


def _cells(run: VmRun) -> dict[str, str]:
    """The report cells of a VM the run worked on: updates, reboots, snapshot."""
    ok, bad = len(run.installed), len(run.failed)
    updates = f"{ok} installed" + (f", {bad} failed" if bad else "") if run.rounds else ""
    kind = SNAPSHOT_KINDS[run.snapshot_kind] + (", adopted" if run.adopted_from else "")
    snap = f"{run.snapshot} ({kind})" if run.snapshot else ""
    return {"updates": updates, "reboots": str(run.reboots) if run.reboots else "",
            "snapshot": snap}  # fmt: skip


def _row(run: VmRun, outcome: Outcome, detail: str) -> ReportRow:
    notes = "; ".join(run.notes)
    text = f"{detail}; {notes}" if notes and outcome is not Outcome.OK else detail
    return ReportRow(run.label, outcome, detail=text, cells=_cells(run))


@flow(name="windows-update-vm", flow_run_name="{vm}", validate_parameters=False)
def update_vm(vm: str, run: VmRun, wait: float) -> ReportRow | State[ReportRow]:
    """One VM, step by step: snapshot → install round 1 → reboot 1 → install round 2 → ...
    → verify → commit, or → rollback after a failure, holding the VM's slot the whole time.
    The snapshot step adopts the snapshot of an interrupted run instead of taking one (the
    run that follows a kill finishes that update: ``tasks.windows``), or leaves the VM as
    it is when that is not safe (busy, or needing attention: nothing changed). Any failure
    after the snapshot, whatever raised it, rolls back.
    Failed when the VM did not end up updated: failed, rolled back, needing attention, or
    busy (another run holds it longer than ``wait`` seconds)."""
    try:
        with hold([guest_target(run.guest.vmid)], wait=wait):
            row = _chain(run)
    except TargetBusyError as exc:
        row = ReportRow(vm, Outcome.BUSY, detail=f"not updated: {exc}", cells=_plan_cells(run.plan))
    if not row.ok:
        return Failed(message=f"{vm}: {row.outcome.value}", data=row)
    return Completed(message=row.outcome.value, data=row)


def _chain(run: VmRun) -> ReportRow:
    """The steps; any failure after the snapshot (whatever raised it) rolls back."""
    inv = run.inv
    try:
        done: object = tuned(snapshot, inv)(run)
    except LeftAlone as exc:  # what an earlier run left: nothing was changed
        return _row(run, exc.outcome, f"not updated: {exc}")
    except Exception as exc:
        if run.adopted_from is not None:  # an interrupted run's VM that did not come back
            return _rollback(run, exc)
        return _row(run, Outcome.FAILED, f"snapshot failed, nothing installed: {_why(exc)}")
    try:
        done = _rounds(run, done)
        done = tuned(verify, inv)(run, done)
    except Exception as exc:
        return _rollback(run, exc)
    outcome = Outcome.OK
    try:
        tuned(commit, inv)(run, done)
    except Exception as exc:
        outcome = Outcome.PARTIAL
        run.note(
            f"the commit failed: {_why(exc)}; the update stays, but unless {run.snapshot}'s "
            "description says [committed] the next run takes it for an interrupted update"
        )
    ok = len(run.installed)
    text = f"{ok} update(s) installed" if ok else "nothing was installed"
    text += f" in {len(run.rounds)} round(s), {run.reboots} reboot(s); verified"
    if run.installed:
        text += ": " + ", ".join(u.kb for u in run.installed)
    if run.recovered:
        text += "; " + "; ".join(run.recovered)
    if outcome is not Outcome.OK:
        return _row(run, outcome, text)
    return ReportRow(run.label, outcome, detail=text, cells=_cells(run))


def _why(exc: Exception) -> str:
    """An error in words: moxflow's own say what they are; anything else names its type."""
    return str(exc) if isinstance(exc, MoxflowError) else f"{type(exc).__name__}: {exc}"


def _rounds(run: VmRun, upstream: object) -> object:
    """A reboot first when one was pending before the run; then install rounds, each
    followed by a reboot when one is pending, until a round needs none, an update failed,
    or the plan's max rounds are done."""
    done = upstream
    if run.plan.reboot_first:
        done = reboot(run, 1, done)
    for n in range(1, run.plan.max_rounds + 1):
        result = install_round(run, n, done)
        done = result
        if result.failed or not result.reboot:
            return done
        done = reboot(run, run.reboots + 1, done)
    run.note(f"max rounds ({run.plan.max_rounds}) done; the next run installs what is left")
    return done


def _rollback(run: VmRun, cause: Exception) -> ReportRow:
    """Back to the snapshot after a failure: rolled back (the VM runs, its agent answers),
    or needing attention with the snapshot named."""
    why = _why(cause)
    try:
        rollback(run, cause)
    except Exception as exc:
        return _row(
            run,
            Outcome.NEEDS_ATTENTION,
            f"{why}; the rollback to {run.snapshot} failed: {_why(exc)}; the snapshot is kept: "
            "roll back to it by hand (VM → Snapshots) and start the VM",
        )
    return _row(run, Outcome.ROLLED_BACK, f"{why}; rolled back to {run.snapshot}")


def _vms(inv: Inventory, client: ProxmoxClient, only: list[str] | None) -> list[tuple[str, Guest]]:
    """The VMs this run covers: [windows.vms], in its order, cut by --only."""
    require_vms(list(inv.windows.vms))
    return select_vms(list(inv.windows.vms), client.resources(), only)


def _plan(inv: Inventory, key: str, facts: VmFacts, p: WindowsUpdateParams) -> VmPlan:
    """A VM's plan from its facts and the settings (pure)."""
    settings = inv.windows
    ram, consistent = settings.snapshot_of(key)
    categories = p.categories if p.categories is not None else settings.categories_of(key)
    return plan_vm(
        facts.guest.label,
        facts.os_text,
        facts.scan,
        facts.config,
        reboot_pending=facts.reboot.pending,
        ram=ram,
        consistent=consistent,
        categories=categories,
        max_rounds=p.max_rounds or settings.max_rounds_of(key),
    )


@flow(
    name=JOB,
    description="Update the Windows VMs through the QEMU guest agent, snapshot-guarded, "
    "verified, rolled back on failure.",
)
@flow_parameters(WindowsUpdateParams)
def windows_update(
    *,
    only: list[str] | None = None,
    categories: list[str] | None = None,
    max_rounds: int | None = None,
    lock_timeout: float = 120.0,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Pre-flight every VM, plan, then one ``windows-update-vm`` subflow run per VM with
    something to install, one VM at a time; a failed VM does not stop the others."""
    p = WindowsUpdateParams(
        only=only,
        categories=categories,
        max_rounds=max_rounds,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
        inventory=inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(p.inventory)
    report = RunReport(job=JOB, label="update", dry_run=p.dry_run, counts_snapshots=False)
    now = utc_now()
    with proxmox_client(inv) as client:
        planned: list[tuple[str, VmFacts, VmPlan]] = []
        this = run_id()
        for key, guest in _vms(inv, client, p.only):
            try:
                facts = tuned(preflight, inv)(inv, client, guest, this)
            except LeftAlone as exc:  # what an earlier run left: nothing was changed
                report.add(ReportRow(guest.label, exc.outcome, detail=f"not updated: {exc}"))
                continue
            except MoxflowError as exc:
                report.add(ReportRow(guest.label, Outcome.FAILED, detail=f"refused: {exc}"))
                continue
            plan = _plan(inv, key, facts, p)
            if facts.interrupted is not None:  # its update is finished, never skipped
                plan = replace(plan, skip=None)
                line = (
                    f"{guest.label}: {facts.interrupted.describe()} is adopted as the "
                    "rollback point (no new snapshot); the update is finished, verified, "
                    "and committed or rolled back to it"
                )
                logger.info("%s", line)
                report.notes.append(line)
            for line in plan.describe():
                logger.info("%s", line)
            report.notes.extend(plan.describe())
            if plan.skip:
                report.add(ReportRow(guest.label, Outcome.SKIPPED, detail=plan.skip))
            elif p.dry_run:
                detail = " | ".join(line.strip() for line in plan.describe()[1:])
                report.add(
                    ReportRow(guest.label, Outcome.PLANNED, detail=detail, cells=_plan_cells(plan))
                )
            else:
                planned.append((key, facts, plan))
        for key, facts, plan in planned:
            run = VmRun(inv, client, key, facts, plan, now, inv.tz, this)
            state = update_vm(run.label, run, p.lock_timeout, return_state=True)
            row = state.result(raise_on_failure=False)
            if not isinstance(row, ReportRow):
                row = ReportRow(run.label, Outcome.FAILED, detail=f"the VM's update crashed: {row}")
            report.add(row)
            logger.info("%s: %s", row.target, row.line())
    return finish(report, artifact_key="windows-update-report", inv=inv)


def check(p: WindowsUpdateParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the token, the VMs."""
    inv = load_inventory(p.inventory)
    require_vms(list(inv.windows.vms))  # before the token is needed
    with proxmox_client(inv) as client:
        _vms(inv, client, p.only)
