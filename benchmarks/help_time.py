"""How long `python -m flows.<job> --help` takes (goal: under 1 s). Prints, asserts nothing."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    for module in ("flows.zfs_snapshot", "flows.guest_snapshot"):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", module, "--help"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t0)
        print(
            f"python -m {module} --help: median {statistics.median(times):.3f} s, "
            f"max {max(times):.3f} s over {len(times)} runs (goal < 1 s)"
        )


if __name__ == "__main__":
    main()
