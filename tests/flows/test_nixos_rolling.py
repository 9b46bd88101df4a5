"""Rolling NixOS updates: waves of --max-parallel hosts, canaries first, `after` respected.

The order is read from the lab's log of the commands each host ran.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.jobs.nixos_update import nixos_update
from labsim.client import LabClient, start_lab
from moxflow.inventory import load_inventory
from moxflow.nixos import plan_update
from moxflow.report import Outcome

NEW_REV = "fedcba9876543210fedcba9876543210fedcba98"
FLEET = [f"nixos-{i:02d}" for i in range(1, 11)]


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    # builds of 1-4 s: long enough that a wave's hosts overlap once their subflow runs have
    # started (one at a time, a few tenths of a second each on Prefect's SQLite server, more
    # on a busy machine)
    lab = start_lab(tmp_path_factory.mktemp("fleet"), nixos_hosts=10, time_scale=1.0)
    try:
        yield lab
    finally:
        lab.stop()


def spans(lab: LabClient, hosts: list[str]) -> dict[str, tuple[float, float]]:
    """When each host's update began (it took its lock) and its last command.

    Pre-flight reads every host first, before the waves: those commands do not count.
    """
    times: dict[str, list[float]] = {h: [] for h in hosts}
    for c in lab.commands():
        took_lock = c["command"].startswith("mkdir") and "update.lock" in c["command"]
        if c["host"] in times and (times[c["host"]] or took_lock):
            times[c["host"]].append(c["time"])
    assert all(times.values()), f"some hosts ran nothing: {times}"
    return {h: (min(t), max(t)) for h, t in times.items()}


def assert_in_order(waves: list[list[str]], span: dict[str, tuple[float, float]]) -> None:
    for earlier, later in itertools.pairwise(waves):
        done = max(span[h][1] for h in earlier)
        begun = min(span[h][0] for h in later)
        assert done < begun, f"wave {later} started before {earlier} finished"


def test_ten_hosts_run_in_the_planned_waves(fleet_lab: LabClient) -> None:
    fleet_lab.reset()
    inv_path = fleet_lab.dir / "inventory.toml"
    plan = plan_update(load_inventory(inv_path), FLEET, max_parallel=4)
    assert [len(w) for w in plan.waves] == [1, 4, 4, 1]
    for host in FLEET:
        fleet_lab.nixos(host, upstream=NEW_REV)
    before: dict[str, Any] = fleet_lab.state()["hosts"]

    report = nixos_update(only=FLEET, max_parallel=4, inventory=str(inv_path))

    assert {r.target: r.outcome for r in report.rows} == dict.fromkeys(FLEET, Outcome.OK)
    after = fleet_lab.state()["hosts"]
    for host in FLEET:
        assert after[host]["nixos"]["current"] == before[host]["nixos"]["current"] + 1
    assert_in_order(plan.waves, spans(fleet_lab, FLEET))
    # within a wave the hosts really ran side by side (some overlapped; their subflow runs
    # start one at a time, so on a busy machine a short one may end before the last starts),
    # and never more than --max-parallel at once
    span = spans(fleet_lab, FLEET)
    second = plan.waves[1]
    assert any(
        span[h][0] < span[o][1] and span[o][0] < span[h][1]
        for h, o in itertools.combinations(second, 2)
    )
    assert max(sum(1 for s, e in span.values() if s <= t < e) for t, _ in span.values()) <= 4


def test_after_dependencies_and_canary_go_first(fleet_lab: LabClient) -> None:
    fleet_lab.reset()
    inv_path: Path = fleet_lab.dir / "inventory.toml"
    hosts = ["dns", "media", "builder"]
    plan = plan_update(load_inventory(inv_path), hosts, max_parallel=4)
    assert plan.waves[0] == ["dns"]
    for host in hosts:
        fleet_lab.nixos(host, upstream=NEW_REV)

    report = nixos_update(only=hosts, max_parallel=4, inventory=str(inv_path))

    assert {r.outcome for r in report.rows} == {Outcome.OK}
    span = spans(fleet_lab, hosts)
    assert span["dns"][1] < min(span["media"][0], span["builder"][0])


def test_a_waves_steps_begin_once_all_its_subflow_runs_exist(fleet_lab: LabClient) -> None:
    """The subflow runs of a wave are created one at a time and no host's steps begin
    before the last of them is: on Prefect's SQLite server a host's first writes (its slots,
    its task runs) meeting the next host's creation made that one begin 2 s late."""
    from tests.flows.conftest import step_runs, subflow_runs

    fleet_lab.reset()
    hosts = FLEET[:5]
    inv_path = fleet_lab.dir / "inventory.toml"
    plan = plan_update(load_inventory(inv_path), hosts, max_parallel=4)
    assert [len(w) for w in plan.waves] == [1, 4]
    for host in hosts:
        fleet_lab.nixos(host, upstream=NEW_REV)

    state = nixos_update(only=hosts, max_parallel=4, inventory=str(inv_path), return_state=True)

    assert {r.outcome for r in state.result().rows} == {Outcome.OK}
    runs = subflow_runs(state)
    wave = [runs[h] for h in plan.waves[1]]
    last_created = max(r.start_time for r in wave)
    first_step = min(step_runs(r)[0].start_time for r in wave)
    assert first_step >= last_created, (first_step, last_created)


def test_a_host_another_run_holds_does_not_hold_up_its_wave(
    fleet_lab: LabClient, tmp_path: Path
) -> None:
    """A host whose slot another run holds waits for it (``lock_wait``) while the rest of
    its wave goes on; it is updated once the slot is given back."""
    import threading

    from tasks.targets import hold, host_target
    from tests.flows.conftest import edit_inventory

    fleet_lab.reset()
    hosts = FLEET[:5]
    inv_path = edit_inventory(
        fleet_lab.dir / "inventory.toml", tmp_path, {"lock_wait = 0.0": "lock_wait = 60.0"}
    )
    plan = plan_update(load_inventory(inv_path), hosts, max_parallel=4)
    held, *others = plan.waves[1]
    for host in hosts:
        fleet_lab.nixos(host, upstream=NEW_REV)
    taken, give_back = threading.Event(), threading.Event()

    def other_run() -> None:
        with hold([host_target(held)]):
            taken.set()
            give_back.wait(120)

    holder = threading.Thread(target=other_run)
    holder.start()
    try:
        assert taken.wait(30)
        seen: dict[str, Any] = {}

        def watch() -> None:  # give the slot back once the rest of the wave built
            while not give_back.is_set():
                building = {
                    c["host"] for c in fleet_lab.commands() if "nixos-rebuild build" in c["command"]
                }
                if set(others) <= building:
                    seen["built"] = sorted(building)
                    give_back.set()
                give_back.wait(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        report = nixos_update(only=hosts, max_parallel=4, inventory=str(inv_path))
    finally:
        give_back.set()
        holder.join()
    watcher.join()

    assert {r.target: r.outcome for r in report.rows} == dict.fromkeys(hosts, Outcome.OK)
    assert set(others) <= set(seen["built"])  # they built while the held host waited
    span = spans(fleet_lab, hosts)
    assert span[held][0] > max(span[o][0] for o in others)
