"""Take a moxflow snapshot of every configured ZFS dataset, then prune by retention.

For each dataset in the inventory's [[zfs.datasets]] this takes
DATASET@moxflow-<label>-<UTC timestamp> (with -r where the dataset says recursive = true),
then removes moxflow's older snapshots *of that label* that the dataset's keep policy does not
keep. It never touches snapshots moxflow did not make, snapshots of another label, held
snapshots, or the one it just took; if the snapshot fails, nothing is pruned there. Datasets
are independent: one failing does not stop the others, but the run ends failed and says which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import EXIT_USAGE
from flows.params import ZfsSnapshotParams, flow_parameters, params_from_args
from flows.params import build_parser as params_parser


def build_parser() -> argparse.ArgumentParser:
    """The command line, from :class:`ZfsSnapshotParams`; fast, so is ``--help``."""
    return params_parser("python -m flows.zfs_snapshot", __doc__ or "", ZfsSnapshotParams)


if __name__ == "__main__":
    build_parser().parse_args()  # answers --help and usage errors before Prefect is imported

from zoneinfo import ZoneInfo  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.futures import PrefectFuture  # noqa: E402
from prefect.logging import get_run_logger  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows._run import bounded, finish, run_from_cli  # noqa: E402
from moxflow.errors import ConfigError  # noqa: E402
from moxflow.inventory import load_inventory  # noqa: E402
from moxflow.naming import snapshot_name  # noqa: E402
from moxflow.report import ReportRow, RunReport  # noqa: E402
from moxflow.snapshots import DatasetJob, plan_dataset_jobs, utc_now  # noqa: E402
from tasks.zfs import snapshot_dataset  # noqa: E402


@flow(
    name="zfs-snapshot",
    description="Snapshot the configured ZFS datasets and prune moxflow's older snapshots.",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    log_prints=True,
)
@flow_parameters(ZfsSnapshotParams)
def zfs_snapshot(**kwargs: Any) -> RunReport | State[Any]:
    """Snapshot and prune every configured dataset (or those named in ``only``)."""
    p = ZfsSnapshotParams(**kwargs)
    label, only, dry_run, inventory = p.label, p.only, p.dry_run, p.inventory
    logger = get_run_logger()
    inv = load_inventory(inventory)
    jobs = plan_dataset_jobs(inv, label, only or ())
    tz = ZoneInfo(inv.timezone)
    now = utc_now()
    snapname = snapshot_name(label, now)
    report = RunReport(job="zfs-snapshot", label=label, dry_run=dry_run)
    mode = "planning" if dry_run else "snapshotting"
    logger.info("%s %d dataset(s) as @%s", mode, len(jobs), snapname)

    def submit(job: DatasetJob) -> PrefectFuture[ReportRow]:
        return snapshot_dataset.submit(inv, job, label, snapname, now, tz, dry_run)

    for i, row in enumerate(bounded(submit, jobs, limit=16), start=1):
        logger.info("[%d/%d] %s: %s", i, len(jobs), row.target, row.line())
        report.add(row)
    return finish(report, artifact_key="zfs-snapshot-report", inv=inv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.zfs_snapshot``: validate the input, run the flow, print the report."""
    args = build_parser().parse_args(argv)
    try:
        a = params_from_args(ZfsSnapshotParams, args)
        inv = load_inventory(a.inventory)
        plan_dataset_jobs(inv, a.label, a.only or ())  # bad input fails here
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_from_cli(zfs_snapshot, **a.model_dump())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
