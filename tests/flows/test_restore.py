"""End to end: flows.restore_test and flows.restore against the lab, asserting its state."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from flows.jobs.restore import restore
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from flows.restore import main as restore_main
from flows.restore_test import main as restore_test_main
from labsim.client import LabClient
from moxflow.errors import ConfigError, RunFailed
from moxflow.report import Outcome, RunReport
from tests.flows.conftest import edit_inventory, state_names, task_runs

MUTATING = {"POST", "PUT", "DELETE"}


@pytest.fixture
def fast_lab(fresh_lab: LabClient) -> LabClient:
    """The fresh lab with a backup storage fast enough that dumps and restores take ms."""
    fresh_lab.set_storage("nas-backup", bandwidth=10**13)
    return fresh_lab


def stable(guest: dict[str, Any]) -> dict[str, Any]:
    """A guest's state without what changes by itself (uptime)."""
    return {k: v for k, v in guest.items() if k != "uptime"}


def mutating_vmids(lab: LabClient, since: int = 0) -> list[int]:
    """Every VMID a changing API request named (in its path or as its vmid parameter)."""
    out: list[int] = []
    for r in lab.api_requests()[since:]:
        if r["method"] not in MUTATING:
            continue
        m = re.match(r"^/nodes/[^/]+/(?:qemu|lxc)/(\d+)", r["path"])
        if m:
            out.append(int(m.group(1)))
        vmid = (r.get("params") or {}).get("vmid")
        if vmid is not None:
            out.append(int(vmid))
    return out


def mutations(lab: LabClient) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in lab.api_requests() if r["method"] in MUTATING]


