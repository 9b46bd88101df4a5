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

from flows._cli import EXIT_FAILED, EXIT_USAGE, base_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line; argparse only, so that ``--help`` stays fast."""
    parser = base_parser("python -m flows.restore", __doc__ or "")
    parser.add_argument(
        "--vmid", type=int, required=True, metavar="N", help="the guest whose backup to restore"
    )
    parser.add_argument(
        "--backup",
        default="latest",
        metavar="latest|VOLID",
        help="which backup: latest (default) or a volid such as "
        "nas-backup:backup/vzdump-qemu-100-2026_11_26-02_00_05.vma.zst",
    )
    parser.add_argument(
        "--target-vmid",
        type=int,
        metavar="N",
        help="restore as guest N instead of over --vmid (default: --vmid itself)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing guest at the target VMID (a pre-restore snapshot of it "
        "is taken first where possible)",
    )
    parser.add_argument(
        "--storage",
        metavar="S",
        help="the storage for the restored disks (default: those in the backed-up config)",
    )
    parser.add_argument(
        "--node",
        metavar="NODE",
        help="the node to restore to when no guest has the target VMID "
        "(default: the node of --vmid if it still exists, else the first online node)",
    )
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.logging import get_run_logger  # noqa: E402

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
from tasks.clients import proxmox_client  # noqa: E402
from tasks.restore import restore_guest  # noqa: E402


def _first_online_node(client: ProxmoxClient) -> str:
    nodes = client.get("/nodes") or []
    online = sorted(str(n["node"]) for n in nodes if n.get("status") == "online")
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
def restore(
    vmid: int,
    backup: str = "latest",
    target_vmid: int | None = None,
    force: bool = False,
    storage: str | None = None,
    node: str | None = None,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Restore guest ``vmid`` from a backup.

    Args:
        vmid: the guest whose backup is restored.
        backup: "latest" or a backup volid.
        target_vmid: restore as this VMID (default: ``vmid``).
        force: overwrite an existing guest (snapshot first where possible).
        storage: storage for the restored disks (default: as in the backup).
        node: node to restore to when no guest has the target VMID.
        dry_run: read the guests and backups and show the plan; change nothing.
        inventory: path of the inventory file (default: $MOXFLOW_INVENTORY, ./inventory.toml).
    """
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
            )
        )
    else:
        report.add(restore_guest(client, plan, inv.restore_test.task_timeout))
    return finish(report, artifact_key="restore-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.restore``: check the plan (refusals exit 2), run the flow, report."""
    args = build_parser().parse_args(argv)
    try:
        inv = load_inventory(args.inventory)
        client = proxmox_client(inv)
        client.get("/version")
        make_plan(
            client,
            inv,
            args.vmid,
            args.backup,
            args.target_vmid,
            args.force,
            args.storage,
            args.node,
        )
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(
        restore,
        vmid=args.vmid,
        backup=args.backup,
        target_vmid=args.target_vmid,
        force=args.force,
        storage=args.storage,
        node=args.node,
        dry_run=args.dry_run,
        inventory=args.inventory,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
