"""Pacing: how fast moxflow copies bytes and how often it asks whether a task has ended.

Pure and Prefect-free, with the clock and the sleep injectable so tests run on a fake clock:

- ``Pacer`` keeps a copy's average rate at or below a bandwidth limit (offsite ``bwlimit``).
- ``poll_delay`` is the schedule of ``ProxmoxClient.wait_task``: without a hint a tenth of the
  time already waited; with the task's expected duration, sparse polls early and polls every
  5 % of the elapsed time around the expected end.
- ``DumpEstimator`` learns, within one backup run, how long a vzdump on a storage takes, so
  that each dump's wait gets such a hint.
- ``poll_until`` waits for a condition (a node back, a guest arrived) with ``backoff``: looks
  0.5 s apart at first (sooner under a short bound), doubling to 5 s, the last at the bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "POLL_CAP",
    "POLL_EARLY_GAP",
    "POLL_FLOOR",
    "POLL_HINT_CAP",
    "DumpEstimator",
    "Pacer",
    "backoff",
    "poll_delay",
    "poll_until",
]

T = TypeVar("T")

# Without a hint: poll at a tenth of the time already waited, within these bounds (seconds).
POLL_FLOOR = 0.02
POLL_CAP = 2.0
# With a hint E: the first poll after min(POLL_EARLY, 5 % of E) (failures at the start), then
# gaps of at most a quarter of E and at most max(POLL_EARLY_GAP, half the elapsed time) up to
# POLL_DENSE_FROM * E (a failure at t is seen by 1.5 t, or a minute after it), then every
# POLL_SHARE of the elapsed time (at least the slack: min(POLL_SLACK, POLL_SHARE * E)) until
# POLL_DENSE_TO * E; after that the hint was wrong: a tenth of the elapsed time, at most
# POLL_EARLY_GAP. No gap is longer than POLL_HINT_CAP, whatever the hint.
POLL_EARLY = 5.0
POLL_EARLY_GAP = 60.0
POLL_SHARE = 0.05
POLL_SLACK = 1.0
POLL_DENSE_FROM = 0.5
POLL_DENSE_TO = 2.0
POLL_HINT_CAP = 900.0


def poll_delay(
    elapsed: float,
    expect: float | None = None,
    *,
    floor: float = POLL_FLOOR,
    cap: float = POLL_CAP,
    hint_cap: float = POLL_HINT_CAP,
) -> float:
    """Seconds from a poll at ``elapsed`` seconds into a task to the next one.

    ``expect`` is the task's expected duration in seconds (None: unknown). With it, a task
    ending between half and twice ``expect`` is noticed within max(slack, 5 % of its
    duration), the slack being 1 s, or 5 % of ``expect`` for tasks shorter than 20 s (so a
    time-scaled lab keeps its proportions), with about 18-24 polls for a task that takes
    ``expect`` (more for long hints: early polls stay at most a minute or half the elapsed
    time apart, so an early failure is not missed for long), 25-31 for 1.4 times ``expect``
    and 32-38 for twice (ln 4 / ln 1.05 = 28.4 polls are needed for 5 % across that whole
    range, so no schedule does it in 25). A task running past twice the hint is polled at a
    tenth of the elapsed time, at least once a minute. ``elapsed=0`` gives the delay of the
    first poll.
    """
    if expect is None or not expect > 0:
        return min(cap, max(floor, elapsed / 10))
    if elapsed >= POLL_DENSE_TO * expect:  # well past the expectation: the hint was wrong
        return min(hint_cap, POLL_EARLY_GAP, max(floor, elapsed / 10))
    dense_from = POLL_DENSE_FROM * expect
    if elapsed < dense_from:
        first = max(floor, min(POLL_EARLY, POLL_SHARE * expect))
        if elapsed < first:
            return max(floor, first - elapsed)
        longest = min(hint_cap, expect / 4, max(POLL_EARLY_GAP, elapsed / 2))
        gap = dense_from - elapsed
        steps = math.ceil(gap / longest - 1e-9)
        return max(floor, gap / max(1, steps))
    slack = min(POLL_SLACK, POLL_SHARE * expect)
    return min(hint_cap, max(floor, slack, POLL_SHARE * elapsed))


# A wait for a condition: the first gap BACKOFF_FIRST, or BACKOFF_SHARE of the bound when that
# is shorter (a bound scaled down, as in a time-scaled lab, keeps its proportions), then
# doubling up to BACKOFF_CAP.
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 5.0
BACKOFF_SHARE = 0.05


def backoff(
    timeout: float, *, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP
) -> Iterator[float]:
    """The gaps between the looks of a wait bounded by ``timeout`` seconds: ``first`` (at
    most ``cap`` and 5 % of ``timeout``, at least :data:`POLL_FLOOR`), doubling up to
    ``cap``."""
    delay = max(POLL_FLOOR, min(first, cap, BACKOFF_SHARE * timeout))
    while True:
        yield delay
        delay = min(delay * 2, cap)


def poll_until(
    check: Callable[[], T | None],
    timeout: float,
    *,
    first: float = BACKOFF_FIRST,
    cap: float = BACKOFF_CAP,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Call ``check`` until it returns something other than None, and return that; None when
    ``timeout`` seconds passed without. Looks at once, then after each gap of
    :func:`backoff`, never sleeping past the deadline, and once more at it."""
    deadline = clock() + timeout
    for delay in backoff(timeout, first=first, cap=cap):
        found = check()
        if found is not None:
            return found
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(delay, left))
    return None  # pragma: no cover - backoff never ends


