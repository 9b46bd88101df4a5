"""Snapshot names, labels, datasets and host names: what passes, what is refused and why."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moxflow.errors import ConfigError, UnsafeNameError
from moxflow.naming import (
    MOXFLOW_MARKER,
    ParsedName,
    description_run,
    description_state,
    is_moxflow_description,
    owned_by_moxflow,
    parse_snapshot_name,
    snapshot_description,
    snapshot_name,
    validate_dataset,
    validate_guest_snapname,
    validate_host_name,
    validate_label,
    validate_zfs_snapname,
)

HOSTILE = [
    ";rm -rf /",
    "$(reboot)",
    "`reboot`",
    "rpool/data; reboot",
    "rpool data",
    "rpool/data\nreboot",
    "rpool/data\r",
    "rpool/'data'",
    'rpool/"data"',
    "-o",
    "rpool/-o",
    "../etc",
    "rpool/../etc",
    "rpool/./data",
    "rpool/d\u0430ta",  # Cyrillic a
    "rpool/data\x00",
    "rpool//data",
    "rpool/data/",
    "/rpool",
    "rpool@snap",
    "rpool/data|cat",
    "rpool/data&",
    "rpool/data>x",
    "rpool/*",
    "rpool/data\t",
    "",
]

SHELL_META = set(" \t\n\r;&|$`'\"\\<>()*?[]{}~!#\x00")


# --- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["h", "hourly", "pre-update", "a_b", "x1", "a" * 16, "daily-2"])
def test_valid_labels(label: str) -> None:
    assert validate_label(label) == label


@pytest.mark.parametrize(
    "label",
    ["", "Hourly", "1hourly", "hourly-", "-hourly", "a" * 17, "hour ly", "hour;ly", "hourly\n"],
)
def test_invalid_labels(label: str) -> None:
    with pytest.raises(UnsafeNameError) as info:
        validate_label(label)
    assert repr(label) in str(info.value)
    assert "1-16 characters" in str(info.value)


# --- snapshot names ------------------------------------------------------------------------


def test_snapshot_name_is_utc_and_documented_shape() -> None:
    when = datetime(2026, 11, 26, 2, 2, 3, tzinfo=timezone(timedelta(hours=1)))
    assert snapshot_name("hourly", when) == "moxflow-hourly-20261126-010203"


def test_snapshot_name_refuses_naive_time() -> None:
    with pytest.raises(UnsafeNameError, match="naive"):
        snapshot_name("hourly", datetime(2026, 11, 26, 1, 2, 3))


def test_snapshot_name_refuses_bad_label() -> None:
    with pytest.raises(UnsafeNameError):
        snapshot_name("Hourly", datetime(2026, 11, 26, tzinfo=UTC))


def test_longest_label_fits_proxmox() -> None:
    name = snapshot_name("a" * 15 + "z", datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC))
    assert len(name) == 40
    assert validate_guest_snapname(name) == name
    assert validate_zfs_snapname(name) == name


def test_parse_snapshot_name_with_dashes_in_label() -> None:
    parsed = parse_snapshot_name("moxflow-pre-update-20261126-010203")
    assert parsed == ParsedName("pre-update", datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC))


def test_parse_label_that_looks_like_a_date() -> None:
    parsed = parse_snapshot_name("moxflow-x-20261126-20261126-010203")
    assert parsed is not None
    assert parsed.label == "x-20261126"


@pytest.mark.parametrize(
    "name",
    [
        "before-upgrade",
        "autosnap_2026-11-01_00:00:00_daily",
        "manual-keep",
        "moxflow-hourly",
        "moxflow-hourly-20261126",
        "moxflow--20261126-010203",
        "moxflow-Hourly-20261126-010203",
        "moxflow-hourly-20261326-010203",  # month 13
        "moxflow-hourly-20261126-250203",  # hour 25
        "moxflow-hourly-20261126-010203x",
        "moxflow-hourly-20261126-010203\n",
        "xmoxflow-hourly-20261126-010203",
        "moxflow-" + "a" * 17 + "-20261126-010203",
        "moxflow-hourly-２0261126-010203",  # fullwidth digit
    ],
)
def test_parse_returns_none_for_foreign_names(name: str) -> None:
    assert parse_snapshot_name(name) is None


def test_owned_by_moxflow() -> None:
    assert owned_by_moxflow("moxflow-hourly-20261126-010203", "hourly")
    assert not owned_by_moxflow("moxflow-daily-20261126-010203", "hourly")
    assert not owned_by_moxflow("hourly-20261126-010203", "hourly")


labels = st.from_regex(r"\A([a-z][a-z0-9_-]{0,14}[a-z0-9]|[a-z])\Z")
times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=5))]),
)


@given(labels, times)
def test_snapshot_name_round_trips(label: str, when: datetime) -> None:
    name = snapshot_name(label, when)
    parsed = parse_snapshot_name(name)
    assert parsed is not None
    assert parsed.label == label
    assert parsed.created == when.replace(microsecond=0)
    assert parsed.created.tzinfo is UTC
    assert validate_guest_snapname(name) == name
    assert validate_zfs_snapname(name) == name


# --- datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["rpool", "rpool/data", "rpool/data/vm-101-disk-0", "tank/media", "tank/a.b:c_d-e", "p" * 255],
)
def test_valid_datasets(name: str) -> None:
    assert validate_dataset(name) == name


@pytest.mark.parametrize("name", [*HOSTILE, "1pool/data", "p" * 256, "rpool/a..b"])
def test_hostile_datasets_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError) as info:
        validate_dataset(name)
    message = str(info.value)
    assert ascii(name)[:100] in message
    assert "components of" in message
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, ValueError)


def test_lookalike_is_shown_escaped() -> None:
    with pytest.raises(UnsafeNameError) as info:
        validate_dataset("rpool/d\u0430ta")
    assert "\\u0430" in str(info.value)


def test_non_string_dataset_is_refused() -> None:
    with pytest.raises(UnsafeNameError):
        validate_dataset(42)  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_accepted_dataset_names_are_shell_inert(name: str) -> None:
    try:
        validate_dataset(name)
    except UnsafeNameError:
        return
    assert not set(name) & SHELL_META
    assert name.isascii()
    assert not any(part.startswith("-") for part in name.split("/"))
    assert shlex.quote(name) == name


@given(st.from_regex(r"\A[a-z][a-z0-9]{0,5}(/[A-Za-z0-9_.:-]{1,8}){0,3}\Z"))
def test_generated_dataset_names_are_accepted_or_refused_for_a_reason(name: str) -> None:
    bad = any(p.startswith("-") or ".." in p or p == "." for p in name.split("/"))
    if bad:
        with pytest.raises(UnsafeNameError):
            validate_dataset(name)
    else:
        assert validate_dataset(name) == name


# --- ZFS snapshot names, hosts, guest snapshot names ---------------------------------------


@pytest.mark.parametrize("name", ["-r", "a b", "a;b", "", "a/b", "a@b", "x..y", "a\n"])
def test_invalid_zfs_snapnames(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        validate_zfs_snapname(name)


@pytest.mark.parametrize("name", ["pve1", "nas.lan", "PVE-2", "10.0.0.1", "a" * 63])
def test_valid_host_names(name: str) -> None:
    assert validate_host_name(name) == name


@pytest.mark.parametrize("name", ["", "-o", ".pve", "pve 1", "pve1;x", "a" * 64, "pv\u0435"])
def test_invalid_host_names(name: str) -> None:
    with pytest.raises(UnsafeNameError, match="host name"):
        validate_host_name(name)


@pytest.mark.parametrize(
    "name",
    ["current", "pending", "vzdump", "a", "Before", "1st", "a" * 41, "a b", "a.b", "a;b"],
)
def test_invalid_guest_snapnames(name: str) -> None:
    with pytest.raises(UnsafeNameError, match="Proxmox snapshot name"):
        validate_guest_snapname(name)


@pytest.mark.parametrize("name", ["before-upgrade", "ab", "a" * 40, "x_1"])
def test_valid_guest_snapnames(name: str) -> None:
    assert validate_guest_snapname(name) == name


# --- guest snapshot descriptions -----------------------------------------------------------


def test_snapshot_description() -> None:
    when = datetime(2026, 11, 26, 2, 2, 3, tzinfo=timezone(timedelta(hours=1)))
    text = snapshot_description("hourly", when)
    assert text == (
        "moxflow: hourly snapshot taken 2026-11-26T01:02:03Z (do not rename; pruned by moxflow)"
    )
    assert text.startswith(MOXFLOW_MARKER)
    assert is_moxflow_description(text)
    assert is_moxflow_description(text + "\n")


def test_a_snapshot_description_names_the_run_that_took_it() -> None:
    when = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
    run = "0f6a1b7e-3c55-4c1e-9a5e-8d2f7c9b1a00"
    text = snapshot_description("hourly", when, run)
    assert text == (
        f"moxflow: hourly snapshot taken 2026-11-26T01:02:03Z by run {run} "
        "(do not rename; pruned by moxflow)"
    )
    assert description_run(text) == run
    assert description_run(snapshot_description("hourly", when)) is None  # an older one
    assert description_run(f"before the upgrade by run {run} (x)") is None  # not moxflow's
    # a run id that is not one is left out rather than written into the description
    assert snapshot_description("hourly", when, "x (y) by run z") == snapshot_description(
        "hourly", when
    )


def test_an_adopted_snapshots_description_names_the_run_that_adopted_it() -> None:
    when = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
    text = snapshot_description("pre-update", when, "new-run", adopted_from="old-run")
    assert text == (
        "moxflow: pre-update snapshot taken 2026-11-26T01:02:03Z by the interrupted run "
        "old-run, adopted by run new-run (do not rename; pruned by moxflow)"
    )
    assert description_run(text) == "new-run"  # whose it is now
    assert snapshot_description("pre-update", when, adopted_from="old-run") == (
        snapshot_description("pre-update", when)
    )


def test_a_snapshots_description_says_how_its_change_stands() -> None:
    when = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
    text = snapshot_description("pre-update", when, "new-run", "old-run", state="in progress")
    assert text == (
        "moxflow: pre-update snapshot taken 2026-11-26T01:02:03Z by the interrupted run "
        "old-run, adopted by run new-run [in progress] (do not rename; pruned by moxflow)"
    )
    assert (description_run(text), description_state(text)) == ("new-run", "in progress")
    for state in ("committed", "rolled back"):
        text = snapshot_description("pre-update", when, "run-1", state=state)
        assert (description_run(text), description_state(text)) == ("run-1", state)
        assert description_state(text + "\n") == state
    # written before states were: no state, the run still read
    legacy = snapshot_description("pre-update", when, "run-1")
    assert (description_run(legacy), description_state(legacy)) == ("run-1", None)
    assert description_state("by hand [committed] (x)") is None  # not moxflow's
    with pytest.raises(ValueError, match="unknown snapshot state"):
        snapshot_description("pre-update", when, "run-1", state="done")


@pytest.mark.parametrize("desc", [None, "", "before the upgrade", "made by moxflow", "moxflow"])
def test_foreign_descriptions(desc: str | None) -> None:
    assert not is_moxflow_description(desc)
