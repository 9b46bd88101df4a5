"""One mutating job per target (tasks/targets.py): a guest, host or scratch range another
moxflow run holds is left alone and reported busy by every job; the slots are Prefect global
concurrency limits anyone can see. (A holder killed outright frees its slot by itself:
tests/system/test_leases.py, against a real server.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.jobs.guest_snapshot import guest_snapshot
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from labsim.client import LabClient
from moxflow.errors import TargetBusyError
from moxflow.report import Outcome, RunReport
from tasks.targets import SCRATCH_TARGET, Reserved, guest_target, hold, make_slots
from tests.flows.conftest import guest_snapshots


def rows(report: RunReport) -> dict[int, tuple[Outcome, str]]:
    """Each guest's row (a backup's coverage rows aside)."""
    return {
        int(r.target.split()[0]): (r.outcome, r.detail)
        for r in report.rows
        if not r.target.endswith("coverage")
    }


def test_a_guest_another_run_holds_is_busy_for_snapshots_and_backups(
    fresh_lab: LabClient, lab_inventory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Guest 101 held (as a running backup, restore or update of it holds it): the snapshot
    and backup runs leave it alone, say who holds it, do the others, and end not OK. The
    failed step's log line says so without a traceback."""
    before = fresh_lab.state()
    with hold([guest_target(101)]):
        snap = guest_snapshot(
            label="daily",
            select="100,101",
            lock_timeout=0.5,
            inventory=str(lab_inventory),
            return_state=True,
        )
        dump = vzdump_backup(
            select="101,100",
            offsite=False,
            lock_timeout=0.5,
            inventory=str(lab_inventory),
            return_state=True,
        )
    failed = [r for r in caplog.records if "failed with exception: TargetBusyError" in r.message]
    assert failed and all(r.exc_info is None and not r.exc_text for r in failed)
    state = fresh_lab.state()
    for run in (snap, dump):
        assert run.is_failed()
        report = run.result(raise_on_failure=False).report
        outcome, why = rows(report)[101]
        assert outcome is Outcome.BUSY
        assert "another moxflow run holds moxflow-guest-101" in why
        assert rows(report)[100][0] is Outcome.OK
    assert guest_snapshots(state, 101) == guest_snapshots(before, 101)
    archives = [a for s in state["storages"].values() for a in s["archives"]]
    assert not any(a["vmid"] == 101 for a in archives if a not in _archives(before))
    assert any(a["vmid"] == 100 for a in archives if a not in _archives(before))


def _archives(state: dict[str, object]) -> list[object]:
    return [a for s in state["storages"].values() for a in s["archives"]]  # type: ignore[attr-defined]


