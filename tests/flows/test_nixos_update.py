"""End to end: flows.nixos_update against the lab's simulated NixOS hosts.

Each test asserts the hosts' state afterwards (generation, failed units, snapshots, timers,
lock), not just the report.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.jobs.nixos_update import nixos_update
from flows.nixos_update import main
from labsim.client import LabClient, wait_until
from moxflow.errors import RunFailed
from moxflow.naming import snapshot_name
from moxflow.report import Outcome, RunReport
from moxflow.snapshots import utc_now
from tests.flows.conftest import guest_snapshots, state_names, step_runs, subflow_runs, task_runs

GUEST = {"dns": 100, "media": 101, "builder": 102}
NEW_REV = "0123456789abcdef0123456789abcdef01234567"


def inventory_with(lab: LabClient, name: str, confirm_timeout: float) -> Path:
    """The lab's inventory with other timeouts.

    The lab runs its clock fast (its timers fire after confirm_timeout x its time scale)
    while moxflow waits in real seconds: 200 s here is 5 s of the lab's dead-man timer.
    """
    text = (lab.dir / "inventory.toml").read_text()
    text = re.sub(r"(?m)^confirm_timeout = .*$", f"confirm_timeout = {confirm_timeout}", text)
    text = re.sub(r"(?m)^health_grace = .*$", "health_grace = 2.0", text)
    dst = lab.dir / f"{name}-nixos.toml"
    dst.write_text(text)
    return dst


@pytest.fixture
def inv(fresh_lab: LabClient, tmp_path: Path) -> Path:
    return inventory_with(fresh_lab, tmp_path.name, confirm_timeout=200.0)


@pytest.fixture
def inv_quick_timer(fresh_lab: LabClient, tmp_path: Path) -> Path:
    """A dead-man timer that fires at once (for the cases where it is broken anyway)."""
    return inventory_with(fresh_lab, tmp_path.name, confirm_timeout=8.0)


def nixos(state: dict[str, Any], host: str) -> dict[str, Any]:
    return dict(state["hosts"][host]["nixos"])


def current(state: dict[str, Any], host: str) -> int:
    return int(nixos(state, host)["current"])


def pre_update_snaps(state: dict[str, Any], host: str) -> set[str]:
    return {n for n in guest_snapshots(state, GUEST[host]) if n.startswith("moxflow-pre-update-")}


def lock_dir(lab: LabClient, host: str) -> Path:
    return lab.dir / "hosts" / host / "var" / "lib" / "moxflow" / "update.lock"


def run(inv: Path, **params: Any) -> RunReport:
    return nixos_update(inventory=str(inv), **params)


def run_failing(inv: Path, **params: Any) -> RunReport:
    with pytest.raises(RunFailed) as info:
        nixos_update(inventory=str(inv), **params)
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def outcome(report: RunReport, host: str) -> Outcome:
    return next(r.outcome for r in report.rows if r.target == host)


def detail(report: RunReport, host: str) -> str:
    return next(r.detail for r in report.rows if r.target == host)


def assert_settled(lab: LabClient, host: str, generation: int) -> None:
    """The host runs ``generation``, nothing failed, no timer, no lock left behind."""
    st = nixos(lab.state(), host)
    assert st["current"] == generation
    assert st["failed_units"] == []
    assert st["timers"] == []
    assert st["up"] is True
    assert st["network_cut"] is False
    assert not lock_dir(lab, host).exists()


def test_nothing_to_update(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    report = run(inv, only=["media"])
    assert outcome(report, "media") is Outcome.OK
    assert "up to date" in detail(report, "media")
    assert_settled(fresh_lab, "media", before)
    assert pre_update_snaps(fresh_lab.state(), "media") == set()  # released
    # unchanged generation, and no snapshot left to name
    assert report.table()[0] == {
        "host": "media", "generation": str(before), "snapshot": "—", "outcome": "ok",
        "detail": detail(report, "media"),
    }  # fmt: skip


def test_success_updates_and_keeps_the_snapshot(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    report = run(inv, only=["media"])
    assert outcome(report, "media") is Outcome.OK
    assert_settled(fresh_lab, "media", before + 1)
    state = fresh_lab.state()
    assert nixos(state, "media")["flake_rev"] == NEW_REV
    [snap] = pre_update_snaps(state, "media")
    # the report speaks NixOS: generation before → after, the snapshot kept, the verdict
    [row] = report.rows
    assert (row.cell("generation"), row.cell("snapshot")) == (f"{before} → {before + 1}", snap)
    head, line = report.to_text().splitlines()[:2]
    assert head.split() == ["HOST", "GENERATION", "SNAPSHOT", "OUTCOME", "DETAIL"]
    assert line.split()[:6] == ["media", str(before), "→", str(before + 1), snap, "ok"]
    assert report.table()[0]["generation"] == f"{before} → {before + 1}"
    assert not {"taken", "kept", "removed"} & set(report.table()[0])


def test_build_failure_activates_nothing(fresh_lab: LabClient, inv: Path) -> None:
    st0 = nixos(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV, build_fails=True)
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.FAILED
    assert "build failed" in detail(report, "media")
    assert_settled(fresh_lab, "media", st0["current"])
    assert nixos(fresh_lab.state(), "media")["flake_rev"] == st0["flake_rev"]  # lock restored


def test_failed_units_roll_back_the_generation(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    rev = nixos(fresh_lab.state(), "media")["flake_rev"]
    fresh_lab.nixos("media", upstream=NEW_REV, failed_units=["jellyfin.service"])
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.ROLLED_BACK
    assert "jellyfin.service" in detail(report, "media")
    assert "generation rollback" in detail(report, "media")
    assert_settled(fresh_lab, "media", before)
    [row] = report.table()
    assert row["generation"] == str(before) and row["outcome"] == "rolled back"
    assert row["snapshot"].startswith("moxflow-pre-update-")
    # flake.lock is back too, so the next run sees the update again and retries it
    assert nixos(fresh_lab.state(), "media")["flake_rev"] == rev


def rollback_events(host: str) -> list[Any]:
    """``moxflow.rollback`` events about ``host`` the Prefect server has recorded."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(event=EventNameFilter(name=["moxflow.rollback"])), limit=50
        )
    return [e for e in page.events if e.resource.id == f"moxflow.host.{host}"]  # newest first


