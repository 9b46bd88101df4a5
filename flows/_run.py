"""Running a flow from the command line: the Prefect server, quiet settings, the report."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)
from prefect.settings.legacy import Setting
from prefect.states import Failed

from flows._cli import EXIT_FAILED, EXIT_OK
from flows._server import find_local_server, server_answers
from moxflow.errors import MoxflowError, RunFailed
from moxflow.inventory import Inventory, load_inventory
from moxflow.report import RunReport
from tasks.notify import notify_run


class ExpectedFailureFilter(logging.Filter):
    """Drops the one record in which Prefect's engine calls a run with failed targets a crash.

    A job with failed targets ends in a Failed state carrying ``RunFailed``. The engine a
    process worker runs (``python -m prefect.engine``) asks for the run's result, which
    raises that exception again, and logs it as "Engine execution exited with unexpected
    exception" with a 40-line traceback, in the worker's output and the run's logs in the
    UI. The run's own "Finished in state Failed('2 target(s) failed: ...')" line and its
    report already say everything. Any other exception is logged as Prefect logs it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, RunFailed) and "unexpected exception" in record.getMessage())


class StepFailureTracebackFilter(logging.Filter):
    """Keeps Prefect's "Task run failed with exception: ..." line for a step that failed
    with a moxflow error (an unreachable host, a busy guest, a failed task: each says what
    happened and what to do), without the traceback under it. Any other exception keeps
    its traceback: that one is a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MoxflowError):
            record.exc_info = None
            record.exc_text = None
        return True


# every flow module imports this one, so the engine has loaded it before it runs the flow
logging.getLogger("prefect.flow_runs").addFilter(ExpectedFailureFilter())
logging.getLogger("prefect.task_runs").addFilter(StepFailureTracebackFilter())

_HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def finish(
    report: RunReport, artifact_key: str, inv: Inventory | None = None
) -> RunReport | State[Any]:
    """Publish the report as a Prefect table artifact; fail the run unless every target is OK.

    A target that failed, or that was busy (another run or operation held it: it was not
    done), fails the run. A failed run ends in a Failed state carrying ``RunFailed`` (with
    the report) rather than raising it, so that an expected outcome is not logged as a crash
    with a traceback; calling the flow still raises ``RunFailed``. The "run failed"
    automation notifies on that state (``deployments.notifications``); before that, a
    failed run is sent to the inventory's direct webhook when ``notifications.webhook`` is
    set (``inv``, else the inventory named by the flow's ``inventory`` parameter); a
    notification that cannot be sent is logged and changes nothing.
    """
    report.finish()
    logger = get_run_logger()
    create_table_artifact(
        key=artifact_key,
        table=report.table(),
        description=report.summary(),
    )
    logger.info(report.summary())
    if not report.ok:
        message = report.problem()
        _notify(report, inv)
        return Failed(message=message, data=RunFailed(message, report=report))
    return report


def run_id() -> str:
    """This flow run's id (what moxflow writes in the marks it leaves); empty outside a run."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def _notify(report: RunReport, inv: Inventory | None) -> None:
    """Send a run that is not OK to the direct webhook, if one is configured; never raises."""
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    logger = get_run_logger()
    if inv is None:
        params = flow_run.parameters
        if "inventory" not in params:
            return
        try:
            inv = load_inventory(params["inventory"])
        except MoxflowError as exc:
            logger.warning("notification not sent: %s", exc)
            return
    if inv.notifications.webhook is None:
        return
    ctx = FlowRunContext.get()
    url = url_for(ctx.flow_run) if ctx is not None and ctx.flow_run is not None else None
    notify_run(report, inv.notifications, inv.base_dir, run_url=url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def temporary_server() -> Iterator[str]:
    """Prefect's temporary server (SQLite in PREFECT_HOME) for one run; yields its API URL.

    The same server Prefect starts by itself without PREFECT_API_URL, but started without
    importing the server into this process (about 2 s), with its output (the SQLite
    "database is locked" tracebacks among it) in PREFECT_HOME/moxflow-temporary-server.log.
    """
    settings = get_current_settings()
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "moxflow-temporary-server.log"
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **settings.to_environment_variables(exclude_unset=True),
    }
    timeout = settings.server.ephemeral.startup_timeout_seconds
    with log_path.open("wb") as log:
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            url = f"http://127.0.0.1:{port}/api"
            argv = [
                *(sys.executable, "-m", "uvicorn", "--factory"),
                "prefect.server.api.server:create_app",
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--log-level", "error", "--lifespan", "on"),
            ]
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if server_answers(url, timeout=1.0):
                        yield url
                        return
                    time.sleep(0.05)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 3:  # uvicorn's "address already in use"
                break
    raise RuntimeError(f"the temporary Prefect server did not start; see {log_path}")


@contextmanager
def adhoc_settings() -> Iterator[None]:
    """Prefect settings that make a run from the shell fast and quiet.

    Without PREFECT_API_URL (environment or Prefect profile), a server already running on
    this machine is used when one answers ($MOXFLOW_PREFECT_URL, else 127.0.0.1:4200);
    otherwise a temporary one is started for this run. Ad-hoc runs send no heartbeats
    (joining the heartbeat thread costs about a second) unless a frequency is set
    explicitly.
    """
    updates: dict[Setting, Any] = {}
    if not any(os.environ.get(name) for name in _HEARTBEAT_ENV):
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with ExitStack() as stack:
        if get_current_settings().api.url is None:
            url = find_local_server()
            if url is None:
                print(
                    "note: no Prefect server found, starting a temporary one (slow); "
                    "`prefect server start` or PREFECT_API_URL makes runs fast",
                    file=sys.stderr,
                )
                url = stack.enter_context(temporary_server())
            updates[PREFECT_API_URL] = url
        stack.enter_context(temporary_settings(updates=updates))
        # Send what is still queued while these settings hold: left to the exit handlers,
        # the events would go to no API URL, and Prefect would start a temporary server
        # for them after the report.
        stack.callback(_drain)
        yield


def _drain() -> None:
    """Send the logs and events still queued to the API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def run_from_cli(flow_call: Callable[..., Any], **params: Any) -> int:
    """Run a flow, print its report on the terminal, and return the exit status."""
    with adhoc_settings():
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
