"""Prefect's overhead per task run and per subflow run, for tasks that do nothing.

In a fresh process against a local Prefect server (SQLite), one flow per mode calls --tasks
(default 200) trivial step tasks declared with moxflow's ``@step`` (never cached, retried on
transient errors, as every moxflow step is):

- baseline: the same flow body with plain function calls instead of tasks;
- sequential: the tasks called one after the other, as nixos_update's per-host subflow
  chains its steps;
- submitted: the tasks ``.submit()``ted to a ThreadPoolTaskRunner (--workers, default 16)
  and waited for, as guest_snapshot fans out over guests and nixos_update's pre-flight
  over hosts;
- subflows: --subflows (default 20) subflow runs one after the other, each running one
  task, as nixos_update runs one subflow per host.

Each mode runs --repeats times (default 1, to stay near a minute; the median is reported),
after a warm-up run of each (the first flow run of the process, which pays for imports and
connections, is reported on its own). Before the next run, the logs and events still queued
are sent and the server is given time to record every task run as Completed (it takes in
events after answering them), so that no run pays for the one before. Prints, per mode:
seconds of the flow call; Prefect's overhead per task run, (mode - baseline) / tasks, or per
subflow run (also without its task); the seconds of the drain and of the server's catch-up,
and the overhead per run counted up to then; the peak RSS of the process. Flow runs send no
heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=None, as flows._run.adhoc_settings and
nixos_update's subflows set it: joining the heartbeat thread costs up to a second per flow
run). Goal: Prefect's cost per step is small next to the step's own work (an SSH command
or a Proxmox API call: tens of milliseconds to minutes), and its cost per subflow run small
next to a host's update (minutes). Nothing is asserted.

    python benchmarks/task_overhead.py [--tasks 200] [--subflows 20] [--workers 16]
        [--repeats 1] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.child import run_json_child  # noqa: E402
from scripts.prefect_server import start_server, stop_server  # noqa: E402

MODES = ("baseline", "sequential", "submitted", "subflows")
HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """In the fresh process: run every mode, return the seconds measured."""
    from prefect import Flow, flow
    from prefect.events.worker import EventsWorker
    from prefect.futures import wait
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks._retry import step

    @step("bench-noop", "noop {i}")
    def noop(i: int) -> int:
        return i

    def plain(i: int) -> int:
        return i

    @flow(name="bench-baseline")
    def baseline(n: int) -> int:
        return sum(plain(i) for i in range(n))

    @flow(name="bench-sequential")
    def sequential(n: int) -> int:
        return sum(noop(i) for i in range(n))

    @flow(
        name="bench-submitted",
        task_runner=ThreadPoolTaskRunner(max_workers=args.workers),  # type: ignore[arg-type]
    )
    def submitted(n: int) -> int:
        futures = [noop.submit(i) for i in range(n)]
        wait(futures)
        return sum(f.result() for f in futures)

    @flow(name="bench-host", flow_run_name="host {i}")
    def host(i: int) -> int:
        return noop(i)

    @flow(name="bench-subflows")
    def subflows(m: int) -> int:
        return sum(host(i) for i in range(m))

    def settle(expected: int) -> tuple[float, float]:
        """Seconds until the logs and events still queued were sent, and then until the
        server has recorded ``expected`` completed task runs in all (it takes in events
        after answering them), so that no run pays for the one before."""
        t0 = time.perf_counter()
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        t1 = time.perf_counter()
        while completed_task_runs() < expected and time.perf_counter() - t1 < 60:
            time.sleep(0.05)
        return t1 - t0, time.perf_counter() - t1

    runs: dict[str, tuple[Flow[[int], int], int]] = {
        "baseline": (baseline, args.tasks),
        "sequential": (sequential, args.tasks),
        "submitted": (submitted, args.tasks),
        "subflows": (subflows, args.subflows),
    }

    def task_runs(mode: str, n: int) -> int:
        """Task runs the server records for a run of ``mode``: a subflow run has one of
        its own too, in its parent flow run, besides its task's."""
        return {"baseline": 0, "subflows": 2 * n}.get(mode, n)

    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    drains: dict[str, list[float]] = {m: [] for m in MODES}
    catchups: dict[str, list[float]] = {m: [] for m in MODES}
    expected = 0
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        heartbeat = get_current_settings().flows.heartbeat_frequency
        t0 = time.perf_counter()
        baseline(1)
        first = time.perf_counter() - t0
        settle(expected)
        for mode, (fn, n) in runs.items():  # warm: each flow's and the task's first run
            fn(min(n, 2))
            expected += task_runs(mode, min(n, 2))
            settle(expected)
        for _ in range(args.repeats):  # interleaved, so that a drift hits every mode alike
            for mode, (fn, n) in runs.items():
                t0 = time.perf_counter()
                fn(n)
                seconds[mode].append(time.perf_counter() - t0)
                expected += task_runs(mode, n)
                drain_s, catchup_s = settle(expected)
                drains[mode].append(drain_s)
                catchups[mode].append(catchup_s)
    recorded = completed_task_runs()
    return {
        "seconds": seconds,
        "drains": drains,
        "catchups": catchups,
        "first": first,
        "heartbeat": heartbeat,
        "recorded": recorded,
        "expected": expected,
    }


