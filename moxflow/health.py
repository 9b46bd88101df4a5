"""Health checks after a NixOS switch, without I/O: what a check is called and how an answer
is judged.

The checks themselves (an HTTP request with httpx, a TCP connect, a command over SSH) run in
``tasks/verify.py``; they hand what they saw to the ``judge_*`` functions here and get back a
:class:`HealthResult` that the verdict (:func:`moxflow.nixos.evaluate`) and the report use.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from moxflow.inventory import HealthCheck

__all__ = [
    "HealthResult",
    "all_healthy",
    "describe",
    "failure",
    "judge_command",
    "judge_http",
    "judge_tcp",
]

EXCERPT_MAX = 80
"""How many characters of a body or of stderr a result's detail quotes."""


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one health check: ``check`` says which (see :func:`describe`)."""

    check: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {'ok' if self.ok else 'FAILED'} ({self.detail})"


def _excerpt(text: str) -> str:
    """A short, escaped quote of remote text (bodies and stderr may hold anything)."""
    flat = " ".join(text.split())
    if len(flat) > EXCERPT_MAX:
        flat = flat[: EXCERPT_MAX - 3] + "..."
    return ascii(flat)


def describe(check: HealthCheck) -> str:
    """One line naming a check, e.g. ``GET http://10.0.0.5/health expecting 200 and 'ok'``."""
    if check.http is not None:
        text = f"GET {check.http} expecting {check.expect_status}"
        if check.expect_text is not None:
            text += f" and {check.expect_text!r}"
        return text
    if check.tcp is not None:
        return f"TCP connect to {check.tcp}"
    if check.command is not None:
        return f"on the host: {shlex.join(check.command)}"
    return "empty check"  # pragma: no cover - the inventory refuses checks without a kind


def judge_http(
    status: int,
    body: str,
    expect_status: int = 200,
    expect_text: str | None = None,
    *,
    check: str = "http",
) -> HealthResult:
    """Healthy when the status is ``expect_status`` and the body contains ``expect_text``."""
    if status != expect_status:
        detail = f"HTTP {status}, expected {expect_status}"
        if body.strip():
            detail += f"; body {_excerpt(body)}"
        return HealthResult(check, False, detail)
    if expect_text is not None and expect_text not in body:
        return HealthResult(
            check,
            False,
            f"HTTP {status} but the body lacks {expect_text!r}; body {_excerpt(body)}",
        )
    detail = f"HTTP {status}"
    if expect_text is not None:
        detail += f", body contains {expect_text!r}"
    return HealthResult(check, True, detail)


def judge_tcp(connected: bool, error: str | None = None, *, check: str = "tcp") -> HealthResult:
    """Healthy when the connection was accepted; ``error`` says why it was not."""
    if connected:
        return HealthResult(check, True, "connection accepted")
    return HealthResult(check, False, f"connection failed: {error or 'no answer'}")


def judge_command(
    exit_code: int, stdout: str = "", stderr: str = "", *, check: str = "command"
) -> HealthResult:
    """Healthy when the command exited 0; the detail quotes its output briefly."""
    said = stderr.strip() or stdout.strip()
    detail = f"exit {exit_code}"
    if said:
        detail += f": {_excerpt(said)}"
    return HealthResult(check, exit_code == 0, detail)


def failure(check: str, error: str) -> HealthResult:
    """A check that could not be carried out (refused, timed out, host unreachable)."""
    return HealthResult(check, False, error)


def all_healthy(results: Iterable[HealthResult]) -> bool:
    """Whether every result is healthy (no results: healthy)."""
    return all(r.ok for r in results)
