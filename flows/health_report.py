"""The fleet at a glance: is every guest backed up, copied offsite and restore-tested, are
the snapshots within policy, are the NixOS hosts and Proxmox nodes up to date?

Checks, each against a limit from the inventory's [health] (defaults in brackets):

  backups     per guest of [backups] select: the newest backup's age
              [backups max_age_hours]; the newest offsite copy's age [48 h] when
              [offsite] is set; for the guests of [restore_test] select, the last
              passed restore test of a backup still listed [8 days]
  snapshots   per ZFS dataset and per guest of [guest_snapshots] select, for every label
              with a keep policy: the newest moxflow snapshot's age [1.5 x the label's
              period: 90 minutes for hourly, 36 hours for daily]; labels taken on events
              (pre-update) or of no known period are listed, not judged
  nixos       per NixOS host: the age of its last update [14 days]: its current
              generation, or the last update run that found nothing new; with the age of
              the nixpkgs its flake.lock pins
  nodes       per Proxmox node: pending package updates (Proxmox's cached list; shown,
              and judged only when [health] node_max_pending_updates is set)

The run only reads. It ends with one table, a line per check (target, kind, last, limit,
outcome, detail; also a Prefect artifact), and is Failed when any check is over its limit or
could not be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import HEALTH_KINDS, HealthReportParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser

KINDS = HEALTH_KINDS


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`HealthReportParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.health_report", __doc__ or "", HealthReportParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from datetime import UTC, datetime  # noqa: E402

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
from moxflow.fleet import Check, check_row, checks_summary  # noqa: E402
from moxflow.guests import Guest  # noqa: E402
from moxflow.inventory import Inventory, load_inventory  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.selection import parse_selection  # noqa: E402
from moxflow.snapshots import plan_guest_selection  # noqa: E402
from tasks.health import (  # noqa: E402
    GuestSets,
    check_backups,
    check_guest_snapshots,
    check_nixos,
    check_nodes,
    check_zfs_snapshots,
)
from tasks.proxmox import list_guests  # noqa: E402


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
    "within policy, NixOS and Proxmox updates; Failed when a limit is crossed.",
)
@flow_parameters(HealthReportParams)
def health_report(**kwargs: Any) -> RunReport | State[Any]:
    """Check the fleet against the [health] limits and report."""
    p = HealthReportParams(**kwargs)
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
            "nodes": "every Proxmox node's pending updates" if client else "no [proxmox]",
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
    checks: list[Check] = [c for fut in futures for c in fut.result()]
    logger.info(checks_summary(checks))
    report.extend(check_row(c, now) for c in checks)
    return finish(report, artifact_key="health-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.health_report``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(HealthReportParams, args)
        inv = load_inventory(a.inventory)
        check_kinds(a.only)
        for expr in (inv.backups.select, inv.restore_test.select, inv.guest_snapshots.select):
            parse_selection(expr)
        if inv.proxmox is not None:
            proxmox_client(inv).version()
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(health_report, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
