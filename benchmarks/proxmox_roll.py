"""proxmox_update over a generated 5-node cluster with ``--guests migrate``: the makespan of
the roll against the sum of its physical steps.

The lab (``--nodes`` nodes x ``--guests-per-node`` guests, every node with a new kernel to
install) is rolled once by the proxmox_update flow in a fresh process against a local
Prefect server, as `python -m flows.proxmox_update` runs it (``flows._run.adhoc_settings``).
The physical steps are what the lab itself takes, from its durations (before the time
scale): each node's ``aptupdate`` task, its ``dist-upgrade``, its reboot (the 2 s delay, then
down until back), each migration (away and back, counted from the API requests) and each HA
maintenance request the CRM applies. It prints the makespan and that sum in
simulated seconds (real seconds / time scale), and moxflow's overhead per node: (makespan -
physical sum) / nodes, the time spent on pre-flight, polling, verification and Prefect's
bookkeeping. Nothing is asserted.

    python benchmarks/proxmox_roll.py [--nodes 5] [--guests-per-node 4] [--time-scale 0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labsim.client import LabClient, start_lab  # noqa: E402
from labsim.pve.apt.system import DURATIONS  # noqa: E402
from scripts.child import run_json_child  # noqa: E402
from scripts.prefect_server import start_server, stop_server  # noqa: E402

CHILD = """
import json, sys, time
from flows._run import adhoc_settings
from flows.jobs.proxmox_update import proxmox_update
t0 = time.perf_counter()
with adhoc_settings():
    report = proxmox_update(guests="migrate", inventory=sys.argv[1], return_state=True)
elapsed = time.perf_counter() - t0
result = report.result(raise_on_failure=False)
rows = getattr(result, "rows", None) or getattr(getattr(result, "report", None), "rows", [])
print(json.dumps({"seconds": elapsed, "ok": report.is_completed(),
                  "rows": [f"{r.target}: {r.line()}" for r in rows]}))
"""


def run_child(inventory: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the roll in a fresh process; its JSON line."""
    return run_json_child(["-c", CHILD, str(inventory)], env)[0]


def physical(
    before: dict[str, Any], state: dict[str, Any], requests: list[dict[str, Any]]
) -> dict[str, float]:
    """Simulated seconds of each kind of physical step the roll made the lab take."""
    nodes = [h for h, v in state["hosts"].items() if v.get("apt")]
    upgraded = sum(
        1
        for n in nodes
        if state["hosts"][n]["apt"]["installed"] != before["hosts"][n]["apt"]["installed"]
    )
    reboots = sum(int(state["hosts"][n]["apt"]["reboots"]) for n in nodes)
    refreshes = sum(
        1 for r in requests if r["method"] == "POST" and r["path"].endswith("/apt/update")
    )
    migrations = sum(
        1 for r in requests if r["method"] == "POST" and r["path"].endswith("/migrate")
    )
    maintenance = len(state.get("ha", {}).get("requests", []))
    return {
        "aptupdate": refreshes * DURATIONS["aptupdate"],
        "upgrade": upgraded * DURATIONS["upgrade"],
        "reboot": reboots * (DURATIONS["reboot_delay"] + DURATIONS["reboot"]),
        "migrations": migrations * DURATIONS["migrate"],
        "maintenance": maintenance * DURATIONS["maintenance"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--guests-per-node", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moxflow-roll-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        print(
            f"starting a Prefect server and a lab of {args.nodes} nodes x "
            f"{args.guests_per_node} guests (time scale {args.time_scale:g}) ...",
            flush=True,
        )
        server = start_server(work / "prefect", env)
        lab: LabClient = start_lab(
            work / "lab",
            nodes=args.nodes,
            guests_per_node=args.guests_per_node,
            time_scale=args.time_scale,
        )
        try:
            lab.clear_api_requests()
            before = lab.state()
            result = run_child(lab.inventory, env)
            steps = physical(before, lab.state(), lab.api_requests())
        finally:
            lab.stop()
            stop_server(server)
    makespan = result["seconds"] / args.time_scale
    total = sum(steps.values())
    print(f"roll {'Completed' if result['ok'] else 'NOT completed'}:")
    for line in result["rows"]:
        print(f"   {line}")
    print(f"makespan          {makespan:8.1f} s  ({result['seconds']:.1f} s real)")
    print(f"physical steps    {total:8.1f} s  (simulated; the lab's durations)")
    for kind, seconds in steps.items():
        print(f"  {kind:<15} {seconds:8.1f} s")
    print(
        f"overhead per node {(makespan - total) / args.nodes:8.1f} s  simulated "
        f"({(makespan - total) * args.time_scale / args.nodes:.2f} s real)"
    )


if __name__ == "__main__":
    main()
