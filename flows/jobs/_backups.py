"""The backup facts ``vzdump_backup`` and ``offsite_copy`` both start from: each node's
backups on the storage, one ``vzdump-list`` step per node, read-only."""

from __future__ import annotations

from collections.abc import Sequence

from prefect.logging import get_run_logger

from moxflow.backups import Archive, split_by_node
from moxflow.errors import MoxflowError
from moxflow.guests import Guest
from moxflow.inventory import Inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from tasks._retry import tuned
from tasks.backups import list_backups


def list_node_backups(
    inv: Inventory,
    client: ProxmoxClient,
    guests: Sequence[Guest],
    storage: str,
    report: RunReport,
    *,
    row_suffix: str = "",
) -> tuple[list[Guest], dict[int, list[Archive]]]:
    """List every node's backups of ``guests`` on ``storage``, the nodes side by side. A
    node that cannot be listed fails its guests' rows (target ``label + row_suffix``);
    returns the guests that were listed and their archives, oldest first."""
    logger = get_run_logger()
    by_node = split_by_node(guests)
    listing = tuned(list_backups, inv)
    facts = {
        node: listing.submit(client, node, storage, tuple(g.vmid for g in members))
        for node, members in by_node.items()
    }
    listed: list[Guest] = []
    archives: dict[int, list[Archive]] = {}
    for node, members in by_node.items():
        try:
            found = facts[node].result()
        except MoxflowError as exc:
            logger.error("%s: cannot list the backups on %s: %s", node, storage, exc)
            report.extend(
                ReportRow(g.label + row_suffix, Outcome.FAILED, detail=str(exc)) for g in members
            )
            continue
        listed.extend(members)
        archives.update((g.vmid, found.get(g.vmid, [])) for g in members)
    return listed, archives
