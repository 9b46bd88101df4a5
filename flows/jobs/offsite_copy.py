"""The offsite-copy flow; what it does and its command line: ``flows/offsite_copy.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.jobs._backups import list_node_backups
from flows.jobs._offsite import copy_offsite_steps, preview_offsite
from flows.params import OffsiteCopyParams, flow_parameters
from moxflow.errors import ConfigError
from moxflow.inventory import OffsiteSettings, load_inventory
from moxflow.report import RunReport
from moxflow.selection import parse_selection
from moxflow.snapshots import plan_guest_selection
from tasks._retry import tuned
from tasks.backups import list_offsite_copies
from tasks.proxmox import list_guests


def _need_offsite(off: OffsiteSettings | None) -> OffsiteSettings:
    """The inventory's [offsite]; a ConfigError saying what to add when it has none."""
    if off is None:
        raise ConfigError(
            "the inventory has no [offsite] section",
            setting="offsite",
            hint="add [offsite] with host (a [hosts] name) and path",
        )
    return off


@flow(name="offsite-copy", description="Copy backup archives offsite and prune the copies.")
@flow_parameters(OffsiteCopyParams)
def offsite_copy(
    *,
    select: str | None = None,
    storage: str | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Copy the selected guests' archives to the [offsite] host and prune the copies there.

    The facts (the guests, each node's backups on the storage, the offsite folder), the
    plan (pure), and with ``--dry-run`` the plan's rows; otherwise one ``offsite-copy`` step
    per archive and one ``offsite-prune`` step, as in a backup run."""
    p = OffsiteCopyParams(select=select, storage=storage, dry_run=dry_run, inventory=inventory)
    select, storage, dry_run, inventory = p.select, p.storage, p.dry_run, p.inventory
    logger = get_run_logger()
    inv = load_inventory(inventory)
    off = _need_offsite(inv.offsite)
    expr = select if select is not None else inv.backups.select
    store = storage or inv.backups.storage
    report = RunReport(job="offsite-copy", label=store, dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv)

    # facts: the guests, each node's backups on the storage, the offsite folder; read-only
    chosen = plan_guest_selection(list_guests(client), expr, running_only=False)
    for note in report.add_selection(chosen.unmatched, chosen.skipped):
        logger.warning("%s", note)
    folder = tuned(list_offsite_copies, inv).submit(inv, off.host)
    listed, archives = list_node_backups(
        inv, client, chosen.guests, store, report, row_suffix=" offsite"
    )

    # the plan (pure), and with --dry-run nothing more
    if dry_run:
        preview_offsite(report, off, folder, listed, archives, inv.tz)
        return finish(report, artifact_key="offsite-copy-report", inv=inv)

    # apply: per archive a copy step, one after the other; then the offsite prune step
    copy_offsite_steps(inv, off, report, folder, listed, archives, {}, None, inv.tz)
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
