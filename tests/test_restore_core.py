"""moxflow.restore: scratch VMIDs, picking the backup, planning a restore (pure, no lab)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from moxflow.backups import Archive
from moxflow.errors import ConfigError
from moxflow.guests import Guest
from moxflow.inventory import RestoreTestSettings
from moxflow.restore import (
    backup_storage,
    check_scratch_vmid,
    choose_scratch_vmid,
    parse_vmid_range,
    pick_archive,
    plan_restore,
    restore_request,
)

GUESTS = [
    Guest(100, "dns", "pve1", "lxc", status="running"),
    Guest(101, "media-vm", "pve1", "qemu", status="running"),
    Guest(9000, "tmpl", "pve1", "qemu", template=True),
    Guest(9900, "someone", "pve2", "qemu"),
]


def archive(vmid: int, day: int, subtype: str = "qemu", storage: str = "nas") -> Archive:
    ext = "vma.zst" if subtype == "qemu" else "tar.zst"
    name = f"vzdump-{subtype}-{vmid}-2026_11_{day:02d}-02_00_00.{ext}"
    return Archive(
        volid=f"{storage}:backup/{name}",
        storage=storage,
        filename=name,
        vmid=vmid,
        subtype=subtype,
        size=1000,
        created=datetime(2026, 11, day, 2, tzinfo=UTC),
    )


def test_parse_vmid_range() -> None:
    assert parse_vmid_range("9900:9999") == range(9900, 10000)
    assert parse_vmid_range(" 950 ") == range(950, 951)
    for bad in ("", "a:b", "99:200", "200:150", "1:2:3"):
        with pytest.raises(ConfigError):
            parse_vmid_range(bad)


def test_inventory_section_defaults_and_validation() -> None:
    s = RestoreTestSettings()
    assert (s.scratch_vmids, s.scratch_storage) == ("9900:9999", "local-zfs")
    assert s.vmid_range() == range(9900, 10000)
    assert RestoreTestSettings(scratch_vmids="950").vmid_range() == range(950, 951)
    for bad in ("9999:9900", "50:60", "x"):
        with pytest.raises(ValueError, match="scratch_vmids"):
            RestoreTestSettings(scratch_vmids=bad)
    with pytest.raises(ValueError, match="select"):
        RestoreTestSettings(select="@nope-")


def test_choose_scratch_vmid_never_takes_one_in_use() -> None:
    assert choose_scratch_vmid(range(9900, 9910), GUESTS) == 9901
    assert choose_scratch_vmid(range(9900, 9910), GUESTS, avoid={9901}) == 9902
    assert choose_scratch_vmid(range(100, 103), GUESTS[1:], protect={100}) == 102
    with pytest.raises(ConfigError, match="no free scratch VMID in 9900"):
        choose_scratch_vmid(range(9900, 9901), GUESTS)
    with pytest.raises(ConfigError, match="no free scratch VMID in 100:101"):
        choose_scratch_vmid(range(100, 102), GUESTS)


def test_check_scratch_vmid() -> None:
    assert check_scratch_vmid(9901, GUESTS) == 9901
    with pytest.raises(ConfigError, match=r"9900 is in use by 9900 \(someone\) on pve2"):
        check_scratch_vmid(9900, GUESTS)
    with pytest.raises(ConfigError):
        check_scratch_vmid(5, GUESTS)


def test_pick_archive() -> None:
    items = [archive(101, 3), archive(101, 9), archive(104, 12), archive(101, 5)]
    assert pick_archive(items, "latest", 101).filename.endswith("2026_11_09-02_00_00.vma.zst")
    assert pick_archive(items, items[3].volid, 101) == items[3]
    with pytest.raises(ConfigError, match="no backup of guest 100"):
        pick_archive(items, "latest", 100)
    with pytest.raises(ConfigError, match="is of guest 104, not 101"):
        pick_archive(items, items[2].volid, 101)
    with pytest.raises(ConfigError, match="not on storage nas"):
        pick_archive(items, archive(101, 20).volid, 101)
    with pytest.raises(ConfigError, match="neither latest nor a backup volid"):
        pick_archive(items, "not-a-volid", 101)
    assert backup_storage("latest", "nas") == "nas"
    assert backup_storage(items[0].volid, "other") == "nas"


def test_restore_request() -> None:
    a = archive(100, 3, "lxc")
    assert restore_request("lxc", 9900, a.volid, storage="s", unique=True, force=False) == (
        "lxc",
        {"vmid": 9900, "storage": "s", "ostemplate": a.volid, "restore": True, "unique": True},
    )
    tail, params = restore_request("qemu", 101, "v", storage=None, unique=False, force=True)
    assert (tail, params) == ("qemu", {"vmid": 101, "storage": None, "archive": "v", "force": True})
    with pytest.raises(ConfigError):
        restore_request("openvz", 1, "v", storage=None, unique=False, force=False)


def test_plan_restore_refuses_to_overwrite_without_force() -> None:
    a = archive(101, 3)
    with pytest.raises(ConfigError, match="--force") as info:
        plan_restore(GUESTS, a, 101, node="pve2")
    assert "--target-vmid" in str(info.value)
    plan = plan_restore(GUESTS, a, 101, node="pve2", force=True)
    assert plan.overwrite and plan.snapshot and not plan.unique
    assert plan.node == "pve1"  # the node of the guest it overwrites
    assert plan.steps()[0].startswith("snapshot 101 (media-vm)")
    assert "stop 101 (media-vm)" in plan.steps()
    assert "over the existing guest (force)" in plan.steps()[2]


def test_plan_restore_beside_or_gone() -> None:
    a = archive(101, 3)
    plan = plan_restore(GUESTS, a, 101, node="pve2", target=950)
    assert (plan.target, plan.node, plan.overwrite, plan.unique) == (950, "pve2", False, True)
    gone = plan_restore(GUESTS, archive(105, 3), 105, node="pve2")
    assert (gone.target, gone.unique, gone.steps()) == (
        105,
        False,
        ["restore vzdump-qemu-105-2026_11_03-02_00_00.vma.zst to 105 on pve2"],
    )
    with pytest.raises(ConfigError, match="lxc guest"):
        plan_restore(GUESTS, a, 101, node="pve1", target=100, force=True)
    with pytest.raises(ConfigError, match="template"):
        plan_restore(GUESTS, a, 101, node="pve1", target=9000, force=True)
    with pytest.raises(ConfigError):
        plan_restore(GUESTS, a, 101, node="pve1", target=42)


def test_plan_restore_test_takes_the_newest_backup_and_a_free_scratch_vmid() -> None:
    from moxflow.restore import plan_restore_test

    media = GUESTS[1]
    items = [archive(101, 3), archive(101, 9), archive(104, 12), archive(101, 5)]
    plan = plan_restore_test(
        media, items, GUESTS, backup_storage="nas", scratch_storage="local-zfs",
        scratch_vmids=range(9900, 9910),
    )  # fmt: skip
    assert plan.archive == items[1]
    assert (plan.scratch, plan.storage, plan.fixed) == (9901, "local-zfs", False)  # 9900: in use
    assert plan.describe() == (
        "would restore to scratch 9901 on pve1/local-zfs, start, wait for the guest agent, destroy"
    )
    with pytest.raises(ConfigError, match="no backup on nas to restore"):
        plan_restore_test(
            GUESTS[0], items, GUESTS, backup_storage="nas", scratch_storage="s",
            scratch_vmids=range(9900, 9910),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="no free scratch VMID in 9900"):
        plan_restore_test(
            media, items, GUESTS, backup_storage="nas", scratch_storage="s",
            scratch_vmids=range(9900, 9901),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="9900 is in use"):
        plan_restore_test(
            media, items, GUESTS, backup_storage="nas", scratch_storage="s",
            scratch_vmids=range(9900, 9910), scratch_vmid=9900,
        )  # fmt: skip


def test_the_scratch_vmid_is_checked_again_right_before_the_restore() -> None:
    from moxflow.restore import plan_restore_test

    media = GUESTS[1]
    plan = plan_restore_test(
        media, [archive(101, 3)], GUESTS, backup_storage="nas", scratch_storage="s",
        scratch_vmids=range(9900, 9910),
    )  # fmt: skip
    assert plan.scratch_now(GUESTS) == 9901
    # an earlier scratch guest still there (its cleanup failed): the next free one
    taken = [*GUESTS, Guest(9901, "media-vm", "pve1", "qemu")]
    assert plan.scratch_now(taken) == 9902
    fixed = plan_restore_test(
        media, [archive(101, 3)], GUESTS, backup_storage="nas", scratch_storage="s",
        scratch_vmids=range(9900, 9910), scratch_vmid=9901,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="9901 is in use"):
        fixed.scratch_now(taken)


# A scratch guest is moxflow's own by its mark (the tag moxflow-scratch and the name prefix),
# and a leftover one is cleared only on a scratch VMID.
LEFTOVER = Guest(9901, "moxflow-scratch-media-vm", "pve1", "qemu", "running",
                 tags=("moxflow-scratch",))  # fmt: skip


def test_the_scratch_guest_is_marked_as_moxflows_own_in_the_restore_request() -> None:
    from moxflow.restore import scratch_marks

    media, dns = GUESTS[1], GUESTS[0]
    marks = scratch_marks(media, archive(101, 3), run="4f1c")
    assert (marks["tags"], marks["name"]) == ("moxflow-scratch", "moxflow-scratch-media-vm")
    assert marks["description"].startswith("moxflow: restore test's scratch copy of 101 (")
    assert "by run 4f1c" in marks["description"]
    # a container's name is its hostname; the name stays one DNS label
    assert set(scratch_marks(dns, archive(100, 3, "lxc"))) == {"tags", "hostname", "description"}
    long = Guest(102, "x" * 70, "pve1", "qemu")
    assert len(scratch_marks(long, archive(102, 3))["name"]) == 63
    _, params = restore_request("qemu", 9900, "nas:backup/x.vma.zst", storage="local-zfs",
                                unique=True, force=False, marks=marks)  # fmt: skip
    assert params["tags"] == "moxflow-scratch" and params["name"] == "moxflow-scratch-media-vm"


@pytest.mark.parametrize(
    ("guests", "leftovers"),
    [
        (GUESTS, []),  # 9900 is on a scratch VMID, but not marked: someone else's
        ([*GUESTS, LEFTOVER], [9901]),
        # marked, but not on a scratch VMID: left alone
        (
            [*GUESTS, Guest(500, "moxflow-scratch-old", "pve2", "lxc", tags=("moxflow-scratch",))],
            [],
        ),
        # the tag alone (by hand, a clone) is not the mark
        ([*GUESTS, Guest(9903, "old", "pve2", "lxc", tags=("a", "moxflow-scratch"))], []),
        ([*GUESTS, Guest(9902, "moxflow-scratch-dns", "pve1", "lxc", tags=("dns",))], []),
    ],
)
def test_only_marked_guests_are_left_over_scratch_guests(
    guests: list[Guest], leftovers: list[int]
) -> None:
    from moxflow.restore import leftover_scratch

    assert [g.vmid for g in leftover_scratch(guests, range(9900, 9910))] == leftovers


def test_a_left_over_scratch_guest_counts_as_free_and_an_unmarked_one_is_refused() -> None:
    from moxflow.restore import plan_restore_test

    media, items = GUESTS[1], [archive(101, 3)]
    guests = [*GUESTS, LEFTOVER]
    plan = plan_restore_test(
        media, items, guests, backup_storage="nas", scratch_storage="s",
        scratch_vmids=range(9900, 9910), run="4f1c",
    )  # fmt: skip
    assert plan.scratch == 9901  # destroyed before the restore
    assert plan.marks["tags"] == "moxflow-scratch" and "by run 4f1c" in plan.marks["description"]
    fixed = plan_restore_test(
        media, items, guests, backup_storage="nas", scratch_storage="s",
        scratch_vmids=range(9900, 9910), scratch_vmid=9901,
    )  # fmt: skip
    assert fixed.scratch == 9901
    with pytest.raises(ConfigError, match=r"in use by 9900 \(someone\).*not a restore test's"):
        plan_restore_test(
            media, items, guests, backup_storage="nas", scratch_storage="s",
            scratch_vmids=range(9900, 9910), scratch_vmid=9900,
        )  # fmt: skip