def test_restore_test_restores_boots_and_destroys(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    vzdump_backup(select="100", offsite=False, inventory=str(lab_inventory))  # a container backup
    before = {v: stable(lab.guest(v)) for v in (100, 101, 104)}
    notes_before = {
        a["filename"]: a["notes"] for a in lab.state()["storages"]["nas-backup"]["archives"]
    }
    start = len(lab.api_requests())
    report = restore_test(select="100,101,104", inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    rows = {r.target: r for r in report.rows}
    assert {t: r.outcome for t, r in rows.items()} == {
        "100 (dns)": Outcome.OK,
        "101 (media-vm)": Outcome.OK,
        "104 (homeassistant)": Outcome.OK,
    }
    # the report speaks restore test: archive, scratch VMID, boot, guest agent
    assert report.columns() == [
        "guest", "archive", "scratch vmid", "boot", "agent", "outcome", "detail"
    ]  # fmt: skip
    table = {t["guest"]: t for t in report.table()}
    assert table["101 (media-vm)"]["agent"] == "answered"  # a VM: its guest agent answered
    assert table["100 (dns)"]["agent"] == "—"  # a container has none: it runs
    for row in rows.values():
        assert row.taken and row.taken.startswith("vzdump-")
        cells = table[row.target]
        assert cells["archive"] == row.taken and cells["scratch vmid"].startswith("99")
        assert re.fullmatch(r"\d+\.\ds", cells["boot"])
        assert cells["detail"] == "booted; scratch guest destroyed"
    head, *lines = report.to_text().splitlines()
    assert head.split() == ["GUEST", "ARCHIVE", "SCRATCH", "VMID", "BOOT", "AGENT", "OUTCOME",
                            "DETAIL"]  # fmt: skip
    media = next(x for x in lines if x.startswith("101 (media-vm)"))
    assert media.split()[2:6] == [rows["101 (media-vm)"].taken,
                                  table["101 (media-vm)"]["scratch vmid"],
                                  table["101 (media-vm)"]["boot"], "answered"]  # fmt: skip
    assert "KEPT" not in head and "TAKEN" not in head
    # the newest archive was restored
    assert rows["101 (media-vm)"].taken == max(
        a["filename"] for a in lab.state()["storages"]["nas-backup"]["archives"] if a["vmid"] == 101
    )
    # every scratch guest is gone; the originals are as they were
    state = lab.state()
    assert not [v for v in state["guests"] if int(v) >= 9900]
    assert {v: stable(state["guests"][str(v)]) for v in (100, 101, 104)} == before
    new = lab.api_requests()[start:]
    restores = [r for r in new if r["method"] == "POST" and re.match(r"^/nodes/\w+/(qemu|lxc)$",
                                                                   r["path"])]  # fmt: skip
    assert len(restores) == 3
    assert all(str(r["params"].get("unique")) == "1" for r in restores)
    assert all(r["params"].get("storage") == "local-zfs" for r in restores)
    touched = mutating_vmids(lab, since=start)
    assert touched and all(v >= 9900 for v in touched)
    # each passed test is noted on the archive it restored; the backup's own notes stay
    archives = {a["filename"]: a for a in lab.state()["storages"]["nas-backup"]["archives"]}
    for row in rows.values():
        *notes, mark = archives[row.taken]["notes"].splitlines()
        assert notes == notes_before[row.taken].splitlines() and notes
        assert mark.startswith("moxflow restore test ok: ")
    untested = [
        a for a in archives.values() if a["filename"] not in {r.taken for r in rows.values()}
    ]
    assert untested and not any("restore test" in a["notes"] for a in untested)
    # where the backup coverage table finds it, also after the next backup of the guest
    report = vzdump_backup(select="100,101,103", offsite=False, inventory=str(lab_inventory))
    header, *lines = report.notes[report.notes.index("backup coverage:") + 1 :]
    column = header.index("LAST RESTORE TEST")
    tested = {line.split()[0]: line[column:].split()[0:2] for line in lines}
    assert tested == {"100": ["0m", "ago"], "101": ["0m", "ago"], "103": ["never", "yes"]}


def test_restore_test_refuses_a_scratch_vmid_in_use(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = fast_lab
    before = stable(lab.guest(104))
    with pytest.raises(ConfigError, match="scratch VMID 104 is in use by 104"):
        restore_test(select="101", scratch_vmid=104, inventory=str(lab_inventory))
    code = restore_test_main(["--select", "101", "--scratch-vmid", "104",
                              "--inventory", str(lab_inventory)])  # fmt: skip
    assert code == 2
    assert "scratch VMID 104 is in use" in capsys.readouterr().err
    # a configured range whose only VMID is taken fails the guest, nothing is restored
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {"[backups]\n": '[restore_test]\nscratch_vmids = "104"\n\n[backups]\n'},
    )
    with pytest.raises(RunFailed) as info:
        restore_test(select="101", inventory=str(inv))
    report = info.value.report
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.FAILED and "no free scratch VMID in 104" in row.detail
    assert mutations(lab) == []
    assert stable(lab.guest(104)) == before


def test_restore_test_dry_run_changes_nothing(fast_lab: LabClient, lab_inventory: Path) -> None:
    report = restore_test(select="101,104", dry_run=True, inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    assert {r.outcome for r in report.rows} == {Outcome.PLANNED}
    assert all("would restore to scratch 9900" in r.detail for r in report.rows)
    assert mutations(fast_lab) == []


def test_restore_without_force_refuses_to_overwrite(
    fast_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = fast_lab
    before = stable(lab.guest(101))
    code = restore_main(["--vmid", "101", "--inventory", str(lab_inventory)])
    assert code == 2
    err = capsys.readouterr().err
    assert "exists on pve1" in err and "--force" in err and "--target-vmid" in err
    with pytest.raises(ConfigError, match="--force"):
        restore(vmid=101, inventory=str(lab_inventory))
    assert mutations(lab) == []
    assert stable(lab.guest(101)) == before


def test_restore_dry_run_changes_nothing(fast_lab: LabClient, lab_inventory: Path) -> None:
    report = restore(vmid=101, force=True, dry_run=True, inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.PLANNED
    assert "snapshot 101 (media-vm)" in row.detail and "stop 101" in row.detail
    assert mutations(fast_lab) == []


def test_restore_with_force_snapshots_first(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    report = restore(vmid=101, force=True, inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.OK, row.detail
    assert "snapshot moxflow-pre-restore-" in row.detail and "started again" in row.detail
    [cells] = report.table()
    assert list(cells) == ["archive", "target vmid", "outcome", "detail"]
    assert (
        cells["archive"].startswith("vzdump-qemu-101-") and cells["target vmid"] == "101 (media-vm)"
    )
    calls = [(r["method"], r["path"], r.get("params") or {}) for r in lab.api_requests()]
    changing = [(m, p, q) for m, p, q in calls if m in MUTATING]
    kinds = [p.rsplit("/", 1)[-1] if m == "POST" else m for m, p, _ in changing]
    assert kinds == ["snapshot", "stop", "qemu", "start"]
    snap = changing[0]
    assert snap[1] == "/nodes/pve1/qemu/101/snapshot"
    assert str(snap[2]["snapname"]).startswith("moxflow-pre-restore-")
    restore_call = changing[2]
    assert restore_call[1] == "/nodes/pve1/qemu"
    assert str(restore_call[2]["force"]) == "1" and int(restore_call[2]["vmid"]) == 101
    assert "unique" not in restore_call[2]  # the guest keeps its MAC addresses
    g = lab.guest(101)
    assert (g["node"], g["status"], g["lock"]) == ("pve1", "running", None)


def test_restore_beside_the_original_needs_no_force(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    before = stable(lab.guest(104))
    report = restore(vmid=104, target_vmid=950, inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    assert [r.outcome for r in report.rows] == [Outcome.OK]
    g = lab.guest(950)
    assert (g["name"], g["node"]) == ("homeassistant", "pve2")
    assert stable(lab.guest(104)) == before
    assert 104 not in mutating_vmids(lab)


def test_restore_test_cleans_up_when_the_scratch_guest_fails(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    before = stable(lab.guest(101))
    lab.fault(target="task", type="qmstart", id="9900", action="error", message="kvm: boom")
    with pytest.raises(RunFailed) as info:
        restore_test(select="101", inventory=str(lab_inventory))
    report = info.value.report
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.FAILED
    assert "boom" in row.detail and row.detail.endswith("; scratch guest destroyed")
    assert (row.cell("scratch"), row.cell("boot"), row.cell("agent")) == ("9900", "—", "—")
    assert row.cell("archive") == row.taken
    assert "9900" not in lab.state()["guests"]
    assert stable(lab.guest(101)) == before
    assert 101 not in mutating_vmids(lab)


STEPS = ("restore", "start", "wait-agent", "destroy", "record")


def test_restore_test_steps_are_task_runs_chained_one_guest_after_the_other(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    """The run graph tells the story: per guest a list of its backups (the facts), then
    restore → start → wait-agent → destroy → record, each taking the one before's result;
    the next guest's restore waits for this one's destroy."""
    vzdump_backup(select="100", offsite=False, inventory=str(lab_inventory))
    state = restore_test(select="100,101", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    previous = None
    for guest in ("100 (dns)", "101 (media-vm)"):
        listed = runs[f"{guest}: list"]
        restore, start, agent, destroy, record = (runs[f"{guest}: {s}"] for s in STEPS)
        steps = (listed, restore, start, agent, destroy, record)
        assert all(r.state is not None and r.state.is_completed() for r in steps)

        def ids(run: Any, name: str) -> set[Any]:
            return {i.id for i in run.task_inputs.get(name, [])}

        assert ids(start, "restored") == {restore.id}
        assert ids(agent, "started") == {start.id} and ids(agent, "restored") == {restore.id}
        assert ids(destroy, "restored") == {restore.id}
        assert ids(destroy, "wait_for") == {start.id, agent.id}
        assert ids(record, "booted") == {agent.id} and ids(record, "cleanup") == {destroy.id}
        assert ids(restore, "wait_for") == ({previous.id} if previous else set())
        for a, b in itertools.pairwise(steps):
            assert a.end_time <= b.start_time, (a.name, b.name)
        previous = destroy
    assert not [v for v in fast_lab.state()["guests"] if int(v) >= 9900]


def test_a_restore_test_dry_run_stops_after_the_plan(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    before = {v: stable(g) for v, g in fast_lab.state()["guests"].items()}
    archives = fast_lab.state()["storages"]["nas-backup"]["archives"]
    state = restore_test(
        select="101,104", dry_run=True, inventory=str(lab_inventory), return_state=True
    )
    assert state.is_completed()
    steps = {name.rsplit(": ", 1)[1] for name in task_runs(state) if ": " in name}
    assert steps == {"list"}  # no restore, start, wait-agent, destroy or record ran
    assert {v: stable(g) for v, g in fast_lab.state()["guests"].items()} == before
    assert fast_lab.state()["storages"]["nas-backup"]["archives"] == archives


def test_restore_test_destroys_the_scratch_guest_when_its_agent_never_answers(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    lab = fast_lab
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {"[backups]\n": "[restore_test]\nboot_timeout = 1.0\n\n[backups]\n"},
    )
    lab.fault(target="api", method="POST", path="^/nodes/pve1/qemu/9900/agent/ping$",
              action="error", status=500, message="QEMU guest agent is not running")  # fmt: skip
    state = restore_test(select="101", inventory=str(inv), return_state=True)
    assert state.is_failed()
    runs = task_runs(state)
    agent, destroy = runs["101 (media-vm): wait-agent"], runs["101 (media-vm): destroy"]
    assert state_names(agent.id)[-1] == "Failed"
    assert state_names(destroy.id)[-1] == "Completed"
    assert agent.end_time <= destroy.start_time  # type: ignore[operator]
    assert "101 (media-vm): record" not in runs  # the test did not pass: nothing noted
    assert "9900" not in lab.state()["guests"]
    with pytest.raises(RunFailed) as info:
        state.result()
    [row] = info.value.report.rows
    assert row.outcome is Outcome.FAILED
    assert row.detail.startswith("not up after 1s") and row.detail.endswith(
        "; scratch guest destroyed"
    )
    assert (row.cell("scratch"), row.cell("boot"), row.cell("agent")) == (
        "9900",
        "not up",
        "no answer",
    )
    archives = lab.state()["storages"]["nas-backup"]["archives"]
    assert not any("restore test" in a["notes"] for a in archives)


def test_a_transient_api_error_on_the_destroy_step_is_retried_by_prefect(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    fast_lab.fault(target="api", method="DELETE", path="^/nodes/pve1/qemu/9900$",
                   action="error", status=503, message="service unavailable", times=1)  # fmt: skip
    state = restore_test(select="101", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    destroy = task_runs(state)["101 (media-vm): destroy"]
    names = state_names(destroy.id)
    assert "Retrying" in names and names[-1] == "Completed", names
    [row] = state.result().rows
    assert row.outcome is Outcome.OK and row.detail == "booted; scratch guest destroyed"
    assert "9900" not in fast_lab.state()["guests"]
