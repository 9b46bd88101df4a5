"""What the Prefect server says of a flow run that left a mark (a host lock, a scratch
guest, a snapshot): whether it is still running."""

from __future__ import annotations

import uuid


def flow_run_alive(flow_run_id: str | None) -> bool:
    """Whether the Prefect flow run that left a mark may still be acting on it.

    Finished, crashed, cancelled, unknown: no. *Cancelling*: no either. The callers hold the
    target's Prefect slot (:mod:`tasks.targets`), so a run still alive would hold it
    instead, and a run killed outright stays *Cancelling* for ever once someone cancels it
    (``prefect flow-run cancel``, as docs/operating.md says to). *Running* (or pending,
    paused): yes, as a run on a worker that died looks, until a person cancels it."""
    try:
        return bool(flow_run_status(flow_run_id))
    except Exception:  # the API is unreachable: assume the run is alive, never break a lock
        return True


def flow_run_status(flow_run_id: str | None) -> bool | None:
    """What the Prefect server says of a flow run: True alive (*Running*, pending, paused),
    False over (finished, crashed, cancelled, *Cancelling*: see :func:`flow_run_alive`),
    None when it knows no such run (or the ID is none). Raises when the server does not
    answer."""
    if not flow_run_id:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        parsed = uuid.UUID(flow_run_id)
    except (ValueError, TypeError):
        return None
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(parsed)
    except ObjectNotFound:
        return None
    state = run.state
    return state is not None and not state.is_final() and not state.is_cancelling()


def subflow_ended(flow_run_id: str, name: str) -> bool | None:
    """Whether the subflow run ``name`` of flow run ``flow_run_id`` ran its course: True when
    it ended by itself (*Completed* or *Failed*: its steps went to their end, whatever the
    outcome); False when it did not (still *Running* or *Pending* as a killed run's stays,
    *Crashed*, *Cancelling*, *Cancelled*: stopped half-way); None when the Prefect server
    knows no such run (it cannot tell). Raises when the server does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.objects import StateType

    try:
        parent = uuid.UUID(flow_run_id)
    except (ValueError, TypeError):
        return None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]),
                name=FlowRunFilterName(any_=[name]),
            )
        )
    if not runs:
        return None
    state = runs[0].state
    return state is not None and state.type in (StateType.COMPLETED, StateType.FAILED)
