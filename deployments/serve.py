"""Run every moxflow schedule from this one process: ``python -m deployments.serve``.

No worker and no work pool are needed: this process registers each deployment with the
Prefect server at PREFECT_API_URL, and runs their scheduled runs (and runs started from the
UI) itself, until it is stopped. Stopping it leaves the schedules active, so runs that fall
due meanwhile wait for it as "Late" and start when it is back.

The schedules are in the inventory's time zone; every run gets the inventory's path as its
``inventory`` parameter. At most one run of each deployment runs at a time: a run that would
overlap is cancelled with "Deployment concurrency limit reached."
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deployments.definitions import DEFINITIONS, select

EPILOG = """\
deployments (flow/name  cron):
""" + "\n".join(f"  {d.full_name:24} {d.cron:14} {d.description}" for d in DEFINITIONS)


def build_parser() -> argparse.ArgumentParser:
    """The command line; argparse only, so that ``--help`` stays fast."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="inventory TOML file for every run and for the schedules' time zone "
        "(default: $MOXFLOW_INVENTORY or ./inventory.toml)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="FLOW/NAME",
        help="serve only these deployments, e.g. zfs-snapshot/hourly (repeat or comma-separate)",
    )
    parser.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="replace every schedule by one run each SECONDS, the first about 10 s after "
        "start, to try the schedules out (against the simulated lab, say)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the deployments and their schedules, then exit (no server needed)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the deployments, and serve them until stopped."""
    args = build_parser().parse_args(argv)
    names = [n.strip() for v in args.only or () for n in v.split(",") if n.strip()]
    try:
        chosen = select(names)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.every is not None and args.every <= 0:
        print("error: --every must be a positive number of seconds", file=sys.stderr)
        return 2

    from deployments.definitions import OFF, inventory_schedules, inventory_timezone
    from moxflow.errors import ConfigError
    from moxflow.inventory import inventory_path

    inventory = inventory_path(args.inventory)
    try:
        tz = inventory_timezone(inventory)
        crons = inventory_schedules(inventory)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not inventory.is_file():
        print(
            f"warning: no inventory at {inventory}: schedules are in {tz} and runs will fail "
            "until it exists (pass --inventory FILE or set MOXFLOW_INVENTORY)",
            file=sys.stderr,
        )
    if args.list:
        for d in chosen:
            cron = crons[d.full_name]
            when = (
                f"every {args.every:g} s"
                if args.every
                else "off (runs from the UI only)"
                if cron == OFF
                else f"{cron} ({tz})"
            )
            print(f"{d.full_name:24} {when:28} {d.description}")
        return 0

    from prefect import serve

    from deployments.definitions import runner_deployments

    deployments = runner_deployments(
        chosen, timezone=tz, inventory=str(inventory), every=args.every, crons=crons
    )
    serve(*deployments, pause_on_shutdown=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
