"""Copy backup archives to the offsite host over SSH, then prune the offsite copies.

The offsite step of flows.vzdump_backup, alone: for the selected guests, the archives on the
storage that the [offsite] policy keeps and the offsite folder lacks are copied (to NAME.part,
SHA-256 compared on both sides, then renamed; a corrupted copy is redone once), and offsite
copies the policy does not keep are removed. Backups on the storage are never touched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import OffsiteCopyParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`OffsiteCopyParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.offsite_copy", __doc__ or "", OffsiteCopyParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402

from blocks.proxmox import proxmox_client  # noqa: E402
from flows._run import finish, run_from_cli  # noqa: E402
from moxflow.errors import (  # noqa: E402
    ConfigError,
    MoxflowError,
    ProxmoxAuthError,
    ProxmoxPermissionError,
)
from moxflow.inventory import load_inventory  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.selection import parse_selection  # noqa: E402
from moxflow.snapshots import plan_guest_selection  # noqa: E402
from tasks.backups import list_guest_archives, offsite_copy  # noqa: E402
from tasks.proxmox import list_guests  # noqa: E402


def _need_offsite(inv_offsite: object) -> None:
    if inv_offsite is None:
        raise ConfigError(
            "the inventory has no [offsite] section",
            setting="offsite",
            hint="add [offsite] with host (a [hosts] name) and path",
        )


@flow(name="offsite-copy", description="Copy backup archives offsite and prune the copies.")
@flow_parameters(OffsiteCopyParams)
def offsite_copy_flow(**kwargs: Any) -> RunReport | State[Any]:
    """Copy the selected guests' archives to the [offsite] host and prune the copies there."""
    p = OffsiteCopyParams(**kwargs)
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
    done = offsite_copy(inv, guests, archives, store, inv.tz, dry_run)
    report.extend(done.rows)
    return finish(report, artifact_key="offsite-copy-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.offsite_copy``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(OffsiteCopyParams, args)
        inv = load_inventory(a.inventory)
        _need_offsite(inv.offsite)
        expr = a.select if a.select is not None else inv.backups.select
        parse_selection(expr)  # the syntax first: no API request for a typo in it
        plan_guest_selection(proxmox_client(inv).resources(), expr, running_only=False)
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(offsite_copy_flow, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
