"""The windows-provision flow; what it does and its command line: ``flows/windows_provision.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed

from blocks.proxmox import proxmox_client
from flows._run import finish, run_id
from flows.params import WindowsProvisionParams, flow_parameters
from moxflow.errors import MoxflowError, TargetBusyError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, load_inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.snapshots import utc_now
from moxflow.windows import ItemOutcome, choose_snapshot, select_vms
from moxflow.windows_provision import (
    ProvisionPlan,
    plan_provision,
    read_task_xml,
    require_provisioning,
)
from tasks._retry import tuned
from tasks.targets import guest_target, hold
from tasks.windows import LeftAlone
from tasks.windows_provision import (
    ItemsFailed,
    ProvisionRun,
    VmState,
    preflight,
    provision_unit,
    prune,
    snapshot,
    verify,
)

JOB = "windows-provision"

SNAPSHOT_KINDS = {
    "ram": "with RAM",
    "disk-live": "disk only",
    "disk-shutdown": "disk only, shut down",
}


def _item_row(label: str, outcome: ItemOutcome, name: str = "") -> ReportRow:
    """The report row of one item: installed, present and updated are OK; failed is not."""
    ok = Outcome.FAILED if outcome.status == "failed" else Outcome.OK
    detail = "; ".join(t for t in (name, outcome.detail) if t)
    return ReportRow(
        f"{label}: {outcome.item}", ok, detail=detail, cells={"status": outcome.status}
    )


def _plan_rows(plan: ProvisionPlan, dry_run: bool) -> list[ReportRow]:
    """The rows of a VM the run does not change: each item present, or (a dry run) what it
    needs, and the snapshot the run would take first."""
    rows = []
    if dry_run and not plan.skip:
        rows.append(
            ReportRow(
                f"{plan.label}: snapshot",
                Outcome.PLANNED,
                detail=plan.snapshot.reason,
                cells={"status": f"to take ({SNAPSHOT_KINDS[plan.snapshot.kind]})"},
            )
        )
    for i in plan.items:
        if i.action == "present":
            rows.append(_item_row(plan.label, ItemOutcome(i.item, "present"), i.name))
        else:
            detail = "; ".join(t for t in (i.name, i.why) if t)
            rows.append(
                ReportRow(
                    f"{plan.label}: {i.item}",
                    Outcome.PLANNED,
                    detail=detail,
                    cells={"status": f"to {i.action}"},
                )
            )
    return rows


def _rows(run: ProvisionRun) -> list[ReportRow]:
    """The report rows of a VM the run worked on: its snapshot, then each item."""
    names = {i.item: i.name for i in run.plan.items}
    rows = []
    if run.snapshot:
        kind = SNAPSHOT_KINDS[run.plan.snapshot.kind]
        rows.append(
            ReportRow(
                f"{run.label}: snapshot",
                Outcome.OK,
                detail=f"{run.snapshot} ({kind})",
                cells={"status": "taken"},
            )
        )
    rows += [_item_row(run.label, o, names.get(o.item, "")) for o in run.outcomes]
    return rows


@flow(name="windows-provision-vm", flow_run_name="{vm}", validate_parameters=False)
def provision_vm(vm: str, run: ProvisionRun, wait: float) -> list[ReportRow] | State[Any]:
    """One VM, step by step: snapshot → each unit with something to do → verify → prune,
    holding the VM's slot the whole time. A failed unit does not stop the next one. Failed
    when an item failed, or the VM was busy (another run holds it longer than ``wait``
    seconds)."""
    try:
        with hold([guest_target(run.guest.vmid)], wait=wait):
            rows = _chain(run)
    except TargetBusyError as exc:
        rows = [ReportRow(vm, Outcome.BUSY, detail=f"not provisioned: {exc}")]
    bad = [
        r.target.removeprefix(f"{vm}: ") if r.target != vm else r.outcome.value
        for r in rows
        if not r.ok
    ]
    if bad:
        return Failed(message=f"{vm}: not provisioned: {', '.join(bad)}", data=rows)
    return Completed(message=f"{vm}: provisioned", data=rows)


def _chain(run: ProvisionRun) -> list[ReportRow]:
    inv = run.inv
    try:
        taken: object = tuned(snapshot, inv)(run)
    except MoxflowError as exc:
        detail = f"snapshot failed, nothing changed: {exc}"
        return [ReportRow(run.label, Outcome.FAILED, detail=detail)]
    done: list[object] = []
    for unit in run.plan.units:
        if not unit.changes:  # nothing to do: no task run
            run.outcomes.extend(ItemOutcome(i.item, "present") for i in unit.items)
            continue
        state = provision_unit(run, unit, taken, return_state=True)
        if state.is_completed():
            done.append(state.result())
    rows = []
    try:
        checked: object = tuned(verify, inv)(run, done)
    except ItemsFailed:  # the items it found are failed in run.outcomes
        checked = None
    except MoxflowError as exc:  # the check itself could not run
        rows.append(ReportRow(run.label, Outcome.FAILED, detail=f"check after failed: {exc}"))
        checked = None
    try:
        tuned(prune, inv)(run, checked)
    except MoxflowError as exc:
        run.note(f"could not prune older snapshots: {exc}")
    return rows + _rows(run)


def _task_xml(inv: Inventory, key: str) -> dict[str, str]:
    """The XML definition of each scheduled task of VM ``key``, read and checked now;
    ``ConfigError`` naming the setting of the first that is not right."""
    return {
        t.name: read_task_xml(inv.base_dir, t.xml, f"windows.vms.{key}.scheduled_tasks[{i}].xml")
        for i, t in enumerate(inv.windows.vms[key].scheduled_tasks)
    }


def _vms(inv: Inventory, client: ProxmoxClient, only: list[str] | None) -> list[tuple[str, Guest]]:
    """The VMs this run covers: those of [windows.vms] with something to set up, in the
    file's order, cut by --only."""
    keys = require_provisioning(inv.windows)
    return select_vms(keys, client.resources(), only, verb="provision")


