"""vzdump_backup over a generated cluster: the backup window against the physical lower bound.

A lab of 3 nodes x 40 guests (disks of 8-32 GiB, archives of 15-35 % of the disk, so about
1-11 GiB each; templates are skipped) backed up twice with the vzdump_backup flow
(offsite copy off), each in a fresh process against a local Prefect server, as
`python -m flows.vzdump_backup` runs it (``flows._run.adhoc_settings``):

- to ``nas-backup``, the one shared storage (default 200 MiB/s, shared by every dump writing
  to it): bound by its bandwidth;
- to ``local``, each node's own storage (default 400 MiB/s per node): bound by each node's
  serial sum of dump times (vzdump holds a per-node lock).

For each it prints the makespan of the flow, the physical lower bound (the largest of: the
bytes written to each storage over its bandwidth, and each node's serial sum of dump times
alone on its storage), their ratio (goal <= 1.05), the makespan of Proxmox's own job shape
(one vzdump job per node listing all its guests, serial per node, all nodes in parallel),
computed by a fluid simulation of the same archive sizes and bandwidths as the lab uses, API
requests per guest, vzdump status polls per task, how late the flow noticed each dump had
ended (from the lab's end of the task, to the microsecond, to the poll that saw it stopped),
also as a share of the dump's duration, and the peak memory of the flow process. The lab's
time scale is chosen so that the lower bound takes --seconds of real time. Nothing is asserted.

    python benchmarks/backup_window.py [--nodes 3] [--guests-per-node 40] [--seconds 90]
        [--nas-bandwidth 200] [--local-bandwidth 400] [--storages nas-backup,local]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labsim.client import LabClient, start_lab  # noqa: E402
from scripts.child import run_json_child  # noqa: E402
from scripts.prefect_server import busy_refusals, start_server, stop_server  # noqa: E402

MiB = 1024**2
GiB = 1024**3

CHILD = """
import json, sys, time
from flows._run import adhoc_settings
from flows.jobs.vzdump_backup import vzdump_backup
w0 = time.time()
t0 = time.perf_counter()
with adhoc_settings():
    report = vzdump_backup(storage=sys.argv[2], offsite=False, inventory=sys.argv[1])
elapsed = time.perf_counter() - t0
rows = [r for r in report.rows if not r.target.endswith(" coverage")]
print(json.dumps({"seconds": elapsed, "start": w0, "end": time.time(), "rows": len(rows),
                  "skipped": sum(1 for r in rows if r.outcome.value == "skipped"),
                  "ok": sum(1 for r in rows if r.outcome.value == "ok"),
                  "failed": [r.line() for r in report.rows if r.outcome.value == "failed"][:5]}))
"""

UPID_RE = re.compile(r"/nodes/([^/]+)/tasks/(UPID:[^/]+)/status$")


def archive_size(vmid: int, maxdisk: int) -> int:
    """labsim.pve.topology.backup_size: the simulated size of a guest's zstd archive."""
    return int(maxdisk * (0.15 + (vmid % 5) * 0.05)) + vmid * 4096


def fluid_makespan(
    queues: dict[str, list[int]], pool_of: dict[str, str], bandwidth: dict[str, float]
) -> float:
    """Seconds until every node has written its queue of archives (bytes) one after the
    other, all nodes at once, each pool's bandwidth shared equally among the dumps writing
    to it (how the lab and a real NFS server share it)."""
    left = {n: list(q) for n, q in queues.items() if q}
    current = {n: float(q.pop(0)) for n, q in left.items()}
    t = 0.0
    while current:
        writers: dict[str, int] = defaultdict(int)
        for n in current:
            writers[pool_of[n]] += 1
        rate = {n: bandwidth[pool_of[n]] / writers[pool_of[n]] for n in current}
        step = min(current[n] / rate[n] for n in current)
        t += step
        for n in list(current):
            current[n] -= rate[n] * step
            if current[n] <= 1e-6:
                if left[n]:
                    current[n] = float(left[n].pop(0))
                else:
                    del current[n]
    return t


