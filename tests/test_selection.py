"""The guest selection language over a hand-built cluster shaped like the default lab."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moxflow.errors import ConfigError, SelectionError
from moxflow.guests import Guest
from moxflow.selection import (
    Selection,
    Term,
    describe,
    parse_selection,
    require_matches,
    select_guests,
    unmatched,
)

GUESTS = [
    Guest(100, "dns", "pve1", "lxc", "running", tags=("infra", "dns")),
    Guest(101, "media-vm", "pve1", "qemu", "running", tags=("media",), pool="apps"),
    Guest(102, "nixos-builder", "pve2", "qemu", "running", tags=("nixos",)),
    Guest(103, "win11-gaming", "pve2", "qemu", "stopped", tags=("windows", "gaming", "nosnap")),
    Guest(104, "homeassistant", "pve2", "qemu", "running", pool="apps"),
    Guest(105, "backup-ct", "pve2", "lxc", "stopped"),
    Guest(9000, "debian-12-template", "pve1", "qemu", template=True),
]


def ids(expr: str) -> list[int]:
    return [g.vmid for g in select_guests(expr, list(reversed(GUESTS)))]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("@all", [100, 101, 102, 103, 104, 105, 9000]),
        ("100", [100]),
        ("100,102", [100, 102]),
        ("101:104", [101, 102, 103, 104]),
        ("104:104", [104]),
        ("@tag-media", [101]),
        ("@tag-MEDIA", [101]),
        ("@pool-apps", [101, 104]),
        ("@node-pve1", [100, 101, 9000]),
        ("media-vm", [101]),
        ("media-vm, dns ,  104", [100, 101, 104]),
        ("@all,-@tag-nosnap", [100, 101, 102, 104, 105, 9000]),
        ("-@tag-nosnap", [100, 101, 102, 104, 105, 9000]),
        ("-105,-media-vm", [100, 102, 103, 104, 9000]),
        ("@node-pve2,-103:104", [102, 105]),
        ("@pool-apps,@tag-media", [101, 104]),
        ("100:9000,-@node-pve2", [100, 101, 9000]),
        ("@all,-@all", []),
        ("999", []),
        ("nope", []),
        ("@tag-nothing", []),
    ],
)
def test_select_guests(expr: str, expected: list[int]) -> None:
    assert ids(expr) == expected


def test_select_accepts_a_parsed_selection() -> None:
    sel = parse_selection("@tag-media,104")
    assert [g.vmid for g in select_guests(sel, GUESTS)] == [101, 104]


def test_parse_structure_and_normal_form() -> None:
    sel = parse_selection(" 100 , 101:103,@tag-x,-@pool-apps,-dns ")
    assert sel == Selection(
        include=(
            Term("vmid", low=100, high=100),
            Term("range", low=101, high=103),
            Term("tag", "x"),
        ),
        exclude=(Term("pool", "apps"), Term("name", "dns")),
    )
    assert str(sel) == "100,101:103,@tag-x,-@pool-apps,-dns"
    assert parse_selection(str(sel)) == sel


@pytest.mark.parametrize(
    ("expr", "token"),
    [
        ("@bogus", "@bogus"),
        ("100,@everything", "@everything"),
        ("@tag", "@tag"),
        ("@tag-", "@tag-"),
        ("@tag-a;b", "@tag-a;b"),
        ("@pool-$(reboot)", "@pool-$(reboot)"),
        ("@", "@"),
        ("110:100", "110:100"),
        ("100:", "100:"),
        ("media vm", "media vm"),
        ("dns;reboot", "dns;reboot"),
        ("$(reboot)", "$(reboot)"),
        ("-", "-"),
        ("--105", "-105"),
        ("../x", "../x"),
        ("m\u0435dia-vm", "m\u0435dia-vm"),
    ],
)
def test_bad_tokens_are_named(expr: str, token: str) -> None:
    with pytest.raises(SelectionError) as info:
        parse_selection(expr)
    message = str(info.value)
    assert repr(token) in message
    assert "@tag-X" in message  # the accepted syntax comes with it
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("expr", ["", "   ", "100,,101", "100,", ",100"])
def test_empty_selection_or_token(expr: str) -> None:
    with pytest.raises(SelectionError, match="empty"):
        parse_selection(expr)


def test_unmatched_lists_tokens_that_match_nothing() -> None:
    missing = unmatched("100,999,ghost,@tag-media,@tag-none,500:600,@all,-998,-dns", GUESTS)
    assert missing == ["999", "ghost", "@tag-none", "500:600", "-998"]


def test_unmatched_empty_when_everything_matches() -> None:
    assert unmatched(parse_selection("100:105,-@tag-nosnap"), GUESTS) == []


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("@all", "all guests"),
        ("-105", "all guests except guest 105"),
        (
            "@tag-media,100:102,-@pool-apps,-@node-pve2,-dns",
            "guests tagged media, guests 100 to 102 except guests in pool apps, "
            "guests on node pve2, guest named dns",
        ),
        ("@all,101", "all guests"),
    ],
)
def test_describe(expr: str, text: str) -> None:
    assert describe(expr) == text


@given(st.lists(st.sampled_from([g.vmid for g in GUESTS] + [1, 5000]), min_size=1, max_size=5))
def test_excluding_ids_removes_exactly_them(excluded: list[int]) -> None:
    expr = ",".join(f"-{i}" for i in excluded)
    assert ids(expr) == sorted({g.vmid for g in GUESTS} - set(excluded))


@given(st.text(max_size=20))
def test_parse_never_raises_anything_but_selection_error(expr: str) -> None:
    try:
        sel = parse_selection(expr)
    except SelectionError:
        return
    assert parse_selection(str(sel)) == sel


def test_a_named_guest_that_is_not_there_is_refused_with_the_closest_name() -> None:
    with pytest.raises(SelectionError) as info:
        require_matches("medai-vm", GUESTS)
    message = str(info.value)
    assert "'medai-vm' (did you mean 'media-vm'?) matches no guest" in message
    assert "101 media-vm" in message  # the guests there are, to pick from
    assert isinstance(info.value, ConfigError)  # a usage error: exit status 2


@pytest.mark.parametrize(
    "expr", ["999", "500:600", "@tag-none", "@pool-x", "@node-pve9", "100,ghost"]
)
def test_every_included_token_must_match(expr: str) -> None:
    with pytest.raises(SelectionError, match="matches no guest"):
        require_matches(expr, GUESTS)


@pytest.mark.parametrize("expr", ["@all", "-@tag-none", "@all,-999,-ghost", "100:105,-@tag-nosnap"])
def test_exclusions_and_all_never_fail(expr: str) -> None:
    require_matches(expr, GUESTS)
