"""End to end: flows.windows_update against the lab's Windows VM (103 ``win11-gaming``, on
pve2, with a GPU passed through). The lab is the fake: its guest agent runs moxflow's own
scripts against a simulated Windows. Each test asserts the lab's state afterwards (what is
installed, the VM's snapshots, whether it runs and its agent answers), the report, and the
run's task runs read back from the Prefect server."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from blocks.proxmox import proxmox_client
from flows.jobs.health_report import health_report
from flows.jobs.windows_update import windows_update
from labsim.client import LabClient, wait_until
from moxflow.errors import ProxmoxError, RunFailed
from moxflow.inventory import load_inventory
from moxflow.naming import (
    description_state,
    parse_snapshot_name,
    snapshot_description,
    snapshot_name,
)
from moxflow.report import Outcome, RunReport
from tasks.targets import guest_target, hold
from tasks.windows import run_script
from tests.flows.conftest import guest_snapshots, step_runs, subflow_runs
from tests.flows.test_conformance import check_requests

VMID, NODE = 103, "pve2"
VM = "103 (win11-gaming)"
HOSTILE = "a'b\"c $(Remove-Item C:) `whoami`; exit 0"  # no \\ or line break: not a service name


@pytest.fixture
def win(fresh_lab: LabClient) -> LabClient:
    """The lab with the Windows VM running and its agent answering."""
    fresh_lab.set_guest(VMID, status="running")
    client = proxmox_client(load_inventory(fresh_lab.dir / "inventory.toml"))
    wait_until(lambda: _answers(client), 10)
    return fresh_lab


def _answers(client: Any) -> bool:
    try:
        client.agent_ping(NODE, VMID)
    except ProxmoxError:
        return False
    return True


def agent_answers(lab: LabClient) -> bool:
    return _answers(proxmox_client(load_inventory(lab.dir / "inventory.toml")))


def inventory(lab: LabClient, name: str, agent_timeout: float = 5.0, vm: str = "") -> Path:
    """The lab's inventory with a [windows] section for VM 103 (``vm``: its own settings
    and checks), short waits and fast retries."""
    text = (lab.dir / "inventory.toml").read_text()
    text += (
        "\n[retries]\nattempts = 1\ndelays = [0.1]\n"
        f"\n[windows]\nagent_timeout = {agent_timeout}\nverify_grace = 0.5\n"
        f"\n[windows.vms.win11-gaming]\n{vm}\n"
    )
    dst = lab.dir / f"{name}-windows.toml"
    dst.write_text(text)
    return dst


def run_failing(inv: Path, **params: Any) -> RunReport:
    with pytest.raises(RunFailed) as info:
        windows_update(inventory=str(inv), **params)
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def windows(lab: LabClient) -> dict[str, Any]:
    return dict(lab.state()["windows"][str(VMID)])


def pre_update(lab: LabClient) -> dict[str, dict[str, Any]]:
    snaps = guest_snapshots(lab.state(), VMID)
    return {n: s for n, s in snaps.items() if n.startswith("moxflow-pre-update-")}


def chain(state: Any) -> list[str]:
    """The step names of the VM's subflow run, in order, as the Prefect server has them."""
    subflows = subflow_runs(state)
    assert set(subflows) == {VM}
    return [r.name.removeprefix(f"{VM}: ") for r in step_runs(subflows[VM])]


