"""Wall time of an ad-hoc run: ``python -m flows.zfs_snapshot --dry-run`` against the lab.

Two cases, each from a fresh process as a person would type it (no PREFECT_API_URL):

- a local Prefect server is running (found through MOXFLOW_PREFECT_URL): goal < 3 s;
- no server at all (MOXFLOW_PREFECT_URL=off): a temporary server per run, goal < 8 s. Its
  first run also creates the SQLite database, so it is reported on its own.

Prints numbers, asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labsim.client import start_lab  # noqa: E402
from scripts.prefect_server import start_server, stop_server  # noqa: E402

RUNS = 5


def timed_run(inventory: Path, env: dict[str, str]) -> float:
    """Seconds for one ``python -m flows.zfs_snapshot --dry-run``; fails loudly if it fails."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "flows.zfs_snapshot", "--inventory", str(inventory), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"the run failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return elapsed


def report(label: str, times: list[float], goal: float) -> None:
    print(
        f"{label}: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} runs (goal < {goal:g} s)"
    )


def main() -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with tempfile.TemporaryDirectory(prefix="moxflow-adhoc-") as tmp:
        work = Path(tmp)
        lab = start_lab(work / "lab", time_scale=0.025)
        try:
            inventory = lab.dir / "inventory.toml"

            server_env = dict(base_env)
            server = start_server(work / "server", server_env)
            try:
                env = {**base_env, "MOXFLOW_PREFECT_URL": server_env["PREFECT_API_URL"]}
                env["PREFECT_HOME"] = str(work / "client-home")
                timed_run(inventory, env)  # warm the file cache
                report("with a local server", [timed_run(inventory, env) for _ in range(RUNS)], 3)
            finally:
                stop_server(server)

            env = {**base_env, "MOXFLOW_PREFECT_URL": "off"}
            env["PREFECT_HOME"] = str(work / "temporary-home")
            first = timed_run(inventory, env)
            print(f"without a server, first run (creates the database): {first:.2f} s")
            report("without a server", [timed_run(inventory, env) for _ in range(RUNS)], 8)
        finally:
            lab.stop()


if __name__ == "__main__":
    main()
