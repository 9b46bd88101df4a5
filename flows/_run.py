"""Running a flow from the command line and fanning tasks out with a bound."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger

from flows._cli import EXIT_FAILED, EXIT_OK
from moxflow.errors import MoxflowError, RunFailed
from moxflow.report import ReportRow, RunReport

T = TypeVar("T")


def bounded(
    submit: Callable[[T], PrefectFuture[ReportRow]], items: Iterable[T], limit: int
) -> Iterator[ReportRow]:
    """Submit one task per item with at most ``limit`` in flight; yield rows as they finish."""
    pending: list[PrefectFuture[ReportRow]] = []
    for item in items:
        while len(pending) >= max(1, limit):
            done: PrefectFuture[ReportRow] = next(as_completed(pending))
            pending.remove(done)
            yield done.result()
        pending.append(submit(item))
    fut: PrefectFuture[ReportRow]
    for fut in as_completed(pending):
        yield fut.result()


def finish(report: RunReport, artifact_key: str) -> RunReport:
    """Publish the report as a Prefect table artifact; fail the run if any target failed."""
    report.finish()
    logger = get_run_logger()
    create_table_artifact(
        key=artifact_key,
        table=report.table(),
        description=report.summary(),
    )
    logger.info(report.summary())
    if not report.ok:
        failed = ", ".join(r.target for r in report.failed_rows)
        raise RunFailed(f"{len(report.failed_rows)} target(s) failed: {failed}", report=report)
    return report


def run_from_cli(flow_call: Callable[..., Any], **params: Any) -> int:
    """Run a flow, print its report on the terminal, and return the exit status."""
    state = flow_call(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    report = result.report if isinstance(result, RunFailed) else result
    if isinstance(report, RunReport):
        print()
        print(report.to_text(), end="")
    elif isinstance(result, MoxflowError):
        print(f"error: {result}", file=sys.stderr)
    elif isinstance(result, BaseException):
        print(f"error: {type(result).__name__}: {result}", file=sys.stderr)
    return EXIT_OK if state.is_completed() else EXIT_FAILED
