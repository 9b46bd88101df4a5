"""A Proxmox host update killed outright (SIGKILL) at each dangerous point of a node's
roll, then the run that follows. The node's journal (written on the node before its first
change) tells the next run what the dead run left: it finishes dpkg and the upgrade,
reboots if a newer kernel boots next, verifies, leaves HA maintenance and brings every
guest back to the node it was on, running as before; the dead run's snapshot is kept.

As in test_crash_recovery.py: the killed run stays *Running* in Prefect and its slots stay
taken until the server's lease sweep frees them (done here by hand); the next run leaves
the node **busy**, naming the dead run, until the user cancels it as docs/operating.md
says; then it recovers the node.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from flows.jobs.proxmox_update import proxmox_update
from labsim.client import LabClient, start_lab, wait_until
from moxflow.report import Outcome, RunReport
from tasks.targets import SCRATCH_TARGET, guest_target, node_target
from tests.conftest import LAB_TIME_SCALE
from tests.flows.conftest import free_slots
from tests.flows.test_crash_recovery import kill_when
from tests.flows.test_proxmox_update import NEW_KERNEL, apt, inventory, placement, pre_update

NODE = "pve1"


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    lab = start_lab(
        tmp_path_factory.mktemp("crash3"), nodes=3, guests_per_node=3, time_scale=LAB_TIME_SCALE
    )
    try:
        yield lab
    finally:
        lab.stop()


def journal(lab: LabClient) -> dict[str, Any] | None:
    path = lab.dir / "apt" / NODE / "proxmox-update.json"
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found


def _away(lab: LabClient, before: dict[str, tuple[str, str]]) -> bool:
    """Every guest that ran on the node is gone from it or stopped."""
    st = lab.state()
    now = placement(st)
    mine = [v for v, (node, status) in before.items() if node == NODE and status == "running"]
    return all(now[v] != (NODE, "running") for v in mine)


def _reboot_requested(lab: LabClient) -> bool:
    return any(
        r["method"] == "POST" and r["path"] == f"/nodes/{NODE}/status" for r in lab.api_requests()
    )


POINTS: dict[str, Callable[[LabClient, dict[str, tuple[str, str]]], bool]] = {
    # guests gone, the node in maintenance; apt-get not started (its command stalls)
    "after guests-leave": lambda lab, before: (
        _away(lab, before) and (journal(lab) or {}).get("phase") == "upgrading"
    ),
    # apt-get dist-upgrade running: it dies with its SSH session, leaving dpkg to configure.
    # Running in the lab, not only asked for: killed before its shell started apt-get, the
    # session would take the shell with it and dpkg would be left clean (as on a real node)
    "during the upgrade": lambda lab, before: bool(apt(lab.state(), NODE)["upgrading"]),
    # the reboot requested through the API
    "after the reboot request": lambda lab, before: _reboot_requested(lab),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_a_proxmox_update_killed_at_a_dangerous_point_is_recovered(
    lab3: LabClient, tmp_path: Path, point: str
) -> None:
    lab = lab3
    lab.reset()
    inv = inventory(lab, tmp_path.name, reboot_timeout=20.0)
    before = placement(lab.state())
    if point == "after guests-leave":
        lab.fault(target="command", host=NODE, command="-y -o Dpkg", action="slow", delay=60)
    elif point == "during the upgrade":
        lab.control("apt_node", node=NODE, upgrade_seconds=2400.0)  # 60 s of real time
    args = ["flows.proxmox_update", "--inventory", str(inv), "--only", NODE]
    kill_when(args, lambda: POINTS[point](lab, before), tmp_path / "killed.log")
    lab.clear_faults()
    left = journal(lab)
    assert left is not None, "no journal on the node"
    if point == "during the upgrade":
        wait_until(lambda: bool(apt(lab.state(), NODE)["half_configured"]), 30)
    # the user finds the node back (a reboot requested goes on without the run)
    wait_until(lambda: apt(lab.state(), NODE)["status"] == "online", 30)
    guests = [guest_target(int(v)) for v, (node, _) in before.items() if node == NODE]
    for slot in (node_target(NODE), SCRATCH_TARGET, *guests):
        free_slots(slot)

    # 1. busy, naming the dead run: it is still Running as far as Prefect knows
    busy = _run(inv)
    assert _row(busy, NODE).outcome is Outcome.BUSY
    assert left["flow_run_id"] in _row(busy, NODE).detail
    if point == "after guests-leave":  # the node's guests are parked on the others
        # a roll of every node rolls none beside the dead run's (one node at a time)
        others = {n: apt(lab.state(), n) for n in ("pve2", "pve3")}
        every = _run(inv, only=None)
        assert _row(every, NODE).outcome is Outcome.BUSY and not every.ok
        for n in others:
            assert _row(every, n).outcome is Outcome.BUSY
            assert f"another run is updating {NODE}" in _row(every, n).detail
            assert apt(lab.state(), n)["installed"] == others[n]["installed"]
            assert pre_update(lab.state(), n) == []
    # 2. cancelled, as docs/operating.md says
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(left["flow_run_id"]), Cancelling(), force=True)
    if point == "after guests-leave":
        # a roll of another node alone is refused: the dead run's node comes first
        elsewhere = _run(inv, only=("pve2",))
        assert not elsewhere.ok
        assert _row(elsewhere, NODE).outcome is Outcome.NEEDS_ATTENTION
        assert f"interrupted update of run {left['flow_run_id']}" in _row(elsewhere, NODE).detail
        assert f"--only {NODE}" in _row(elsewhere, NODE).detail
        assert _row(elsewhere, "pve2").outcome is Outcome.SKIPPED
        assert pre_update(lab.state(), "pve2") == [] and journal(lab) == left
    # the dry run shows the recovery and changes nothing
    dry = _row(_run(inv, dry_run=True), NODE)
    assert dry.outcome is Outcome.PLANNED
    assert f"recover the interrupted update of run {left['flow_run_id']}" in dry.detail
    assert journal(lab) == left
    # 3. recovered: updated, out of maintenance, every guest home and as it was
    report = _run(inv)
    row = _row(report, NODE)
    assert row.outcome is Outcome.OK, row.detail
    assert f"recovered the interrupted update of run {left['flow_run_id']}" in row.detail
    st = lab.state()
    a = apt(st, NODE)
    assert a["pending"] == {} and not a["half_configured"] and a["kernel_running"] == NEW_KERNEL
    assert not a["maintenance"] and a["status"] == "online"
    assert placement(st) == before
    assert pre_update(st, NODE) == [left["snapshot"]]  # the dead run's, kept
    assert row.cell("snapshot") == left["snapshot"]
    assert journal(lab) is None


def _run(inv: Path, only: tuple[str, ...] | None = (NODE,), **params: Any) -> RunReport:
    selected = list(only) if only is not None else None
    state = proxmox_update(inventory=str(inv), only=selected, return_state=True, **params)
    report = state.result(raise_on_failure=False)
    if not isinstance(report, RunReport):
        report = report.report
    assert isinstance(report, RunReport)
    return report


def _row(report: RunReport, target: str) -> Any:
    return next(r for r in report.rows if r.target == target)
