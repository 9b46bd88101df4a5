"""Prefect's retries for moxflow's steps: what is worth another try, and how often.

A step task is declared with ``@step(name, run_name)`` (``retry_condition_fn=transient``,
the defaults of ``[retries]``), and a flow submits it as ``tuned(task, inv)``: the same task
with ``retries`` and ``retry_delay_seconds`` from the inventory's ``[retries]``. Prefect retries
it (a retrying task run in the UI) when, and only when, it failed with an error
``moxflow.errors`` marks transient (an SSH connection dropped or refused, the Proxmox API
unavailable, a locked guest). A changed host key, a refused token or a command that failed is
never retried. A step that is not idempotent either makes itself so (it checks first what an
earlier attempt did) or takes no retries and says why. Polling inside one step (a Proxmox
task) stays with the waiter's own schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from moxflow.errors import MoxflowError
from moxflow.inventory import Inventory, RetrySettings

P = ParamSpec("P")
R = TypeVar("R")

_DEFAULTS = RetrySettings()


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry only an error moxflow's error tree marks transient."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, MoxflowError) and exc.transient


def step(
    name: str, run_name: str, *, retries: int | None = None
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A step's task: ``name`` in Prefect, ``run_name`` ("{job.target}: snapshot") for each
    run, never cached, retried by Prefect on transient errors only; ``retries=0`` for a step
    that is not idempotent (and is then never run through :func:`tuned`)."""
    return task(
        name=name,
        task_run_name=run_name,
        cache_policy=NO_CACHE,
        retries=_DEFAULTS.attempts if retries is None else retries,
        retry_delay_seconds=list(_DEFAULTS.delays),
        retry_condition_fn=transient,
    )


def tuned(step_task: Task[P, R], inv: Inventory) -> Task[P, R]:
    """``step_task`` with the retries the inventory's ``[retries]`` asks for."""
    r = inv.retries
    delays = [r.delays[min(i, len(r.delays) - 1)] for i in range(r.attempts)]
    return step_task.with_options(retries=r.attempts, retry_delay_seconds=delays or 0)


@dataclass(frozen=True, slots=True)
class Attempt:
    """Which try of a step this is: ``number`` (1 for the first), whether Prefect has a retry
    left after it, and the seconds since the step's first try started."""

    number: int
    retry_left: bool
    elapsed: float


def attempt() -> Attempt:
    """The running step's attempt (the first, with no retry left, outside a task run)."""
    ctx = TaskRunContext.get()
    if ctx is None:
        return Attempt(1, False, 0.0)
    run = ctx.task_run
    elapsed = 0.0
    if run.start_time is not None:
        elapsed = (datetime.now(UTC) - run.start_time).total_seconds()
    return Attempt(run.run_count, run.run_count <= ctx.task.retries, elapsed)
