"""Health checks: HTTP from the controller (httpx), TCP ports, and commands on the host."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

import httpx

from moxflow.errors import MoxflowError
from moxflow.health import (
    HealthResult,
    all_healthy,
    describe,
    failure,
    judge_command,
    judge_http,
    judge_tcp,
)
from moxflow.inventory import HealthCheck
from moxflow.ssh import SshRunner


def check_once(check: HealthCheck, runner: SshRunner | None) -> HealthResult:
    """Run one check and judge what it saw (:mod:`moxflow.health`); never raises, the result
    says what went wrong."""
    name = describe(check)
    try:
        if check.http is not None:
            # trust_env=False: a proxy or CA bundle from the environment must not decide
            with httpx.Client(timeout=check.timeout, trust_env=False) as client:
                response = client.get(str(check.http))
            return judge_http(
                response.status_code,
                response.text,
                check.expect_status,
                check.expect_text,
                check=name,
            )
        if check.tcp is not None:
            try:
                socket.create_connection(check.tcp_target, timeout=check.timeout).close()
            except OSError as exc:
                return judge_tcp(False, f"{type(exc).__name__}: {exc}", check=name)
            return judge_tcp(True, check=name)
        if check.command is not None:
            if runner is None:
                return failure(name, "no connection to the host")
            result = runner.run(list(check.command), check=False, timeout=check.timeout)
            return judge_command(result.exit_code, result.stdout, result.stderr, check=name)
    except (httpx.HTTPError, OSError, MoxflowError) as exc:
        return failure(name, f"{type(exc).__name__}: {exc}")
    return failure(name, "check has nothing to check")


def wait_healthy(
    checks: Sequence[HealthCheck],
    runner: Callable[[], SshRunner | None],
    *,
    grace: float,
    interval: float = 0.5,
) -> tuple[bool, list[HealthResult]]:
    """Poll every check until all pass or ``grace`` seconds have passed (bounded)."""
    deadline = time.monotonic() + grace
    delay = min(interval, max(grace / 20, 0.05))
    while True:
        conn = runner() if any(c.command is not None for c in checks) else None
        results = [check_once(c, conn) for c in checks]
        if all_healthy(results):
            return True, results
        if time.monotonic() >= deadline:
            return False, results
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, interval * 4)
