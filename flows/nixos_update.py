"""Update NixOS hosts safely: snapshot, flake update, build, switch, verify, or roll back.

For each NixOS host in the inventory's [nixos.hosts]: read its state (pre-flight), take a
snapshot (Proxmox guest or ZFS dataset, as the inventory says), run `nix flake update`,
build, arm a dead-man timer that reverts the host by itself unless confirmed, switch, then
verify over a new SSH connection (the generation, no newly failed units, the health checks).
A host that fails verification is switched back; if it does not answer, the dead-man timer
reverts it; if that fails too, the snapshot is rolled back; if even that fails, the host is
reported "needs attention" with its snapshot kept. Canary hosts go first, then waves of at
most --max-parallel hosts, respecting `after`; the first failure stops the roll.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_FAILED, EXIT_USAGE
from flows.params import NixosUpdateParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`NixosUpdateParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.nixos_update", __doc__ or "", NixosUpdateParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from zoneinfo import ZoneInfo  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.context import get_run_context  # noqa: E402
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
from moxflow.inventory import load_inventory  # noqa: E402
from moxflow.nixos import generation_text, plan_update  # noqa: E402
from moxflow.report import Outcome, ReportRow, RunReport  # noqa: E402
from moxflow.snapshots import utc_now  # noqa: E402
from tasks.nixos import Preflight, preflight, update_host  # noqa: E402


def _flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except RuntimeError:
        return None
    run = getattr(ctx, "flow_run", None)
    return str(run.id) if run is not None else None


def _cells(facts: Preflight) -> dict[str, str]:
    """The report cells of a host the run did not update: its generation, no snapshot."""
    return {"generation": generation_text(facts.generation)}


@flow(
    name="nixos-update",
    description="Update NixOS hosts with snapshot, verification and automatic rollback.",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
)
@flow_parameters(NixosUpdateParams)
def nixos_update(**kwargs: Any) -> RunReport | State[Any]:
    """Update the NixOS hosts in waves."""
    p = NixosUpdateParams(**kwargs)
    only, max_parallel, continue_on_failure, no_snapshot, force, dry_run, inventory = (
        p.only,
        p.max_parallel,
        p.continue_on_failure,
        p.no_snapshot,
        p.force,
        p.dry_run,
        p.inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(inventory)
    plan = plan_update(inv, only or (), max_parallel=max_parallel)
    tz = ZoneInfo(inv.timezone)
    now = utc_now()
    report = RunReport(job="nixos-update", label="update", dry_run=dry_run, counts_snapshots=False)
    hosts = [h for wave in plan.waves for h in wave]
    logger.info("plan: %s", " → ".join("[" + ", ".join(w) + "]" for w in plan.waves))

    facts: dict[str, Preflight] = {
        f.host: f for f in (fut.result() for fut in [preflight.submit(inv, h) for h in hosts])
    }
    if dry_run:
        for wave_no, wave in enumerate(plan.waves, start=1):
            for host in wave:
                hp = plan.hosts[host]
                # the plan is only as good as what the real run could do: a snapshot that
                # could not be taken (a wrong token, say) fails the dry run as it would the run
                blocked = facts[host].snapshot_error and not no_snapshot
                report.add(
                    ReportRow(
                        target=host,
                        outcome=Outcome.FAILED if blocked else Outcome.PLANNED,
                        detail=f"wave {wave_no}; {facts[host].summary()}; {hp.describe()}",
                        cells=_cells(facts[host]),
                    )
                )
        report.notes.extend(plan.describe())
        return finish(report, artifact_key="nixos-update-report", inv=inv)

    run_id = _flow_run_id()
    stopped: str | None = None
    failed: set[str] = set()
    for wave_no, wave in enumerate(plan.waves, start=1):
        runnable: list[str] = []
        for host in wave:
            f = facts[host]
            blockers = [a for a in inv.nixos_host(host).after if a in failed]
            cells = _cells(f)
            if stopped is not None:
                why = f"not started: {stopped}"
                report.add(ReportRow(host, Outcome.SKIPPED, detail=why, cells=cells))
            elif blockers:
                failed.add(host)
                why = "not started: after " + ", ".join(blockers)
                report.add(ReportRow(host, Outcome.SKIPPED, detail=why, cells=cells))
            elif not f.reachable:
                failed.add(host)
                why = f"pre-flight: {f.summary()}"
                report.add(ReportRow(host, Outcome.FAILED, detail=why, cells=cells))
            elif not f.flake_ok:
                failed.add(host)
                why = "pre-flight: no flake.nix"
                report.add(ReportRow(host, Outcome.FAILED, detail=why, cells=cells))
            elif f.snapshot_error and not no_snapshot:
                failed.add(host)
                why = f"pre-flight: {f.summary()}"
                report.add(ReportRow(host, Outcome.FAILED, detail=why, cells=cells))
            else:
                runnable.append(host)
        logger.info("wave %d/%d: %s", wave_no, len(plan.waves), ", ".join(runnable) or "-")
        futures = [
            update_host.submit(
                inv, h, facts[h], now, tz, run_id, no_snapshot=no_snapshot, force=force
            )
            for h in runnable
        ]
        for fut in futures:
            row = fut.result()
            report.add(row)
            logger.info("%s: %s", row.target, row.line())
            if row.failed:
                failed.add(row.target)
        if failed and stopped is None and not continue_on_failure:
            stopped = f"{', '.join(sorted(failed))} failed in wave {wave_no}"
    return finish(report, artifact_key="nixos-update-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.nixos_update``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(NixosUpdateParams, args)
        inv = load_inventory(a.inventory)
        plan = plan_update(inv, a.only or [], max_parallel=a.max_parallel)
        proxmox = [h for h in plan.hosts if inv.nixos_host(h).snapshot.method == "proxmox"]
        if proxmox and not a.no_snapshot:  # a wrong token fails here, before the plan says OK
            proxmox_client(inv).version()
    except (ConfigError, ProxmoxAuthError, ProxmoxPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return run_from_cli(nixos_update, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