def test_an_update_with_a_reboot_and_two_rounds(win: LabClient, tmp_path: Path) -> None:
    # the second update shows only once the first is installed and the VM rebooted
    win.control("windows", vmid=VMID, clear=True,
                pending="KB5001:Security Updates:reboot,KB5002:Updates:after=KB5001")  # fmt: skip
    state = windows_update(inventory=str(inventory(win, tmp_path.name)), return_state=True)
    assert state.is_completed()
    after = windows(win)
    assert after["installed"] == ["KB5001", "KB5002"]
    assert after["pending"] == [] and after["reboot_pending"] is False
    assert win.state()["guests"][str(VMID)]["status"] == "running" and agent_answers(win)
    # the passthrough VM got a disk-only snapshot although snapshot_ram is on (the default)
    (snap,) = pre_update(win).values()
    assert snap["vmstate"] is False
    report = state.result()
    (row,) = report.rows
    assert row.outcome is Outcome.OK and "KB5001, KB5002" in row.detail
    assert row.cell("snapshot").endswith("(disk only)") and row.cell("reboots") == "1"
    assert row.cell("updates") == "2 installed"
    assert chain(state) == [
        "snapshot",
        "install round 1",
        "reboot 1",
        "install round 2",
        "verify",
        "commit",
    ]
    # every exec was one of the repo's scripts, none rejected; every request is PVE's
    assert all(e["rejected"] is None for e in after["execs"])
    assert check_requests(win.api_requests()) == []


def test_the_default_updates_take_three_rounds(win: LabClient, tmp_path: Path) -> None:
    """Four updates pending, the .NET one appearing only after the cumulative update and a
    reboot, and asking for a reboot itself: round 3 finds nothing left."""
    state = windows_update(inventory=str(inventory(win, tmp_path.name)), return_state=True)
    assert state.is_completed()
    assert windows(win)["installed"] == ["KB5048685", "KB890830", "KB2267602", "KB5049624"]
    names = chain(state)
    assert names[-3:] == ["install round 3", "verify", "commit"]
    assert names.count("reboot 1") == names.count("reboot 2") == 1


def test_nothing_pending_takes_no_snapshot(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, clear=True)
    report = windows_update(inventory=str(inventory(win, tmp_path.name)))
    (row,) = report.rows
    assert row.outcome is Outcome.SKIPPED and "nothing applicable is pending" in row.detail
    assert pre_update(win) == {}


