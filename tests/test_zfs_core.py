"""ZFS facts and plans as data: raw ``zfs`` output in, typed snapshots out; snapshots and a
policy in, a prune plan out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moxflow.errors import ParseError, UnsafeNameError
from moxflow.naming import snapshot_name
from moxflow.retention import KeepPolicy
from moxflow.zfs import (
    ZfsSnapshot,
    destroy_argv,
    list_snapshots_argv,
    parse_snapshot_list,
    plan_dataset_prune,
    snapshot_argv,
)

T0 = 1795651200  # 2026-11-26T00:00:00Z


def at(hour: float) -> datetime:
    return datetime.fromtimestamp(T0, tz=UTC) + timedelta(hours=hour)


def snap(dataset: str, name: str, hour: float, *, used: int = 0, userrefs: int = 0) -> ZfsSnapshot:
    return ZfsSnapshot(dataset, name, at(hour), used, userrefs)


def mox(label: str, hour: float) -> str:
    return snapshot_name(label, at(hour))


LIST_HEAD = [
    *("zfs", "list", "-H", "-p", "-t", "snapshot"),
    *("-o", "name,creation,used,userrefs", "-s", "creation"),
]

# --- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            snapshot_argv("rpool/data", "moxflow-hourly-20261126-010203", recursive=True),
            ["zfs", "snapshot", "-r", "rpool/data@moxflow-hourly-20261126-010203"],
        ),
        (
            snapshot_argv("tank/media", "moxflow-daily-20261126-000000", recursive=False),
            ["zfs", "snapshot", "tank/media@moxflow-daily-20261126-000000"],
        ),
        (
            list_snapshots_argv("rpool/data"),
            [*LIST_HEAD, "-d", "1", "rpool/data"],
        ),
        (
            list_snapshots_argv("rpool/data", recursive=True),
            [*LIST_HEAD, "-r", "rpool/data"],
        ),
        (destroy_argv("tank/media", "x"), ["zfs", "destroy", "tank/media@x"]),
        (
            destroy_argv("rpool/data", "x", recursive=True),
            ["zfs", "destroy", "-r", "rpool/data@x"],
        ),
    ],
)
def test_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


@pytest.mark.parametrize(
    ("dataset", "snapname"),
    [
        ("rpool/data; reboot", "x"),
        ("-o", "x"),
        ("rpool/data", "x; reboot"),
        ("rpool/data", "-r"),
        ("rpool/data", "$(reboot)"),
        ("rpool/data", "a@b"),
        ("rpool/data", ""),
        ("rpool/data@x", "y"),
    ],
)
def test_builders_refuse_hostile_names(dataset: str, snapname: str) -> None:
    for build in (snapshot_argv, destroy_argv):
        with pytest.raises(UnsafeNameError):
            build(dataset, snapname)


def test_list_refuses_hostile_dataset() -> None:
    with pytest.raises(UnsafeNameError, match="rpool data"):
        list_snapshots_argv("rpool data")


# --- parsing -------------------------------------------------------------------------------

ZFS_LIST = (
    "rpool/data@manual-keep\t1795000000\t8192\t1\n"
    "rpool/data@moxflow-hourly-20261126-000000\t1795651200\t0\t0\n"
    "rpool/data/vm-101-disk-0@moxflow-hourly-20261126-000000\t1795651200\t123456789\t0\n"
    "tank/media@autosnap_2026-11-01_00:00:00_daily\t1793491200\t4096\t0\n"
)


def test_parse_snapshot_list() -> None:
    assert parse_snapshot_list(ZFS_LIST) == [
        ZfsSnapshot(
            "rpool/data", "manual-keep", datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC), 8192, 1
        ),
        ZfsSnapshot("rpool/data", "moxflow-hourly-20261126-000000", at(0), 0, 0),
        ZfsSnapshot("rpool/data/vm-101-disk-0", "moxflow-hourly-20261126-000000", at(0), 123456789),
        ZfsSnapshot(
            "tank/media",
            "autosnap_2026-11-01_00:00:00_daily",
            datetime(2026, 11, 1, tzinfo=UTC),
            4096,
        ),
    ]
    first = parse_snapshot_list(ZFS_LIST)[0]
    assert first.full_name == "rpool/data@manual-keep"
    assert first.held
    assert first.created.tzinfo is UTC


@pytest.mark.parametrize("stdout", ["", "\n", "  \n\n"])
def test_parse_empty_list(stdout: str) -> None:
    assert parse_snapshot_list(stdout) == []


def test_parse_name_with_spaces_from_someone_else() -> None:
    [one] = parse_snapshot_list("tank/media@my snap\t1795651200\t0\t0\n")
    assert one.name == "my snap"


@pytest.mark.parametrize(
    "line",
    [
        "rpool/data@x\t1795651200\t0",  # three columns
        "rpool/data@x 1795651200 0 0",  # spaces, not tabs (no -H)
        "rpool/data\t1795651200\t0\t0",  # not a snapshot
        "@x\t1795651200\t0\t0",
        "rpool/data@\t1795651200\t0\t0",
        "rpool/data@x\tThu Nov 26 0:00 2026\t0\t0",  # no -p
        "rpool/data@x\t1795651200\t8K\t0",
        "rpool/data@x\t1795651200\t0\t-",
        "rpool/data@x\t-5\t0\t0",
        "rpool/data@x\t99999999999999999999\t0\t0",
    ],
)
def test_parse_malformed_line(line: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_snapshot_list(ZFS_LIST + line + "\n")
    assert info.value.text == line
    assert repr(line) in str(info.value)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"\A[a-z]{1,4}(/[a-z0-9-]{1,6}){0,2}\Z"),
            st.from_regex(r"\A[a-z0-9_:-]{1,12}\Z"),
            st.integers(0, 2**33),
            st.integers(0, 2**50),
            st.integers(0, 5),
        ),
        max_size=10,
    )
)
def test_parse_round_trips_rendered_output(rows: list[tuple[str, str, int, int, int]]) -> None:
    stdout = "".join(f"{d}@{n}\t{c}\t{u}\t{r}\n" for d, n, c, u, r in rows)
    parsed = parse_snapshot_list(stdout)
    assert [
        (s.dataset, s.name, int(s.created.timestamp()), s.used, s.userrefs) for s in parsed
    ] == [(d, n, c, u, r) for d, n, c, u, r in rows]


# --- prune planning ------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneCase:
    """Snapshots and a policy in; which names land in which list out."""

    id: str
    snapshots: list[ZfsSnapshot]
    policy: str
    keep: list[str]
    remove: list[str]
    protected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    just_taken: str | None = None
    recursive: bool = False
    label: str = "hourly"


DS = "rpool/data"
H = [mox("hourly", h) for h in range(6)]  # H[5] newest

CASES = [
    PruneCase(
        "keep-last-keeps-newest",
        [snap(DS, n, h) for h, n in enumerate(H)],
        "keep-last=2",
        keep=[H[5], H[4]],
        remove=[H[3], H[2], H[1], H[0]],
    ),
    PruneCase(
        "foreign-and-other-label-ignored",
        [
            snap(DS, "manual-keep", -100),
            snap(DS, "autosnap_2026-11-01_00:00:00_daily", -50),
            snap(DS, mox("daily", -24), -24),
            snap(DS, "moxflow-hourly-garbage", -3),
            *[snap(DS, n, h) for h, n in enumerate(H)],
        ],
        "keep-last=1",
        keep=[H[5]],
        remove=[H[4], H[3], H[2], H[1], H[0]],
        ignored=[
            "moxflow-hourly-garbage",
            mox("daily", -24),
            "autosnap_2026-11-01_00:00:00_daily",
            "manual-keep",
        ],
    ),
    PruneCase(
        "held-is-protected",
        [snap(DS, n, h, userrefs=1 if h == 1 else 0) for h, n in enumerate(H)],
        "keep-last=1",
        keep=[H[5]],
        remove=[H[4], H[3], H[2], H[0]],
        protected=[H[1]],
    ),
    PruneCase(
        "just-taken-counts-under-the-policy",
        [snap(DS, n, h) for h, n in enumerate(H)],
        "keep-last=2",
        keep=[H[5], H[4]],
        remove=[H[3], H[2], H[1], H[0]],
        just_taken=H[5],
    ),
    PruneCase(
        # a clock step backwards makes an older snapshot look newer: still never prune
        # the one this run just took
        "just-taken-never-removed-even-when-not-newest",
        [snap(DS, H[0], 9), snap(DS, H[1], 1)],
        "keep-last=1",
        keep=[H[1], H[0]],
        remove=[],
        just_taken=H[1],
    ),
    PruneCase(
        "other-datasets-left-out",
        [
            snap(DS, H[0], 0),
            snap("rpool/data/vm-101-disk-0", H[0], 0),
            snap("rpool/database", H[0], 0),
            snap(DS, H[1], 1),
        ],
        "keep-last=1",
        keep=[H[1]],
        remove=[H[0]],
    ),
    PruneCase(
        "held-child-protects-parent-when-recursive",
        [
            snap(DS, H[0], 0),
            snap("rpool/data/vm-101-disk-0", H[0], 0, userrefs=2),
            snap(DS, H[1], 1),
            snap("rpool/database", H[1], 1, userrefs=1),  # a sibling, not a child
            snap(DS, H[2], 2),
        ],
        "keep-last=1",
        keep=[H[2]],
        remove=[H[1]],
        protected=[H[0]],
        recursive=True,
    ),
    PruneCase(
        "held-child-ignored-when-not-recursive",
        [
            snap(DS, H[0], 0),
            snap("rpool/data/vm-101-disk-0", H[0], 0, userrefs=2),
            snap(DS, H[1], 1),
        ],
        "keep-last=1",
        keep=[H[1]],
        remove=[H[0]],
    ),
    PruneCase(
        "keep-all-removes-nothing",
        [snap(DS, n, h) for h, n in enumerate(H)],
        "keep-all=1",
        keep=list(reversed(H)),
        remove=[],
    ),
    PruneCase(
        "label-with-dash",
        [snap(DS, mox("pre-update", h), h) for h in range(3)] + [snap(DS, H[0], 0)],
        "keep-last=1",
        keep=[mox("pre-update", 2)],
        remove=[mox("pre-update", 1), mox("pre-update", 0)],
        ignored=[H[0]],
        label="pre-update",
    ),
    PruneCase(
        "hourly-buckets",
        [snap(DS, mox("hourly", h / 2), h / 2) for h in range(6)],
        "keep-hourly=2",
        keep=[mox("hourly", 2.5), mox("hourly", 1.5)],
        remove=[mox("hourly", h / 2) for h in (4, 2, 1, 0)],
    ),
    PruneCase("nothing-there", [], "keep-last=1", keep=[], remove=[]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_plan_dataset_prune(case: PruneCase) -> None:
    plan = plan_dataset_prune(
        case.snapshots,
        DS,
        case.label,
        KeepPolicy.parse(case.policy),
        UTC,
        case.just_taken,
        recursive=case.recursive,
    )
    assert list(plan.keep) == case.keep
    assert list(plan.remove) == case.remove
    assert list(plan.protected) == case.protected
    assert list(plan.ignored) == case.ignored
    listed = [*plan.keep, *plan.remove, *plan.protected, *plan.ignored]
    assert set(plan.reasons) == set(listed)
    assert set(plan.snapshots) == set(listed)
    assert all(s.dataset == DS for s in plan.snapshots.values())
    assert plan.empty == (not case.remove)


def test_plan_reasons_and_commands() -> None:
    snapshots = [
        snap(DS, "manual-keep", -10, userrefs=1),
        snap(DS, mox("daily", -5), -5),
        *[snap(DS, n, h, userrefs=1 if h == 2 else 0) for h, n in enumerate(H)],
    ]
    plan = plan_dataset_prune(
        snapshots, DS, "hourly", KeepPolicy.parse("keep-last=2"), UTC, H[5], recursive=True
    )
    assert plan.reasons[H[5]] == "keep-last #1"
    assert plan.reasons[H[2]] == "held"
    assert plan.reasons[H[4]] == "keep-last #2"
    assert plan.reasons[H[3]] == "not kept by keep-last=2"
    assert plan.reasons[H[0]] == "not kept by keep-last=2"
    assert plan.reasons["manual-keep"] == "not made by moxflow"
    assert plan.reasons[mox("daily", -5)] == "label daily, not hourly"
    assert plan.summary() == (
        "rpool/data [hourly: keep-last=2]: keep 2, remove 3, protected 1, ignored 2"
    )


def test_plan_buckets_use_the_time_zone() -> None:
    # 23:30 and 00:30 UTC are one day in New York (18:30, 19:30) but two days in UTC.
    names = [mox("daily", 23.5), mox("daily", 24.5)]
    snapshots = [snap(DS, names[0], 23.5), snap(DS, names[1], 24.5)]
    policy = KeepPolicy.parse("keep-daily=2")
    in_utc = plan_dataset_prune(snapshots, DS, "daily", policy, UTC)
    in_ny = plan_dataset_prune(snapshots, DS, "daily", policy, ZoneInfo("America/New_York"))
    assert in_utc.keep == (names[1], names[0])
    assert in_ny.keep == (names[1],)
    assert in_ny.remove == (names[0],)


def test_plan_refuses_duplicate_listing() -> None:
    with pytest.raises(ParseError, match="listed twice"):
        plan_dataset_prune(
            [snap(DS, H[0], 0), snap(DS, H[0], 0)],
            DS,
            "hourly",
            KeepPolicy.parse("keep-last=1"),
            UTC,
        )


def test_plan_refuses_hostile_dataset_and_label() -> None:
    policy = KeepPolicy.parse("keep-last=1")
    with pytest.raises(UnsafeNameError):
        plan_dataset_prune([], "rpool/$(x)", "hourly", policy, UTC)
    with pytest.raises(UnsafeNameError):
        plan_dataset_prune([], DS, "Hourly", policy, UTC)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hourly", "daily", "foreign"]),
            st.integers(0, 24 * 60),
            st.integers(0, 1),
        ),
        max_size=30,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.sampled_from(["keep-last=1", "keep-hourly=3,keep-daily=2", "keep-last=0,keep-hourly=1"]),
)
def test_plan_never_removes_what_is_not_ours(
    rows: list[tuple[str, int, int]], policy_text: str
) -> None:
    snapshots = [
        snap(DS, f"foreign-{h}" if label == "foreign" else mox(label, h), h, userrefs=held)
        for label, h, held in rows
    ]
    newest = max(
        (s for s in snapshots if s.name.startswith("moxflow-hourly")),
        default=None,
        key=lambda s: s.created,
    )
    just_taken = newest.name if newest else None
    plan = plan_dataset_prune(
        snapshots, DS, "hourly", KeepPolicy.parse(policy_text), UTC, just_taken
    )
    for name in plan.remove:
        assert name.startswith("moxflow-hourly-")
        assert not plan.snapshots[name].held
        assert name != just_taken
    decided = len(plan.keep) + len(plan.remove) + len(plan.protected) + len(plan.ignored)
    assert decided == len(snapshots)
