"""Restore a guest from a vzdump backup, for the day things went wrong.

Restores the newest backup of guest --vmid (or the one named by --backup VOLID) from the
[backups] storage (or the storage of the volid). Restoring over an existing guest needs
--force: moxflow then takes a pre-restore snapshot of it where possible
(moxflow-pre-restore-<UTC timestamp>), stops it, restores over it and starts it again if it
was running. Without --force it refuses (exit 2) and changes nothing. With --target-vmid N
the backup is restored beside the original as a new guest N (new MAC addresses while the
original exists); no --force is needed unless N is taken.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import RestoreParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`RestoreParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.restore", __doc__ or "", RestoreParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.logging import get_run_logger  # noqa: E402

from blocks.proxmox import proxmox_client  # noqa: E402
from flows._run import finish, run_from_cli  # noqa: E402
from moxflow.errors import (  # noqa: E402
    ConfigError,
    MoxflowError,
    ProxmoxAuthError,
    ProxmoxPermissionError,
)
from moxflow.inventory import Inventory, load_inventory  # noqa: E402
from moxflow.proxmox import ProxmoxClient  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.restore import (  # noqa: E402
    RestorePlan,
    backup_storage,
    pick_archive,
    plan_restore,
)
from tasks.backups import list_archives  # noqa: E402
from tasks.restore import restore_guest  # noqa: E402


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
def restore(**kwargs: Any) -> RunReport | State[Any]:
    """Restore guest ``vmid`` from a backup."""
    p = RestoreParams(**kwargs)
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
        report.add(restore_guest(client, plan, inv.restore_test.task_timeout))
    return finish(report, artifact_key="restore-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.restore``: check the plan (refusals exit 2), run the flow, report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(RestoreParams, args)
        inv = load_inventory(a.inventory)
        client = proxmox_client(inv)
        client.version()  # a wrong token or CA fails here, clearly
        make_plan(
            client,
            inv,
            a.vmid,
            a.backup,
            a.target_vmid,
            a.force,
            a.storage,
            a.node,
        )
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(restore, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