def run_child(inventory: Path, storage: str, env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Run the flow in a fresh process; its JSON line and its peak RSS in KiB."""
    return run_json_child(["-c", CHILD, str(inventory), storage], env)


def poll_stats(
    requests: list[dict[str, Any]], ended: dict[str, float]
) -> tuple[int, list[int], list[float], list[float]]:
    """vzdump tasks started, status polls per task, and per task how late its end was
    noticed: from the moment the lab ended it (``ended``, wall clock, to the microsecond) to
    the poll that saw it stopped (the last one), in seconds and as a share of the task's
    duration (from its POST to its end)."""
    polls: dict[str, list[float]] = defaultdict(list)
    posts: dict[str, list[float]] = defaultdict(list)
    for r in requests:
        if r["method"] == "POST" and r["path"].endswith("/vzdump"):
            posts[str(r.get("params", {}).get("vmid"))].append(r["time"])
        m = UPID_RE.search(r["path"])
        if m and r["method"] == "GET" and ":vzdump:" in m.group(2):
            polls[m.group(2)].append(r["time"])
    counts, late, shares = [], [], []
    for upid, times in polls.items():
        times.sort()
        counts.append(len(times))
        end = ended.get(upid)
        if end is None:
            continue
        vmid = upid.split(":")[6]
        started = max((t for t in posts.get(vmid, []) if t <= times[0]), default=times[0])
        lateness = max(0.0, times[-1] - end)
        late.append(lateness)
        shares.append(lateness / max(1e-9, end - started))
    return len(polls), counts, late, shares


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--guests-per-node", type=int, default=40)
    parser.add_argument(
        "--seconds", type=float, default=90.0, help="real seconds of the lower bound per run"
    )
    parser.add_argument("--nas-bandwidth", type=float, default=200.0, metavar="MIB_S")
    parser.add_argument("--local-bandwidth", type=float, default=400.0, metavar="MIB_S")
    parser.add_argument("--storages", default="nas-backup,local")
    args = parser.parse_args()
    storages = [s for s in args.storages.split(",") if s]

    with tempfile.TemporaryDirectory(prefix="moxflow-backup-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        print(
            "starting a Prefect server and a lab of "
            f"{args.nodes} nodes x {args.guests_per_node} guests ...",
            flush=True,
        )
        server = start_server(work / "prefect", env)
        lab: LabClient = start_lab(
            work / "lab", nodes=args.nodes, guests_per_node=args.guests_per_node
        )
        try:
            state = lab.state()
            guests = sorted(
                (g for g in state["guests"].values() if not g.get("template")),
                key=lambda g: int(g["vmid"]),
            )
            queues: dict[str, list[int]] = defaultdict(list)
            for g in guests:
                queues[g["node"]].append(archive_size(int(g["vmid"]), int(g["maxdisk"])))
            sizes = [s for q in queues.values() for s in q]
            print(
                f"{len(guests)} guests (templates skipped), archives "
                f"{min(sizes) / GiB:.1f}-{max(sizes) / GiB:.1f} GiB, "
                f"{sum(sizes) / GiB:.0f} GiB in all; times below are simulated seconds "
                "(real seconds / time scale)\n",
                flush=True,
            )
            for storage in storages:
                shared = bool(state["storages"][storage]["shared"])
                bw = (args.nas_bandwidth if shared else args.local_bandwidth) * MiB
                pool_of = {n: storage if shared else f"{storage}/{n}" for n in queues}
                bandwidth = {p: bw for p in pool_of.values()}
                per_pool: dict[str, int] = defaultdict(int)
                for n, q in queues.items():
                    per_pool[pool_of[n]] += sum(q)
                storage_bound = max(b / bandwidth[p] for p, b in per_pool.items())
                node_bound = max(sum(q) / bandwidth[pool_of[n]] for n, q in queues.items())
                bound = max(storage_bound, node_bound)
                proxmox = fluid_makespan(queues, pool_of, bandwidth)
                scale = args.seconds / bound

                lab.reset()
                lab.set_time_scale(scale)
                lab.set_storage(storage, bandwidth=bw, total=100 * 1024 * GiB, used=0)
                lab.clear_api_requests()
                busy = busy_refusals(work / "prefect")
                result, rss_kib = run_child(lab.inventory, storage, env)
                busy = busy_refusals(work / "prefect") - busy
                requests = lab.api_requests()
                final = lab.state()
                after = final["storages"][storage]["archives"]
                ended = {
                    t["upid"]: float(t["ended"])
                    for t in final["tasks"]
                    if t["type"] == "vzdump" and t.get("ended") is not None
                }
                made = sorted(int(a["size"]) for a in after)
                if made != sorted(sizes):
                    print(f"  (note: the lab wrote {len(made)} archives of other sizes)")
                makespan = result["seconds"] / scale
                tasks, polls, gaps, shares = poll_stats(requests, ended)
                print(
                    f"== {storage} ({'shared' if shared else 'per node'}, "
                    f"{bw / MiB:g} MiB/s), time scale {scale:.4g}: "
                    f"{result['ok']} ok, {result['skipped']} skipped (templates), "
                    f"{result['rows'] - result['ok'] - result['skipped']} other"
                )
                for line in result["failed"]:
                    print(f"   failed: {line}")
                print(f"makespan          {makespan:8.1f} s  ({result['seconds']:.1f} s real)")
                print(
                    f"lower bound       {bound:8.1f} s  (storage bytes/bandwidth "
                    f"{storage_bound:.1f} s, slowest node's serial sum {node_bound:.1f} s)"
                )
                print(f"ratio             {makespan / bound:8.3f}    (goal <= 1.05)")
                print(
                    f"Prefect busy      {busy:8d}    (requests refused with 503, SQLite busy; "
                    "moxflow's slot requests asked again after 5 ms, Prefect's own after 2 s)"
                )
                print(
                    f"Proxmox job shape {proxmox:8.1f} s  (one vzdump job per node, "
                    f"ratio {proxmox / bound:.3f}; moxflow / Proxmox {makespan / proxmox:.3f})"
                )
                print(
                    f"API requests      {len(requests) / len(guests):8.1f} per guest "
                    f"({len(requests)} in all)"
                )
                if polls:
                    print(
                        f"status polls      {statistics.mean(polls):8.1f} per vzdump task "
                        f"(max {max(polls)}, {tasks} tasks; goal <= 25)"
                    )
                if shares:
                    print(
                        f"end noticed after {statistics.median(gaps):.3f} s real "
                        f"median, {max(gaps):.3f} s max "
                        f"({statistics.median(shares) * 100:.1f} % / "
                        f"{max(shares) * 100:.1f} % of the dump; goal 5 %, at least 1 s)"
                    )
                    # 1 simulated second is ``scale`` real seconds
                    within = sum(
                        1 for g, sh in zip(gaps, shares, strict=True) if sh <= 0.05 or g <= scale
                    )
                    over25 = sum(1 for n in polls if n > 25)
                    print(
                        f"within the goal    {within / len(gaps) * 100:5.1f} % of the tasks "
                        f"(5 % or 1 simulated s); {over25} task(s) polled more than 25 times"
                    )
                dumps = [r["time"] for r in requests if r["path"].endswith("/vzdump")]
                status = [r["time"] for r in requests if UPID_RE.search(r["path"])]
                if dumps and status:
                    head = min(dumps) - result["start"]
                    tail = result["end"] - max(status)
                    gap = (result["seconds"] - head - tail - node_bound * scale) / max(
                        len(q) for q in queues.values()
                    )
                    print(
                        f"moxflow's own time {head:.2f} s real before the first vzdump, "
                        f"{tail:.2f} s after the last one ended"
                        + (f", {gap * 1000:.0f} ms between dumps on a node" if not shared else "")
                    )
                print(f"peak memory       {rss_kib / 1024:8.0f} MB (flow process)\n", flush=True)
        finally:
            lab.stop()
            stop_server(server)


if __name__ == "__main__":
    main()
