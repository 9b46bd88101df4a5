"""moxflow.pacing: the offsite copy's rate limiter and the vzdump duration estimator, on a
fake clock (no real time passes)."""

from __future__ import annotations

import pytest

from moxflow.pacing import DumpEstimator, Pacer, backoff, poll_until


class FakeClock:
    """A clock that moves only when someone sleeps or ``advance`` is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pacer(rate: float | None, clock: FakeClock) -> Pacer:
    return Pacer(rate, clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize(
    ("total", "chunk", "rate"),
    [(10_000, 1000, 2000.0), (10_001, 333, 1024.0), (5 * 2**20, 2**20, 100 * 1024.0)],
)
def test_n_bytes_at_limit_l_take_at_least_n_over_l(total: int, chunk: int, rate: float) -> None:
    clock = FakeClock()
    p = pacer(rate, clock)
    start = clock.now
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        p.pace(n)  # the chunk took no time to send: all of it is sleep
        sent += n
        # at no point has the average rate since the start exceeded the limit
        assert sent / (clock.now - start) <= rate * (1 + 1e-9)
    assert sum(clock.sleeps) == pytest.approx(total / rate)
    assert sum(clock.sleeps) >= total / rate * (1 - 1e-9)
    assert p.slept == pytest.approx(total / rate) and p.sent == total


def test_time_spent_sending_counts_toward_the_limit() -> None:
    clock = FakeClock()
    p = pacer(1000.0, clock)
    clock.advance(0.6)  # 1000 bytes took 0.6 s to send; at the limit they need 1 s
    assert p.pace(1000) == pytest.approx(0.4)
    clock.advance(2.0)  # a slow chunk: already below the limit, no sleep
    assert p.pace(1000) == 0.0
    assert clock.sleeps == [pytest.approx(0.4)]


def test_unlimited_never_sleeps() -> None:
    clock = FakeClock()
    p = pacer(None, clock)
    for _ in range(100):
        assert p.pace(2**20) == 0.0
    assert clock.sleeps == [] and p.slept == 0.0 and p.sent == 100 * 2**20


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate)


# --- DumpEstimator -------------------------------------------------------------------------

GiB = 1024**3


def test_no_estimate_before_the_first_dump_of_a_storage() -> None:
    est = DumpEstimator()
    assert est.expect("nas-backup", 32 * GiB) is None
    est.observe("local", 10.0, 16 * GiB, 4 * GiB)
    assert est.expect("nas-backup", 32 * GiB, 8 * GiB) is None  # learnt per storage


def test_disk_throughput_predicts_a_guest_without_a_previous_archive() -> None:
    est = DumpEstimator()
    est.observe("nas", 20.0, 16 * GiB, 4 * GiB)  # 0.8 GiB of disk per second
    assert est.expect("nas", 32 * GiB) == pytest.approx(40.0)


def test_a_previous_archive_size_beats_the_disk_size() -> None:
    est = DumpEstimator()
    est.observe("nas", 20.0, 16 * GiB, 4 * GiB)  # 0.2 GiB of archive per second
    # disk size alone would say 40 s; the previous archive (1 GiB) compresses well
    assert est.expect("nas", 32 * GiB, previous=1 * GiB) == pytest.approx(5.0)


def test_only_the_most_recent_dumps_count() -> None:
    est = DumpEstimator(window=2)
    est.observe("nas", 100.0, 10 * GiB, 2 * GiB)  # alone on the storage once: slow start
    est.observe("nas", 10.0, 10 * GiB, 2 * GiB)
    est.observe("nas", 10.0, 10 * GiB, 2 * GiB)
    assert est.expect("nas", 10 * GiB) == pytest.approx(10.0)


def test_the_compression_ratio_is_averaged_over_more_dumps_than_the_throughput() -> None:
    est = DumpEstimator(window=1)
    est.observe("local", 10.0, 10 * GiB, 1 * GiB)  # compresses to 10 %, on another storage
    est.observe("nas", 10.0, 10 * GiB, 4 * GiB)  # 40 %; 0.4 GiB of archive per second
    # ratio 25 % (5 of 20 GiB): 2 GiB of archive at 0.4 GiB/s; the last dump's disk
    # throughput alone (1 GiB/s) would say 8 s
    assert est.expect("nas", 8 * GiB) == pytest.approx(5.0)


def test_useless_observations_are_ignored() -> None:
    est = DumpEstimator()
    est.observe("nas", 0.0, 10 * GiB, 2 * GiB)
    est.observe("nas", 5.0, 10 * GiB, 0)
    assert est.expect("nas", 10 * GiB) is None
    est.observe("nas", 5.0, 0, 2 * GiB)  # disk size unknown: only archive sizes predict
    assert est.expect("nas", 10 * GiB) is None
    assert est.expect("nas", 10 * GiB, previous=4 * GiB) == pytest.approx(10.0)


# --- waiting for a condition -------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "gaps"),
    [
        (900.0, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),  # a real reboot's bound
        (4.0, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]),  # a bound scaled down (the lab): sooner looks
        (0.1, [0.02, 0.04, 0.08, 0.16, 0.32, 0.64]),  # never below the floor
    ],
)
def test_backoff_starts_small_and_doubles_to_a_cap(timeout: float, gaps: list[float]) -> None:
    produced = backoff(timeout)
    assert [round(next(produced), 6) for _ in gaps] == gaps


def test_a_wait_that_never_ends_looks_rarely_and_last_at_its_bound() -> None:
    """900 s without the condition: about 185 looks (not 9,000 at a fixed 0.1 s), no sleep
    past the bound, and a last look right at it."""
    clock = FakeClock()
    looks: list[float] = []

    def check() -> None:
        looks.append(clock.now - 1000.0)

    assert poll_until(check, 900.0, clock=clock, sleep=clock.sleep) is None
    assert looks[:5] == [0.0, 0.5, 1.5, 3.5, 7.5]
    assert looks[-1] == 900.0 and sum(clock.sleeps) == 900.0
    assert max(clock.sleeps) == 5.0 and len(looks) < 190


def test_a_wait_returns_what_the_check_found_at_the_next_look() -> None:
    clock = FakeClock()
    found = poll_until(
        lambda: "back" if clock.now - 1000.0 >= 3.0 else None,
        60.0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert found == "back" and clock.now - 1000.0 == 3.5  # looks at 0, 0.5, 1.5, 3.5


def test_a_condition_already_met_is_not_slept_for() -> None:
    clock = FakeClock()
    assert poll_until(lambda: 1, 10.0, clock=clock, sleep=clock.sleep) == 1
    assert clock.sleeps == []
