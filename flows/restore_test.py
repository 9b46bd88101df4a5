"""Prove backups restore: restore each selected guest's newest backup to a scratch guest,
boot it, check it, destroy it.

For each selected guest (templates are skipped), its newest archive on the [backups] storage
is restored to a scratch VMID from [restore_test] scratch_vmids (never one in use: checked
again right before each restore) on [restore_test] scratch_storage with new MAC addresses,
started, and waited for: a VM until its guest agent answers, a container until it runs, at
most [restore_test] boot_timeout seconds. The scratch guest is then stopped and destroyed,
also when a step failed; the report says when that cleanup failed. The original guest is
never touched: every changing request names the scratch VMID.

The report has a line per guest: the archive restored, the scratch VMID, how long the boot
took, whether the guest agent answered, the outcome and what was done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import RestoreTestParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`RestoreTestParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.restore_test", __doc__ or "", RestoreTestParams)


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
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.restore import check_scratch_vmid  # noqa: E402
from moxflow.selection import parse_selection  # noqa: E402
from moxflow.snapshots import plan_guest_selection  # noqa: E402
from tasks.proxmox import list_guests  # noqa: E402
from tasks.restore import RestoreTestJob, restore_test_guests  # noqa: E402


def restore_test_job(
    inv: Inventory, storage: str | None, scratch_vmid: int | None, dry_run: bool
) -> RestoreTestJob:
    """The run's settings from [restore_test] and [backups]; options beat the inventory."""
    rt = inv.restore_test
    return RestoreTestJob(
        backup_storage=storage or inv.backups.storage,
        scratch_storage=rt.scratch_storage,
        scratch_vmids=rt.vmid_range(),
        scratch_vmid=scratch_vmid,
        boot_timeout=rt.boot_timeout,
        task_timeout=rt.task_timeout,
        dry_run=dry_run,
    )


@flow(
    name="restore-test",
    description="Restore the newest backup of each selected guest to a scratch VMID, boot, "
    "check and destroy it; the original is never touched.",
)
@flow_parameters(RestoreTestParams)
def restore_test(**kwargs: Any) -> RunReport | State[Any]:
    """Restore-test the selected guests' newest backups."""
    p = RestoreTestParams(**kwargs)
    select, storage, scratch_vmid, dry_run, inventory = (
        p.select,
        p.storage,
        p.scratch_vmid,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    expr = select if select is not None else inv.restore_test.select
    parse_selection(expr)
    job = restore_test_job(inv, storage, scratch_vmid, dry_run)
    report = RunReport(job="restore-test", label=job.backup_storage, dry_run=dry_run)
    report.counts_snapshots = False
    client = proxmox_client(inv)
    all_guests = list_guests(client)
    if scratch_vmid is not None:
        check_scratch_vmid(scratch_vmid, all_guests)  # refused before anything is restored
    chosen = plan_guest_selection(all_guests, expr, running_only=False)
    for name in chosen.unmatched:
        report.notes.append(f"selection: {name!r} matches no guest")
        logger.warning("selection %r matches no guest", name)
    for guest, why in chosen.skipped:
        report.add(ReportRow(target=guest.label, outcome=Outcome.SKIPPED, detail=why))
    logger.info(
        "%s %d guest(s) from %s on %s (%s)",
        "planning restore tests of" if dry_run else "restore-testing",
        len(chosen.guests),
        job.backup_storage,
        job.scratch_storage,
        expr,
    )
    results = restore_test_guests(client, list(chosen.guests), job)
    report.extend(r.row for r in results)  # archive, scratch VMID, boot, agent per guest
    return finish(report, artifact_key="restore-test-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.restore_test``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(RestoreTestParams, args)
        inv = load_inventory(a.inventory)
        expr = a.select if a.select is not None else inv.restore_test.select
        parse_selection(expr)  # the syntax first: no API request for a typo in it
        guests = proxmox_client(inv).resources()
        plan_guest_selection(guests, expr, running_only=False)
        if a.scratch_vmid is not None:
            check_scratch_vmid(a.scratch_vmid, guests)
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(restore_test, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