def test_a_restore_test_waits_for_no_other_restore_test(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """Two restore tests never share the scratch range: while one holds it, the other
    restores nothing and reports each guest busy."""
    before = set(fresh_lab.state()["guests"])
    with hold([SCRATCH_TARGET], wait=0):
        run = restore_test(
            select="101", lock_timeout=0.5, inventory=str(lab_inventory), return_state=True
        )
    assert run.is_failed()
    report = run.result(raise_on_failure=False).report
    assert [r.outcome for r in report.rows] == [Outcome.BUSY]
    assert f"another moxflow run holds {SCRATCH_TARGET}" in report.rows[0].detail
    assert set(fresh_lab.state()["guests"]) == before  # no scratch guest was made


def test_a_proxmox_roll_waits_for_a_restore_test_and_is_busy_after(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """A restore test runs (it holds the scratch slot): a Proxmox update does not read or
    plan around its scratch guest; it waits, then leaves every node busy, nothing changed."""
    from flows.jobs.proxmox_update import proxmox_update

    before = {n: h.get("apt") for n, h in fresh_lab.state()["hosts"].items() if h.get("apt")}
    with hold([SCRATCH_TARGET], wait=0):
        run = proxmox_update(lock_timeout=0.5, inventory=str(lab_inventory), return_state=True)
    assert run.is_failed()
    report = run.result(raise_on_failure=False).report
    assert {r.target: r.outcome for r in report.rows} == {
        "pve1": Outcome.BUSY,
        "pve2": Outcome.BUSY,
    }
    assert f"another moxflow run holds {SCRATCH_TARGET}" in report.rows[0].detail
    after = {n: h.get("apt") for n, h in fresh_lab.state()["hosts"].items() if h.get("apt")}
    assert after == before


def test_the_slots_are_prefect_global_concurrency_limits(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """A run leaves a limit of 1 per target it held on the server (the UI's Concurrency
    page), with no slot in use once it is over."""
    restore_test(select="101", inventory=str(lab_inventory))
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(SCRATCH_TARGET)
    assert (limit.limit, limit.active_slots) == (1, 0)


def _holder(slot: str, entered: threading.Event, release: threading.Event, log: list[str]) -> None:
    with hold([slot], wait=0):
        entered.set()
        release.wait(30)
        log.append("released")


def test_a_slot_freed_while_waiting_is_taken_then() -> None:
    """A run waiting for a slot another holds gets it once that one lets go, well before
    its wait is over."""
    slot, entered, release, log = guest_target(4242), threading.Event(), threading.Event(), []
    other = threading.Thread(target=_holder, args=(slot, entered, release, log))
    other.start()
    assert entered.wait(30)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    with hold([slot], wait=60):
        log.append("taken")
        waited = time.monotonic() - started
    other.join(30)
    assert log == ["released", "taken"]
    assert waited < 30  # not the whole wait: taken once it was free


def test_a_slot_held_throughout_is_busy_after_the_wait_naming_it() -> None:
    slot, entered, release, log = guest_target(4243), threading.Event(), threading.Event(), []
    other = threading.Thread(target=_holder, args=(slot, entered, release, log))
    other.start()
    try:
        assert entered.wait(30)
        started = time.monotonic()
        with pytest.raises(TargetBusyError) as info, hold([slot], wait=1.5):
            log.append("taken")
        waited = time.monotonic() - started
    finally:
        release.set()
        other.join(30)
    assert log == ["released"]  # never taken while the other held it
    assert f"another moxflow run holds {slot}" in str(info.value)
    assert 1.5 <= waited < 1.5 + 10  # the wait, once (a request and its backoff over it)


def test_a_slot_whose_limit_was_deleted_by_hand_is_made_again() -> None:
    """A limit deleted on the server (by hand, in the UI) after this process made it: the
    next hold makes it again instead of failing."""
    slot = guest_target(4244)
    with hold([slot], wait=0):
        pass
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(slot)
    with hold([slot], wait=5):
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(slot)
        assert (limit.limit, limit.active_slots) == (1, 1)


def test_make_slots_creates_the_missing_limits_and_leaves_the_others() -> None:
    """The slots a run is about to take are made beforehand: a missing one with a limit of 1;
    one that exists (a limit raised by hand) is left as it is."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    made, kept = guest_target(4250), guest_target(4251)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=kept, limit=3))
    make_slots([made, kept, made])
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(made).limit == 1
        assert client.read_global_concurrency_limit_by_name(kept).limit == 3


def _active(slot: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(slot).active_slots


def test_a_reserved_slot_is_held_from_the_take_to_the_end_of_its_step() -> None:
    """Taken ahead (while the node's step before runs): held before the step enters, held
    through it, free when it leaves; a second run meanwhile finds it busy."""
    slot = guest_target(4245)
    reserved = Reserved([slot], wait=5)
    with reserved:
        assert _active(slot) == 1
        with pytest.raises(TargetBusyError), hold([slot], wait=0):
            pass
    assert _active(slot) == 0
    reserved.cancel()  # after its step: nothing left to give back
    assert _active(slot) == 0


def test_a_reservation_its_step_never_entered_is_given_back_by_cancel() -> None:
    slot = guest_target(4246)
    reserved = Reserved([slot], wait=5)
    reserved._taken.join(30)
    assert _active(slot) == 1
    reserved.cancel()
    assert _active(slot) == 0
    with pytest.raises(RuntimeError, match="moxflow-guest-4246 is released"), reserved:
        pass


def test_a_reservation_of_a_slot_another_run_holds_is_busy_after_the_steps_own_wait() -> None:
    """Held by another run when asked for ahead, and throughout: the step waits its whole
    ``wait`` from its own start, then the guest is busy."""
    slot, entered, release, log = guest_target(4247), threading.Event(), threading.Event(), []
    other = threading.Thread(target=_holder, args=(slot, entered, release, log))
    other.start()
    try:
        assert entered.wait(30)
        reserved = Reserved([slot], wait=1.0)
        reserved._taken.join(30)
        started = time.monotonic()
        with pytest.raises(TargetBusyError, match=slot), reserved:
            log.append("taken")
        waited = time.monotonic() - started
    finally:
        release.set()
        other.join(30)
    assert log == ["released"]
    assert waited >= 1.0  # the step's own wait, not what was left of one begun ahead
    reserved.cancel()
    assert _active(slot) == 0


def test_a_slot_held_when_asked_for_ahead_but_freed_by_the_step_is_taken() -> None:
    """Another run held the guest while the dump before it ran, and let go before this
    guest's step started: the step takes it (the wait counts from the step's start, as
    without the reservation), never busy."""
    slot, entered, release, log = guest_target(4248), threading.Event(), threading.Event(), []
    other = threading.Thread(target=_holder, args=(slot, entered, release, log))
    other.start()
    assert entered.wait(30)
    reserved = Reserved([slot], wait=1.0)
    reserved._taken.join(30)  # asked for ahead: held by the other run (longer than the wait)
    release.set()
    other.join(30)
    with reserved:
        log.append("taken")
        assert _active(slot) == 1
    assert log == ["released", "taken"]
    assert _active(slot) == 0