def test_a_rollback_emits_an_event(fresh_lab: LabClient, inv: Path) -> None:
    seen = len(rollback_events("media"))
    fresh_lab.nixos("media", upstream=NEW_REV, failed_units=["jellyfin.service"])
    run_failing(inv, only=["media"])
    events = wait_until(
        lambda: (found := rollback_events("media")) and len(found) > seen and found, timeout=20
    )
    assert events[0].payload["how"] == "generation rollback"
    assert any("jellyfin.service" in step for step in events[0].payload["steps"])


def test_failing_health_check_rolls_back(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV, health_broken=True)
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.ROLLED_BACK
    assert "health check failed" in detail(report, "media")
    assert_settled(fresh_lab, "media", before)


def test_network_cut_is_reverted_by_the_dead_man_timer(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV, cut_network=True)
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.ROLLED_BACK
    assert "dead-man timer" in detail(report, "media")
    assert_settled(fresh_lab, "media", before)


def test_dead_man_failing_too_rolls_back_the_snapshot(
    fresh_lab: LabClient, inv_quick_timer: Path
) -> None:
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV, cut_network=True, deadman_broken=True)
    report = run_failing(inv_quick_timer, only=["media"])
    assert outcome(report, "media") is Outcome.ROLLED_BACK
    assert "snapshot rollback" in detail(report, "media")
    state = fresh_lab.state()
    assert current(state, "media") == before
    assert state["guests"]["101"]["status"] == "running"
    assert nixos(state, "media")["network_cut"] is False


def test_snapshot_rollback_failing_needs_attention_and_keeps_the_snapshot(
    fresh_lab: LabClient, inv_quick_timer: Path
) -> None:
    fresh_lab.nixos("media", upstream=NEW_REV, cut_network=True, deadman_broken=True)
    fresh_lab.fault(
        target="task",
        type="qmrollback",
        id="101",
        action="error",
        exitstatus="rollback failed: storage is unavailable",
    )
    report = run_failing(inv_quick_timer, only=["media"])
    assert outcome(report, "media") is Outcome.NEEDS_ATTENTION
    snaps = pre_update_snaps(fresh_lab.state(), "media")
    assert len(snaps) == 1
    snap = snaps.pop()
    assert snap in detail(report, "media")
    # named in its column too; what the host runs now is not known
    [row] = report.rows
    assert row.cell("snapshot") == snap and row.cell("generation").endswith(" → ?")


