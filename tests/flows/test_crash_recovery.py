"""Runs killed outright (SIGKILL, as a crash or the OOM killer does) at each dangerous
point, then the runs that follow. A backup killed during its vzdump: the next run adopts the
dump still running in Proxmox. A restore test killed with its scratch guest up: the next
one destroys that guest. A NixOS update, as docs/operating.md tells a user to go on:

A killed ad-hoc run stays *Running* in Prefect, and its host's slot stays taken until its
lease runs out (tests/system/test_leases.py proves the server's sweep frees it; the test
server here has no sweep, so each test resets the slot as the sweep would). Then:

1. the next run leaves the host **busy** (never OK), naming the dead run;
2. the user cancels that run (`prefect flow-run cancel`: it stays *Cancelling*);
3. the next run recognises what the dead run left, cleans up, and updates the host.
Nothing is lost: no generation the update did not verify stays active, no lock, no timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from flows.jobs.nixos_update import nixos_update
from flows.jobs.offsite_copy import offsite_copy
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from labsim.client import LabClient, wait_until
from moxflow.report import Outcome, RunReport
from tasks.targets import SCRATCH_TARGET, guest_target, host_target
from tests.flows.conftest import edit_inventory, free_slots
from tests.flows.test_nixos_update import (
    NEW_REV,
    assert_settled,
    current,
    detail,
    inventory_with,
    lock_dir,
    nixos,
    outcome,
)

ROOT = Path(__file__).resolve().parents[2]


def _ran(lab: LabClient, prefix: str) -> bool:
    return any(c["host"] == "media" and c["command"].startswith(prefix) for c in lab.commands())


POINTS: dict[str, Callable[[LabClient, int], bool]] = {
    # the snapshot is taken and the flake update has begun
    "after the snapshot": lambda lab, old: _ran(lab, "nix flake"),
    # the build runs (it takes a while here)
    "during the build": lambda lab, old: _ran(lab, "nixos-rebuild build"),
    # the new generation is active, not yet verified (the dead-man timer is armed)
    "right after the switch": lambda lab, old: current(lab.state(), "media") != old,
}


@pytest.mark.parametrize("point", list(POINTS))
def test_a_nixos_update_killed_at_a_dangerous_point_is_recovered(
    fresh_lab: LabClient, tmp_path: Path, point: str
) -> None:
    lab = fresh_lab
    inv = inventory_with(lab, tmp_path.name, confirm_timeout=200.0)
    lab.nixos("media", upstream=NEW_REV, build_seconds=120.0)  # 3 s of real time
    old = current(lab.state(), "media")
    args = ["flows.nixos_update", "--inventory", str(inv), "--only", "media"]
    kill_when(args, lambda: POINTS[point](lab, old), tmp_path / "killed.log", within=60)
    lab.nixos("media", build_seconds=0.0)
    for slot in (host_target("media"), guest_target(101)):
        free_slots(slot)

    # 1. busy, naming the dead run: it is still Running as far as Prefect knows
    busy = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert busy.is_failed()
    report: RunReport = busy.result(raise_on_failure=False).report
    assert outcome(report, "media") is Outcome.BUSY
    dead = _dead_run_id(detail(report, "media"))
    # 2. cancel it, as the docs say
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(dead, Cancelling(), force=True)
    # 3. recovered and updated
    done = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    report = done.result(raise_on_failure=False)
    assert done.is_completed(), report
    assert outcome(report, "media") is Outcome.OK
    assert "found an interrupted run" in detail(report, "media")
    state = nixos(lab.state(), "media")
    assert state["flake_rev"] == NEW_REV
    assert_settled(lab, "media", state["current"])
    assert state["current"] != old
    assert not lock_dir(lab, "media").exists()


def kill_when(args: list[str], ready: Callable[[], bool], log: Path, within: float = 90) -> None:
    """Run ``python -m ARGS`` (an ad-hoc run on the test server), its output in ``log``, and
    SIGKILL it once ``ready()``; a run that ends first, or never gets there within
    ``within`` seconds, fails the test with the end of that output."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        try:
            wait_until(lambda: ready() or child.poll() is not None, within)
        except TimeoutError:
            pytest.fail(f"the run never got to the point to kill it at:\n{_tail(log)}")
        if child.poll() is not None:
            pytest.fail(f"the run ended before the point to kill it at:\n{_tail(log)}")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait(10)


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:]


