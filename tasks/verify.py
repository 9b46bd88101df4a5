"""Health checks: HTTP from the controller (httpx), TCP ports, and commands on the host."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

import httpx

from moxflow.errors import MoxflowError
from moxflow.health import HealthResult, describe, judge_http
from moxflow.inventory import HealthCheck
from moxflow.ssh import SshRunner


def check_once(check: HealthCheck, runner: SshRunner | None) -> HealthResult:
    """Run one check; never raises, the result says what went wrong."""
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
            with socket.create_connection(check.tcp_target, timeout=check.timeout):
                return HealthResult(name, True, "port open")
        if check.command is not None:
            if runner is None:
                return HealthResult(name, False, "no connection to the host")
            result = runner.run(list(check.command), check=False, timeout=check.timeout)
            if result.exit_code == 0:
                return HealthResult(name, True, "exit 0")
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            return HealthResult(name, False, f"exit {result.exit_code} {tail[0]}".strip())
    except (httpx.HTTPError, OSError, MoxflowError) as exc:
        return HealthResult(name, False, f"{type(exc).__name__}: {exc}")
    return HealthResult(name, False, "check has nothing to check")


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
        if all(r.ok for r in results):
            return True, results
        if time.monotonic() >= deadline:
            return False, results
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, interval * 4)