def test_failing_canary_leaves_every_other_host_untouched(fresh_lab: LabClient, inv: Path) -> None:
    state0 = fresh_lab.state()
    for host in GUEST:
        fresh_lab.nixos(host, upstream=NEW_REV)
    fresh_lab.nixos("dns", upstream=NEW_REV, build_fails=True)
    report = run_failing(inv)
    assert outcome(report, "dns") is Outcome.FAILED
    state = fresh_lab.state()
    for host in ("media", "builder"):
        assert outcome(report, host) is Outcome.SKIPPED
        assert current(state, host) == current(state0, host)
        assert nixos(state, host)["flake_rev"] == nixos(state0, host)["flake_rev"]
        assert pre_update_snaps(state, host) == set()


def test_dry_run_changes_nothing(fresh_lab: LabClient, inv: Path) -> None:
    for host in GUEST:
        fresh_lab.nixos(host, upstream=NEW_REV)
    before = fresh_lab.state()
    report = run(inv, dry_run=True)
    after = fresh_lab.state()
    assert {r.outcome for r in report.rows} == {Outcome.PLANNED}
    for host in GUEST:
        assert nixos(after, host) == nixos(before, host)
        assert guest_snapshots(after, GUEST[host]) == guest_snapshots(before, GUEST[host])
    assert "wave 1" in detail(report, "dns")
    assert all(r["method"] == "GET" for r in fresh_lab.api_requests())


def test_a_host_being_updated_by_another_run_is_busy_and_the_run_not_ok(
    fresh_lab: LabClient, inv: Path
) -> None:
    """A host another live run holds is left alone, and the run says so loudly: the row is
    busy (who holds it since when, what to do), the run Failed (so it notifies), not OK."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="someone-else")
    def other() -> None:
        return None

    with get_client(sync_client=True) as client:
        run_ = client.create_flow_run(other, state=Running())
    journal = {
        "run_id": uuid.uuid4().hex,
        "flow_run_id": str(run_.id),
        "host": "media",
        "phase": "built",
        "old_generation": 1,
        "new_generation": None,
        "snapshot": None,
        "started": "2026-11-26T01:00:00+00:00",
    }
    lock_dir(fresh_lab, "media").mkdir(parents=True)
    (lock_dir(fresh_lab, "media").parent / "journal.json").write_text(json.dumps(journal))
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_failed() and state.message == "1 target(s) busy: media"
    report = state.result(raise_on_failure=False).report
    assert outcome(report, "media") is Outcome.BUSY
    why = detail(report, "media")
    assert f"another run (flow run {run_.id}) is updating media" in why
    assert "since 2026-11-26 01:00 UTC" in why and "phase built" in why
    assert "cancel it in the Prefect UI" in why
    assert "INCOMPLETE" in report.summary() and "1 busy" in report.summary()
    assert current(fresh_lab.state(), "media") == before
    assert lock_dir(fresh_lab, "media").exists()  # the other run's lock is not broken


def test_cancelling_a_dead_run_as_the_docs_say_frees_its_host(
    fresh_lab: LabClient, inv: Path
) -> None:
    """docs/operating.md: a host busy for a run that died on a worker (Prefect still shows it
    Running) is freed by cancelling that run. `prefect flow-run cancel` leaves a run with no
    process *Cancelling* for ever; the next run, holding the host's slot, cleans up after it
    and updates the host."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling, Running

    @flow(name="died-on-a-worker")
    def other() -> None:
        return None

    with get_client(sync_client=True) as client:
        run_ = client.create_flow_run(other, state=Running())
    journal = {
        "run_id": uuid.uuid4().hex,
        "flow_run_id": str(run_.id),
        "host": "media",
        "phase": "built",
        "old_generation": 1,
        "new_generation": None,
        "snapshot": None,
        "started": "2026-11-26T01:00:00+00:00",
    }
    lock_dir(fresh_lab, "media").mkdir(parents=True)
    (lock_dir(fresh_lab, "media").parent / "journal.json").write_text(json.dumps(journal))
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    busy = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert outcome(busy.result(raise_on_failure=False).report, "media") is Outcome.BUSY
    with get_client(sync_client=True) as client:  # what `prefect flow-run cancel ID` does
        client.set_flow_run_state(run_.id, Cancelling(), force=True)
        assert client.read_flow_run(run_.id).state.is_cancelling()  # type: ignore[union-attr]
    report = run(inv, only=["media"])
    assert outcome(report, "media") is Outcome.OK
    assert "found an interrupted run" in detail(report, "media")
    assert current(fresh_lab.state(), "media") > before
    assert not lock_dir(fresh_lab, "media").exists()


