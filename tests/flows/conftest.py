"""Flow tests: a Prefect test server for the session, and views of the lab's state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.testing.utilities import prefect_test_harness

from tasks.targets import PREFIX


@pytest.fixture(autouse=True, scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for every flow test."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(autouse=True)
def no_slot_outlives_its_test(prefect_server: None) -> Iterator[None]:
    """Every target slot is free when a test ends. The test server has no lease sweep, so a
    slot a test leaves taken (a run it killed, a failure before it freed the dead run's slots
    by hand) would stay taken for the session: every later test on that target would wait,
    then find it busy, and one failure would fail the rest of the suite. Such a slot is freed
    here (what the sweep does) and the test errors, naming it. Only the count is reset: a
    holder still alive (a thread the test leaked) would release into a later test's slot."""
    yield
    with get_client(sync_client=True) as client:
        limits, page = [], client.read_global_concurrency_limits(limit=200)
        while page:
            limits += page
            page = client.read_global_concurrency_limits(limit=200, offset=len(limits))
        held = sorted(g.name for g in limits if g.name.startswith(PREFIX) and g.active_slots)
    for name in held:
        free_slots(name)
    assert not held, f"the test left these target slots taken: {', '.join(held)}"


def free_slots(name: str) -> None:
    """What the server's lease sweep does once a dead run's lease has run out."""
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def zfs_snapshots(state: dict[str, Any], host: str) -> dict[str, dict[str, Any]]:
    """Every ZFS snapshot on a lab host, by full name ``dataset@snap``."""
    datasets = state["hosts"][host]["zfs"]["datasets"]
    return {f"{ds}@{s['name']}": s for ds, d in datasets.items() for s in d["snapshots"]}


def all_zfs_snapshots(state: dict[str, Any]) -> set[str]:
    """``host:dataset@snap`` for every host."""
    return {
        f"{host}:{name}"
        for host, h in state["hosts"].items()
        if h.get("zfs")
        for name in zfs_snapshots(state, host)
    }


def guest_snapshots(state: dict[str, Any], vmid: int) -> dict[str, dict[str, Any]]:
    """The snapshots of one lab guest by name."""
    return dict(state["guests"][str(vmid)]["snapshots"])


def edit_inventory(src: Path, dst_dir: Path, replace: dict[str, str]) -> Path:
    """A copy of the lab's inventory with text replaced, next to the original's files."""
    text = src.read_text()
    for old, new in replace.items():
        assert old in text, f"{old!r} not in the inventory"
        text = text.replace(old, new)
    # keep relative paths working: write beside the original
    dst = src.parent / f"{dst_dir.name}-inventory.toml"
    dst.write_text(text)
    return dst


def _sent() -> None:
    """Send the events (and logs) this process still has queued, as the command line does
    after a run. Prefect 3 records task runs and their states from the events the engine
    emits (``prefect/task_engine.py``), in a background thread that may still hold some when
    a flow call returns (a busy machine); read before they are sent, a task run would be
    missing or without its last state."""
    from flows._run import _drain

    _drain()


def task_runs(state: Any) -> dict[str, Any]:
    """The task runs of the flow run that ended in ``state`` (``flow(..., return_state=True)``),
    by name, as the Prefect server recorded them (the run graph is drawn from these)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _sent()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


def state_names(task_run_id: Any) -> list[str]:
    """The names of a task run's states, oldest first (``Retrying`` when Prefect retried it)."""
    from prefect.client.orchestration import get_client

    _sent()
    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(task_run_id)
    return [s.name or "" for s in sorted(states, key=lambda s: s.timestamp)]


def subflow_runs(state: Any) -> dict[str, Any]:
    """The subflow runs of the flow run that ended in ``state``, by run name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
    return {r.name: r for r in runs}


def step_runs(flow_run: Any) -> list[Any]:
    """A flow run's task runs, in the order they started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _sent()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)
