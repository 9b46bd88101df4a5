"""The restore flow; what it does and its command line: ``flows/restore.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.params import RestoreParams, flow_parameters
from moxflow.errors import ConfigError, TargetBusyError
from moxflow.inventory import Inventory, load_inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.restore import (
    RestorePlan,
    backup_storage,
    pick_archive,
    plan_restore,
)
from tasks.backups import list_archives
from tasks.restore import restore_guest
from tasks.targets import guest_target, hold


def _first_online_node(client: ProxmoxClient) -> str:
    online = [str(n["node"]) for n in client.nodes() if n.get("status") == "online"]
    if not online:
        raise ConfigError("no online node to restore to", hint="pass --node NODE")
    return online[0]


def make_plan(
    client: ProxmoxClient,
    inv: Inventory,
    vmid: int,
    backup: str = "latest",
    target_vmid: int | None = None,
    force: bool = False,
    storage: str | None = None,
    node: str | None = None,
) -> RestorePlan:
    """Read the guests and backups and plan the restore; ``ConfigError`` when it is refused."""
    guests = client.resources()
    by_id = {g.vmid: g for g in guests}
    dest = target_vmid if target_vmid is not None else vmid
    if node is not None:
        where = node
    elif dest in by_id:
        where = by_id[dest].node
    elif vmid in by_id:
        where = by_id[vmid].node
    else:
        where = _first_online_node(client)
    source = backup_storage(backup, inv.backups.storage)
    archives = list_archives(client, where, source, vmid)
    archive = pick_archive(archives, backup, vmid)
    return plan_restore(
        guests, archive, vmid, node=where, target=target_vmid, storage=storage, force=force
    )


@flow(name="restore", description="Restore a guest from a vzdump backup.")
@flow_parameters(RestoreParams)
def restore(
    *,
    vmid: int,
    backup: str = "latest",
    target_vmid: int | None = None,
    force: bool = False,
    storage: str | None = None,
    node: str | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Restore guest ``vmid`` from a backup."""
    p = RestoreParams(
        vmid=vmid,
        backup=backup,
        target_vmid=target_vmid,
        force=force,
        storage=storage,
        node=node,
        dry_run=dry_run,
        inventory=inventory,
    )
    vmid, backup, target_vmid, force, storage, node, dry_run, inventory = (
        p.vmid,
        p.backup,
        p.target_vmid,
        p.force,
        p.storage,
        p.node,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    client = proxmox_client(inv)
    plan = make_plan(client, inv, vmid, backup, target_vmid, force, storage, node)
    report = RunReport(job="restore", label=str(vmid), dry_run=dry_run)
    report.counts_snapshots = False
    for step in plan.steps():
        logger.info("plan: %s", step)
    if dry_run:
        report.add(
            ReportRow(
                target=str(plan.target),
                outcome=Outcome.PLANNED,
                taken=plan.archive.filename,
                detail="; ".join(plan.steps()),
                cells={"archive": plan.archive.filename},
            )
        )
    else:
        try:
            with hold([guest_target(plan.target)]):  # no other moxflow job changes it meanwhile
                report.add(restore_guest(client, plan, inv.restore_test.task_timeout))
        except TargetBusyError as exc:
            report.add(ReportRow(str(plan.target), Outcome.BUSY, detail=f"not restored: {exc}"))
    return finish(report, artifact_key="restore-report", inv=inv)


def check(p: RestoreParams) -> None:
    """The whole plan is made before the flow starts: a refusal (no such guest or backup, a
    guest in the way without --force) or a wrong token or CA is bad input, nothing changed."""
    inv = load_inventory(p.inventory)
    with proxmox_client(inv) as client:
        client.version()  # a wrong token or CA fails here, clearly
        make_plan(client, inv, p.vmid, p.backup, p.target_vmid, p.force, p.storage, p.node)
