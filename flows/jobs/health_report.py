"""The health-report flow; what it does and its command line: ``flows/health_report.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.params import HEALTH_KINDS, HealthKind, HealthReportParams, flow_parameters
from moxflow.errors import (
    ConfigError,
    MoxflowError,
)
from moxflow.fleet import Check, check_row, checks_summary
from moxflow.guests import Guest
from moxflow.inventory import Inventory, load_inventory
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.selection import parse_selection
from moxflow.snapshots import plan_guest_selection
from tasks.health import (
    GuestSets,
    check_backups,
    check_guest_snapshots,
    check_nixos,
    check_nodes,
    check_windows,
    check_zfs_snapshots,
)
from tasks.proxmox import list_guests

KINDS = HEALTH_KINDS


def check_kinds(only: Sequence[str] | None) -> list[str]:
    """The kinds to check; ``ConfigError`` naming an unknown one."""
    kinds = list(dict.fromkeys(only or KINDS))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(
            f"unknown check kind {', '.join(map(repr, unknown))}; known: {', '.join(KINDS)}"
        )
    return kinds


def guest_sets(inv: Inventory, guests: Sequence[Guest]) -> GuestSets:
    """The guests each job is configured for (templates left out, as the jobs do)."""

    def chosen(expr: str, running_only: bool = False) -> tuple[Guest, ...]:
        return plan_guest_selection(guests, expr, running_only=running_only, strict=False).guests

    gs = inv.guest_snapshots
    return GuestSets(
        backups=chosen(inv.backups.select),
        restore_tested=chosen(inv.restore_test.select),
        snapshotted=chosen(gs.select, gs.running_only),
    )


@flow(
    name="health-report",
    description="The fleet at a glance: backup, offsite and restore-test ages, snapshots "
    "within policy, NixOS, Proxmox and Windows updates; Failed when a limit is crossed.",
)
@flow_parameters(HealthReportParams)
def health_report(
    *,
    only: list[HealthKind] | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Check the fleet against the [health] limits and report."""
    p = HealthReportParams(only=only, dry_run=dry_run, inventory=inventory)
    only, dry_run, inventory = p.only, p.dry_run, p.inventory
    logger = get_run_logger()
    inv = load_inventory(inventory)
    kinds = check_kinds(only)
    report = RunReport(job="health-report", label=",".join(kinds), dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv) if inv.proxmox is not None else None
    now = datetime.now(UTC)
    guests: list[Guest] = []
    if client is not None:
        try:
            guests = list_guests(client)
        except MoxflowError as exc:  # the API is down: the checks over SSH still run
            logger.error("Proxmox API: %s", exc)
            api = Check("api", "proxmox", None, None, False, str(exc), "ERROR")
            report.add(check_row(api, now))
            client = None
    sets = guest_sets(inv, guests)
    labels = {*inv.zfs.policies, *inv.guest_snapshots.policies}
    labels |= {label for ds in inv.zfs.datasets for label in ds.policies}
    unjudged = sorted(label for label in labels if inv.health.period(label) is None)
    if unjudged and "snapshots" in kinds:
        report.notes.append(
            f"snapshot labels not judged (taken on events, or no period known: set [health] "
            f"label_hours to judge them): {', '.join(unjudged)}"
        )
    if dry_run:
        plan = {
            "backups": f"{len(sets.backups)} guest(s) backed up, "
            f"{len(sets.restore_tested)} restore-tested"
            + (f", offsite on {inv.offsite.host}" if inv.offsite else ""),
            "snapshots": f"{len(inv.zfs.datasets)} dataset(s), {len(sets.snapshotted)} guest(s)",
            "nixos": f"{len(inv.nixos.hosts)} NixOS host(s)",
            "nodes": "every Proxmox node's pending updates, last upgrade and pending reboot"
            if client
            else "no [proxmox]",
            "windows": f"{len(inv.windows.vms)} Windows VM(s): last update run, pending "
            "updates and their age, pending reboot"
            if inv.windows.vms and client
            else "no [windows.vms]"
            if client
            else "no [proxmox]",
        }
        for kind in kinds:
            # the kinds of check, not targets yet: the plan says what will be looked at
            cells = {"target": "", "kind": kind}
            report.add(ReportRow(kind, Outcome.PLANNED, detail=plan[kind], cells=cells))
        return finish(report, artifact_key="health-report", inv=inv)

    futures = []
    if "backups" in kinds and client is not None:
        futures.append(check_backups.submit(inv, client, sets, now))
    if "snapshots" in kinds:
        futures.append(check_zfs_snapshots.submit(inv, now))
        if client is not None:
            futures.append(check_guest_snapshots.submit(inv, client, sets.snapshotted, now))
    if "nixos" in kinds and inv.nixos.hosts:
        futures.append(check_nixos.submit(inv, now))
    if "nodes" in kinds and client is not None:
        futures.append(check_nodes.submit(inv, client))
    if "windows" in kinds and client is not None and inv.windows.vms:
        futures.append(check_windows.submit(inv, client, now))
    checks: list[Check] = [c for fut in futures for c in fut.result()]
    logger.info(checks_summary(checks))
    report.extend(check_row(c, now) for c in checks)
    return finish(report, artifact_key="health-report", inv=inv)


def check(p: HealthReportParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the kinds, the
    selections the checks read, the Proxmox token."""
    inv = load_inventory(p.inventory)
    check_kinds(p.only)
    for expr in (inv.backups.select, inv.restore_test.select, inv.guest_snapshots.select):
        parse_selection(expr)
    if inv.proxmox is not None:
        with proxmox_client(inv) as client:
            client.version()
