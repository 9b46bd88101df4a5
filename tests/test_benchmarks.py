"""Every benchmark of `make bench` still runs to the end, at a tiny size: a benchmark that
breaks (a flow that fails, a server it does not reach) would otherwise go unseen until
someone wants its numbers. Only that each one ran is checked, never a time: the numbers are
for `make bench` on a quiet machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNS: dict[str, tuple[list[str], str]] = {
    # benchmark: (its tiny arguments, what its output says when every target was done)
    "nixos_fleet": (
        ["--hosts", "3", "--max-parallel", "2", "--time-scale", "0.25"],
        r"hosts 3, max-parallel 2, waves \[1\] \[2\], ok 3\n",
    ),
    "guest_snapshot": (
        [
            "--nodes",
            "2",
            "--guests-per-node",
            "3",
            "--concurrency",
            "2",
            "--snapshot-seconds",
            "0.1",
        ],
        r"\n +2 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +\d+ +6 +\d+ ",
    ),
    "backup_window": (
        ["--nodes", "2", "--guests-per-node", "2", "--storages", "nas-backup", "--seconds", "3"],
        r"== nas-backup .*: 4 ok, \d+ skipped \(templates\), 0 other\n",
    ),
    "proxmox_roll": (
        ["--nodes", "3", "--guests-per-node", "1", "--time-scale", "0.05"],
        r"roll Completed:\n(   pve\d: ok: .*\n){3}",
    ),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_the_benchmark_runs_to_the_end(name: str) -> None:
    args, done = RUNS[name]
    run = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert re.search(done, run.stdout), output[-4000:]


def test_make_bench_runs_every_benchmark() -> None:
    """The table above covers every benchmark `make bench` runs that drives a flow."""
    makefile = (ROOT / "Makefile").read_text()
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"benchmarks/(\w+)\.py", bench))
    assert set(RUNS) <= listed
    assert listed - set(RUNS) == {"prune", "help_time", "adhoc", "task_overhead"}
