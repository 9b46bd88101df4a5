"""The offsite-copy flow; what it does and its command line: ``flows/offsite_copy.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.params import OffsiteCopyParams, flow_parameters
from moxflow.errors import (
    ConfigError,
)
from moxflow.inventory import load_inventory
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.selection import parse_selection
from moxflow.snapshots import plan_guest_selection
from tasks.backups import list_guest_archives
from tasks.backups import offsite_copy as copy_offsite
from tasks.proxmox import list_guests


def _need_offsite(inv_offsite: object) -> None:
    if inv_offsite is None:
        raise ConfigError(
            "the inventory has no [offsite] section",
            setting="offsite",
            hint="add [offsite] with host (a [hosts] name) and path",
        )


@flow(name="offsite-copy", description="Copy backup archives offsite and prune the copies.")
@flow_parameters(OffsiteCopyParams)
def offsite_copy(
    *,
    select: str | None = None,
    storage: str | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Copy the selected guests' archives to the [offsite] host and prune the copies there."""
    p = OffsiteCopyParams(select=select, storage=storage, dry_run=dry_run, inventory=inventory)
    select, storage, dry_run, inventory = p.select, p.storage, p.dry_run, p.inventory
    inv = load_inventory(inventory)
    _need_offsite(inv.offsite)
    expr = select if select is not None else inv.backups.select
    store = storage or inv.backups.storage
    report = RunReport(job="offsite-copy", label=store, dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv)
    chosen = plan_guest_selection(list_guests(client), expr, running_only=False)
    for guest, why in chosen.skipped:
        report.add(ReportRow(target=guest.label, outcome=Outcome.SKIPPED, detail=why))
    guests = list(chosen.guests)
    archives = list_guest_archives(client, guests, store)
    done = copy_offsite(inv, guests, archives, store, inv.tz, dry_run)
    report.extend(done.rows)
    return finish(report, artifact_key="offsite-copy-report", inv=inv)


def check(p: OffsiteCopyParams) -> None:
    """Bad input fails here, before the flow starts: the inventory and its [offsite], the
    selection's syntax, then the selection against the cluster (the token too)."""
    inv = load_inventory(p.inventory)
    _need_offsite(inv.offsite)
    expr = p.select if p.select is not None else inv.backups.select
    parse_selection(expr)  # the syntax first: no API request for a typo in it
    with proxmox_client(inv) as client:
        plan_guest_selection(client.resources(), expr, running_only=False)