def test_dry_run_changes_nothing_and_lists_the_updates(win: LabClient, tmp_path: Path) -> None:
    before = windows(win)
    report = windows_update(inventory=str(inventory(win, tmp_path.name)), dry_run=True)
    (row,) = report.rows
    assert row.outcome is Outcome.PLANNED and row.cell("updates") == "3 to install"
    for kb in ("KB5048685", "KB890830", "KB2267602"):
        assert kb in row.detail
    text = report.to_text()
    assert "812.0 MiB, Security Updates, reboot: always" in text
    assert "disk only" in text  # the snapshot it would take, and why
    after = windows(win)
    assert pre_update(win) == {}
    assert {k: after[k] for k in ("installed", "pending", "reboot_pending")} == {
        k: before[k] for k in ("installed", "pending", "reboot_pending")
    }
    assert {e["script"] for e in after["execs"]} == {"list-updates.ps1", "reboot-pending.ps1"}
    changes = [r for r in win.api_requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert {r["path"].rsplit("/", 1)[-1] for r in changes} <= {"ping", "exec"}


def test_a_failing_update_rolls_back_to_the_snapshot(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, fail="KB890830=0x80240022")
    with pytest.raises(RunFailed) as info:
        windows_update(inventory=str(inventory(win, tmp_path.name)))
    report = info.value.report
    (row,) = report.rows
    assert row.outcome is Outcome.ROLLED_BACK
    assert "KB890830 failed (result code 4, 0x80240022)" in row.detail
    assert "rolled back to moxflow-pre-update-" in row.detail
    # back as before: nothing installed, the VM running, its agent answering
    after = windows(win)
    assert after["installed"] == [] and len(after["pending"]) == 4
    assert win.state()["guests"][str(VMID)]["status"] == "running" and agent_answers(win)
    assert len(pre_update(win)) == 1  # the snapshot is kept
    assert check_requests(win.api_requests()) == []


def test_the_rollback_chain_is_on_the_server(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, fail="KB890830=0x80240022")
    state = windows_update(inventory=str(inventory(win, tmp_path.name)), return_state=True)
    assert state.is_failed()
    assert chain(state) == ["snapshot", "install round 1", "verify", "rollback"]


def test_a_vm_that_does_not_come_back_is_rolled_back(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, never_back="on")
    report = run_failing(inventory(win, tmp_path.name, agent_timeout=1))
    (row,) = report.rows
    assert row.outcome is Outcome.ROLLED_BACK
    assert "reboot 1: the VM did not come back within 1 s" in row.detail
    assert windows(win)["installed"] == []
    assert agent_answers(win)


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ({"agent_off": "on"}, "the guest agent does not answer: QEMU guest agent is not running"),
        ({"stopped": True}, "the VM is stopped; moxflow updates a running Windows VM only"),
        ({"no_agent": True}, "No QEMU guest agent configured"),
    ],
    ids=["agent-off", "stopped", "no-agent"],
)
def test_a_vm_the_agent_cannot_reach_is_refused_before_any_change(
    win: LabClient, tmp_path: Path, setup: dict[str, Any], why: str
) -> None:
    if "agent_off" in setup:
        win.control("windows", vmid=VMID, agent_off="on")
    if "stopped" in setup:
        win.set_guest(VMID, status="stopped")
    if "no_agent" in setup:
        win.set_guest(VMID, agent=False)
    before = windows(win)
    report = run_failing(inventory(win, tmp_path.name))
    (row,) = report.rows
    assert row.outcome is Outcome.FAILED and why in row.detail and "refused" in row.detail
    assert pre_update(win) == {}
    assert windows(win)["execs"] == before["execs"]  # not one script ran
    changes = [r for r in win.api_requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert [r["path"] for r in changes if not r["path"].endswith("/agent/ping")] == []


def test_a_consistent_snapshot_shuts_the_vm_down_first(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates")
    inv = inventory(win, tmp_path.name, vm="snapshot_consistent = true\n")
    report = windows_update(inventory=str(inv))
    (row,) = report.rows
    assert row.outcome is Outcome.OK and row.cell("snapshot").endswith("(disk only, shut down)")
    posts = [r["path"] for r in win.api_requests() if r["method"] == "POST"]
    shutdown = posts.index(f"/nodes/{NODE}/qemu/{VMID}/status/shutdown")
    assert posts[shutdown + 1] == f"/nodes/{NODE}/qemu/{VMID}/snapshot"
    assert posts[shutdown + 2] == f"/nodes/{NODE}/qemu/{VMID}/status/start"
    assert windows(win)["installed"] == ["KB5001"] and agent_answers(win)
    assert check_requests(win.api_requests()) == []


def test_a_failing_check_rolls_back_and_its_value_reached_the_guest_as_data(
    win: LabClient, tmp_path: Path
) -> None:
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates")
    checks = (
        '[[windows.vms.win11-gaming.checks]]\nservice = "Spooler"\n'
        "[[windows.vms.win11-gaming.checks]]\nport = 3389\n"
        f"[[windows.vms.win11-gaming.checks]]\nservice = {_toml(HOSTILE)}\n"
    )
    report = run_failing(inventory(win, tmp_path.name, vm=checks))
    (row,) = report.rows
    assert row.outcome is Outcome.ROLLED_BACK
    assert f"service {HOSTILE} is Missing" in row.detail
    assert "Spooler" not in row.detail and "TCP 3389" not in row.detail  # those passed
    sent = [e for e in windows(win)["execs"] if e["script"] == "checks.ps1"]
    assert sent and sent[0]["rejected"] is None
    assert sent[0]["data"] == {"services": ["Spooler", HOSTILE], "ports": [3389]}
    assert windows(win)["installed"] == []


def _toml(value: str) -> str:
    import json

    return json.dumps(value)


def test_a_script_whose_output_the_agent_cut_is_a_clear_error(
    win: LabClient, tmp_path: Path
) -> None:
    win.control("windows", vmid=VMID, truncate=10)
    report = run_failing(inventory(win, tmp_path.name))
    (row,) = report.rows
    assert row.outcome is Outcome.FAILED
    assert "reboot-pending.ps1 exit code 0: its output was truncated by the agent" in row.detail
    assert pre_update(win) == {}


def test_a_vm_another_run_holds_is_busy(win: LabClient, tmp_path: Path) -> None:
    with hold([guest_target(VMID)], wait=0):
        report = run_failing(inventory(win, tmp_path.name), lock_timeout=0.5)
    (row,) = report.rows
    assert row.outcome is Outcome.BUSY and "moxflow-guest-103" in row.detail
    assert pre_update(win) == {} and windows(win)["installed"] == []


def test_the_health_report_shows_each_windows_vms_updates(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates:age=60")
    inv = str(inventory(win, tmp_path.name))
    with pytest.raises(RunFailed) as info:
        health_report(only=["windows"], inventory=inv)
    rows = {r.target: r for r in info.value.report.rows}
    assert set(rows) == {f"{VM} windows update", f"{VM} windows pending", f"{VM} windows reboot"}
    stale = rows[f"{VM} windows pending"]
    assert stale.outcome is Outcome.FAILED and stale.detail.startswith("TOO OLD: 1 pending: KB5001")
    assert stale.cell("last") == "60d ago" and stale.cell("limit") == "45d"
    assert rows[f"{VM} windows reboot"].detail.startswith("no reboot pending; booted ")

    windows_update(inventory=inv)
    report = health_report(only=["windows"], inventory=inv)
    rows = {r.target: r for r in report.rows}
    assert all(r.outcome is Outcome.OK for r in report.rows)
    last = rows[f"{VM} windows update"]  # the run just now, read from the Prefect server
    assert last.detail == "last successful windows-update run" and last.cell("last") == "0m ago"
    assert rows[f"{VM} windows pending"].detail == "0 pending"

    win.set_guest(VMID, status="stopped")  # a stopped VM is shown, not judged
    report = health_report(only=["windows"], inventory=inv)
    rows = {r.target: r for r in report.rows}
    assert rows[f"{VM} windows pending"].detail == "not read: the VM is stopped"
    assert report.ok


def test_a_busy_installer_is_asked_again(win: LabClient, tmp_path: Path) -> None:
    """After a reboot Windows may still be finishing; the install waits for it."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Security Updates", busy=2)
    report = windows_update(inventory=str(inventory(win, tmp_path.name)))
    assert report.rows[0].outcome is Outcome.OK
    after = windows(win)
    assert after["installed"] == ["KB5001"] and after["faults"]["busy"] == 0
    assert [e["script"] for e in after["execs"]].count("install-updates.ps1") == 3


def test_a_reboot_pending_before_the_run_comes_first(win: LabClient, tmp_path: Path) -> None:
    """Someone installed the cumulative update by hand and did not reboot: the run reboots
    first, then installs what that reboot shows (the .NET update)."""
    client = proxmox_client(load_inventory(win.dir / "inventory.toml"))
    guest = client.guest(VMID)
    _, scan = run_script(client, guest, "list-updates.ps1", {}, timeout=10)
    cumulative = next(u["id"] for u in scan["updates"] if u["kb"] == ["KB5048685"])
    run_script(client, guest, "install-updates.ps1", {"ids": [cumulative]}, timeout=10)
    assert windows(win)["reboot_pending"] is True
    inv = inventory(win, tmp_path.name)
    dry = windows_update(inventory=str(inv), dry_run=True)
    assert "a reboot first (one is pending)" in dry.rows[0].detail + " ".join(dry.notes)
    state = windows_update(inventory=str(inv), return_state=True)
    assert state.is_completed()
    assert windows(win)["installed"] == ["KB5048685", "KB890830", "KB2267602", "KB5049624"]
    assert chain(state)[:3] == ["snapshot", "reboot 1", "install round 1"]


def test_commit_and_rollback_say_so_in_the_snapshots_description(
    win: LabClient, tmp_path: Path
) -> None:
    """The run after judges a snapshot by what its description says: never adopted once
    committed or rolled back to, whatever the Prefect server remembers."""
    inv = inventory(win, tmp_path.name)
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    windows_update(inventory=str(inv))
    (committed,) = pre_update(win).values()
    assert description_state(committed["description"]) == "committed"
    win.control("windows", vmid=VMID, pending="KB5002:Updates", fail="KB5002=0x80240022")
    run_failing(inv)
    states = {n: description_state(s["description"]) for n, s in pre_update(win).items()}
    assert sorted(states.values()) == ["committed", "rolled back"]


def test_an_unexpected_error_after_the_snapshot_rolls_back(
    win: LabClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only moxflow's own errors: any exception after the snapshot (a bug, here in the
    parse of the install's answer, once the updates are installed) rolls the VM back, and
    the row says what happened."""
    import tasks.windows

    def broken(out: Any) -> Any:
        raise KeyError("updates")

    monkeypatch.setattr(tasks.windows, "parse_install", broken)
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    report = run_failing(inventory(win, tmp_path.name))
    (row,) = report.rows
    assert row.outcome is Outcome.ROLLED_BACK, row
    assert (
        "KeyError: 'updates'" in row.detail and "rolled back to moxflow-pre-update-" in row.detail
    )
    assert windows(win)["installed"] == [] and agent_answers(win)
    (snap,) = pre_update(win).values()
    assert description_state(snap["description"]) == "rolled back"


# --- what an earlier run left: adopted, or the VM left as it is ---------------------------------


@flow
def _a_run() -> str:
    """A flow run the Prefect server knows, over once it returns its ID."""
    from prefect.runtime import flow_run

    return str(flow_run.id)


def _running_run() -> str:
    """A flow run the Prefect server shows Running (as a live one, or one killed with
    nobody to say so, looks)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(_a_run, state=Running()).id)


def _left(lab: LabClient, run: str, hours: float, state: str = "in progress") -> str:
    """A pre-update snapshot an earlier run ``run`` took ``hours`` ago (its name says when)
    and never finished with; its name."""
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours)
    name = snapshot_name("pre-update", when)
    description = snapshot_description("pre-update", when, run, state=state)
    _snapshot(lab, name, description)
    return name


def _snapshot(lab: LabClient, name: str, description: str = "") -> None:
    client = proxmox_client(load_inventory(lab.dir / "inventory.toml"))
    (guest,) = [g for g in client.resources() if g.vmid == VMID]
    client.wait_task(client.create_snapshot(guest, name, description), timeout=10)


def _left_alone(lab: LabClient, inv: Path, outcome: Outcome) -> str:
    """The next run leaves the VM as it is: its row (``outcome``), nothing changed (no
    snapshot taken, changed or removed, nothing installed; only the agent's read-only
    pre-flight reached the VM); its detail."""
    snaps, before = pre_update(lab), windows(lab)
    lab.clear_api_requests()
    report = run_failing(inv)
    (row,) = report.rows
    assert row.outcome is outcome, row
    assert pre_update(lab) == snaps
    assert windows(lab)["installed"] == before["installed"]
    changes = [r for r in lab.api_requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert {r["path"].rsplit("/", 1)[-1] for r in changes} <= {"ping", "exec"}
    assert {e["script"] for e in windows(lab)["execs"]} <= {
        "list-updates.ps1",
        "reboot-pending.ps1",
    }
    return row.detail


def test_an_unfinished_snapshot_of_a_run_that_is_over_is_adopted(
    win: LabClient, tmp_path: Path
) -> None:
    """Its description still says in progress: that run never committed nor rolled back,
    whatever its flow run's state (here Completed: a run whose VM chain broke off)."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    dead = _a_run()
    left = _left(win, dead, hours=1)
    report = windows_update(inventory=str(inventory(win, tmp_path.name)))
    (row,) = report.rows
    assert row.outcome is Outcome.OK, row
    assert f"recovered: adopted snapshot {left} of the interrupted run {dead}" in row.detail
    assert set(pre_update(win)) == {left} and windows(win)["installed"] == ["KB5001"]
    assert description_state(pre_update(win)[left]["description"]) == "committed"


def test_an_interrupted_snapshot_older_than_the_limit_leaves_the_vm_as_it_is(
    win: LabClient, tmp_path: Path
) -> None:
    """A rollback to it would undo everything since it was taken: the VM is not updated,
    the row needs attention and says what to do; with a higher limit it is adopted."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    dead = _a_run()
    left = _left(win, dead, hours=7)
    detail = _left_alone(win, inventory(win, tmp_path.name), Outcome.NEEDS_ATTENTION)
    assert f"snapshot {left} of the interrupted run {dead} (taken 7h" in detail
    assert "older than [windows] adopt_max_age_hours (6 h)" in detail
    assert "nothing was changed and the snapshot is kept" in detail
    assert f"qm rollback {VMID} {left}, then qm delsnapshot {VMID} {left}" in detail
    assert f"to keep the VM as it is, qm delsnapshot {VMID} {left}; then run again" in detail
    assert "newer snapshot" not in detail
    patched = inventory(win, tmp_path.name + "-8h")
    text = patched.read_text().replace("\n[windows]\n", "\n[windows]\nadopt_max_age_hours = 8\n")
    patched.write_text(text)
    report = windows_update(inventory=str(patched))
    assert f"recovered: adopted snapshot {left}" in report.rows[0].detail


def test_an_interrupted_snapshot_with_a_newer_one_after_it_leaves_the_vm_as_it_is(
    win: LabClient, tmp_path: Path
) -> None:
    """A snapshot taken after it (by hand, here): a rollback to it would undo that one's
    state too, and PVE on ZFS refuses it."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    dead = _a_run()
    left = _left(win, dead, hours=1)
    time.sleep(1.1)  # the snapshot list is ordered by snaptime (seconds)
    _snapshot(win, "before-gpu-driver", "by hand")
    detail = _left_alone(win, inventory(win, tmp_path.name), Outcome.NEEDS_ATTENTION)
    assert f"snapshot {left} of the interrupted run {dead} (taken 60m ago)" in detail
    assert "a newer snapshot exists (before-gpu-driver)" in detail
    assert (
        "first delete the newer snapshot(s) if you can do without them "
        f"(qm delsnapshot {VMID} before-gpu-driver" in detail
    )
    assert "before-gpu-driver" in guest_snapshots(win.state(), VMID)


def test_an_in_progress_snapshot_of_a_run_the_server_does_not_know_needs_attention(
    win: LabClient, tmp_path: Path
) -> None:
    """Whether that update finished cannot be told: a person decides. A description
    written before they said their state (and a Prefect database reset since) is not
    adopted either, but does not block the VM: a new snapshot is taken, as before."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    stranger = str(uuid.uuid4())
    left = _left(win, stranger, hours=1)
    inv = inventory(win, tmp_path.name)
    detail = _left_alone(win, inv, Outcome.NEEDS_ATTENTION)
    assert f"snapshot {left} (taken 60m ago)" in detail
    assert (
        f"says run {stranger} was updating the VM, but the Prefect server does not know" in detail
    )
    assert f"qm rollback {VMID} {left}" in detail and "nothing was changed" in detail
    # the same snapshot as a moxflow before this change wrote it
    client = proxmox_client(load_inventory(win.dir / "inventory.toml"))
    (guest,) = [g for g in client.resources() if g.vmid == VMID]
    parsed = parse_snapshot_name(left)
    assert parsed is not None
    client.set_snapshot_description(
        guest, left, snapshot_description("pre-update", parsed.created, stranger)
    )
    report = windows_update(inventory=str(inv))
    (row,) = report.rows
    assert row.outcome is Outcome.OK and "adopted" not in row.cell("snapshot")
    assert len(pre_update(win)) == 2


def test_a_run_that_still_runs_leaves_the_vm_busy(win: LabClient, tmp_path: Path) -> None:
    """Its snapshot says in progress and the Prefect server shows the run Running: it may
    still be at work (or died with nobody to say so: cancel it, the row says)."""
    win.control("windows", vmid=VMID, clear=True, pending="KB5001:Updates")
    alive = _running_run()
    left = _left(win, alive, hours=1)
    detail = _left_alone(win, inventory(win, tmp_path.name), Outcome.BUSY)
    assert f"run {alive}, which took {left}" in detail
    assert f"prefect flow-run cancel {alive}" in detail
