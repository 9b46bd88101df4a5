"""End to end: a restore test's scratch guest is moxflow's own (issue 15, item 5). It carries
moxflow's mark, no other job selects or touches it, and the next restore test destroys it if a
run left it behind; a guest on a scratch VMID without the mark is never destroyed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.jobs.guest_snapshot import guest_snapshot
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from labsim.client import LabClient
from moxflow.errors import ConfigError, RunFailed
from moxflow.report import Outcome, RunReport
from tests.flows.test_restore import fast_lab, mutating_vmids, stable

__all__ = ["fast_lab"]  # the fixture, shared with the restore tests


def leave_scratch_behind(lab: LabClient, inventory: Path) -> RunReport:
    """A restore test of 101 whose scratch guest 9900 cannot be destroyed: it stays."""
    lab.fault(target="api", method="DELETE", path="^/nodes/pve1/qemu/9900$", action="error",
              status=403, message="Permission check failed")  # fmt: skip
    with pytest.raises(RunFailed) as info:
        restore_test(select="101", inventory=str(inventory))
    lab.clear_faults()
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def test_a_scratch_guest_left_behind_is_marked_skipped_by_every_job_and_cleared_next_time(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    original = stable(lab.guest(101))
    [row] = leave_scratch_behind(lab, lab_inventory).rows
    assert row.outcome is Outcome.NEEDS_ATTENTION and "9900 NOT cleaned up" in row.detail
    # the scratch guest carries moxflow's mark, which Proxmox keeps: tag, name, description
    scratch = lab.guest(9900)
    assert scratch["tags"] == ["moxflow-scratch"]
    assert scratch["name"] == "moxflow-scratch-media-vm"
    description = lab.state()["guests"]["9900"]["config"]["description"]
    assert description.startswith("moxflow: restore test's scratch copy of 101 (media-vm)")
    assert stable(lab.guest(101)) == original

    # no other job selects it, even by @all: no snapshot, no backup, no request naming it
    since = len(lab.api_requests())
    snaps = guest_snapshot(label="daily", select="@all", inventory=str(lab_inventory))
    assert isinstance(snaps, RunReport)
    rows = {r.target: r for r in snaps.rows}
    skipped = rows["9900 (moxflow-scratch-media-vm)"]
    assert skipped.outcome is Outcome.SKIPPED and "scratch guest" in skipped.detail
    assert rows["101 (media-vm)"].outcome is Outcome.OK
    assert lab.state()["guests"]["9900"]["snapshots"] == {}
    backups = vzdump_backup(select="101,9900", offsite=False, inventory=str(lab_inventory))
    assert isinstance(backups, RunReport)
    outcomes = {r.target: r.outcome for r in backups.rows}
    assert outcomes["9900 (moxflow-scratch-media-vm)"] is Outcome.SKIPPED
    archives = lab.state()["storages"]["nas-backup"]["archives"]
    assert not [a for a in archives if a["vmid"] == 9900]
    assert 9900 not in mutating_vmids(lab, since=since)

    # the next restore test destroys it first (its mark says it may), then tests as usual
    original = stable(lab.guest(101))
    since = len(lab.api_requests())
    report = restore_test(select="101", inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.OK and row.cell("scratch") == "9900"
    assert any("leftover scratch guest 9900" in n and "destroyed" in n for n in report.notes)
    assert "9900" not in lab.state()["guests"]
    assert stable(lab.guest(101)) == original
    assert set(mutating_vmids(lab, since=since)) == {9900}


def test_a_guest_on_a_scratch_vmid_without_the_mark_is_never_destroyed(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    leave_scratch_behind(lab, lab_inventory)
    # someone takes the mark off: 9900 is not moxflow's any more, whatever its VMID
    lab.set_guest(9900, tags="mine", name="someones-vm")
    before = stable(lab.guest(9900))
    with pytest.raises(ConfigError, match=r"9900 is in use by 9900 \(someones-vm\).*not a restore"):
        restore_test(select="101", scratch_vmid=9900, inventory=str(lab_inventory))
    since = len(lab.api_requests())
    report = restore_test(select="101", inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.OK and row.cell("scratch") == "9901"
    assert not any("leftover" in n for n in report.notes)
    assert stable(lab.guest(9900)) == before
    touched = mutating_vmids(lab, since=since)
    assert touched and set(touched) == {9901}
    assert not [r for r in lab.api_requests()[since:] if re.search(r"/9900(/|$)", r["path"])
                and r["method"] != "GET"]  # fmt: skip


def test_a_scratch_guest_of_a_run_that_died_running_is_destroyed_by_the_next(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    """A restore test that died without Prefect hearing of it (still *Running* there) left
    its scratch guest. A live restore test would hold the scratch slot (two at once: the
    second is busy, tests/flows/test_targets.py); this run holds it, so the leftover is the
    dead run's and goes, and the test runs on the first scratch VMID again."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="restore-test-that-died")
    def other() -> None:
        return None

    lab = fast_lab
    leave_scratch_behind(lab, lab_inventory)
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(other, state=Running())
    text = lab.state()["guests"]["9900"]["config"]["description"]
    lab.set_guest(9900, description=re.sub(r"by run [0-9a-f-]+", f"by run {running.id}", text))
    report = restore_test(select="101", inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    [row] = report.rows
    assert row.outcome is Outcome.OK and row.cell("scratch") == "9900"
    assert any("leftover scratch guest 9900" in n and "destroyed" in n for n in report.notes)
    assert "9900" not in lab.state()["guests"]