class Pacer:
    """Keeps the average rate of a transfer at or below ``rate`` bytes per second.

    Call ``pace(n)`` after sending each ``n`` bytes: it sleeps until the bytes sent so far
    have had their time at the limit, counted from the pacer's creation. Time spent sending
    counts, so a slow link is never slowed further. ``rate=None`` never sleeps. Not
    thread-safe: one pacer per transfer.
    """

    __slots__ = ("_clock", "_sleep", "_start", "rate", "sent", "slept")

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive or None, not {rate!r}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self.sent = 0
        self.slept = 0.0

    def pace(self, nbytes: int) -> float:
        """Account for ``nbytes`` just sent and sleep as the limit requires; the seconds slept."""
        self.sent += nbytes
        if self.rate is None:
            return 0.0
        wait = self._start + self.sent / self.rate - self._clock()
        if wait <= 0:
            return 0.0
        self._sleep(wait)
        self.slept += wait
        return wait


@dataclass(frozen=True, slots=True)
class _Dump:
    seconds: float
    disk: int
    archive: int


class DumpEstimator:
    """Expected vzdump durations per storage from the dumps of the same run.

    Shared by the node workers of one backup run (thread-safe). A dump's duration is its
    archive's size over the storage's throughput. The throughput (archive bytes per second)
    comes from the last ``window`` dumps to that storage only, because how many dumps share
    a storage changes it; the size is the guest's previous archive when known, else its disk
    size times the compression ratio of the last ``ratio_window`` dumps of any storage (the
    ratio varies from guest to guest, so more dumps average it better).
    """

    __slots__ = ("_dumps", "_lock", "_ratios", "window")

    def __init__(self, window: int = 3, ratio_window: int = 20) -> None:
        if window < 1 or ratio_window < 1:
            raise ValueError("the windows must be at least 1")
        self.window = window
        self._lock = threading.Lock()
        self._dumps: dict[str, deque[_Dump]] = {}
        self._ratios: deque[_Dump] = deque(maxlen=ratio_window)

    def observe(self, storage: str, seconds: float, disk: int, archive: int) -> None:
        """Record one finished dump: its duration, the guest's disk size (0: unknown) and the
        archive's size."""
        if not seconds > 0 or archive <= 0:
            return
        dump = _Dump(seconds, max(0, disk), archive)
        with self._lock:
            self._dumps.setdefault(storage, deque(maxlen=self.window)).append(dump)
            if dump.disk > 0:
                self._ratios.append(dump)

    def expect(self, storage: str, disk: int, previous: int | None = None) -> float | None:
        """Expected seconds of a dump of a guest with ``disk`` bytes of disks (and a previous
        archive of ``previous`` bytes) to ``storage``; None before its first dump."""
        with self._lock:
            recent = list(self._dumps.get(storage, ()))
            ratios = list(self._ratios)
        if not recent:
            return None
        rate = sum(d.archive for d in recent) / sum(d.seconds for d in recent)
        if previous is not None and previous > 0:
            return previous / rate
        disks = sum(d.disk for d in ratios)
        if disk > 0 and disks > 0:
            return disk * sum(d.archive for d in ratios) / disks / rate
        return None
