"""A Windows update killed outright (SIGKILL) at each dangerous point, then the run that
follows, against the lab's Windows VM (103 ``win11-gaming``).

The killed run is ``python -m flows.windows_update`` in its own process. What it leaves:

- right after its pre-update snapshot: the snapshot (its description names the run), the VM
  unchanged;
- during an install round: the snapshot, and the install going on in the guest (the agent
  runs it; nothing stops it when the run dies): it ends by itself, its updates installed
  and a reboot pending;
- after its reboot request: the snapshot, the VM booting, its agent silent for a while.

Its slot on the VM stays taken until its lease runs out; each test frees it as the server's
lease sweep would (``tests/system/test_leases.py`` proves the sweep does), and marks its
flow run Crashed, as a process worker does when its child dies. The next run then holds the
VM: it recognises the dead run's snapshot (its description still says ``[in progress]``:
never committed nor rolled back), adopts it as its own rollback point instead of
snapshotting a VM that may be half-updated, waits for what is under way (its rollback task,
the agent, the install still at work: never started twice), and finishes the update:
verified and committed, or rolled back to that snapshot. Its report row says what it
recovered. A snapshot it must not adopt (too old, a newer snapshot after it, a run the
Prefect server does not know, or one that still runs) leaves the VM as it is
(``tests/flows/test_windows_update.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from blocks.proxmox import proxmox_client
from flows.jobs.windows_update import windows_update
from labsim.client import LabClient, wait_until
from moxflow.errors import ProxmoxError, RunFailed
from moxflow.inventory import load_inventory
from moxflow.naming import description_run, description_state
from moxflow.report import Outcome, ReportRow
from tasks.targets import guest_target
from tests.flows.conftest import free_slots, guest_snapshots
from tests.flows.test_conformance import check_requests
from tests.flows.test_crash_recovery import kill_when

VMID, NODE = 103, "pve2"
VM = "103 (win11-gaming)"
INSTALL = "install-updates.ps1"


@pytest.fixture
def win(fresh_lab: LabClient) -> LabClient:
    """The lab with the Windows VM running and its agent answering."""
    fresh_lab.set_guest(VMID, status="running")
    wait_until(lambda: _answers(fresh_lab), 10)
    return fresh_lab


def _answers(lab: LabClient) -> bool:
    client = proxmox_client(load_inventory(lab.dir / "inventory.toml"))
    try:
        client.agent_ping(NODE, VMID)
    except ProxmoxError:
        return False
    return True


def _inventory(lab: LabClient, name: str, agent_timeout: float = 30.0) -> Path:
    """The lab's inventory with VM 103 in [windows.vms]; fast retries, bounded waits."""
    text = (lab.dir / "inventory.toml").read_text()
    text += (
        "\n[retries]\nattempts = 1\ndelays = [0.1]\n"
        f"\n[windows]\nagent_timeout = {agent_timeout}\nverify_grace = 0.5\n"
        "\n[windows.vms.win11-gaming]\n"
    )
    dst = lab.dir / f"{name}-windows.toml"
    dst.write_text(text)
    return dst


def _windows(lab: LabClient) -> dict[str, Any]:
    return dict(lab.state()["windows"][str(VMID)])


def _pre_update(lab: LabClient) -> dict[str, dict[str, Any]]:
    snaps = guest_snapshots(lab.state(), VMID)
    return {n: s for n, s in snaps.items() if n.startswith("moxflow-pre-update-")}


def _whole_snapshot(lab: LabClient) -> bool:
    return any(not s.get("snapstate") for s in _pre_update(lab).values())


def _tasks(lab: LabClient, task_type: str) -> list[dict[str, Any]]:
    return [t for t in lab.state()["tasks"] if t["type"] == task_type and t["id"] == str(VMID)]