def test_a_host_another_run_holds_is_busy_before_its_lock_is_read(
    fresh_lab: LabClient, inv: Path
) -> None:
    """Another moxflow run holding the host's slot (tasks.targets, as every update of it
    does) leaves the host alone: busy, nothing read or changed on it, no lock taken."""
    from tasks.targets import hold, host_target

    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    with hold([host_target("media")]):  # [nixos] lock_wait = 0: one try
        state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    report = state.result(raise_on_failure=False).report
    assert state.is_failed()
    assert outcome(report, "media") is Outcome.BUSY
    assert "another moxflow run holds moxflow-host-media" in detail(report, "media")
    assert current(fresh_lab.state(), "media") == before
    assert not lock_dir(fresh_lab, "media").exists()


def test_a_busy_canary_stops_the_roll(fresh_lab: LabClient, inv: Path) -> None:
    """The canary is busy (another live run holds it): no canary result, so the later waves
    do not start, as after a failed canary."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from moxflow.inventory import load_inventory
    from moxflow.nixos import plan_update

    @flow(name="someone-else")
    def other() -> None:
        return None

    plan = plan_update(load_inventory(inv), [], max_parallel=None)
    [canary] = plan.waves[0]
    with get_client(sync_client=True) as client:
        run_ = client.create_flow_run(other, state=Running())
    journal = {
        "run_id": uuid.uuid4().hex, "flow_run_id": str(run_.id), "host": canary,
        "phase": "built", "old_generation": 1, "new_generation": None, "snapshot": None,
        "started": "2026-11-26T01:00:00+00:00",
    }  # fmt: skip
    lock_dir(fresh_lab, canary).mkdir(parents=True)
    (lock_dir(fresh_lab, canary).parent / "journal.json").write_text(json.dumps(journal))
    for host in GUEST:
        fresh_lab.nixos(host, upstream=NEW_REV)
    before = {h: current(fresh_lab.state(), h) for h in GUEST}
    report = run_failing(inv)
    assert outcome(report, canary) is Outcome.BUSY
    for host in (h for h in GUEST if h != canary):
        assert outcome(report, host) is Outcome.SKIPPED
        assert f"not started: {canary} not updated in wave 1" in detail(report, host)
    assert {h: current(fresh_lab.state(), h) for h in GUEST} == before


def test_a_run_killed_after_the_switch_is_recognised_and_cleaned_up(
    fresh_lab: LabClient, inv: Path
) -> None:
    """A dead run left: its lock, journal (phase switched), an armed timer, a new generation."""
    from moxflow.nixos import arm_deadman_argv

    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    flake = fresh_lab.dir / "hosts" / "media" / "etc" / "nixos"
    profile = str(fresh_lab.dir / "hosts" / "media" / "nix" / "var" / "nix" / "profiles" / "system")
    state_dir = fresh_lab.dir / "hosts" / "media" / "var" / "lib" / "moxflow"
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(flake / "flake.lock", state_dir / "flake.lock.before")  # as a run does first
    assert fresh_lab.exec("media", ["nix", "flake", "update", "--flake", str(flake)])[0] == 0
    argv = arm_deadman_argv(profile, before, 3600)
    rc, _, err = fresh_lab.exec("media", argv)
    assert rc == 0, err
    rc, _, err = fresh_lab.exec("media", ["nixos-rebuild", "switch", "--flake", f"{flake}#media"])
    assert rc == 0, err
    journal = {
        "run_id": uuid.uuid4().hex,
        "flow_run_id": str(uuid.uuid4()),
        "host": "media",
        "phase": "switched",
        "old_generation": before,
        "new_generation": before + 1,
        "snapshot": None,
        "started": "2026-11-26T01:00:00+00:00",
    }
    lock_dir(fresh_lab, "media").mkdir(parents=True)
    (lock_dir(fresh_lab, "media").parent / "journal.json").write_text(json.dumps(journal))
    assert nixos(fresh_lab.state(), "media")["timers"] != []

    report = run(inv, only=["media"])

    text = detail(report, "media")
    assert "interrupted run" in text
    assert "disarmed" in text
    assert f"reverted its unverified generation {before + 1} to {before}" in text
    # then this run did its own update properly
    assert outcome(report, "media") is Outcome.OK
    assert_settled(fresh_lab, "media", before + 2)


def test_a_run_killed_after_its_confirmation_keeps_its_update(
    fresh_lab: LabClient, inv: Path
) -> None:
    """A dead run had verified and confirmed (journal phase confirmed, no timer, the new
    generation active, its flake.lock.before still there): the update stands."""
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    flake = fresh_lab.dir / "hosts" / "media" / "etc" / "nixos"
    state_dir = fresh_lab.dir / "hosts" / "media" / "var" / "lib" / "moxflow"
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(flake / "flake.lock", state_dir / "flake.lock.before")
    assert fresh_lab.exec("media", ["nix", "flake", "update", "--flake", str(flake)])[0] == 0
    rc, _, err = fresh_lab.exec("media", ["nixos-rebuild", "switch", "--flake", f"{flake}#media"])
    assert rc == 0, err
    rev = nixos(fresh_lab.state(), "media")["flake_rev"]
    journal = {
        "run_id": uuid.uuid4().hex,
        "flow_run_id": str(uuid.uuid4()),
        "host": "media",
        "phase": "confirmed",
        "old_generation": before,
        "new_generation": before + 1,
        "snapshot": None,
        "started": "2026-11-26T01:00:00+00:00",
    }
    lock_dir(fresh_lab, "media").mkdir(parents=True)
    (state_dir / "journal.json").write_text(json.dumps(journal))

    report = run(inv, only=["media"])

    text = detail(report, "media")
    assert "interrupted run (phase confirmed)" in text and "stands" in text
    assert "reverted" not in text
    assert outcome(report, "media") is Outcome.OK and "up to date" in text
    assert_settled(fresh_lab, "media", before + 1)
    assert nixos(fresh_lab.state(), "media")["flake_rev"] == rev  # not put back
    assert not (state_dir / "flake.lock.before").exists()


def test_a_lock_without_a_journal_is_a_live_run_until_it_is_old(
    fresh_lab: LabClient, inv: Path
) -> None:
    """Another run between taking the lock and writing its journal is not a dead run: the
    host is busy and the lock kept. The same lock minutes old is a dead run's: cleared."""
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    lock_dir(fresh_lab, "media").mkdir(parents=True)
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.BUSY
    assert "took the lock moments ago" in detail(report, "media")
    assert lock_dir(fresh_lab, "media").exists()
    assert current(fresh_lab.state(), "media") == before
    old = time.time() - 600
    os.utime(lock_dir(fresh_lab, "media"), (old, old))
    report = run(inv, only=["media"])
    assert "interrupted run (phase unknown)" in detail(report, "media")
    assert outcome(report, "media") is Outcome.OK
    assert_settled(fresh_lab, "media", before + 1)