def completed_task_runs() -> int:
    """How many task runs the server (PREFECT_API_URL) has recorded as Completed."""
    body = {"task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    request = urllib.request.Request(
        os.environ["PREFECT_API_URL"] + "/task_runs/count",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(json.loads(r.read()))


def run_child(env: dict[str, str], log_path: Path) -> tuple[dict[str, Any], int]:
    """Run this file with ``--child`` and the same options in a fresh process, its logs to
    ``log_path``; return its JSON line and its peak RSS in KiB."""
    return run_json_child([__file__, "--child", *sys.argv[1:]], env, log_path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200, help="task runs per flow")
    parser.add_argument("--subflows", type=int, default=20, help="subflow runs per flow")
    parser.add_argument("--workers", type=int, default=16, help="ThreadPoolTaskRunner size")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode")
    parser.add_argument("--log-level", default="INFO", help="PREFECT_LOGGING_LEVEL")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="moxflow-overhead-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in HEARTBEAT_ENV}
        env["PREFECT_LOGGING_LEVEL"] = args.log_level
        print("starting a Prefect server (SQLite) ...", flush=True)
        server = start_server(Path(tmp) / "prefect", env)
        try:
            t0 = time.perf_counter()
            result, rss_kib = run_child(env, Path(tmp) / "child.log")
            process_s = time.perf_counter() - t0
        finally:
            stop_server(server)

    runs = {"baseline": args.tasks, "sequential": args.tasks, "submitted": args.tasks}
    runs["subflows"] = args.subflows
    flow_s = {m: statistics.median(result["seconds"][m]) for m in MODES}
    drain_s = {m: statistics.median(result["drains"][m]) for m in MODES}
    server_s = {m: statistics.median(result["catchups"][m]) for m in MODES}
    end_s = {m: flow_s[m] + drain_s[m] + server_s[m] for m in MODES}
    client_ms = {m: (flow_s[m] - flow_s["baseline"]) / runs[m] * 1000 for m in MODES}
    end_ms = {m: (end_s[m] - end_s["baseline"]) / runs[m] * 1000 for m in MODES}
    of = f"median of {args.repeats} runs" if args.repeats > 1 else "one run"
    print(
        f"{args.tasks} no-op @step tasks per flow, {args.subflows} subflows of one task each, "
        f"{args.workers} workers, {of} of each mode; heartbeats off "
        f"(PREFECT_FLOWS_HEARTBEAT_FREQUENCY={result['heartbeat']}), "
        f"log level {args.log_level}\n"
    )
    print(
        f"{'mode':<11} {'runs':>5} {'flow s':>7} {'ms/run':>7} "
        f"{'drain s':>8} {'server s':>9} {'recorded ms/run':>16}"
    )
    for m in MODES:
        per = ("-", "-") if m == "baseline" else (f"{client_ms[m]:.1f}", f"{end_ms[m]:.1f}")
        spread = result["seconds"][m]
        print(
            f"{m:<11} {runs[m]:>5} {flow_s[m]:>7.2f} {per[0]:>7} "
            f"{drain_s[m]:>8.2f} {server_s[m]:>9.2f} {per[1]:>16}"
            + (f"   flow s {min(spread):.2f}-{max(spread):.2f}" if args.repeats > 1 else "")
        )
    print(
        "\nms/run: Prefect's overhead per task run (per subflow run for subflows), "
        "(flow s - baseline flow s) / runs; drain s: sending the logs and events still "
        "queued when the flow returned; server s: then until the server had recorded every "
        "task run as Completed; recorded ms/run: the same as ms/run, up to then"
    )
    print(
        f"one subflow run without its task: {client_ms['subflows'] - client_ms['sequential']:.1f}"
        f" ms; the first flow run of the process (cold): {result['first']:.2f} s; "
        f"task runs recorded: {result['recorded']} of {result['expected']}"
    )
    print(f"peak RSS of the process: {rss_kib / 1024:.0f} MB; whole process {process_s:.1f} s")


if __name__ == "__main__":
    main()