def _kill_when(lab: LabClient, inv: Path, log: Path, ready: Callable[[], bool]) -> str:
    """Run ``python -m flows.windows_update`` (an ad-hoc run on the test server), SIGKILL it
    once ``ready()``, and free its slot as the lease sweep would; the killed run's flow run
    ID, as its snapshot's description names it."""
    kill_when(["flows.windows_update", "--inventory", str(inv)], ready, log)
    free_slots(guest_target(VMID))
    (snap,) = _pre_update(lab).values()
    dead = description_run(snap["description"])
    assert dead, snap
    _crashed(dead)
    return dead


def _crashed(run: str) -> None:
    """What a process worker does when its child dies: the flow run goes Crashed (a run
    killed outright with nobody to say so stays Running: the next one leaves the VM alone,
    busy, until a person cancels it: ``test_a_run_that_still_runs_leaves_the_vm_busy``)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(run), Crashed(message="killed"), force=True)


def _next_run(inv: Path) -> tuple[bool, ReportRow]:
    """The run after the kill, in this process: whether it ended OK, and the VM's row."""
    try:
        report = windows_update(inventory=str(inv))
        ok = True
    except RunFailed as exc:
        report, ok = exc.report, False
    (row,) = report.rows
    assert row.target == VM
    print(report.to_text())  # what a user reads (pytest -s, or -rP)
    return ok, row


def _installs(lab: LabClient) -> list[set[str]]:
    """The update IDs of each install that ran to its end in the guest (exit 0: the
    installer took them; a busy one, exit 5, changed nothing)."""
    return [
        set(e["data"]["ids"])
        for e in _windows(lab)["execs"]
        if e["script"] == INSTALL and e["exitcode"] == 0
    ]


def _assert_once(lab: LabClient) -> None:
    """No update went to the installer twice."""
    installs = _installs(lab)
    every = [i for ids in installs for i in ids]
    assert len(every) == len(set(every)), installs


def _assert_settled(lab: LabClient) -> None:
    assert lab.state()["guests"][str(VMID)]["status"] == "running" and _answers(lab)
    assert _windows(lab)["reboot_pending"] is False
    assert _windows(lab)["installing"] == []


def test_killed_right_after_its_snapshot(win: LabClient, tmp_path: Path) -> None:
    """The snapshot is whole, the install round's first script is on its way (held by the
    lab): nothing installed. The next run adopts that snapshot and updates."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True,
                pending="KB5001:Security Updates:reboot,KB5002:Updates:after=KB5001")  # fmt: skip
    inv = _inventory(lab, tmp_path.name)
    dead = _kill_right_after_the_snapshot(lab, inv, tmp_path)
    assert _windows(lab)["installed"] == [] and _installs(lab) == []
    (adopted,) = _pre_update(lab)

    ok, row = _next_run(inv)

    assert ok and row.outcome is Outcome.OK, row
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert row.cell("snapshot") == f"{adopted} (disk only, adopted)"
    assert set(_pre_update(lab)) == {adopted}  # no new snapshot
    assert _windows(lab)["installed"] == ["KB5001", "KB5002"]
    _assert_once(lab)
    _assert_settled(lab)
    # the snapshot now names the run that adopted it, and says it committed: done with,
    # not adopted again by the run after
    claim = _pre_update(lab)[adopted]["description"]
    assert f"by the interrupted run {dead}, adopted by run " in claim
    assert description_run(claim) not in (None, dead)
    assert description_state(claim) == "committed"
    puts = [r for r in lab.api_requests() if r["method"] == "PUT"]
    path = f"/nodes/{NODE}/qemu/{VMID}/snapshot/{adopted}/config"
    assert [r["path"] for r in puts] == [path, path]  # the claim, then the commit's mark
    assert check_requests(lab.api_requests()) == []  # every request is PVE's
    lab.control("windows", vmid=VMID, pending="KB5003:Updates")
    ok, row = _next_run(inv)
    assert ok and "recovered" not in row.detail and "adopted" not in row.cell("snapshot")
    assert len(_pre_update(lab)) == 2


def test_killed_right_after_its_snapshot_then_verification_fails(
    win: LabClient, tmp_path: Path
) -> None:
    """The next run's update fails: it rolls back to the interrupted run's snapshot (the
    before-state), the one snapshot there is."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates:reboot")
    inv = _inventory(lab, tmp_path.name)
    dead = _kill_right_after_the_snapshot(lab, inv, tmp_path)
    (adopted,) = _pre_update(lab)
    lab.control("windows", vmid=VMID, fail="KB5001=0x80240022")

    ok, row = _next_run(inv)

    assert not ok and row.outcome is Outcome.ROLLED_BACK, row
    assert f"rolled back to {adopted}" in row.detail
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert set(_pre_update(lab)) == {adopted}
    after = _windows(lab)
    assert after["installed"] == [] and [u["kb"] for u in after["pending"]] == ["KB5001"]
    _assert_settled(lab)


