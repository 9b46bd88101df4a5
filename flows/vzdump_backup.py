"""Back up Proxmox guests with vzdump, verify the archives, prune, copy offsite, report coverage.

Selects guests with the selection language (templates are skipped) and backs each up on the
node that owns it: one at a time per node (vzdump holds a node-wide lock), all nodes in
parallel, at most [backups] max_per_storage writing to the storage at once. Locked guests and
API hiccups are retried with backoff; a failed dump is retried once, then reported while the
other guests go on. Each new archive must be listed, made by this run, non-empty and not far
smaller than the guest's previous one. Then the guest's backups are pruned by [backups] policy
through Proxmox's prune endpoint (protected ones are never removed), and the archives the
[offsite] policy keeps are copied over SSH with SHA-256 checked on both sides. The run ends
with a coverage table; a guest without a backup newer than [backups] max_age_hours fails it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import VzdumpBackupParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`VzdumpBackupParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.vzdump_backup", __doc__ or "", VzdumpBackupParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

import threading  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.logging import get_run_logger  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from blocks.proxmox import proxmox_client  # noqa: E402
from flows._run import finish, run_from_cli  # noqa: E402
from moxflow.backups import (  # noqa: E402
    Archive,
    coverage_rows,
    coverage_text,
    split_by_node,
)
from moxflow.errors import (  # noqa: E402
    ConfigError,
    MoxflowError,
    ProxmoxAuthError,
    ProxmoxPermissionError,
)
from moxflow.inventory import Inventory, load_inventory  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.retention import KeepPolicy  # noqa: E402
from moxflow.selection import parse_selection  # noqa: E402
from moxflow.snapshots import plan_guest_selection  # noqa: E402
from tasks.backups import BackupJob, GuestBackup, backup_node, offsite_copy  # noqa: E402
from tasks.proxmox import list_guests  # noqa: E402

MAX_NODES = 64


def backup_job(
    inv: Inventory, storage: str | None, lock_timeout: float, dry_run: bool
) -> BackupJob:
    """The run's vzdump settings from [backups], with ``--storage`` beating the inventory."""
    b = inv.backups
    return BackupJob(
        storage=storage or b.storage,
        mode=b.mode,
        compress=b.compress,
        notes_template=b.notes_template,
        protected=b.protected,
        bwlimit=b.bwlimit,
        policy=KeepPolicy.parse(b.policy, setting="backups.policy") if b.policy else None,
        size_drop_ratio=b.size_drop_ratio,
        task_timeout=b.task_timeout,
        retry_timeout=lock_timeout,
        dry_run=dry_run,
    )


@flow(
    name="vzdump-backup",
    description="Back up the selected guests with vzdump; verify, prune, copy offsite, report.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_NODES + 2),  # type: ignore[arg-type]
)
@flow_parameters(VzdumpBackupParams)
def vzdump_backup(**kwargs: Any) -> RunReport | State[Any]:
    """Back up, verify, prune and copy the selected guests; end with a coverage table."""
    p = VzdumpBackupParams(**kwargs)
    select, storage, offsite, lock_timeout, dry_run, inventory = (
        p.select,
        p.storage,
        p.offsite,
        p.lock_timeout,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    expr = select if select is not None else inv.backups.select
    parse_selection(expr)
    job = backup_job(inv, storage, lock_timeout, dry_run)
    tz = inv.tz
    report = RunReport(job="vzdump-backup", label=job.storage, dry_run=dry_run)
    report.counts_snapshots = False

    client = proxmox_client(inv, max_connections=MAX_NODES + 2)
    chosen = plan_guest_selection(list_guests(client), expr, running_only=False)
    for name in chosen.unmatched:
        report.notes.append(f"selection: {name!r} matches no guest")
        logger.warning("selection %r matches no guest", name)
    for guest, why in chosen.skipped:
        report.add(ReportRow(target=guest.label, outcome=Outcome.SKIPPED, detail=why))
    by_node = split_by_node(chosen.guests)
    logger.info(
        "%s %d guest(s) on %d node(s) to %s (%s)",
        "planning" if dry_run else "backing up",
        len(chosen.guests),
        len(by_node),
        job.storage,
        expr,
    )
    cap = inv.backups.max_per_storage
    gate = threading.Semaphore(cap) if cap > 0 else None
    futures = [
        backup_node.submit(client, node, len(guests), guests, job, gate)
        for node, guests in by_node.items()
    ]
    results: list[GuestBackup] = []
    for fut in as_completed(futures):
        results.extend(fut.result())
    report.extend(r.row for r in results)
    archives: dict[int, list[Archive]] = {r.guest.vmid: list(r.archives) for r in results}
    verified = {r.guest.vmid: r.verified for r in results if r.verified is not None}

    listing: list[str] | None = None
    copied: dict[int, bool] = {}
    if offsite and inv.offsite is not None and results:
        done = offsite_copy(inv, [r.guest for r in results], archives, job.storage, tz, dry_run)
        report.extend(done.rows)
        listing, copied = done.listing, done.copied
    elif not offsite:
        report.notes.append("offsite copy skipped (--no-offsite)")

    now = datetime.now(UTC)
    rows = coverage_rows(
        [r.guest for r in results],
        archives,
        listing,
        now=now,
        max_age=timedelta(hours=inv.backups.max_age_hours),
        tz=tz,
        verified=verified,
        copied=copied,
    )
    for row in rows:
        if row.stale and not dry_run:
            report.add(
                ReportRow(
                    target=f"{row.guest} coverage",
                    outcome=Outcome.FAILED,
                    detail=f"no backup newer than {inv.backups.max_age_hours:g}h",
                )
            )
    report.notes.extend(coverage_text(rows, now))
    if rows:
        create_table_artifact(
            key="vzdump-backup-coverage",
            table=[r.cells(now) for r in rows],
            description=f"backup coverage (max age {inv.backups.max_age_hours:g}h)",
        )
    return finish(report, artifact_key="vzdump-backup-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.vzdump_backup``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(VzdumpBackupParams, args)
        inv = load_inventory(a.inventory)
        expr = a.select if a.select is not None else inv.backups.select
        parse_selection(expr)  # the syntax first: no API request for a typo in it
        backup_job(inv, a.storage, a.lock_timeout, a.dry_run)
        plan_guest_selection(proxmox_client(inv).resources(), expr, running_only=False)
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(vzdump_backup, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
