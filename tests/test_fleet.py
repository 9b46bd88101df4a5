"""The health report's pure checks: ages against limits, labels, NixOS pins, node updates."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from moxflow.backups import mark_restore_tested, split_content
from moxflow.errors import ParseError
from moxflow.fleet import (
    backup_checks,
    check_row,
    checks_summary,
    last_upgrade_check,
    locked_nixpkgs_time,
    nixos_check,
    node_check,
    reboot_check,
    snapshot_check,
    windows_checks,
)
from moxflow.guests import Guest
from moxflow.inventory import HealthSettings
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.windows import parse_reboot_pending, parse_update_scan

NOW = datetime(2026, 11, 26, 7, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def entry(vmid: int, when: datetime, notes: str = "") -> dict[str, object]:
    stamp = when.strftime("%Y_%m_%d-%H_%M_%S")
    return {"volid": f"nas:backup/vzdump-qemu-{vmid}-{stamp}.vma.zst", "vmid": vmid,
            "size": 1000, "ctime": int(when.timestamp()), "notes": notes}  # fmt: skip


def test_backup_offsite_and_restore_test_ages() -> None:
    guests = [Guest(101, "media", "pve1", "qemu"), Guest(104, "ha", "pve2", "qemu")]
    tested = mark_restore_tested("ha", NOW - timedelta(days=9))
    archives = {
        101: split_content([entry(101, NOW - 30 * H), entry(101, NOW - 2 * H)])[0],
        104: split_content([entry(104, NOW - 27 * H, tested)])[0],
    }
    offsite = [
        "vzdump-qemu-101-2026_11_26-05_00_00.vma.zst",
        "vzdump-qemu-104-2026_11_20-05_00_00.vma.zst.part",
    ]
    checks = backup_checks(guests, archives, now=NOW, tz=UTC, backup_limit=26 * H,
                           offsite=offsite, offsite_limit=48 * H,
                           restore_tested=[104], restore_limit=timedelta(days=8))  # fmt: skip
    got = {(c.target, c.kind): (c.ok, c.status) for c in checks}
    assert got == {
        ("101 (media)", "backup"): (True, "ok"),
        ("101 (media)", "offsite"): (True, "ok"),
        ("104 (ha)", "backup"): (False, "TOO OLD"),
        ("104 (ha)", "offsite"): (False, "MISSING"),  # a .part file is not a copy
        ("104 (ha)", "restore test"): (False, "TOO OLD"),
    }
    # exactly at the limit is still fine; a second over is not
    edge = split_content([entry(101, NOW - 26 * H)])[0]
    [ok] = backup_checks(guests[:1], {101: edge}, now=NOW, tz=UTC, backup_limit=26 * H)
    [late] = backup_checks(guests[:1], {101: edge}, now=NOW + timedelta(seconds=1), tz=UTC,
                           backup_limit=26 * H)  # fmt: skip
    assert ok.ok and not late.ok
    row = check_row(checks[2], NOW)  # 104's backup, 27 h old
    assert row.target == "104 (ha) backup" and row.outcome is Outcome.FAILED
    assert [row.cell(k) for k in ("target", "kind", "last", "limit")] == [
        "104 (ha)", "backup", "27h ago", "26h"
    ]  # fmt: skip
    assert row.detail.startswith("TOO OLD: vzdump-qemu-104-")


def test_snapshot_labels_and_grace() -> None:
    h = HealthSettings(label_hours={"twice-daily": 12})
    assert (h.period("hourly"), h.period("daily"), h.period("twice-daily")) == (1, 24, 12)
    assert h.period("pre-update") is None
    limit = timedelta(hours=h.period("hourly") or 0) * h.snapshot_grace  # 90 minutes
    recent = [NOW - 3 * H, NOW - 80 * timedelta(minutes=1)]
    fine = snapshot_check("pve1:rpool/data", "hourly", recent, now=NOW, limit=limit)
    late = snapshot_check("pve1:rpool/data", "hourly", [NOW - 100 * timedelta(minutes=1)],
                          now=NOW, limit=limit)  # fmt: skip
    none = snapshot_check("pve1:rpool/data", "hourly", [], now=NOW, limit=limit)
    assert (fine.ok, late.ok, none.ok) == (True, False, False)
    assert (fine.kind, late.status, none.status) == ("hourly snapshots", "TOO OLD", "MISSING")
    assert fine.detail == "2 snapshot(s)" and fine.last == NOW - 80 * timedelta(minutes=1)


def test_nixos_pin_and_generation_age() -> None:
    modified = int((NOW - 10 * 24 * H).timestamp())
    lock = json.dumps(
        {
            "nodes": {
                "nixpkgs": {"locked": {"lastModified": modified}},
                "root": {"inputs": {"nixpkgs": "nixpkgs"}},
            },
            "root": "root",
            "version": 7,
        }
    )
    pinned = locked_nixpkgs_time(lock)
    assert pinned == NOW - 10 * 24 * H
    check = nixos_check("builder", NOW - 15 * 24 * H, pinned, now=NOW, limit=timedelta(days=14))
    assert not check.ok and check.detail == "nixpkgs pinned 10d ago"
    assert nixos_check("b", NOW - 24 * H, None, now=NOW, limit=timedelta(days=14)).ok
    for bad in ("", "{}", '{"nodes": {"nixpkgs": {"locked": {"lastModified": "x"}}}}'):
        with pytest.raises(ParseError):
            locked_nixpkgs_time(bad)


def github(repo: str, days_ago: int, **inputs: str | list[str]) -> dict[str, object]:
    """A lock node as nix writes it for a github input locked ``days_ago`` days before NOW."""
    node: dict[str, object] = {
        "locked": {"lastModified": int((NOW - days_ago * 24 * H).timestamp()),
                   "owner": "NixOS", "repo": repo, "rev": "0" * 40, "type": "github"},
        "original": {"owner": "NixOS", "repo": repo, "type": "github"},
    }  # fmt: skip
    return {"inputs": inputs, **node} if inputs else node


# Lock files the way nix writes them (NixOS/nix src/libflake/lockfile.cc, LockFile::toJSON):
# nodes keyed depth first from the root, inputs in name order, a key already taken gets
# "_2"; an input that follows another is a path of input names from the root (the shape in
# NixOS/nix's own flake.lock: "nixpkgs-lib": ["nixpkgs"]), resolved as LockFile::findInput
# and edolstra/flake-compat's getInputByPath do.
FLAKE_LOCKS = {
    # disko sorts before nixpkgs and locks a nixpkgs of its own: that one is "nixpkgs"
    "own nixpkgs named nixpkgs_2": (
        {"disko": github("disko", 400, nixpkgs="nixpkgs"), "nixpkgs": github("nixpkgs", 500),
         "nixpkgs_2": github("nixpkgs", 10), "root": {"inputs": {"disko": "disko",
                                                                  "nixpkgs": "nixpkgs_2"}}},
        10,
    ),
    # inputs.nixpkgs.follows = "nixpkgs-stable": no node is called nixpkgs at all
    "follows another input": (
        {"nixpkgs-stable": github("nixpkgs", 12),
         "root": {"inputs": {"nixpkgs": ["nixpkgs-stable"], "nixpkgs-stable": "nixpkgs-stable"}}},
        12,
    ),
    # inputs.nixpkgs.follows = "srvos/nixpkgs", and srvos' nixpkgs follows nixpkgs-stable
    "follows through a follows": (
        {"srvos": github("srvos", 3, nixpkgs=["nixpkgs-stable"]),
         "nixpkgs": github("nixpkgs", 900), "nixpkgs-stable": github("nixpkgs", 20),
         "root": {"inputs": {"nixpkgs": ["srvos", "nixpkgs"], "srvos": "srvos",
                             "nixpkgs-stable": "nixpkgs-stable", "old": "nixpkgs"}}},
        20,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FLAKE_LOCKS))
def test_the_pin_is_the_node_the_roots_nixpkgs_input_points_to(case: str) -> None:
    nodes, days = FLAKE_LOCKS[case]
    lock = json.dumps({"nodes": nodes, "root": "root", "version": 7}, indent=2)
    assert locked_nixpkgs_time(lock) == NOW - days * 24 * H


@pytest.mark.parametrize(
    "root_inputs",
    [
        {"nixpkgs": ["a", "nixpkgs"], "a": "a"},  # a follows b follows a
        {"nixpkgs": ["missing"]},
        {"nixpkgs": "missing"},
        {"disko": "disko"},  # no nixpkgs input at all
    ],
)
def test_a_pin_that_cannot_be_followed_is_a_parse_error(root_inputs: dict[str, object]) -> None:
    nodes = {"a": {"inputs": {"nixpkgs": ["nixpkgs"]}, **github("a", 1)},
             "disko": github("disko", 1), "root": {"inputs": root_inputs}}  # fmt: skip
    with pytest.raises(ParseError):
        locked_nixpkgs_time(json.dumps({"nodes": nodes, "root": "root", "version": 7}))


def test_node_updates_are_judged_only_with_a_limit() -> None:
    pending = [{"Package": f"pkg{i}"} for i in range(7)]
    shown = node_check("pve1", pending, None)
    assert shown.ok and shown.detail == "7 pending: pkg0, pkg1, pkg2, pkg3, pkg4 and 2 more"
    judged = node_check("pve1", pending, 5)
    assert not judged.ok and judged.status == "TOO MANY" and judged.detail.endswith("(limit 5)")
    assert node_check("pve2", [], 0).ok


def test_last_upgrade_and_reboot_are_shown_not_judged() -> None:
    when = datetime(2026, 7, 1, 10, 32, 10, tzinfo=UTC)
    last = last_upgrade_check("pve1", when)
    assert last.ok and last.last == when and last.detail == "dpkg's log: 2026-07-01 10:32:10"
    assert last.cells(when + timedelta(days=3))["last"] == "3d ago"
    never = last_upgrade_check("pve1", None)
    assert never.ok and never.detail == "no upgrade in dpkg's log"
    pending = reboot_check("pve1", "6.14.11-4-pve", "6.14.11-5-pve")
    assert pending.ok and pending.detail.startswith("reboot pending: running 6.14.11-4-pve")
    assert reboot_check("pve1", "6.14.11-5-pve", "6.14.11-5-pve").detail.startswith("no reboot")
    assert reboot_check("pve1", "6.14.11-5-pve", None).detail.startswith("no reboot")


def test_the_health_report_has_its_own_columns_not_the_snapshot_ones() -> None:
    health = RunReport(job="health-report", label="backups")
    check = snapshot_check("pve1:rpool/data", "hourly", [NOW - 100 * timedelta(minutes=1)],
                           now=NOW, limit=90 * timedelta(minutes=1))  # fmt: skip
    health.add(check_row(check, NOW))
    assert health.columns() == ["target", "kind", "last", "limit", "outcome", "detail"]
    head, line = health.to_text().splitlines()[:2]
    assert head.split() == ["TARGET", "KIND", "LAST", "LIMIT", "OUTCOME", "DETAIL"]
    assert line.split() == ["pve1:rpool/data", "hourly", "snapshots", "100m", "ago", "90m",
                            "failed", "TOO", "OLD:", "1", "snapshot(s)"]  # fmt: skip
    assert health.table() == [
        {"target": "pve1:rpool/data", "kind": "hourly snapshots", "last": "100m ago",
         "limit": "90m", "outcome": "failed", "detail": "TOO OLD: 1 snapshot(s)"}
    ]  # fmt: skip
    snap = RunReport(job="zfs-snapshot", label="hourly")
    snap.add(ReportRow(target="pve1:rpool", outcome=Outcome.OK, taken="moxflow-hourly-x"))
    assert snap.columns() == ["target", "taken", "kept", "removed", "outcome", "detail"]


def test_the_log_line_says_how_many_failures_it_leaves_out() -> None:
    old = [NOW - 30 * H]
    checks = [snapshot_check(f"ds{i:02}", "hourly", old, now=NOW, limit=H) for i in range(29)]
    checks += [snapshot_check("fine", "hourly", [NOW], now=NOW, limit=H)] * 7
    line = checks_summary(checks)
    assert line.startswith("36 check(s), 29 over the limit or unreadable; ds00 hourly snapshots: ")
    assert line.count("TOO OLD") == 10 and "ds09" in line and "ds10" not in line
    assert line.endswith("; and 19 more")
    few = checks_summary(checks[:3])
    assert few.count("TOO OLD") == 3 and "more" not in few
    assert checks_summary(checks[29:]) == "7 check(s), 0 over the limit or unreadable"


def test_offsite_names_are_read_in_the_nodes_time_zone() -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in November
    guests = [Guest(101, "media", "pve1", "qemu")]
    archives = {101: split_content([entry(101, NOW - 3 * H)])[0]}
    offsite = ["vzdump-qemu-101-2026_11_26-05_00_00.vma.zst"]  # 05:00 in Berlin = 04:00 UTC
    _, copy = backup_checks(guests, archives, now=NOW, tz=berlin, backup_limit=26 * H,
                            offsite=offsite, offsite_limit=2 * H)  # fmt: skip
    assert copy.last == NOW - 3 * H and not copy.ok  # 3 h old, not 2 h as UTC would say


def test_a_nixos_host_found_up_to_date_is_not_out_of_date() -> None:
    old_generation = NOW - 20 * 24 * H
    stale = nixos_check("dns", old_generation, None, now=NOW, limit=timedelta(days=14))
    assert not stale.ok and stale.last == old_generation
    fresh = nixos_check("dns", old_generation, None, now=NOW, limit=timedelta(days=14),
                        checked=NOW - 24 * H)  # fmt: skip
    assert fresh.ok and fresh.last == NOW - 24 * H
    assert fresh.detail.startswith("up to date as of 24h ago, generation from 20d ago")
    # an older mark than the generation changes nothing
    newer = nixos_check("dns", NOW - H, None, now=NOW, limit=timedelta(days=14),
                        checked=NOW - 24 * H)  # fmt: skip
    assert newer.last == NOW - H and "up to date as of" not in newer.detail


def test_only_the_backed_up_guests_are_judged_for_backups() -> None:
    guests = [Guest(101, "media", "pve1", "qemu"), Guest(104, "ha", "pve2", "qemu")]
    archives = {g.vmid: split_content([entry(g.vmid, NOW - H)])[0] for g in guests}
    checks = backup_checks(guests, archives, now=NOW, tz=UTC, backup_limit=26 * H,
                           backed_up=[101], offsite=[], offsite_limit=48 * H,
                           restore_tested=[104], restore_limit=timedelta(days=8))  # fmt: skip
    assert [(c.target, c.kind) for c in checks] == [
        ("101 (media)", "backup"),
        ("101 (media)", "offsite"),
        ("104 (ha)", "restore test"),
    ]


def test_a_windows_vm_is_judged_by_its_oldest_pending_update() -> None:
    scan = parse_update_scan(
        {
            "reboot_required": True,
            "updates": [
                {"id": "a", "kb": ["KB1"], "released": "2026-10-01T18:00:00.0000000Z"},
                {"id": "b", "kb": ["KB2"], "released": "2026-11-20T18:00:00.0000000Z"},
            ],
        }
    )
    reboot = parse_reboot_pending({"reboot_pending": False, "last_boot": "2026-11-25T06:00:00Z"})
    ran = NOW - timedelta(days=40)
    run, pending, waits = windows_checks(
        "103 (w)", ran, scan, reboot, now=NOW, limit=timedelta(days=45)
    )
    assert (run.kind, run.last, run.ok) == ("windows update", ran, True)
    assert pending.kind == "windows pending" and not pending.ok and pending.status == "TOO OLD"
    assert pending.detail == "2 pending: KB1, KB2; oldest KB1, released 2026-10-01"
    assert waits.ok and waits.detail.startswith("reboot pending (Windows Update)")
    fine = windows_checks("103 (w)", None, parse_update_scan({}), reboot, now=NOW,
                          limit=timedelta(days=45))  # fmt: skip
    assert [c.detail for c in fine] == [
        "no successful windows-update run",
        "0 pending",
        "no reboot pending; booted 2026-11-25T06:00:00Z",
    ]
    assert all(c.ok for c in fine)


def test_a_stopped_windows_vm_is_shown_not_judged() -> None:
    checks = windows_checks("103 (w)", None, None, None, now=NOW, limit=timedelta(days=45),
                            why_unread="the VM is stopped")  # fmt: skip
    assert [(c.kind, c.ok, c.detail) for c in checks[1:]] == [
        ("windows pending", True, "not read: the VM is stopped"),
        ("windows reboot", True, "not read: the VM is stopped"),
    ]
