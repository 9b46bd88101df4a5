"""The schedule of ``ProxmoxClient.wait_task`` (``moxflow.pacing.poll_delay``), simulated
without real time, and the waiter with a hint against the lab."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from blocks.proxmox import proxmox_client
from labsim.client import LabClient
from moxflow.inventory import load_inventory
from moxflow.pacing import POLL_CAP, POLL_EARLY_GAP, POLL_FLOOR, POLL_HINT_CAP, poll_delay

EXPECTATIONS = (5.0, 60.0, 600.0, 3600.0)


def simulate(expect: float | None, duration: float) -> tuple[int, float]:
    """Polls made until a task of ``duration`` seconds is seen stopped, and how late."""
    t = poll_delay(0.0, expect) if expect is not None else 0.0
    polls = 1
    while t < duration:
        t += poll_delay(t, expect)
        polls += 1
    return polls, t - duration


def poll_times(expect: float, until: float) -> list[float]:
    t = poll_delay(0.0, expect)
    out = [t]
    while t < until:
        t += poll_delay(t, expect)
        out.append(t)
    return out


def durations(lo: float, hi: float, n: int = 400) -> list[float]:
    """``n`` durations spread evenly on a log scale over [lo, hi]."""
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_the_end_is_noticed_within_5_percent_or_1_s(expect: float) -> None:
    for d in durations(0.5 * expect, 2 * expect):
        _, late = simulate(expect, d)
        assert late <= max(1.0, 0.05 * d) + 1e-9, (expect, d, late)


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_at_most_25_polls_for_a_task_that_takes_the_expectation(expect: float) -> None:
    # 5 % across the whole [0.5, 2] x range needs ln 4 / ln 1.05 = 28.4 polls, so beyond
    # the expectation a few more are allowed
    assert simulate(expect, expect)[0] <= 25
    for d in durations(0.5 * expect, 1.4 * expect):
        assert simulate(expect, d)[0] <= 32, (expect, d)
    for d in durations(1.4 * expect, 2 * expect):
        assert simulate(expect, d)[0] <= 39, (expect, d)


def test_a_hint_saves_most_polls_of_a_long_task() -> None:
    # the old rule's 2 s cap: a 10-minute dump took some 350 polls
    assert simulate(None, 600.0)[0] > 300
    assert simulate(600.0, 600.0)[0] <= 25


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_early_failures_are_noticed(expect: float) -> None:
    times = poll_times(expect, 0.5 * expect)
    assert times[0] <= min(5.0, 0.05 * expect) + 1e-9  # a failure at the start
    for a, b in itertools.pairwise(times):  # and on the way: by 1.5 t, or within a minute
        assert b - a <= min(0.25 * expect, max(POLL_EARLY_GAP, a / 2)) + 1e-9, (a, b)


@pytest.mark.parametrize("expect", [600.0, 3600.0, 36000.0])
def test_an_estimate_far_too_high_still_notices_an_early_end_soon(expect: float) -> None:
    for d in durations(1.0, 0.5 * expect):
        _, late = simulate(expect, d)
        assert late <= max(POLL_EARLY_GAP, d / 2, min(5.0, 0.05 * expect)) + 1e-9, (d, late)


@pytest.mark.parametrize("expect", [1.0, 10.0, 60.0])
def test_an_estimate_far_too_low_still_notices_the_end_within_a_minute(expect: float) -> None:
    for d in durations(2 * expect, 3600.0):
        _, late = simulate(expect, d)
        assert late <= min(POLL_EARLY_GAP, max(POLL_FLOOR, 0.1 * d)) + 1e-9, (d, late)


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_well_past_the_expectation_polls_at_a_tenth_of_the_elapsed_time(expect: float) -> None:
    for d in durations(2 * expect, 20 * expect):
        polls, late = simulate(expect, d)
        # right past 2 x the last gap is still a dense one (5 % of the elapsed time)
        assert late <= max(0.05 * d, min(0.1 * d, POLL_EARLY_GAP)) + 1e-9
        # about 7 more polls per doubling (ln 2 / ln 1.1), then one a minute
        tenth = 8 * math.log2(min(d, 10 * POLL_EARLY_GAP) / (2 * expect)) if d > 2 * expect else 0
        per_minute = max(0.0, d - max(2 * expect, 10 * POLL_EARLY_GAP)) / POLL_EARLY_GAP
        assert polls <= 39 + max(0.0, tenth) + per_minute + 1


def test_no_gap_is_longer_than_the_hard_cap_whatever_the_hint() -> None:
    for expect in (1e5, 1e9):
        times = poll_times(expect, 5 * 3600)
        gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
        assert max(gaps) <= POLL_HINT_CAP


def test_short_expectations_scale_like_long_ones() -> None:
    # below 20 s the slack is 5 % of the expectation, so a lab at 1/10 of real time polls
    # as often, relatively, as a real cluster
    for d in durations(0.5, 2.0, 50):
        assert simulate(1.0, d)[0] == simulate(10.0, 10 * d)[0]


def test_without_a_hint_the_old_rule_holds() -> None:
    assert poll_delay(0.0) == POLL_FLOOR
    assert poll_delay(5.0) == pytest.approx(0.5)
    assert poll_delay(100.0) == POLL_CAP
    assert poll_delay(100.0, 0.0) == POLL_CAP  # no usable hint
    for expect in (0.01, 0.3):  # even tiny hints keep the floor
        delays = [poll_delay(t, expect) for t in (0.0, 0.001, 0.01, 0.1, 1.0)]
        assert min(delays) >= POLL_FLOOR


# --- against the lab -----------------------------------------------------------------------


def test_wait_task_with_a_hint_polls_sparsely_early_and_sees_the_end(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fresh_lab
    guest = lab.guest(100)
    size = int(guest["maxdisk"] * 0.15) + 100 * 4096  # labsim.pve.topology.backup_size
    scale = lab.state()["time_scale"]
    lab.set_storage("nas-backup", bandwidth=size * scale / 1.0)  # a 1 s dump
    client = proxmox_client(load_inventory(lab_inventory))
    upid = client.post(f"/nodes/{guest['node']}/vzdump", vmid=100, storage="nas-backup")
    result = client.wait_task(upid, timeout=20, node=guest["node"], expect=1.0)
    assert result.exitstatus == "OK"
    reqs = lab.api_requests()
    post = next(r["time"] for r in reqs if r["path"].endswith("/vzdump"))
    polls = [r["time"] for r in reqs if r["path"].endswith(f"{upid}/status")]
    # no poll at once (the hint says 1 s): the first after 5 % of it
    assert polls[0] - post >= 0.05
    # the old rule needs ~27 polls for 1 s; with the hint about a dozen
    assert len(polls) <= 18
    archives = lab.state()["storages"]["nas-backup"]["archives"]
    assert any(a["vmid"] == 100 and a["size"] == size for a in archives)
