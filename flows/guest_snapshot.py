"""Snapshot Proxmox VMs and containers through the API, then prune by retention.

Selects guests with the selection language (ids, ranges 100:110, names, @all, @tag-X,
@pool-X, @node-X, exclusions with a leading -), skips templates (and stopped guests with
--running-only), and takes moxflow-<label>-<UTC timestamp> on each, marking the snapshot as
moxflow's in its description. Then removes moxflow's older snapshots *of that label* that
the keep policy does not keep; snapshots made by hand or by other tools are never touched.
A locked guest (a backup is running, say) is retried with backoff, then reported as skipped;
the other guests go on.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import GuestSnapshotParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`GuestSnapshotParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.guest_snapshot", __doc__ or "", GuestSnapshotParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from zoneinfo import ZoneInfo  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.logging import get_run_logger  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from blocks.proxmox import proxmox_client  # noqa: E402
from flows._run import finish, run_from_cli  # noqa: E402
from moxflow.errors import (  # noqa: E402
    ConfigError,
    MoxflowError,
    ProxmoxAuthError,
    ProxmoxPermissionError,
)
from moxflow.guests import Guest  # noqa: E402
from moxflow.inventory import load_inventory  # noqa: E402
from moxflow.naming import snapshot_name, validate_label  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.selection import parse_selection  # noqa: E402
from moxflow.snapshots import plan_guest_selection, utc_now  # noqa: E402
from tasks.proxmox import GuestJob, list_guests, snapshot_node  # noqa: E402

MAX_CONCURRENCY = 64


@flow(
    name="guest-snapshot",
    description="Snapshot the selected Proxmox guests and prune moxflow's older snapshots.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
)
@flow_parameters(GuestSnapshotParams)
def guest_snapshot(**kwargs: Any) -> RunReport | State[Any]:
    """Snapshot and prune the selected guests."""
    p = GuestSnapshotParams(**kwargs)
    label, select, running_only, vmstate, concurrency, lock_timeout, dry_run, inventory = (
        p.label,
        p.select,
        p.running_only,
        p.vmstate,
        p.concurrency,
        p.lock_timeout,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    settings = inv.guest_snapshots
    validate_label(label)
    policy = inv.guest_policy(label)
    expr = select if select is not None else settings.select
    parse_selection(expr)  # a bad expression fails before anything is read or changed
    running = settings.running_only if running_only is None else running_only
    with_ram = settings.vmstate if vmstate is None else vmstate
    limit = min(max(1, concurrency or settings.concurrency), MAX_CONCURRENCY)
    tz = ZoneInfo(inv.timezone)
    now = utc_now()
    snapname = snapshot_name(label, now)

    client = proxmox_client(inv, max_connections=limit + 2)
    chosen = plan_guest_selection(list_guests(client), expr, running_only=running)
    report = RunReport(job="guest-snapshot", label=label, dry_run=dry_run)
    for name in chosen.unmatched:
        report.notes.append(f"selection: {name!r} matches no guest")
        logger.warning("selection %r matches no guest", name)
    for guest, why in chosen.skipped:
        report.add(ReportRow(target=guest.label, outcome=Outcome.SKIPPED, detail=why))
    total = len(chosen.guests)
    logger.info(
        "%s %d guest(s) as %s, %d at a time (%s)",
        "planning" if dry_run else "snapshotting",
        total,
        snapname,
        limit,
        expr,
    )

    job = GuestJob(
        label=label,
        snapname=snapname,
        now=now,
        policy=policy,
        tz=tz,
        dry_run=dry_run,
        vmstate=with_ram,
        lock_timeout=lock_timeout,
    )
    gate = threading.Semaphore(limit)  # at most `limit` guests at once, across all nodes
    by_node: dict[str, list[Guest]] = defaultdict(list)
    for guest in chosen.guests:
        by_node[guest.node].append(guest)
    futures = [
        snapshot_node.submit(client, node, len(guests), guests, job, gate, limit)
        for node, guests in sorted(by_node.items())
    ]
    for fut in as_completed(futures):
        report.extend(fut.result())
    return finish(report, artifact_key="guest-snapshot-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.guest_snapshot``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(GuestSnapshotParams, args)
        inv = load_inventory(a.inventory)
        validate_label(a.label)
        inv.guest_policy(a.label)
        expr = a.select if a.select is not None else inv.guest_snapshots.select
        parse_selection(expr)  # the syntax first: no API request for a typo in it
        # a wrong token or CA, or a guest that is not there, fails here before the flow starts
        plan_guest_selection(proxmox_client(inv).resources(), expr, running_only=False)
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(guest_snapshot, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
