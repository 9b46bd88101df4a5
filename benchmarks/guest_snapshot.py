"""guest_snapshot over a big simulated cluster: wall time against the ideal, and peak memory.

A lab of 20 nodes x 50 guests where every snapshot task takes 0.2 s (--snapshot-seconds). For
each concurrency it runs the guest_snapshot flow in a fresh process against a local Prefect
server, as `python -m flows.guest_snapshot` runs it (``flows._run.adhoc_settings``), and
prints: wall time of the flow, the ideal for that concurrency (ceil(guests / concurrency) x
the snapshot's seconds), their ratio (goal <= 1.15 at the default 0.2 s), the sequential
time one guest at a time (how cv4pve-autosnap works: guests x the snapshot's seconds, a lower
bound), orchestration overhead per guest, and the peak memory of the process (goal < 400
MB). Then the same snapshots by the same API calls without Prefect, moxflow's flow or its
checks (one thread per lane): how close this machine itself gets to the ideal. Nothing is
asserted.

    python benchmarks/guest_snapshot.py [--nodes 20] [--guests-per-node 50]
        [--concurrency 10,25,50] [--snapshot-seconds 0.2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labsim.client import start_lab  # noqa: E402
from scripts.child import run_json_child  # noqa: E402
from scripts.prefect_server import busy_refusals, start_server, stop_server  # noqa: E402

SNAPSHOT_SECONDS = 0.2
"""Seconds a snapshot task takes in the lab by default. Real ones take longer: a running VM's
file systems are frozen through its guest agent first, and the RAM state, when asked for, is
written out."""

RAW_CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from moxflow.inventory import load_inventory
from moxflow.naming import snapshot_description, snapshot_name
from moxflow.snapshots import utc_now
from blocks.proxmox import proxmox_client
inv = load_inventory(sys.argv[1])
conc = int(sys.argv[2])
client = proxmox_client(inv, max_connections=conc + 2)
guests = [g for g in client.resources() if not g.template]
now = utc_now()
name, desc = snapshot_name("hourly", now), snapshot_description("hourly", now)
def one(g):
    client.wait_task(client.create_snapshot(g, name, desc), timeout=600, node=g.node)
    client.list_snapshots(g)
t0 = time.perf_counter()
with ThreadPoolExecutor(conc) as pool:
    list(pool.map(one, guests))
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "rows": len(guests), "ok": len(guests)}))
"""

CHILD = """
import json, sys, time
from flows._run import adhoc_settings
from flows.jobs.guest_snapshot import guest_snapshot
t0 = time.perf_counter()
with adhoc_settings():
    report = guest_snapshot(label="hourly", select="@all", concurrency=int(sys.argv[2]),
                            inventory=sys.argv[1], lock_timeout=5)
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "rows": len(report.rows),
                  "ok": sum(1 for r in report.rows if r.outcome.value == "ok")}))
"""


def run_child(
    inventory: Path, concurrency: int, env: dict[str, str], code: str = CHILD
) -> tuple[dict[str, Any], int]:
    """Run ``code`` in a fresh process; return its JSON line and its peak RSS in KiB."""
    return run_json_child(["-c", code, str(inventory), str(concurrency)], env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--guests-per-node", type=int, default=50)
    parser.add_argument("--concurrency", default="10,25,50")
    parser.add_argument("--snapshot-seconds", type=float, default=SNAPSHOT_SECONDS)
    args = parser.parse_args()
    seconds = args.snapshot_seconds
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="moxflow-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        print(
            "starting a Prefect server and a lab of "
            f"{args.nodes} nodes x {args.guests_per_node} guests ...",
            flush=True,
        )
        server = start_server(work / "prefect", env)
        lab = start_lab(
            work / "lab",
            nodes=args.nodes,
            guests_per_node=args.guests_per_node,
            snapshot_seconds=seconds,
            time_scale=1.0,
        )
        try:
            state = lab.state()
            guests = sum(1 for g in state["guests"].values() if not g.get("template"))
            print(f"{guests} guests to snapshot (templates skipped), {seconds:g} s per snapshot\n")
            print(
                f"{'conc':>5} {'wall s':>8} {'ideal s':>8} {'ratio':>6} {'seq s':>7} "
                f"{'ovh/guest ms':>12} {'peak MB':>8} {'ok':>5} {'busy':>5}"
            )
            for c in levels:
                lab.reset()
                busy = busy_refusals(work / "prefect")
                t0 = time.perf_counter()
                result, rss_kib = run_child(work / "lab" / "inventory.toml", c, env)
                busy = busy_refusals(work / "prefect") - busy
                process_s = time.perf_counter() - t0
                wall = result["seconds"]
                ideal = math.ceil(guests / c) * seconds
                seq = guests * seconds
                overhead_ms = (wall - ideal) / guests * 1000
                lab.reset()
                raw, _ = run_child(work / "lab" / "inventory.toml", c, env, RAW_CHILD)
                print(
                    f"{c:>5} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>6.2f} {seq:>7.1f} "
                    f"{overhead_ms:>12.2f} {rss_kib / 1024:>8.0f} {int(result['ok']):>5} {busy:>5}"
                    f"   (whole process {process_s:.1f} s; same API calls without Prefect: "
                    f"{raw['seconds']:.2f} s, ratio {raw['seconds'] / ideal:.2f})",
                    flush=True,
                )
            print("\ngoals: ratio <= 1.15, peak memory < 400 MB")
            print(
                "busy: requests the Prefect server refused with 503 because SQLite was busy; "
                "Prefect's client waits 2 s before each retry (moxflow's slot requests: 5 ms)"
            )
        finally:
            lab.stop()
            stop_server(server)


if __name__ == "__main__":
    main()