def test_a_backup_killed_during_its_vzdump_is_finished_by_the_next_run(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    """The killed run's vzdump goes on in Proxmox: the next run waits for that task and
    takes its archive (one archive, one vzdump), and copies it offsite."""
    lab = fresh_lab
    lab.set_storage("nas-backup", bandwidth=10**13)
    # long enough to outlive the kill, the slots freed and the next run's pre-flight under load
    lab.fault(target="task", type="vzdump", id="101", action="slow", delay=15.0, times=1)
    before = {a["filename"] for a in lab.state()["storages"]["nas-backup"]["archives"]}
    args = ["flows.vzdump_backup", "--inventory", str(lab_inventory), "--select", "101"]
    kill_when(args, lambda: any(t.get("type") == "vzdump" for t in _tasks(lab)), tmp_path / "k.log")
    free_slots(guest_target(101))
    report = vzdump_backup(select="101", inventory=str(lab_inventory))
    (row,) = [r for r in report.rows if r.target == "101 (media-vm)"]
    assert row.outcome is Outcome.OK and "of an earlier run" in row.detail
    new = {
        a["filename"]
        for a in lab.state()["storages"]["nas-backup"]["archives"]
        if a["filename"] not in before
    }
    assert new == {row.taken}
    assert sum(1 for t in _tasks(lab) if t.get("type") == "vzdump") == 1
    offsite = Path(lab.info["offsite"]["path"])
    assert (offsite / str(row.taken)).exists()
    assert not list(offsite.glob("*.part"))


def test_a_restore_test_killed_with_its_scratch_guest_up_is_cleaned_by_the_next(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    """Killed while the scratch guest boots: the next restore test destroys that scratch
    guest (by moxflow's mark), never an original, and tests again."""
    lab = fresh_lab
    originals = {v for v, g in lab.state()["guests"].items() if not g["name"].startswith("moxflow")}
    args = ["flows.restore_test", "--inventory", str(lab_inventory), "--select", "101"]
    kill_when(args, lambda: "9900" in lab.state()["guests"], tmp_path / "killed.log")
    free_slots(SCRATCH_TARGET)
    report = restore_test(select="101", inventory=str(lab_inventory))
    assert [r.outcome for r in report.rows] == [Outcome.OK]
    assert any("leftover scratch guest 9900" in n and "destroyed" in n for n in report.notes)
    guests = lab.state()["guests"]
    assert originals <= set(guests)
    assert not [v for v, g in guests.items() if g["name"].startswith("moxflow-scratch")]


def test_an_offsite_copy_killed_half_way_is_redone_whole_by_the_next(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    """Killed while a copy is being written (NAME.part on the offsite host): the next run
    copies the archive again, checks it, and leaves no partial file; the half copy never
    counted as a copy."""
    lab = fresh_lab
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {'[offsite]\nhost = "offsite"': '[offsite]\nbwlimit = 2\nhost = "offsite"'},
    )
    folder = Path(lab.info["offsite"]["path"])
    args = ["flows.offsite_copy", "--inventory", str(inv), "--select", "104"]
    kill_when(
        args, lambda: any(p.name.endswith(".part") for p in folder.iterdir()), tmp_path / "k.log"
    )
    assert any(p.name.endswith(".part") for p in folder.iterdir())  # killed half-way
    report = offsite_copy(select="104", inventory=str(inv))
    [row] = [r for r in report.rows if r.target.endswith("offsite")]
    assert row.outcome is Outcome.OK
    copies = [p for p in folder.iterdir() if "-104-" in p.name]
    assert copies and not [p for p in folder.iterdir() if p.name.endswith(".part")]
    sources = {a["filename"]: a for a in lab.state()["storages"]["nas-backup"]["archives"]}
    assert {p.name for p in copies} <= set(sources)


def _tasks(lab: LabClient) -> list[dict[str, object]]:
    tasks: list[dict[str, object]] = lab.state()["tasks"]
    return tasks


def _dead_run_id(why: str) -> uuid.UUID:
    """The flow run a busy row names: ``another run (flow run ID) is updating media``."""
    marker = "(flow run "
    assert marker in why, why
    start = why.index(marker) + len(marker)
    return uuid.UUID(why[start : why.index(")", start)])
