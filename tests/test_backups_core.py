"""The pure backup core: volids, listings, verdicts, prune marks, offsite plans, coverage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moxflow.backups import (
    Archive,
    BackupJob,
    Coverage,
    archive_problem,
    coverage_rows,
    coverage_text,
    dump_failure,
    find_new_archive,
    mark_restore_tested,
    needs_prune,
    offsite_copies,
    parse_archive_name,
    parse_offsite_listing,
    parse_prune_marks,
    parse_sha256sum,
    parse_volid,
    plan_backups,
    plan_offsite,
    planned_backup_row,
    preview_prune,
    restore_tested_at,
    split_by_node,
    split_content,
)
from moxflow.errors import (
    ConfigError,
    GuestLockedError,
    ParseError,
    ProxmoxError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
)
from moxflow.guests import Guest
from moxflow.inventory import load_inventory
from moxflow.report import Outcome
from moxflow.retention import KeepPolicy

NOW = datetime(2026, 11, 26, 2, 0, 5, tzinfo=UTC)
GiB = 1024**3


def entry(vmid: int, when: datetime, size: int = GiB, **extra: Any) -> dict[str, Any]:
    kind = "lxc" if vmid == 100 else "qemu"
    ext = "tar.zst" if kind == "lxc" else "vma.zst"
    stamp = when.strftime("%Y_%m_%d-%H_%M_%S")
    return {
        "volid": f"nas:backup/vzdump-{kind}-{vmid}-{stamp}.{ext}",
        "content": "backup",
        "format": ext,
        "size": size,
        "ctime": int(when.timestamp()),
        "vmid": vmid,
        "subtype": kind,
        **extra,
    }


def test_volid_and_content_parse() -> None:
    v = parse_volid("local:backup/vzdump-qemu-101-2026_11_26-02_00_05.vma.zst")
    assert (v.storage, v.vmid, v.subtype) == ("local", 101, "qemu")
    assert v.stamp == datetime(2026, 11, 26, 2, 0, 5)
    other = parse_volid("nas:backup/my-own-copy.vma.zst")
    assert other.vmid is None and other.filename == "my-own-copy.vma.zst"
    for bad in ("nas:images/x.raw", "vzdump-qemu-1.vma", "nas:backup/a/b"):
        with pytest.raises(ParseError):
            parse_volid(bad)
    items = [
        entry(104, NOW, notes="moxflow"),
        entry(101, NOW - timedelta(days=2), protected=1),
        {"volid": "nas:iso/x.iso", "content": "iso"},
    ]
    archives = split_content(items)[0]
    assert [a.vmid for a in archives] == [101, 104]  # oldest first; iso ignored
    assert archives[0].protected and not archives[1].protected
    assert archives[1].notes == "moxflow" and archives[1].created == NOW
    # an entry it cannot read is left out, never fails the listing
    assert split_content([{"volid": "nas:backup/x", "content": "backup"}])[0] == []


# Proxmox's own test data (proxmox/pve-storage, src/test/archive_info_test.pm, the names
# archive_info accepts as standard, and src/test/list_volumes_test.pm, the backups a dir
# storage lists): every type with tgz, or tar/vma bare or compressed with gz, lzo, zst, bz2.
PVE_TIME = datetime(2020, 3, 30, 21, 12, 40)
AT_2139 = datetime(2020, 3, 30, 21, 39, 30)
ISSUE_TIME = datetime(2020, 11, 18, 8, 29, 44)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("vzdump-lxc-16110-3070_01_01-00_00_00.tgz", ("lxc", 16110, datetime(3070, 1, 1))),
        ("vzdump-lxc-16110-1970_01_01-02_00_30.tgz",
         ("lxc", 16110, datetime(1970, 1, 1, 2, 0, 30))),
        ("vzdump-openvz-16110-2020_03_30-21_39_30.tgz", ("lxc", 16110, AT_2139)),  # a container
        ("vzdump-qemu-16110-2020_03_30-21_39_30.tgz", ("qemu", 16110, AT_2139)),
        *[(f"vzdump-qemu-16110-2020_03_30-21_12_40.vma.{c}", ("qemu", 16110, PVE_TIME))
          for c in ("gz", "lzo", "zst", "bz2")],
        *[(f"vzdump-{t}-16110-2020_03_30-21_12_40.tar.{c}", ("lxc", 16110, PVE_TIME))
          for t in ("lxc", "openvz") for c in ("gz", "lzo", "zst", "bz2")],
        ("vzdump-qemu-16110-2020_03_30-21_13_55.vma",
         ("qemu", 16110, datetime(2020, 3, 30, 21, 13, 55))),
        ("vzdump-lxc-19254-2019_01_21-19_29_19.tar",
         ("lxc", 19254, datetime(2019, 1, 21, 19, 29, 19))),
        ("vzdump-openvz-16112-2020_03_30-21_39_30.tar.bz2", ("lxc", 16112, AT_2139)),
        # the issue's examples
        ("vzdump-qemu-100-2020_11_18-08_29_44.vma.zst", ("qemu", 100, ISSUE_TIME)),
        ("vzdump-lxc-100-2020_11_18-08_29_44.tar.zst", ("lxc", 100, ISSUE_TIME)),
    ],
)  # fmt: skip
def test_archive_names_proxmox_lists_as_backups(
    name: str, parsed: tuple[str, int, datetime]
) -> None:
    assert parse_archive_name(name) == parsed
    assert parse_volid(f"local:backup/{name}").vmid == parsed[1]
    assert parse_offsite_listing(f"{name}\n{name}.part\n") == [name]


@pytest.mark.parametrize(
    "name",
    [
        # archive_info_test.pm's failed matches, and its non-standard name
        *[f"vzdump-{t}-16110-2020_03_30-21_12_40.{s}"
          for t in ("openvz", "lxc") for s in ("zip", "tgz.lzo", "zip.gz", "")],
        *[f"vzdump-qemu-16110-2020_03_30-21_12_40.{s}"
          for s in ("vma.xz", "vms.gz", "vmx.zst", "")],
        "vzdump-none-16110-2020_03_30-21_12_40.tar.gz",
        "vzdump-qemu-16110-whatever-the-name_is_here.tgz",
        "vzdump-qemu-99-2020_03_30-21_12_40.vma.zst",  # VMIDs start at 100
        "vzdump-qemu-100-2020_13_30-21_12_40.vma.zst",  # no 13th month
    ],
)  # fmt: skip
def test_names_proxmox_does_not_take_for_standard_archives(name: str) -> None:
    assert parse_archive_name(name) is None


# Proxmox Backup Server volids as pve-storage's src/PVE/Storage/PBSPlugin.pm prints them
# (print_volid: "backup/{type}/{id}/" + strftime("%FT%TZ", gmtime)) and parses them back
# (parse_volname: vm, ct and host backups; a numeric id is the guest's VMID).
@pytest.mark.parametrize(
    ("volid", "storage", "vmid", "subtype", "filename"),
    [
        ("pbs-store:backup/vm/100/2020-11-18T08:29:44Z", "pbs-store", 100, "qemu",
         "vm/100/2020-11-18T08:29:44Z"),
        ("pbs-store:backup/ct/100/2020-11-18T08:29:44Z", "pbs-store", 100, "lxc",
         "ct/100/2020-11-18T08:29:44Z"),
        ("pbs-store:backup/host/pve1/2020-11-18T08:29:44Z", "pbs-store", None, None,
         "host/pve1/2020-11-18T08:29:44Z"),
    ],
)  # fmt: skip
def test_backup_server_volids_parse(
    volid: str, storage: str, vmid: int | None, subtype: str | None, filename: str
) -> None:
    v = parse_volid(volid)
    assert (v.storage, v.vmid, v.subtype, v.filename) == (storage, vmid, subtype, filename)
    assert v.stamp == datetime(2020, 11, 18, 8, 29, 44, tzinfo=UTC)  # PBS times are UTC
    for bad in ("pbs:backup/vm/100/2020-11-18 08:29", "pbs:backup/vm/100/2020-11-18T08:29:44Z/x"):
        with pytest.raises(ParseError):
            parse_volid(bad)


def test_a_listing_with_entries_it_cannot_read_still_lists_the_rest() -> None:
    listing = [
        entry(101, NOW),
        # a PBS storage's entry, as PBSPlugin.pm's list_volumes writes it
        {"volid": "pbs-store:backup/vm/101/2026-11-25T02:00:05Z", "format": "pbs-vm",
         "size": GiB, "content": "backup", "vmid": 101, "ctime": int(NOW.timestamp()) - 86400,
         "subtype": "qemu", "verification": {"state": "ok"}},
        # a file of a name of its own on a dir storage: no VMID, subtype "unknown" (Plugin.pm)
        {"volid": "nas:backup/my-own-copy.vma.zst", "format": "vma.zst", "size": GiB,
         "content": "backup", "ctime": int(NOW.timestamp()), "subtype": "unknown"},
        {"volid": "nas:something/else", "content": "backup", "vmid": 101, "ctime": 1},
    ]  # fmt: skip
    archives, skipped = split_content(listing)
    assert [(a.volid, a.vmid, a.subtype) for a in archives] == [
        ("pbs-store:backup/vm/101/2026-11-25T02:00:05Z", 101, "qemu"),
        (listing[0]["volid"], 101, "qemu"),
    ]
    assert archives[0].filename == "vm/101/2026-11-25T02:00:05Z"
    assert skipped == [
        "nas:backup/my-own-copy.vma.zst: cannot parse backup content entry: no vmid",
        "nas:something/else: not a backup volume id: 'nas:something/else'",
    ]


def test_the_new_archive_is_the_one_this_run_made() -> None:
    old, new = split_content([entry(101, NOW - timedelta(days=1)), entry(101, NOW)])[0]
    started = NOW - timedelta(seconds=30)
    assert find_new_archive([old, new], 101, [old.volid], started) == new
    assert find_new_archive([old, new], 101, [old.volid, new.volid], started) is None
    assert find_new_archive([old, new], 104, [], started) is None
    # listed, but older than the run: not this run's
    assert find_new_archive([old], 101, [], started) is None


@pytest.mark.parametrize(
    ("size", "previous", "ratio", "problem"),
    [
        (GiB, None, 0.5, None),
        (GiB, 2 * GiB, 0.5, None),
        (GiB - 1, 2 * GiB, 0.5, "below 0.5"),
        (GiB // 10, 2 * GiB, 0.0, None),  # 0: only an empty archive fails
        (0, None, 0.5, "is empty"),
    ],
)
def test_archive_sanity(size: int, previous: int | None, ratio: float, problem: str | None) -> None:
    new = Archive.from_api(entry(101, NOW, size=size))
    prev = Archive.from_api(entry(101, NOW - timedelta(days=1), size=previous or 1))
    got = archive_problem(new, prev if previous else None, ratio)
    assert (got is None) if problem is None else (got is not None and problem in got)
    assert archive_problem(None, prev, ratio) == "no new archive is listed on the storage"


def test_prune_marks_parse_newest_first() -> None:
    marks = parse_prune_marks(
        [
            {"volid": "a", "vmid": 1, "mark": "remove", "ctime": 10, "type": "qemu"},
            {"volid": "b", "vmid": 1, "mark": "protected", "ctime": 20, "type": "qemu"},
        ]
    )
    assert [(m.volid, m.mark) for m in marks] == [("b", "protected"), ("a", "remove")]
    with pytest.raises(ParseError):
        parse_prune_marks([{"volid": "a"}])


def test_nodes_run_in_parallel_guests_of_a_node_in_series() -> None:
    guests = [
        Guest(104, "ha", "pve2", "qemu"),
        Guest(100, "dns", "pve1", "lxc"),
        Guest(102, "b", "pve2", "qemu"),
    ]
    plan = split_by_node(guests)
    assert {n: [g.vmid for g in gs] for n, gs in plan.items()} == {
        "pve1": [100],
        "pve2": [102, 104],
    }


def test_the_plan_queues_each_nodes_guests_with_their_archives() -> None:
    guests = [
        Guest(104, "ha", "pve2", "qemu"),
        Guest(100, "dns", "pve1", "lxc"),
        Guest(102, "b", "pve2", "qemu"),
    ]
    older, newer = split_content([entry(104, NOW - timedelta(days=2)), entry(104, NOW)])[0]
    plan = plan_backups(guests, {104: [older, newer]}, "nas", KeepPolicy(last=1), UTC)
    assert {
        n: [(d.guest.vmid, d.position, d.count) for d in q] for n, q in plan.queues.items()
    } == {
        "pve1": [(100, 1, 1)],
        "pve2": [(102, 1, 2), (104, 2, 2)],
    }
    ha = plan.dumps[-1]
    assert (ha.target, ha.previous, ha.known) == ("104 (ha)", newer, (older.volid, newer.volid))
    assert plan.would_remove == {100: (), 102: (), 104: (older.filename,)}
    job = BackupJob(storage="nas", policy=KeepPolicy(last=1))
    row = planned_backup_row(ha, job, plan.would_remove[104])
    assert row.outcome is Outcome.PLANNED and (row.kept, row.removed) == (1, (older.filename,))
    assert row.detail == (
        f"vzdump on pve2 to nas (snapshot, zstd); prune keep-last=1 now would remove 1: "
        f"{older.filename}"
    )
    assert plan_backups(guests, {}, "nas", None, UTC).would_remove == {}


def test_the_prune_preview_keeps_protected_and_foreign_archives() -> None:
    items = [
        entry(101, NOW - timedelta(days=3), protected=1),
        entry(101, NOW - timedelta(days=2)),
        entry(101, NOW - timedelta(days=1)),
        {**entry(101, NOW - timedelta(days=4)), "volid": "nas:backup/my-own-copy.vma.zst"},
    ]
    archives = split_content(items)[0]
    names = [a.filename for a in archives]
    assert preview_prune(archives, KeepPolicy(last=1), UTC) == (names[2],)  # the day-2 one
    assert preview_prune(archives, KeepPolicy(), UTC) == ()


def test_a_prune_is_needed_when_the_marks_remove_an_old_archive() -> None:
    marks = parse_prune_marks(
        [
            {"volid": "nas:backup/new", "vmid": 1, "mark": "remove", "ctime": 20},
            {"volid": "nas:backup/old", "vmid": 1, "mark": "keep", "ctime": 10},
        ]
    )
    new = Archive("nas:backup/new", "nas", "new", 1, "qemu", 1, NOW)
    assert not needs_prune(marks, new)  # never the new one
    assert needs_prune(marks, None)
    assert not needs_prune([], new)


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (ProxmoxTaskTimeout("still running"), "vzdump timed out and was stopped: still running"),
        (ProxmoxTaskError("job errors"), "vzdump failed twice: job errors"),
        (GuestLockedError("VM 101 is locked"), "vzdump failed after retrying for 30s: VM 101"),
        (ProxmoxError("answered 'OK'"), "vzdump failed: answered 'OK'"),
    ],
)
def test_a_failed_vzdump_is_named_by_its_error(error: ProxmoxError, detail: str) -> None:
    assert dump_failure(error, 30.0).startswith(detail)


def test_offsite_copies_are_one_step_per_archive_oldest_first() -> None:
    days = [NOW - timedelta(days=d) for d in (0, 1)]
    archives = split_content([entry(101, d) for d in days] + [entry(100, NOW)])[0]
    guests = [Guest(101, "media", "pve1", "qemu"), Guest(100, "dns", "pve1", "lxc")]
    plan = plan_offsite(archives, [], [100, 101], KeepPolicy(), UTC)
    copies = offsite_copies(plan, guests)
    assert [(c.guest.vmid, c.archive.created) for c in copies] == [
        (100, NOW),
        (101, days[1]),
        (101, days[0]),
    ]
    assert copies[0].target == f"100 (dns) {copies[0].archive.filename}"


def test_coverage_fails_each_stale_guest() -> None:
    guests = [Guest(101, "media", "pve1", "qemu"), Guest(100, "dns", "pve1", "lxc")]
    archives = {101: split_content([entry(101, NOW - timedelta(hours=1))])[0]}
    cov = Coverage.of(guests, archives, None, now=NOW, max_age_hours=26, tz=UTC)
    assert [r.guest for r in cov.rows] == ["100 (dns)", "101 (media)"]
    [stale] = cov.stale_rows()
    assert (stale.target, stale.outcome, stale.detail) == (
        "100 (dns) coverage",
        Outcome.FAILED,
        "no backup newer than 26h",
    )
    assert cov.text()[0] == "backup coverage:" and len(cov.table()) == 2


def test_sha256sum_and_offsite_listing() -> None:
    digest = "ab" * 32
    assert parse_sha256sum(f"{digest}  /srv/x.vma.zst\n") == digest
    with pytest.raises(ParseError):
        parse_sha256sum("sha256sum: /srv/x: No such file or directory\n")
    listing = (
        "vzdump-qemu-101-2026_11_26-02_00_05.vma.zst\n"
        "vzdump-qemu-104-2026_11_26-02_00_05.vma.zst.part\n"  # a half-written copy
        "notes.txt\n"
    )
    assert parse_offsite_listing(listing) == ["vzdump-qemu-101-2026_11_26-02_00_05.vma.zst"]


def test_offsite_plan_copies_what_the_policy_keeps_and_lacks() -> None:
    days = [NOW - timedelta(days=d) for d in (0, 1, 2, 3)]
    archives = split_content([entry(101, d) for d in days] + [entry(104, NOW)])[0]
    names = {a.created: a.filename for a in archives if a.vmid == 101}
    # offsite has day 1 and day 3 (copied by earlier runs) and a copy of a guest not selected
    present = [names[days[1]], names[days[3]], "vzdump-qemu-999-2026_11_20-02_00_05.vma.zst"]
    plan = plan_offsite(archives, present, [101], KeepPolicy(last=2), UTC)
    assert [a.filename for a in plan.copy] == [names[days[0]]]  # the newest, missing
    assert plan.keep == (names[days[1]],)
    assert plan.remove == (names[days[3]],)  # beyond keep-last=2; 999's copy is not ours
    everything = plan_offsite(archives, [], [101, 104], KeepPolicy(), UTC)
    assert len(everything.copy) == 5 and everything.remove == ()


def test_coverage_marks_stale_guests() -> None:
    guests = [Guest(101, "media-vm", "pve1", "qemu"), Guest(104, "ha", "pve2", "qemu")]
    archives = {a.vmid: [a] for a in split_content([entry(101, NOW - timedelta(hours=30))])[0]}
    off = ["vzdump-qemu-101-2026_11_24-02_00_05.vma.zst"]
    rows = coverage_rows(
        guests,
        archives,
        off,
        now=NOW,
        max_age=timedelta(hours=26),
        tz=UTC,
        verified={101: True},
        copied={101: True},
    )
    assert [(r.vmid, r.stale) for r in rows] == [(101, True), (104, True)]
    cells = rows[0].cells(NOW)
    assert cells["last backup"] == "30h ago" and cells["last offsite"] == "2d ago"
    assert (cells["verified"], cells["checksum"], cells["fresh"]) == ("yes", "yes", "NO")
    assert rows[1].cells(NOW)["last backup"] == "never"
    fresh = coverage_rows(guests[:1], archives, None, now=NOW, max_age=timedelta(days=2), tz=UTC)
    assert not fresh[0].stale and fresh[0].cells(NOW)["checksum"] == "—"  # as in every report
    text = coverage_text(rows, NOW)
    assert text[0] == "backup coverage:" and text[1].startswith("GUEST")


def test_restore_test_mark_in_the_notes() -> None:
    assert restore_tested_at("") is None and restore_tested_at("media-vm 101 pve1") is None
    once = mark_restore_tested("media-vm 101 pve1 moxflow", NOW - timedelta(days=3))
    assert once == "media-vm 101 pve1 moxflow\nmoxflow restore test ok: 2026-11-23T02:00:05Z"
    assert restore_tested_at(once) == NOW - timedelta(days=3)
    twice = mark_restore_tested(once, NOW)  # the older mark is replaced, not stacked
    assert twice.count("restore test") == 1 and restore_tested_at(twice) == NOW
    assert restore_tested_at("moxflow restore test ok: yesterday") is None
    # the owner's own lines stay as written, blank lines inside them too
    mine = mark_restore_tested("media\n\nbefore the upgrade\n\n", NOW)
    assert mine.splitlines()[:3] == ["media", "", "before the upgrade"]
    assert mine.splitlines()[3].startswith("moxflow restore test ok: ")


def test_coverage_shows_the_last_passed_restore_test_of_any_listed_archive() -> None:
    guests = [Guest(101, "media-vm", "pve1", "qemu"), Guest(104, "ha", "pve2", "qemu")]
    old = entry(
        101, NOW - timedelta(days=2), notes=mark_restore_tested("x", NOW - timedelta(days=1))
    )
    new = entry(101, NOW - timedelta(hours=1))
    by_vmid: dict[int, list[Archive]] = {}
    for a in split_content([old, new, entry(104, NOW - timedelta(hours=2))])[0]:
        by_vmid.setdefault(a.vmid, []).append(a)
    rows = coverage_rows(guests, by_vmid, None, now=NOW, max_age=timedelta(hours=26), tz=UTC)
    assert [r.last_restore_test for r in rows] == [NOW - timedelta(days=1), None]
    assert [r.cells(NOW)["last restore test"] for r in rows] == ["24h ago", "never"]


def test_inventory_backup_sections(tmp_path: Path) -> None:
    base = '[hosts.nas]\naddress = "10.0.0.5"\n'
    path = tmp_path / "inventory.toml"
    path.write_text(base)
    inv = load_inventory(path)
    assert inv.offsite is None and inv.backups.max_age_hours == 26
    assert inv.backups.size_drop_ratio == 0.5 and inv.backups.mode == "snapshot"
    assert inv.backups.storage_path("local", "pve1") == "/var/lib/vz/dump"
    assert inv.backups.storage_path("nas", "pve1") == "/mnt/pve/nas/dump"
    path.write_text(
        base + '[backups]\nstorage = "nas"\npolicy = "keep-last=3"\n'
        '[backups.storage_paths]\nlocal = "/data/{node}/dump"\n'
        '[offsite]\nhost = "nas"\npath = "/tank/offsite"\n'
    )
    inv = load_inventory(path)
    assert inv.backups.storage_path("local", "pve2") == "/data/pve2/dump"
    assert inv.offsite is not None and inv.offsite.host == "nas"
    for bad, setting in [
        ('[offsite]\nhost = "elsewhere"\npath = "/x"\n', "offsite"),
        ('[offsite]\nhost = "nas"\npath = "relative; rm -rf /"\n', "offsite.path"),
        ('[backups]\npolicy = "keep-often=1"\n', "backups.policy"),
        ("[backups]\nsize_drop_ratio = 2\n", "backups.size_drop_ratio"),
        ('[backups]\nstorage_paths = { local = "/a b" }\n', "backups.storage_paths"),
        ('[backups]\nretention = "x"\n', "backups.retention"),
    ]:
        path.write_text(base + bad)
        with pytest.raises(ConfigError) as info:
            load_inventory(path)
        assert setting in str(info.value), bad
