"""nixos_update over a fleet: makespan against the ideal of the plan's waves.

A lab with 12 simulated NixOS hosts whose builds take 1-4 s times --time-scale (default 4:
4-16 s, still far shorter than real NixOS builds, which take minutes),
every host with an upstream change, updated with --max-parallel 4 (the flow run as `python -m
flows.nixos_update` runs it, ``flows._run.adhoc_settings``). Prints the makespan of
the flow, the ideal for the plan's waves (the sum over waves of the slowest build in the
wave), their ratio (goal <= 1.10), and the sequential makespan one host at a time (how
deploy-rs works: the sum of all builds). Nothing is asserted.

    python benchmarks/nixos_fleet.py [--hosts 12] [--max-parallel 4] [--time-scale 4]

moxflow's own cost (measured on two shared cores, SQLite server): about 2 s before the first
wave (pre-flight of every host 1.5 s, making the hosts' slots on a fresh server 0.4 s), then
per wave about 0.15 s per host to create its subflow run (one at a time, see
flows/jobs/nixos_update.py), 0.3 s from lock to build, and 0.8 s after the build (arm,
switch, verify and confirm each over a new connection, prune, unlock). So the ratio depends on
how long builds take: at real build times (minutes) it is a few per cent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

from labsim.client import start_lab  # noqa: E402
from scripts.prefect_server import busy_refusals, start_server, stop_server  # noqa: E402

REV = "0badc0de0badc0de0badc0de0badc0de0badc0de"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=12)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=4.0, help="build time multiplier")
    args = parser.parse_args()
    hosts = [f"nixos-{i:02d}" for i in range(1, args.hosts + 1)]

    with tempfile.TemporaryDirectory(prefix="moxflow-fleet-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        print(f"starting a Prefect server and a lab of {args.hosts} NixOS hosts ...", flush=True)
        server = start_server(work / "prefect", env)
        lab = start_lab(work / "lab", nixos_hosts=args.hosts, time_scale=args.time_scale)
        try:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from flows._run import adhoc_settings
            from flows.jobs.nixos_update import nixos_update
            from moxflow.inventory import load_inventory
            from moxflow.nixos import plan_update

            inv_path = work / "lab" / "inventory.toml"
            plan = plan_update(load_inventory(inv_path), hosts, max_parallel=args.max_parallel)
            state = lab.state()["hosts"]
            scale = args.time_scale
            build = {h: float(state[h]["nixos"]["build_seconds"]) * scale for h in hosts}
            for h in hosts:
                lab.nixos(h, upstream=REV)
            ideal = sum(max(build[h] for h in wave) for wave in plan.waves)
            sequential = sum(build.values())

            # Prefect is imported by now (scripts.prefect_server): a changed environment no
            # longer reaches its settings, and the flow would run on a temporary server of its
            # own while its subflows went to this one
            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                t0 = time.perf_counter()
                with adhoc_settings():  # as `python -m flows.nixos_update` runs it
                    report = nixos_update(
                        only=hosts, max_parallel=args.max_parallel, inventory=str(inv_path)
                    )
                makespan = time.perf_counter() - t0

            ok = sum(1 for r in report.rows if r.outcome.value == "ok")
            waves = " ".join(f"[{len(w)}]" for w in plan.waves)
            print(f"hosts {len(hosts)}, max-parallel {args.max_parallel}, waves {waves}, ok {ok}")
            print(f"builds: {', '.join(f'{build[h]:g}' for h in hosts)} s")
            print(f"makespan   {makespan:7.2f} s")
            print(f"ideal      {ideal:7.2f} s  (sum over waves of the slowest build)")
            print(f"ratio      {makespan / ideal:7.2f}     (goal <= 1.10)")
            print(f"sequential {sequential:7.2f} s  (one host at a time, like deploy-rs)")
            busy = busy_refusals(work / "prefect")
            print(
                f"busy       {busy:7d}     (requests the Prefect server refused with 503 "
                "because SQLite was busy; Prefect's client waits 2 s before each retry, "
                "moxflow's slot requests 5 ms)"
            )
        finally:
            lab.stop()
            stop_server(server)


if __name__ == "__main__":
    main()
