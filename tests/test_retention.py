"""The keep policy syntax and the prune planner, against worked cases and an independent oracle."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moxflow.errors import ConfigError, RetentionPolicyError
from moxflow.retention import KeepPolicy, PrunePlan, RetentionItem, plan_prune

BERLIN = ZoneInfo("Europe/Berlin")


def _items(*specs: str) -> list[RetentionItem]:
    """Items named after their UTC time, ``"2026-11-25 18:00"``; a leading ``!`` protects."""
    result = []
    for spec in specs:
        name = spec.removeprefix("!")
        created = datetime.fromisoformat(name).replace(tzinfo=UTC)
        result.append(RetentionItem(name, created, protected=spec.startswith("!")))
    return result


# --- worked cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    policy: str
    items: list[RetentionItem]
    keep: tuple[str, ...]
    protected: tuple[str, ...] = ()
    tz: tzinfo = UTC


CASES = {
    "keep-last keeps the newest N": Case(
        "keep-last=3",
        _items("2026-11-25 05:00", "2026-11-25 04:00", "2026-11-25 03:00", "2026-11-25 02:00"),
        keep=("2026-11-25 05:00", "2026-11-25 04:00", "2026-11-25 03:00"),
    ),
    "keep-hourly keeps the newest of each hour": Case(
        "keep-hourly=2",
        _items("2026-11-25 05:50", "2026-11-25 05:10", "2026-11-25 04:59", "2026-11-25 03:00"),
        keep=("2026-11-25 05:50", "2026-11-25 04:59"),
    ),
    "keep-daily keeps the newest of each day": Case(
        "keep-daily=2",
        _items(
            "2026-11-25 18:00",
            "2026-11-25 12:00",
            "2026-11-25 08:00",
            "2026-11-24 20:00",
            "2026-11-24 06:00",
            "2026-11-23 10:00",
        ),
        keep=("2026-11-25 18:00", "2026-11-24 20:00"),
    ),
    "a day holding a keep-last item is skipped and not counted": Case(
        "keep-last=1,keep-daily=2",
        _items(
            "2026-11-25 18:00",
            "2026-11-25 12:00",
            "2026-11-24 20:00",
            "2026-11-24 06:00",
            "2026-11-23 10:00",
        ),
        keep=("2026-11-25 18:00", "2026-11-24 20:00", "2026-11-23 10:00"),
    ),
    "keep-weekly: Sunday and the next Monday are different ISO weeks": Case(
        "keep-weekly=2",
        _items("2026-11-30 09:00", "2026-11-29 22:00", "2026-11-28 10:00", "2026-11-22 10:00"),
        keep=("2026-11-30 09:00", "2026-11-29 22:00"),
    ),
    "keep-weekly: 31 Dec 2026 and 1 Jan 2027 are both in 2026-W53": Case(
        "keep-weekly=2",
        _items("2027-01-01 10:00", "2026-12-31 10:00", "2026-12-28 10:00", "2026-12-27 10:00"),
        keep=("2027-01-01 10:00", "2026-12-27 10:00"),
    ),
    "keep-monthly keeps the newest of each month": Case(
        "keep-monthly=2",
        _items(
            "2026-11-26 10:00",
            "2026-11-01 10:00",
            "2026-10-31 23:00",
            "2026-10-01 10:00",
            "2026-09-30 10:00",
        ),
        keep=("2026-11-26 10:00", "2026-10-31 23:00"),
    ),
    "keep-yearly uses the calendar year, not the ISO year": Case(
        "keep-yearly=2",
        _items("2027-01-01 10:00", "2026-12-31 10:00", "2026-06-01 10:00", "2025-12-31 10:00"),
        keep=("2027-01-01 10:00", "2026-12-31 10:00"),
    ),
    "items removed by keep-weekly are not reconsidered by keep-monthly (as in PVE/PBS)": Case(
        "keep-weekly=1,keep-monthly=2",
        _items("2026-12-01 10:00", "2026-11-30 10:00", "2026-11-29 10:00", "2026-11-25 10:00"),
        keep=("2026-12-01 10:00", "2026-11-29 10:00"),
    ),
    "an item skipped because its week is covered is still seen by keep-monthly": Case(
        "keep-daily=1,keep-weekly=1,keep-monthly=1",
        _items("2026-12-01 10:00", "2026-11-30 10:00"),
        keep=("2026-12-01 10:00", "2026-11-30 10:00"),
    ),
    "protected items are never removed and do not count": Case(
        "keep-last=2",
        _items(
            "!2026-11-25 05:00",
            "2026-11-25 04:00",
            "!2026-11-25 03:00",
            "2026-11-25 02:00",
            "2026-11-25 01:00",
        ),
        keep=("2026-11-25 04:00", "2026-11-25 02:00"),
        protected=("2026-11-25 05:00", "2026-11-25 03:00"),
    ),
    "a protected item does not fill its day for keep-daily": Case(
        "keep-daily=1",
        _items("!2026-11-25 18:00", "2026-11-25 12:00", "2026-11-24 12:00"),
        keep=("2026-11-25 12:00",),
        protected=("2026-11-25 18:00",),
    ),
    "keep-all keeps everything": Case(
        "keep-all=1",
        _items("2026-11-25 05:00", "!2026-11-24 05:00", "2020-01-01 00:00"),
        keep=("2026-11-25 05:00", "2020-01-01 00:00"),
        protected=("2026-11-24 05:00",),
    ),
    "a policy of zeros keeps everything": Case(
        "keep-last=0,keep-daily=0",
        _items("2026-11-25 05:00", "2026-11-24 05:00"),
        keep=("2026-11-25 05:00", "2026-11-24 05:00"),
    ),
    "buckets in UTC: 22:00 and 23:30 UTC are the same day": Case(
        "keep-daily=2",
        _items("2026-11-25 23:30", "2026-11-25 22:00", "2026-11-24 12:00"),
        keep=("2026-11-25 23:30", "2026-11-24 12:00"),
    ),
    "buckets in Europe/Berlin: 23:30 UTC is already the next day": Case(
        "keep-daily=2",
        _items("2026-11-25 23:30", "2026-11-25 22:00", "2026-11-24 12:00"),
        keep=("2026-11-25 23:30", "2026-11-25 22:00"),
        tz=BERLIN,
    ),
    "buckets at a fixed offset: 04:00 UTC is the previous day at -05:00": Case(
        "keep-daily=2",
        _items("2026-11-25 06:00", "2026-11-25 04:00", "2026-11-24 12:00"),
        keep=("2026-11-25 06:00", "2026-11-25 04:00"),
        tz=timezone(timedelta(hours=-5)),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_worked_cases(case: Case) -> None:
    plan = plan_prune(case.items, KeepPolicy.parse(case.policy), case.tz)

    everything = [it.name for it in case.items]
    expected_remove = tuple(n for n in everything if n not in case.keep and n not in case.protected)
    assert plan.keep == case.keep
    assert plan.protected == case.protected
    assert plan.remove == expected_remove


def test_iso_week_facts_used_by_the_cases() -> None:
    assert date(2026, 11, 29).isocalendar()[:2] == (2026, 48)
    assert date(2026, 11, 30).isocalendar()[:2] == (2026, 49)
    assert date(2026, 12, 31).isocalendar()[:2] == (2026, 53)
    assert date(2027, 1, 1).isocalendar()[:2] == (2026, 53)
    assert date(2026, 12, 27).isocalendar()[:2] == (2026, 52)


def test_reasons_name_the_rule_and_bucket() -> None:
    items = _items(
        "!2026-11-26 01:00",
        "2026-11-25 18:00",
        "2026-11-25 12:00",
        "2026-11-24 20:00",
        "2026-11-20 20:00",
        "2026-10-20 20:00",
    )
    policy = KeepPolicy.parse("keep-last=1,keep-daily=1,keep-weekly=1,keep-monthly=1")

    plan = plan_prune(items, policy, UTC)

    assert dict(plan.reasons) == {
        "2026-11-26 01:00": "protected",
        "2026-11-25 18:00": "keep-last #1",
        "2026-11-24 20:00": "keep-daily 2026-11-24",
        "2026-11-20 20:00": "keep-weekly 2026-W47",
        "2026-10-20 20:00": "keep-monthly 2026-10",
    }
    assert plan.remove == ("2026-11-25 12:00",)


def test_keep_all_reasons_and_lists_are_newest_first() -> None:
    items = _items("2026-11-24 05:00", "2026-11-25 05:00", "2026-11-23 05:00")

    plan = plan_prune(items, KeepPolicy.parse("keep-all=1"), UTC)

    assert plan.keep == ("2026-11-25 05:00", "2026-11-24 05:00", "2026-11-23 05:00")
    assert set(plan.reasons.values()) == {"keep-all"}


def test_ties_in_created_are_broken_by_name_descending() -> None:
    when = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    items = [RetentionItem("a", when), RetentionItem("c", when), RetentionItem("b", when)]

    assert plan_prune(items, KeepPolicy(last=1), UTC).keep == ("c",)
    daily = plan_prune(items, KeepPolicy(daily=1), UTC)
    assert (daily.keep, daily.remove) == (("c",), ("b", "a"))


def test_same_instant_in_different_zones_is_one_time() -> None:
    utc = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    items = [
        RetentionItem("berlin", utc.astimezone(BERLIN)),
        RetentionItem("older", utc - timedelta(minutes=1)),
        RetentionItem("utc", utc),
    ]

    assert plan_prune(items, KeepPolicy(last=2), UTC).keep == ("utc", "berlin")


@pytest.mark.parametrize("reverse", [False, True])
def test_same_instant_in_a_dst_fold_still_ties_on_the_name(reverse: bool) -> None:
    # 00:30 UTC is 02:30 CEST (fold=0) on 2026-10-25, the day Berlin falls back to CET. Python
    # never calls such datetimes equal across zones (PEP 495), so a naive sort ignores names.
    utc = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    items = [RetentionItem("a-utc", utc), RetentionItem("b-berlin", utc.astimezone(BERLIN))]
    assert items[1].created.fold == 0
    assert items[0].created != items[1].created

    plan = plan_prune(items[::-1] if reverse else items, KeepPolicy(last=1), UTC)

    assert (plan.keep, plan.remove) == (("b-berlin",), ("a-utc",))


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RetentionItem("naive", datetime(2026, 11, 25, 12, 0))


def test_duplicate_names_are_rejected() -> None:
    items = _items("2026-11-25 12:00", "2026-11-24 12:00")
    items.append(RetentionItem("2026-11-25 12:00", datetime(2026, 1, 1, tzinfo=UTC)))

    with pytest.raises(ValueError, match="duplicate item names: 2026-11-25 12:00"):
        plan_prune(items, KeepPolicy(last=1), UTC)


def test_no_items_gives_an_empty_plan() -> None:
    assert plan_prune([], KeepPolicy(daily=3), UTC) == PrunePlan((), (), ())


# --- policy syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keep-last=3,keep-daily=7,keep-weekly=4", KeepPolicy(last=3, daily=7, weekly=4)),
        (" keep-yearly = 1 ,  keep-hourly=24 ", KeepPolicy(hourly=24, yearly=1)),
        ("keep-monthly=6,keep-last=0", KeepPolicy(monthly=6)),
        ("keep-all=0,keep-daily=7", KeepPolicy(daily=7)),
        ("keep-all=1", KeepPolicy(all_=True)),
        ("keep-all=0", KeepPolicy(all_=True)),
        ("keep-daily=0", KeepPolicy()),
    ],
)
def test_parse(text: str, expected: KeepPolicy) -> None:
    assert KeepPolicy.parse(text) == expected


def test_str_is_canonical() -> None:
    assert str(KeepPolicy.parse("keep-yearly=1, keep-last=3")) == "keep-last=3,keep-yearly=1"
    assert str(KeepPolicy.parse("keep-daily=0")) == "keep-all=1"
    assert str(KeepPolicy()) == "keep-all=1"


def test_a_policy_without_positive_counts_keeps_everything() -> None:
    assert KeepPolicy().keeps_everything
    assert KeepPolicy.parse("keep-all=0").keeps_everything
    assert not KeepPolicy(last=1).keeps_everything
    # Policies that behave the same are equal, whichever way they are written.
    assert KeepPolicy() == KeepPolicy.parse("keep-all=1") == KeepPolicy(all_=True)
    assert hash(KeepPolicy()) == hash(KeepPolicy(all_=True))
    assert KeepPolicy(daily=7) != KeepPolicy(all_=True)
    assert replace(KeepPolicy(), daily=7) == KeepPolicy.parse("keep-daily=7")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keep-dayly=7", "unknown key 'keep-dayly'"),
        ("keep-daily=-1", "keep-daily must not be negative, got -1"),
        ("keep-daily", "bad item 'keep-daily'"),
        ("keep-daily=7,,keep-last=1", "bad item ''"),
        ("keep-daily=7,", "bad item ''"),
        ("=7", "bad item '=7'"),
        ("keep-daily=seven", "keep-daily needs a whole number, got 'seven'"),
        ("keep-daily=1.5", "keep-daily needs a whole number, got '1.5'"),
        ("keep-daily=", "keep-daily needs a whole number, got ''"),
        ("keep-daily=7,keep-daily=3", "keep-daily is given twice"),
        ("", "empty keep policy"),
        ("keep-all=1,keep-daily=7", "keep-all=1 cannot be combined with other counts"),
        ("keep-all=2", "keep-all takes 0 or 1"),
        ("keep-last:3", "bad item 'keep-last:3'"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(RetentionPolicyError) as excinfo:
        KeepPolicy.parse(text)

    assert message in str(excinfo.value)
    assert "valid keys: keep-all, keep-last, keep-hourly, keep-daily" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, ConfigError)


def test_parse_error_names_the_setting() -> None:
    with pytest.raises(RetentionPolicyError) as excinfo:
        KeepPolicy.parse("keep-dayly=7", setting="zfs.policies.daily")

    assert str(excinfo.value).startswith("zfs.policies.daily: unknown key 'keep-dayly'")
    assert excinfo.value.setting == "zfs.policies.daily"


def test_constructor_validates_too() -> None:
    with pytest.raises(RetentionPolicyError, match="daily must not be negative"):
        KeepPolicy(daily=-1)
    with pytest.raises(RetentionPolicyError, match="cannot be combined"):
        KeepPolicy(last=1, all_=True)


# --- properties against an independent oracle ------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ORACLE_RULES = (
    ("keep-last", None),
    ("keep-hourly", "%Y/%m/%d/%H"),
    ("keep-daily", "%Y/%m/%d"),
    ("keep-weekly", "%G/%V"),
    ("keep-monthly", "%Y/%m"),
    ("keep-yearly", "%Y"),
)


def oracle(
    items: list[RetentionItem], policy: KeepPolicy, tz: tzinfo
) -> tuple[list[str], list[str], list[str]]:
    """Same semantics as plan_prune, written differently: group by bucket, then walk buckets.

    Exact only where every bucket is one contiguous stretch of time, which holds for the
    zones drawn below (it fails where DST ends at midnight, e.g. old America/Sao_Paulo).
    """
    order = sorted(items, key=lambda it: (it.created - _EPOCH, it.name), reverse=True)
    pool = [it for it in order if not it.protected]
    protected = [it.name for it in order if it.protected]
    counts = policy.counts()
    if policy.all_ or sum(counts.values()) == 0:
        return [it.name for it in pool], [], protected

    decided: dict[str, bool] = {}  # name -> kept
    for rule, fmt in _ORACLE_RULES:
        wanted = counts[rule]
        if wanted == 0:
            continue

        def bucket(it: RetentionItem, fmt: str | None = fmt) -> str:
            return it.name if fmt is None else it.created.astimezone(tz).strftime(fmt)

        covered = {bucket(it) for it in pool if decided.get(it.name)}
        groups: dict[str, list[RetentionItem]] = {}
        for it in pool:
            if it.name not in decided:
                groups.setdefault(bucket(it), []).append(it)
        fresh = [members for b, members in groups.items() if b not in covered]
        for newest, *rest in fresh[:wanted]:
            decided[newest.name] = True
            decided.update(dict.fromkeys((it.name for it in rest), False))

    keep = [it.name for it in pool if decided.get(it.name)]
    remove = [it.name for it in pool if not decided.get(it.name)]
    return keep, remove, protected


ZONES: list[tzinfo] = [
    UTC,
    BERLIN,
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Lord_Howe"),  # DST shifts by 30 minutes
    timezone(timedelta(hours=5, minutes=45)),
    timezone(-timedelta(hours=9, minutes=30)),
]
SPANS = [timedelta(hours=5), timedelta(days=4), timedelta(days=70), timedelta(days=4 * 366)]

_RULE_FIELDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
counts = st.integers(min_value=0, max_value=4)


@st.composite
def _sparse_policies(draw: st.DrawFn) -> KeepPolicy:
    """One to three rules, where the interplay between rules is easiest to hit."""
    chosen = draw(st.sets(st.sampled_from(_RULE_FIELDS), min_size=1, max_size=3))
    kwargs: dict[str, Any] = {name: draw(st.integers(min_value=1, max_value=3)) for name in chosen}
    return KeepPolicy(**kwargs)


policies = st.one_of(
    _sparse_policies(),
    st.builds(
        KeepPolicy,
        last=counts,
        hourly=counts,
        daily=counts,
        weekly=counts,
        monthly=counts,
        yearly=counts,
    ),
    st.just(KeepPolicy(all_=True)),
)


def _uniform_instants() -> st.SearchStrategy[list[datetime]]:
    """Instants spread over a span of hours to years."""

    @st.composite
    def draw_instants(draw: st.DrawFn) -> list[datetime]:
        span = draw(st.sampled_from(SPANS))
        start = draw(st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2030, 1, 1)))
        seconds = st.integers(min_value=0, max_value=int(span.total_seconds()))
        offsets = draw(st.lists(seconds, min_size=1, max_size=25))
        return [start.replace(tzinfo=UTC) + timedelta(seconds=s) for s in offsets]

    return draw_instants()


def _month_edge_instants() -> st.SearchStrategy[list[datetime]]:
    """Instants within days of a month or year boundary, where weeks straddle two months."""

    @st.composite
    def draw_instants(draw: st.DrawFn) -> list[datetime]:
        year = draw(st.integers(min_value=2019, max_value=2029))
        first = draw(st.integers(min_value=1, max_value=12))
        edges = [
            datetime(year + (first + k - 1) // 12, (first + k - 1) % 12 + 1, 1, tzinfo=UTC)
            for k in range(draw(st.integers(min_value=1, max_value=3)))
        ]
        near = st.integers(min_value=-6 * 86400, max_value=6 * 86400)
        pairs = st.tuples(st.sampled_from(edges), near)
        return [
            edge + timedelta(seconds=s)
            for edge, s in draw(st.lists(pairs, min_size=1, max_size=25))
        ]

    return draw_instants()


@st.composite
def item_lists(draw: st.DrawFn) -> list[RetentionItem]:
    # A small pool of instants makes ties and shared buckets common.
    instants = draw(st.one_of(_uniform_instants(), _month_edge_instants()))
    # Hypothesis favours short lists; most interplay between rules needs a dozen items or more.
    size = draw(st.integers(min_value=0, max_value=40))
    entries = draw(
        st.lists(
            st.tuples(st.sampled_from(instants), st.booleans(), st.sampled_from(ZONES)),
            min_size=size,
            max_size=size,
        )
    )
    return [
        RetentionItem(
            f"s{i:02d}",
            when.astimezone(shown_in),
            protected=protected and i % 3 == 0,
        )
        for i, (when, protected, shown_in) in enumerate(entries)
    ]


fast = settings(max_examples=200, deadline=None)


@fast
@given(items=item_lists(), policy=policies, tz=st.sampled_from(ZONES))
def test_plan_matches_oracle(items: list[RetentionItem], policy: KeepPolicy, tz: tzinfo) -> None:
    plan = plan_prune(items, policy, tz)

    keep, remove, protected = oracle(items, policy, tz)
    assert (list(plan.keep), list(plan.remove), list(plan.protected)) == (keep, remove, protected)


# Every combination of two or three rules, the last one keeping two: where the leftovers of
# one rule meet the next (e.g. a week split across two months between weekly and monthly).
RULE_COMBINATIONS = [
    KeepPolicy(**dict.fromkeys(rules, 1), **{last: 2}, all_=False)
    for size in (1, 2)
    for *rules, last in itertools.combinations(_RULE_FIELDS, size + 1)
]


@fast
@given(items=item_lists(), tz=st.sampled_from(ZONES))
def test_plan_matches_oracle_for_combinations_of_rules(
    items: list[RetentionItem], tz: tzinfo
) -> None:
    for policy in RULE_COMBINATIONS:
        plan = plan_prune(items, policy, tz)

        keep, remove, _ = oracle(items, policy, tz)
        assert (list(plan.keep), list(plan.remove)) == (keep, remove), str(policy)


@fast
@given(items=item_lists(), policy=policies, tz=st.sampled_from(ZONES))
def test_plan_invariants(items: list[RetentionItem], policy: KeepPolicy, tz: tzinfo) -> None:
    plan = plan_prune(items, policy, tz)

    names = [it.name for it in items]
    placed = plan.keep + plan.remove + plan.protected
    assert sorted(placed) == sorted(names)  # each item in exactly one list
    assert set(plan.protected) == {it.name for it in items if it.protected}
    assert set(plan.reasons) == set(plan.keep) | set(plan.protected)
    unprotected = [it for it in items if not it.protected]
    if policy.keeps_everything:
        assert plan.remove == ()
    else:
        assert len(plan.keep) <= sum(policy.counts().values())
        if unprotected:
            newest = max(unprotected, key=lambda it: (it.created - _EPOCH, it.name))
            assert plan.keep[0] == newest.name


@fast
@given(items=item_lists(), policy=policies, tz=st.sampled_from(ZONES))
def test_pruning_the_survivors_again_removes_nothing(
    items: list[RetentionItem], policy: KeepPolicy, tz: tzinfo
) -> None:
    plan = plan_prune(items, policy, tz)
    survivors = [it for it in items if it.name not in set(plan.remove)]

    again = plan_prune(survivors, policy, tz)

    assert again.remove == ()
    assert again.keep == plan.keep
    assert again.protected == plan.protected


@fast
@given(items=item_lists(), policy=policies, tz=st.sampled_from(ZONES), data=st.data())
def test_input_order_does_not_matter(
    items: list[RetentionItem], policy: KeepPolicy, tz: tzinfo, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(items))

    assert plan_prune(shuffled, policy, tz) == plan_prune(items, policy, tz)


@fast
@given(policy=policies, data=st.data())
def test_str_round_trips(policy: KeepPolicy, data: st.DataObject) -> None:
    assert KeepPolicy.parse(str(policy)) == policy

    # Any order and spacing of the same items parses to the same policy.
    parts = data.draw(st.permutations(str(policy).split(",")))
    spaced = " , ".join(f" {p.replace('=', ' = ')} " for p in parts)
    assert KeepPolicy.parse(spaced) == policy
