"""Run every moxflow schedule from this one process: ``python -m deployments.serve``.

No worker and no work pool are needed: this process registers each deployment with the
Prefect server at PREFECT_API_URL (without it: a server running on this machine,
$MOXFLOW_PREFECT_URL or 127.0.0.1:4200, as ad-hoc runs find it; with none, it says so and
stops), and runs their scheduled runs (and runs started from the UI) itself, until it is
stopped. Stopping it leaves the schedules active, so runs that fall
due meanwhile wait for it as "Late" and start when it is back.

The schedules are in the inventory's time zone; every run gets the inventory's path as its
``inventory`` parameter. At most one run of each deployment runs at a time: a run that would
overlap is cancelled with "Deployment concurrency limit reached."
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the Prefect server to answer before giving up (default: "
        "60; a server started at the same time, `prefect server start &` or at boot, takes "
        "a few seconds)",
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
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from deployments.definitions import runner_deployments

    api_url = wait_for_server(get_current_settings().api.url, args.wait)
    if api_url is None:
        return 2
    print(f"serving {len(chosen)} deployment(s) from the Prefect server at {api_url}", flush=True)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployments = runner_deployments(
            chosen, timezone=tz, inventory=str(inventory), every=args.every, crons=crons
        )
        serve(*deployments, pause_on_shutdown=False)
    return 0


def wait_for_server(api_url: str | None, wait: float) -> str | None:
    """The API URL of the Prefect server to serve from, once it answers; None (said why) if
    none does within ``wait`` seconds.

    With PREFECT_API_URL (``api_url``), that server; without it, a server running on this
    machine, as ad-hoc runs find it ($MOXFLOW_PREFECT_URL, else 127.0.0.1:4200). Never a
    temporary server: it would forget every run when serve stops.
    """
    from flows._server import ENV_PREFECT_URL, LOCAL_API_URL, find_local_server, server_answers

    where = api_url or os.environ.get(ENV_PREFECT_URL) or LOCAL_API_URL
    deadline = time.monotonic() + max(0.0, wait)
    said = False
    while True:
        found = (api_url if server_answers(api_url) else None) if api_url else find_local_server()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            break
        if not said:
            print(f"waiting up to {wait:g} s for the Prefect server at {where} ...", flush=True)
            said = True
        time.sleep(1.0)
    print(
        f"error: no Prefect server answers at {where}, so there is nothing to serve from. "
        "Start one with `prefect server start` (in another terminal), or set PREFECT_API_URL "
        "to yours; a temporary server would forget every run when this stops",
        file=sys.stderr,
    )
    return None


if __name__ == "__main__":
    sys.exit(main())