def test_a_lock_step_retried_after_taking_the_lock_keeps_it(
    fresh_lab: LabClient, inv: Path
) -> None:
    """The connection drops between taking the lock and writing the journal: Prefect tries
    the lock step again, which knows the journal-less lock is its own (not another run's)."""
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    fresh_lab.fault(target="command", host="media", command=r"journal\.json\.tmp",
                    action="drop", times=1)  # fmt: skip
    report = run(inv, only=["media"])
    assert outcome(report, "media") is Outcome.OK, detail(report, "media")
    assert_settled(fresh_lab, "media", before + 1)


def test_a_confirmation_that_fails_goes_to_the_recovery_steps(
    fresh_lab: LabClient, inv: Path
) -> None:
    """The timer cannot be stopped (it still says active): the update is not confirmed, and
    the recovery steps put the old generation back instead of a bare failure."""
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = current(fresh_lab.state(), "media")
    fresh_lab.fault(target="command", host="media",
                    command=r"^systemctl is-active moxflow-deadman\.timer$",
                    action="error", exit=0, stdout="active\n", times=50)  # fmt: skip
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.ROLLED_BACK, detail(report, "media")
    assert "confirmation failed" in detail(report, "media")
    fresh_lab.clear_faults()
    assert_settled(fresh_lab, "media", before)