def _kill_right_after_the_snapshot(lab: LabClient, inv: Path, tmp_path: Path) -> str:
    """Kill the run once its snapshot is whole and the install round's first exec is held
    (a hung request the lab drops once the faults are cleared: it never runs)."""
    lab.fault(target="task", type="qmsnapshot", action="slow", delay=1.0, times=1)
    hold: list[int] = []

    def ready() -> bool:
        if not hold and _tasks(lab, "qmsnapshot"):
            exec_path = rf"/qemu/{VMID}/agent/exec$"
            hold.append(
                lab.fault(target="api", method="POST", path=exec_path, action="hang", times=1)
            )
        left = {f["fault_id"]: f.get("remaining") for f in lab.state()["faults"]}
        held = bool(hold) and (hold[0] not in left or left[hold[0]] == 0)
        return held and _whole_snapshot(lab)

    dead = _kill_when(lab, inv, tmp_path / "killed.log", ready)
    lab.clear_faults()
    return dead


def test_killed_during_an_install_round(win: LabClient, tmp_path: Path) -> None:
    """The install goes on in the guest after the run died. The next run waits for it (the
    installer answers busy: the install is not started twice), then reboots for it,
    verifies and commits; the interrupted run's snapshot is the rollback point."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True, install_seconds=200,  # 5 s each
                pending="KB5001:Security Updates:reboot,KB5002:Updates")  # fmt: skip
    inv = _inventory(lab, tmp_path.name)
    dead = _kill_when(lab, inv, tmp_path / "killed.log", lambda: bool(_windows(lab)["installing"]))
    assert _windows(lab)["installing"] == ["KB5001", "KB5002"]  # still at work in the guest
    (adopted,) = _pre_update(lab)

    ok, row = _next_run(inv)

    assert ok and row.outcome is Outcome.OK, row
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert f"the interrupted run {dead}'s) to end; it was not started again" in row.detail
    assert "no longer offered since: KB5001, KB5002" in row.detail
    assert set(_pre_update(lab)) == {adopted}
    after = _windows(lab)
    assert after["installed"] == ["KB5001", "KB5002"] and after["pending"] == []
    ends = [e["exitcode"] for e in after["execs"] if e["script"] == INSTALL]
    assert ends[0] == 0 and 5 in ends  # the killed run's install, then the busy answers
    assert len(_installs(lab)) == 1  # one install took the updates
    _assert_once(lab)
    assert row.cell("reboots") == "1"  # the reboot the interrupted install asked for
    _assert_settled(lab)


@pytest.mark.parametrize(
    ("pending", "installed"),
    [
        ("KB5001:Security Updates:reboot,KB5002:Updates:after=KB5001", ["KB5001", "KB5002"]),
        ("KB5001:Security Updates:reboot", ["KB5001"]),
    ],
    ids=["more-after-the-reboot", "nothing-left"],
)
def test_killed_after_its_reboot_request(
    win: LabClient, tmp_path: Path, pending: str, installed: list[str]
) -> None:
    """The VM reboots and Windows takes its time to come back: the next run waits for the
    agent instead of refusing the VM, adopts the snapshot, and installs what the reboot
    brought (the update that comes after the first one). With nothing left to install it
    does not skip the VM: the interrupted update is verified and committed."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True, boot_seconds=240, pending=pending)  # 6 s
    inv = _inventory(lab, tmp_path.name)
    dead = _kill_when(lab, inv, tmp_path / "killed.log", lambda: bool(_tasks(lab, "qmreboot")))
    assert _windows(lab)["installed"] == ["KB5001"]
    (adopted,) = _pre_update(lab)

    ok, row = _next_run(inv)

    assert ok and row.outcome is Outcome.OK, row
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert f"for the agent, silent after the interrupted run {dead}" in row.detail
    if len(installed) == 1:
        assert row.detail.startswith("nothing was installed in 0 round(s), 0 reboot(s); verified")
    assert set(_pre_update(lab)) == {adopted}
    assert _windows(lab)["installed"] == installed and _windows(lab)["pending"] == []
    assert len(_tasks(lab, "qmreboot")) == 1  # not rebooted again
    _assert_once(lab)
    _assert_settled(lab)


