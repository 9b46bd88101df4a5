"""Time ``plan_prune`` on 100,000 items, one every 5 minutes: ``python benchmarks/prune.py``."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moxflow.retention import KeepPolicy, RetentionItem, plan_prune

COUNT = 100_000
RUNS = 5
GOAL_SECONDS = 0.5
POLICY = "keep-last=24,keep-hourly=48,keep-daily=14,keep-weekly=8,keep-monthly=12,keep-yearly=5"


def main() -> None:
    newest = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    items = [
        RetentionItem(f"snap-{i:06d}", newest - timedelta(minutes=5 * i), protected=i % 997 == 0)
        for i in range(COUNT)
    ]
    policy = KeepPolicy.parse(POLICY)
    tz = ZoneInfo("Europe/Berlin")
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        plan = plan_prune(items, policy, tz)
        best = min(best, time.perf_counter() - start)
    print(
        f"plan_prune {COUNT} items: {best:.3f} s (goal < {GOAL_SECONDS} s); "
        f"keep {len(plan.keep)}, remove {len(plan.remove)}, protected {len(plan.protected)}"
    )


if __name__ == "__main__":
    main()