def _plan(inv: Inventory, key: str, state: VmState, xml: dict[str, str]) -> ProvisionPlan:
    """A VM's plan from its facts and the settings (pure)."""
    ram, consistent = inv.windows.snapshot_of(key)
    choice = choose_snapshot(state.config, ram=ram, consistent=consistent)
    vm = inv.windows.vms[key]
    return plan_provision(state.guest.label, state.os_text, vm, xml, state.facts, choice)


@flow(
    name=JOB,
    description="Provision the Windows VMs through the QEMU guest agent: Steam and games, the "
    "Rust toolchain, scheduled tasks; idempotent, snapshot-guarded.",
)
@flow_parameters(WindowsProvisionParams)
def windows_provision(
    *,
    only: list[str] | None = None,
    lock_timeout: float = 120.0,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Pre-flight and read every VM's facts, plan, then one ``windows-provision-vm`` subflow
    run per VM with something to change, one VM at a time; a failed VM or item does not stop
    the others."""
    p = WindowsProvisionParams(
        only=only, lock_timeout=lock_timeout, dry_run=dry_run, inventory=inventory
    )
    logger = get_run_logger()
    inv = load_inventory(p.inventory)
    report = RunReport(job=JOB, label="provision", dry_run=p.dry_run, counts_snapshots=False)
    now = utc_now()
    with proxmox_client(inv) as client:
        planned: list[ProvisionRun] = []
        this = run_id()
        for key, guest in _vms(inv, client, p.only):
            try:
                xml = _task_xml(inv, key)
                state = tuned(preflight, inv)(inv, client, guest, key, this)
            except LeftAlone as exc:  # an earlier update run's leftovers: nothing changed
                report.add(ReportRow(guest.label, exc.outcome, detail=f"refused: {exc}"))
                continue
            except MoxflowError as exc:
                report.add(ReportRow(guest.label, Outcome.FAILED, detail=f"refused: {exc}"))
                continue
            plan = _plan(inv, key, state, xml)
            for line in plan.describe():
                logger.info("%s", line)
            report.notes.extend(plan.describe())
            if plan.skip or p.dry_run:
                report.extend(_plan_rows(plan, p.dry_run))
            else:
                planned.append(ProvisionRun(inv, client, key, state, plan, xml, now, inv.tz, this))
        for run in planned:
            ended = provision_vm(run.label, run, p.lock_timeout, return_state=True)
            rows = ended.result(raise_on_failure=False)
            if not isinstance(rows, list):
                rows = [
                    ReportRow(run.label, Outcome.FAILED, detail=f"provisioning crashed: {rows}")
                ]
            report.extend(rows)
            logger.info("%s", ended.message)
    return finish(report, artifact_key="windows-provision-report", inv=inv)


def check(p: WindowsProvisionParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the token, the VMs, each
    scheduled task's XML file, the Steam passwords' references (read, never kept)."""
    inv = load_inventory(p.inventory)
    require_provisioning(inv.windows)  # before the token is needed
    with proxmox_client(inv) as client:
        chosen = _vms(inv, client, p.only)
    for key, _ in chosen:
        _task_xml(inv, key)
        steam = inv.windows.vms[key].steam
        login = steam is not None and any(not a.anonymous for a in steam.apps)
        if login and steam is not None and steam.password is not None:
            steam.password.resolve(inv.base_dir, setting=f"windows.vms.{key}.steam.password")