def test_killed_after_its_reboot_request_and_the_vm_never_comes_back(
    win: LabClient, tmp_path: Path
) -> None:
    """Windows does not come back from the killed run's reboot: the next run waits for it
    (bounded), then rolls back to the killed run's snapshot: the VM runs again as it was
    before that run."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True, never_back="on",
                pending="KB5001:Security Updates:reboot")  # fmt: skip
    inv = _inventory(lab, tmp_path.name, agent_timeout=3.0)
    dead = _kill_when(lab, inv, tmp_path / "killed.log", lambda: bool(_tasks(lab, "qmreboot")))
    (adopted,) = _pre_update(lab)

    ok, row = _next_run(inv)

    assert not ok and row.outcome is Outcome.ROLLED_BACK, row
    assert "snapshot: the VM did not come back within 3 s" in row.detail
    assert f"rolled back to {adopted}" in row.detail
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert set(_pre_update(lab)) == {adopted}
    after = _windows(lab)
    assert after["installed"] == [] and [u["kb"] for u in after["pending"]] == ["KB5001"]
    _assert_settled(lab)


def test_killed_during_its_rollback(win: LabClient, tmp_path: Path) -> None:
    """Its update failed and it died rolling back: the rollback task still runs when the
    next run starts (the VM stopped and locked). The next run waits for that task before it
    claims the snapshot (PVE refuses to change a snapshot of a locked VM) and before it
    judges the VM, then finishes the update from where the rollback left it: the snapshot's
    state, which is adopted (no new snapshot)."""
    lab = win
    lab.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates:reboot",
                fail="KB5001=0x80240022")  # fmt: skip
    inv = _inventory(lab, tmp_path.name)
    lab.fault(target="task", type="qmrollback", action="slow", delay=8.0, times=1)
    dead = _kill_when(lab, inv, tmp_path / "killed.log", lambda: bool(_tasks(lab, "qmrollback")))
    (adopted,) = _pre_update(lab)
    assert lab.guest(VMID)["lock"] == "rollback"  # the rollback task still runs
    lab.control("windows", vmid=VMID, reset_faults=True)  # KB5001 installs this time

    ok, row = _next_run(inv)

    assert ok and row.outcome is Outcome.OK, row
    assert f"recovered: adopted snapshot {adopted} of the interrupted run {dead}" in row.detail
    assert row.cell("snapshot") == f"{adopted} (disk only, adopted)"
    assert set(_pre_update(lab)) == {adopted}
    assert _windows(lab)["installed"] == ["KB5001"]
    assert len(_tasks(lab, "qmrollback")) == 1  # its rollback, not a second one
    _assert_settled(lab)
    assert description_state(_pre_update(lab)[adopted]["description"]) == "committed"
    assert check_requests(lab.api_requests()) == []
