"""End to end: flows.guest_snapshot against the lab's Proxmox API, asserting the lab's state."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from flows.guest_snapshot import main
from flows.jobs.guest_snapshot import guest_snapshot
from labsim.client import LabClient, wait_until
from moxflow.errors import RunFailed
from moxflow.report import Outcome, RunReport
from tests.flows.conftest import edit_inventory, guest_snapshots, state_names, task_runs

MOX = re.compile(r"^moxflow-daily-\d{8}-\d{6}$")
# default topology: 103 is tagged nosnap, 9000 is a template
SELECTED = {100, 101, 102, 104, 105}


def moxflow_snaps(state: dict[str, object], vmid: int) -> set[str]:
    return {n for n in guest_snapshots(state, vmid) if MOX.match(n)}  # type: ignore[arg-type]


def by_vmid(report: RunReport) -> dict[int, Outcome]:
    return {int(r.target.split()[0]): r.outcome for r in report.rows}


def test_snapshots_the_selection_and_marks_ownership(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    report = guest_snapshot(label="daily", inventory=str(lab_inventory))
    state = fresh_lab.state()
    outcomes = by_vmid(report)
    assert {v for v, o in outcomes.items() if o is Outcome.OK} == SELECTED
    assert outcomes[9000] is Outcome.SKIPPED  # template
    assert 103 not in outcomes  # excluded by -@tag-nosnap
    for vmid in SELECTED:
        (name,) = moxflow_snaps(state, vmid)
        assert guest_snapshots(state, vmid)[name]["description"].startswith("moxflow:")
    assert moxflow_snaps(state, 103) == set() and moxflow_snaps(state, 9000) == set()
    # the hand-made snapshot of 101 is untouched
    assert "before-upgrade" in guest_snapshots(state, 101)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("@tag-media", {101}),
        ("@pool-apps", {101, 104}),
        ("@node-pve1", {100, 101}),
        ("100:102", {100, 101, 102}),
        ("homeassistant,dns", {100, 104}),
        ("@all,-@node-pve2,-dns", {101}),
    ],
)
def test_selection_language_picks_exactly_those_guests(
    fresh_lab: LabClient, lab_inventory: Path, expr: str, expected: set[int]
) -> None:
    guest_snapshot(label="daily", select=expr, inventory=str(lab_inventory))
    state = fresh_lab.state()
    touched = {int(v) for v in state["guests"] if moxflow_snaps(state, int(v))}
    assert touched == expected


def test_running_only_skips_stopped_guests(fresh_lab: LabClient, lab_inventory: Path) -> None:
    report = guest_snapshot(
        label="daily", select="100:105", running_only=True, inventory=str(lab_inventory)
    )
    outcomes = by_vmid(report)
    assert outcomes[105] is Outcome.SKIPPED and outcomes[103] is Outcome.SKIPPED
    assert outcomes[101] is Outcome.OK


def test_prunes_only_its_own_snapshots_of_the_label(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    import requests

    base = f"{fresh_lab.api_url}/nodes/pve1/qemu/101/snapshot"
    headers = fresh_lab.auth_header

    def make(name: str, description: str) -> None:
        r = requests.post(
            base,
            data={"snapname": name, "description": description},
            headers=headers,
            verify=str(fresh_lab.ca_file),
            timeout=10,
        )
        assert r.status_code == 200, r.reason
        wait_until(lambda: all(t["status"] == "stopped" for t in fresh_lab.state()["tasks"]))

    olds = ["moxflow-daily-20261120-000000", "moxflow-daily-20261121-000000"]
    for name in olds:
        make(name, "moxflow: daily snapshot taken earlier")
    make("moxflow-daily-20261119-000000", "made by hand, named like moxflow's")
    make("moxflow-hourly-20261121-000000", "moxflow: hourly snapshot")
    inv = edit_inventory(
        lab_inventory, tmp_path, {'daily = "keep-daily=7"': 'daily = "keep-last=2"'}
    )

    report = guest_snapshot(label="daily", select="101", inventory=str(inv))

    (row,) = report.rows
    assert row.outcome is Outcome.OK
    snaps = set(guest_snapshots(fresh_lab.state(), 101))
    assert row.taken in snaps
    assert olds[1] in snaps and olds[0] not in snaps
    assert row.removed == (olds[0],)
    # not ours (no marker), another label, made by hand: all still there
    assert {"moxflow-daily-20261119-000000", "moxflow-hourly-20261121-000000"} <= snaps
    assert "before-upgrade" in snaps


def test_a_half_deleted_snapshot_never_takes_the_place_of_a_good_one(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    import requests

    base = f"{fresh_lab.api_url}/nodes/pve1/qemu/101/snapshot"
    headers, ca = fresh_lab.auth_header, str(fresh_lab.ca_file)
    good, broken = "moxflow-daily-20261120-000000", "moxflow-daily-20261121-000000"
    for name in (good, broken):
        data = {"snapname": name, "description": "moxflow: daily snapshot taken earlier"}
        r = requests.post(base, data=data, headers=headers, verify=ca, timeout=10)
        assert r.status_code == 200, r.reason
        wait_until(lambda: all(t["status"] == "stopped" for t in fresh_lab.state()["tasks"]))
    # the newer one's delete task dies half-way: PVE leaves it in snapstate "delete" (and the
    # guest locked, until an admin runs `qm unlock`)
    fresh_lab.fault(target="task", type="qmdelsnapshot", id="101", action="error",
                    exitstatus="zfs error: dataset is busy", times=1)  # fmt: skip
    r = requests.delete(f"{base}/{broken}", headers=headers, verify=ca, timeout=10)
    assert r.status_code == 200, r.reason
    wait_until(lambda: all(t["status"] == "stopped" for t in fresh_lab.state()["tasks"]))
    fresh_lab.set_guest(101, lock="")
    inv = edit_inventory(
        lab_inventory, tmp_path, {'daily = "keep-daily=7"': 'daily = "keep-last=2"'}
    )

    report = guest_snapshot(label="daily", select="101", inventory=str(inv))

    (row,) = report.rows
    assert row.outcome is Outcome.OK
    assert (row.kept, row.removed) == (2, ())  # the new one and the good one
    snaps = guest_snapshots(fresh_lab.state(), 101)
    assert row.taken in snaps and good in snaps
    assert snaps[broken]["snapstate"] == "delete"  # neither kept nor touched


def _delete_moxflow_snapshot(lab: LabClient, fault: dict[str, Any], user: str = "") -> str:
    """Snapshot moxflow-daily-20261121-000000 of VM 101 (moxflow's: its description says
    so), then its delete with ``fault`` on the delete task, sent as ``user`` (a GUI user's;
    default: the token's)."""
    import requests

    base = f"{lab.api_url}/nodes/pve1/qemu/101/snapshot"
    headers, ca = lab.auth_header, str(lab.ca_file)
    name = "moxflow-daily-20261121-000000"
    data = {"snapname": name, "description": "moxflow: daily snapshot taken earlier"}
    assert requests.post(base, data=data, headers=headers, verify=ca, timeout=10).ok
    wait_until(lambda: all(t["status"] == "stopped" for t in lab.state()["tasks"]))
    lab.fault(target="task", type="qmdelsnapshot", id="101", **fault)
    as_user = {**headers, "X-Lab-User": user} if user else headers
    assert requests.delete(f"{base}/{name}", headers=as_user, verify=ca, timeout=10).ok
    return name


def test_a_delete_an_earlier_run_left_half_done_is_finished_before_the_next_snapshot(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """PVE leaves a snapshot whose delete task failed in state "delete" and the guest locked
    snapshot-delete: every later snapshot and backup of it is refused. When that snapshot is
    moxflow's own, the next guest snapshot run finishes the delete (forced) and goes on."""
    fault = {"action": "error", "exitstatus": "zfs error: dataset is busy", "times": 1}
    broken = _delete_moxflow_snapshot(fresh_lab, fault)
    wait_until(lambda: all(t["status"] == "stopped" for t in fresh_lab.state()["tasks"]))
    assert fresh_lab.state()["guests"]["101"]["lock"] == "snapshot-delete"

    report = guest_snapshot(label="daily", select="101", inventory=str(lab_inventory))

    (row,) = report.rows
    assert row.outcome is Outcome.OK, row.detail
    snaps = guest_snapshots(fresh_lab.state(), 101)
    assert row.taken in snaps and broken not in snaps
    assert not fresh_lab.state()["guests"]["101"]["lock"]
    forced = [r for r in fresh_lab.api_requests() if r["method"] == "DELETE"]
    assert [r["params"].get("force") for r in forced] == [None, "1"]  # the failed one, ours


def test_a_delete_someone_else_runs_is_not_forced(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """A moxflow snapshot being deleted by someone else (another user's task, from the GUI)
    is theirs to finish: the guest stays busy, nothing is forced."""
    _delete_moxflow_snapshot(fresh_lab, {"action": "slow", "delay": 30.0}, user="root@pam")

    with pytest.raises(RunFailed) as info:
        guest_snapshot(label="daily", select="101", lock_timeout=1.0, inventory=str(lab_inventory))

    (row,) = info.value.report.rows
    assert row.outcome is Outcome.BUSY
    assert not any(
        r["method"] == "DELETE" and r["params"].get("force") for r in fresh_lab.api_requests()
    )


def test_dry_run_changes_nothing(fresh_lab: LabClient, lab_inventory: Path) -> None:
    before = fresh_lab.state()["guests"]
    report = guest_snapshot(label="daily", dry_run=True, inventory=str(lab_inventory))
    after = fresh_lab.state()["guests"]
    assert {v: g["snapshots"] for v, g in before.items()} == {
        v: g["snapshots"] for v, g in after.items()
    }
    assert {r.outcome for r in report.rows} <= {Outcome.PLANNED, Outcome.SKIPPED}
    assert all(r["method"] == "GET" for r in fresh_lab.api_requests())


def test_locked_guest_is_retried_then_busy_while_others_go_on(
    fresh_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guest another operation keeps locked is not snapshotted, and the run is not OK: the
    row is busy and says which lock and what to do, the exit status is 1."""
    fresh_lab.set_guest(101, lock="backup")
    argv = ["--inventory", str(lab_inventory), "--label", "daily", "--select", "100,101"]
    assert main([*argv, "--lock-timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "guest-snapshot [daily] INCOMPLETE: 2 targets (1 ok, 1 busy)" in out
    with pytest.raises(RunFailed) as info:
        guest_snapshot(
            label="daily", select="100,101", lock_timeout=1.0, inventory=str(lab_inventory)
        )
    report = info.value.report
    assert isinstance(report, RunReport)
    assert by_vmid(report) == {100: Outcome.OK, 101: Outcome.BUSY}
    row = next(r for r in report.rows if r.target.startswith("101"))
    assert "locked by another operation" in row.detail and "(backup)" in row.detail
    assert "`qm unlock 101` on pve1" in row.detail
    tries = [r for r in fresh_lab.api_requests() if r["method"] == "POST" and "/101/" in r["path"]]
    assert len(tries) >= 2
    assert moxflow_snaps(fresh_lab.state(), 101) == set()


def test_a_snapshot_task_an_earlier_run_left_is_waited_for_by_its_upid(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """A run killed while Proxmox took a snapshot leaves the task running and the guest
    locked. The next run finds that task (this token's), waits for it, naming its UPID,
    and then takes its own snapshot in the same step: no blind retry, not busy."""
    from blocks.proxmox import proxmox_client
    from moxflow.inventory import load_inventory

    fresh_lab.fault(target="task", type="qmsnapshot", id="101", action="slow", delay=8.0, times=1)
    with proxmox_client(load_inventory(lab_inventory)) as client:
        guest = next(g for g in client.resources() if g.vmid == 101)
        orphan = client.create_snapshot(guest, "moxflow-daily-20261201-000000", "moxflow: x")
    state = guest_snapshot(
        label="daily", select="101", inventory=str(lab_inventory), return_state=True
    )
    report = state.result()
    assert by_vmid(report) == {101: Outcome.OK}
    assert len(moxflow_snaps(fresh_lab.state(), 101)) == 2  # the earlier run's, and this one
    [run] = [r for name, r in task_runs(state).items() if name.startswith("pve1: snapshot")]
    assert "Retrying" not in state_names(run.id)
    logs = _logs(run.id)
    assert any(f"waiting for task {orphan} of an earlier run" in m for m in logs), logs


def _logs(task_run_id: object) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
    return [entry.message for entry in logs]


def test_lock_that_clears_is_retried_to_success(fresh_lab: LabClient, lab_inventory: Path) -> None:
    fresh_lab.fault(
        target="task",
        type="qmsnapshot",
        id="101",
        action="error",
        exitstatus="VM is locked (backup)",
        times=2,
    )
    report = guest_snapshot(
        label="daily", select="101", lock_timeout=10.0, inventory=str(lab_inventory)
    )
    assert by_vmid(report) == {101: Outcome.OK}
    assert len(moxflow_snaps(fresh_lab.state(), 101)) == 1


def test_api_5xx_is_retried(fresh_lab: LabClient, lab_inventory: Path) -> None:
    fresh_lab.fault(
        target="api",
        method="POST",
        path="^/nodes/pve1/qemu/101/snapshot$",
        action="error",
        status=500,
        message="proxy loop detected",
        times=2,
    )
    fresh_lab.fault(
        target="api",
        method="GET",
        path="^/cluster/resources$",
        action="error",
        status=503,
        message="service unavailable",
        times=1,
    )
    report = guest_snapshot(
        label="daily", select="101", lock_timeout=10.0, inventory=str(lab_inventory)
    )
    assert by_vmid(report) == {101: Outcome.OK}
    assert len(moxflow_snaps(fresh_lab.state(), 101)) == 1


def test_failed_snapshot_task_fails_the_run_and_names_the_guest(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    fresh_lab.fault(
        target="task",
        type="qmsnapshot",
        id="104",
        action="error",
        exitstatus="snapshot feature is not available",
    )
    with pytest.raises(RunFailed) as info:
        guest_snapshot(label="daily", select="101,104", inventory=str(lab_inventory))
    report = info.value.report
    assert by_vmid(report) == {101: Outcome.OK, 104: Outcome.FAILED}
    row = next(r for r in report.rows if r.target.startswith("104"))
    assert "snapshot feature is not available" in row.detail
    assert "104" in str(info.value)


def test_wrong_token_gives_a_clear_error_naming_the_setting(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("00000000-0000-0000-0000-000000000000\n")
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {'token_secret = "file:pve-token"': f'token_secret = "file:{wrong}"'},
    )
    code = main(["--inventory", str(inv), "--label", "daily"])
    err = capsys.readouterr().err
    assert code == 2
    assert "proxmox.token_secret" in err and "401" in err
    assert fresh_lab.token_secret() not in err
    assert all(r["method"] == "GET" for r in fresh_lab.api_requests())


def test_cli_bad_selection_is_a_usage_error(
    fresh_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--inventory", str(lab_inventory), "--select", "@bogus-x"]) == 2
    assert "@bogus-x" in capsys.readouterr().err
    assert fresh_lab.api_requests() == []


def test_each_step_is_a_task_run_per_node_chained_list_snapshot_prune(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """The run graph tells the story: per node a list (the facts), a snapshot of its guests,
    and a prune that takes the snapshot's result as its input (the graph's edge)."""
    state = guest_snapshot(label="daily", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    for node, size in (("pve1", "2 guests"), ("pve2", "3 guests")):  # 100, 101 | 102, 104, 105
        listed, snap, prune = (runs[f"{node}: {step} {size}"] for step in ("list", "snapshot",
                                                                          "prune"))  # fmt: skip
        assert all(r.state is not None and r.state.is_completed() for r in (listed, snap, prune))
        assert [i.id for i in prune.task_inputs["taken"]] == [snap.id]  # type: ignore[union-attr]
        assert listed.end_time <= snap.start_time <= snap.end_time <= prune.start_time  # type: ignore[operator]
    assert by_vmid(state.result())[101] is Outcome.OK


def test_a_dry_run_stops_after_the_plan(fresh_lab: LabClient, lab_inventory: Path) -> None:
    def guests() -> dict[str, tuple[object, ...]]:
        state = fresh_lab.state()["guests"]
        return {v: (g["snapshots"], g["status"], g.get("lock")) for v, g in state.items()}

    before = guests()
    state = guest_snapshot(
        label="daily", dry_run=True, inventory=str(lab_inventory), return_state=True
    )
    assert state.is_completed()
    steps = {name.rsplit(": ", 1)[1].split()[0] for name in task_runs(state) if ": " in name}
    assert steps == {"list"}  # no snapshot, no prune step ever ran
    assert guests() == before


def test_an_api_5xx_on_a_step_is_retried_by_prefect(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    fresh_lab.fault(target="api", method="POST", path="^/nodes/pve1/qemu/101/snapshot$",
                    action="error", status=503, message="service unavailable", times=1)  # fmt: skip
    state = guest_snapshot(
        label="daily", select="100,101", inventory=str(lab_inventory), return_state=True
    )
    assert state.is_completed()
    snap = task_runs(state)["pve1: snapshot 2 guests"]
    names = state_names(snap.id)
    assert "Retrying" in names and names[-1] == "Completed", names
    assert by_vmid(state.result()) == {100: Outcome.OK, 101: Outcome.OK}
    # the retry found 100's snapshot taken by the first attempt: one snapshot each
    assert len(moxflow_snaps(fresh_lab.state(), 100)) == 1
    assert len(moxflow_snaps(fresh_lab.state(), 101)) == 1


def test_a_snapshot_another_run_took_is_that_runs_not_this_ones(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """Two runs of one label in the same second want the same name: the one that comes
    second finds it taken by the first (its description names that run) and says so; it
    does not count it as its own. Its own earlier attempt's snapshot it does count."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    from prefect import flow

    from blocks.proxmox import proxmox_client
    from moxflow.inventory import load_inventory
    from moxflow.naming import snapshot_description, snapshot_name
    from moxflow.retention import KeepPolicy
    from moxflow.snapshots import plan_node_snapshots
    from tasks.proxmox import snapshot_node

    now = datetime(2026, 12, 6, 3, 0, 0, tzinfo=UTC)
    name = snapshot_name("daily", now)
    inv = load_inventory(lab_inventory)
    with proxmox_client(inv) as client:
        guests = {g.vmid: g for g in client.resources()}
        first, mine = guests[100], guests[101]
        for guest, run in ((first, "run-a"), (mine, "run-b")):  # a's, and b's own earlier
            upid = client.create_snapshot(guest, name, snapshot_description("daily", now, run))
            client.wait_task(upid, timeout=30, node=guest.node)
        plan = plan_node_snapshots(
            "pve1", [first, mine], {100: [], 101: []}, label="daily", snapname=name, now=now,
            policy=KeepPolicy.parse("keep-last=3"), tz=UTC, vmstate=False, run="run-b",
        )  # fmt: skip

        @flow(name="race-b")
        def second_run() -> object:
            with ThreadPoolExecutor(2) as lanes:
                return snapshot_node.fn(client, plan, lanes, 5.0)

        taken = second_run()
    assert isinstance(taken, dict)
    assert not taken[100].taken and taken[100].elsewhere
    assert f"{name} already taken by run run-a" in taken[100].error
    # 101's snapshot names run b: on a first attempt it is still not taken twice
    assert taken[101].taken
    # one that names no run (by hand, another tool) is no run's: a failure saying what to do
    with proxmox_client(inv) as client:
        upid = client.create_snapshot(guests[102], name, "before the upgrade")
        client.wait_task(upid, timeout=30, node=guests[102].node)
        plan = plan_node_snapshots(
            "pve2", [guests[102]], {102: []}, label="daily", snapname=name, now=now,
            policy=KeepPolicy.parse("keep-last=3"), tz=UTC, vmstate=False, run="run-b",
        )  # fmt: skip
        other = second_run()
    assert isinstance(other, dict) and not other[102].taken and not other[102].elsewhere
    assert "no moxflow run claims" in other[102].error and "rename or delete" in other[102].error
    assert moxflow_snaps(fresh_lab.state(), 100) == {name}  # one snapshot, not two