def test_a_dead_man_timer_that_cannot_be_armed_activates_nothing(
    fresh_lab: LabClient, inv: Path
) -> None:
    st0 = nixos(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    fresh_lab.fault(target="command", host="media", command="^systemd-run ", action="error",
                    stderr="Failed to start transient timer unit", times=10)  # fmt: skip
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.FAILED
    assert "could not arm the dead-man timer, nothing activated" in detail(report, "media")
    assert_settled(fresh_lab, "media", st0["current"])
    after = fresh_lab.state()
    assert nixos(after, "media")["flake_rev"] == st0["flake_rev"]  # flake.lock put back
    assert pre_update_snaps(after, "media") == set()  # the snapshot dropped


def test_cli_help_and_bad_host(
    fresh_lab: LabClient, inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--inventory", str(inv), "--only", "nosuchhost"]) == 2
    assert "nosuchhost" in capsys.readouterr().err
    assert fresh_lab.commands() == []


def test_a_failed_snapshot_stops_the_host_before_any_change(
    fresh_lab: LabClient, inv: Path
) -> None:
    st0 = nixos(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    fresh_lab.fault(
        target="task",
        type="qmsnapshot",
        id="101",
        action="error",
        exitstatus="snapshot failed: out of space",
    )
    report = run_failing(inv, only=["media"])
    assert outcome(report, "media") is Outcome.FAILED
    assert "snapshot failed" in detail(report, "media")
    assert_settled(fresh_lab, "media", st0["current"])
    assert nixos(fresh_lab.state(), "media")["flake_rev"] == st0["flake_rev"]
    ran = [c["command"] for c in fresh_lab.commands() if c["host"] == "media"]
    assert not any(
        c.startswith(("nix flake", "nixos-rebuild build", "nixos-rebuild switch")) for c in ran
    )


def test_force_rebuilds_without_input_changes(fresh_lab: LabClient, inv: Path) -> None:
    before = current(fresh_lab.state(), "media")
    report = run(inv, only=["media"], force=True)
    assert outcome(report, "media") is Outcome.OK
    assert "up to date" not in detail(report, "media")
    ran = [c["command"] for c in fresh_lab.commands() if c["host"] == "media"]
    assert any(c.startswith("nixos-rebuild switch") for c in ran)
    assert_settled(fresh_lab, "media", nixos(fresh_lab.state(), "media")["current"])
    assert nixos(fresh_lab.state(), "media")["current"] >= before


def test_continue_on_failure_goes_on_but_not_past_after(fresh_lab: LabClient, inv: Path) -> None:
    """media fails; builder (after dns only) still runs with --continue-on-failure."""
    for host in GUEST:
        fresh_lab.nixos(host, upstream=NEW_REV)
    fresh_lab.nixos("media", upstream=NEW_REV, build_fails=True)
    report = run_failing(inv, continue_on_failure=True, max_parallel=1)
    assert outcome(report, "dns") is Outcome.OK
    assert outcome(report, "media") is Outcome.FAILED
    assert outcome(report, "builder") is Outcome.OK


def test_older_pre_update_snapshots_are_pruned_by_retention(
    fresh_lab: LabClient, inv: Path
) -> None:
    text = inv.read_text().replace(
        "[guest_snapshots.policies]", '[guest_snapshots.policies]\n"pre-update" = "keep-last=1"'
    )
    inv.write_text(text)
    fresh_lab.nixos("media", upstream=NEW_REV)
    run(inv, only=["media"])
    (first,) = pre_update_snaps(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream="1" * 40)
    # names have one-second resolution: let the clock reach a new second first
    wait_until(lambda: snapshot_name("pre-update", utc_now()) != first, timeout=5)
    report = run(inv, only=["media"])
    (second,) = pre_update_snaps(fresh_lab.state(), "media")
    assert second != first
    assert f"pruned older snapshots {first}" in detail(report, "media")


def _wrong_token(inv: Path) -> Path:
    """``inv`` with a Proxmox token secret the lab refuses (401)."""
    (inv.parent / "wrong-token").write_text("00000000-0000-0000-0000-000000000000\n")
    text = inv.read_text().replace(
        'token_secret = "file:pve-token"', 'token_secret = "file:wrong-token"'
    )
    assert "wrong-token" in text
    inv.write_text(text)
    return inv


def test_dry_run_checks_the_token_the_snapshots_need(
    fresh_lab: LabClient, inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan that says OK must not fail later on credentials (it used to, with 401)."""
    for host in GUEST:
        fresh_lab.nixos(host, upstream=NEW_REV)
    bad = _wrong_token(inv)
    before = fresh_lab.state()
    assert main(["--inventory", str(bad), "--dry-run"]) == 2
    assert "401" in capsys.readouterr().err
    # started from the UI (no command line): the dry run's hosts fail, nothing changes
    with pytest.raises(RunFailed) as info:
        nixos_update(inventory=str(bad), dry_run=True)
    rows = {r.target: r for r in info.value.report.rows}
    assert {r.outcome for r in rows.values()} == {Outcome.FAILED}
    assert "snapshot not possible" in rows["media"].detail and "401" in rows["media"].detail
    assert fresh_lab.state()["hosts"] == before["hosts"]
    # with --no-snapshot the token is not needed, and the plan stands
    assert main(["--inventory", str(bad), "--dry-run", "--no-snapshot"]) == 0


# --- the run graph: each step a task run of the host's subflow run ---------------------------

CHAIN = ["lock", "snapshot", "flake-update", "build", "arm-dead-man", "switch", "verify"]
INPUTS = {  # each step takes the one before's result: the graph's edges
    "snapshot": ("locked", "lock"),
    "flake-update": ("snapshotted", "snapshot"),
    "build": ("updated", "flake-update"),
    "arm-dead-man": ("built", "build"),
    "switch": ("armed", "arm-dead-man"),
    "verify": ("switched", "switch"),
    "confirm": ("verified", "verify"),
    "prune": ("confirmed", "confirm"),
    "unlock": ("upstream", "confirm"),
}


def host_steps(state: Any, host: str) -> dict[str, Any]:
    """The step task runs of ``host``'s subflow run, by step, after checking their order."""
    runs = step_runs(subflow_runs(state)[host])
    names = [r.name for r in runs]
    assert all(n.startswith(f"{host}: ") for n in names), names
    return {r.name.split(": ", 1)[1]: r for r in runs}


def assert_edges(steps: dict[str, Any], *names: str) -> None:
    for name in names:
        arg, upstream = INPUTS[name]
        assert [i.id for i in steps[name].task_inputs[arg]] == [steps[upstream].id], name


def test_each_step_is_a_task_run_of_the_hosts_subflow(fresh_lab: LabClient, inv: Path) -> None:
    fresh_lab.nixos("media", upstream=NEW_REV)
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_completed()
    assert set(task_runs(state)) >= {"media: preflight"}
    sub = subflow_runs(state)["media"]
    assert sub.state.is_completed()
    steps = host_steps(state, "media")
    assert list(steps) == [*CHAIN, "confirm", "prune", "unlock"]
    assert all(r.state.is_completed() for r in steps.values())
    assert_edges(steps, *INPUTS)
    ordered = list(steps.values())
    for before, after in itertools.pairwise(ordered):
        assert before.end_time <= after.start_time, (before.name, after.name)


def test_the_hosts_subflow_runs_carry_the_runs_tags(fresh_lab: LabClient, inv: Path) -> None:
    """A deployment's run has the tag ``moxflow``; its host subflow runs get it too (Prefect
    tags a subflow run from the tags context only), so the UI's tag filter finds them."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    params = {"inventory": str(inv), "only": ["media"]}
    with get_client(sync_client=True) as client:
        parent = client.create_flow_run(nixos_update, parameters=params, tags=["moxflow"])
    state = run_flow(nixos_update, flow_run=parent, parameters=params, return_type="state")
    assert state.is_completed()
    assert "moxflow" in subflow_runs(state)["media"].tags


def test_a_failed_verification_is_followed_by_the_recovery_steps(
    fresh_lab: LabClient, inv: Path
) -> None:
    fresh_lab.nixos("media", upstream=NEW_REV, failed_units=["jellyfin.service"])
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_failed()
    assert subflow_runs(state)["media"].state.is_failed()
    steps = host_steps(state, "media")
    assert list(steps) == [*CHAIN, "switch-back", "unlock"]
    assert steps["verify"].state.is_failed()
    assert "Retrying" not in state_names(steps["verify"].id)  # it waited its grace already
    assert_edges(steps, *CHAIN[1:])
    assert [i.id for i in steps["switch-back"].task_inputs["upstream"]] == [steps["switch"].id]
    assert [i.id for i in steps["unlock"].task_inputs["upstream"]] == [steps["switch-back"].id]
    assert steps["snapshot"].end_time <= steps["flake-update"].start_time
    assert steps["verify"].end_time <= steps["switch-back"].start_time


def test_a_build_failure_undoes_the_snapshot_and_the_flake_update(
    fresh_lab: LabClient, inv: Path
) -> None:
    rev = nixos(fresh_lab.state(), "media")["flake_rev"]
    fresh_lab.nixos("media", upstream=NEW_REV, build_fails=True)
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_failed()
    steps = host_steps(state, "media")
    assert list(steps) == ["lock", "snapshot", "flake-update", "build", "unlock"]
    assert steps["build"].state.is_failed()
    after = fresh_lab.state()
    assert pre_update_snaps(after, "media") == set()  # the transaction dropped it
    assert nixos(after, "media")["flake_rev"] == rev  # and put flake.lock back


def test_a_dry_run_runs_no_host_subflow(fresh_lab: LabClient, inv: Path) -> None:
    fresh_lab.nixos("media", upstream=NEW_REV)
    before = fresh_lab.state()
    state = nixos_update(inventory=str(inv), dry_run=True, return_state=True)
    assert state.is_completed()
    assert subflow_runs(state) == {}
    assert {n.split(": ")[1] for n in task_runs(state)} == {"preflight"}
    assert fresh_lab.state()["hosts"] == before["hosts"]


def test_a_transient_api_error_on_the_snapshot_is_retried_by_prefect(
    fresh_lab: LabClient, inv: Path
) -> None:
    fresh_lab.nixos("media", upstream=NEW_REV)
    fresh_lab.fault(
        target="api",
        method="POST",
        path="^/nodes/pve1/qemu/101/snapshot$",
        action="error",
        status=503,
        times=1,
    )
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_completed()
    steps = host_steps(state, "media")
    names = state_names(steps["snapshot"].id)
    assert "Retrying" in names and names[-1] == "Completed", names
    assert len(pre_update_snaps(fresh_lab.state(), "media")) == 1


def test_the_switch_is_never_retried(fresh_lab: LabClient, inv: Path) -> None:
    """The connection drops once the switch has run: the step is not run again; verification
    finds the new generation and the update completes."""
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    fresh_lab.fault(
        target="command",
        host="media",
        command="^nixos-rebuild switch",
        action="drop-after",
        times=1,
    )
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    steps = host_steps(state, "media")
    assert "Retrying" not in state_names(steps["switch"].id)
    switches = [
        c
        for c in fresh_lab.commands()
        if c["host"] == "media" and c["command"].startswith("nixos-rebuild switch")
    ]
    assert len(switches) == 1
    assert state.is_completed()
    assert "switch interrupted" in detail(state.result(), "media")
    assert_settled(fresh_lab, "media", before + 1)


def test_a_retried_flake_update_keeps_the_snapshot(fresh_lab: LabClient, inv: Path) -> None:
    """The connection drops once after `nix flake update` ran; Prefect retries the step. The
    snapshot taken before stays (an undo tied to a Prefect transaction dropped it here: a
    failed attempt rolls the transaction back even when the retry succeeds)."""
    before = current(fresh_lab.state(), "media")
    fresh_lab.nixos("media", upstream=NEW_REV)
    fresh_lab.fault(
        target="command", host="media", command="^nix flake update", action="drop-after", times=1
    )
    state = nixos_update(inventory=str(inv), only=["media"], return_state=True)
    assert state.is_completed()
    names = state_names(host_steps(state, "media")["flake-update"].id)
    assert "Retrying" in names and names[-1] == "Completed", names
    assert_settled(fresh_lab, "media", before + 1)
    [snap] = pre_update_snaps(fresh_lab.state(), "media")
    assert snap in detail(state.result(), "media")
    assert "released snapshot" not in detail(state.result(), "media")
