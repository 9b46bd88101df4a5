"""The health report's pure checks: ages against limits, labels, NixOS pins, node updates."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from moxflow.backups import mark_restore_tested, parse_content
from moxflow.errors import ParseError
from moxflow.fleet import (
    backup_checks,
    checks_table,
    locked_nixpkgs_time,
    nixos_check,
    node_check,
    snapshot_check,
)
from moxflow.guests import Guest
from moxflow.inventory import HealthSettings

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
        101: parse_content([entry(101, NOW - 30 * H), entry(101, NOW - 2 * H)]),
        104: parse_content([entry(104, NOW - 27 * H, tested)]),
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
    edge = parse_content([entry(101, NOW - 26 * H)])
    [ok] = backup_checks(guests[:1], {101: edge}, now=NOW, tz=UTC, backup_limit=26 * H)
    [late] = backup_checks(guests[:1], {101: edge}, now=NOW + timedelta(seconds=1), tz=UTC,
                           backup_limit=26 * H)  # fmt: skip
    assert ok.ok and not late.ok
    lines = checks_table(checks, NOW)
    assert lines[0].split() == ["CHECK", "TARGET", "LAST", "LIMIT", "STATUS", "DETAIL"]
    assert "TOO OLD" in lines[3] and "27h ago" in lines[3] and "26h" in lines[3]


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
    lock = json.dumps(
        {"nodes": {"nixpkgs": {"locked": {"lastModified": int((NOW - 10 * 24 * H).timestamp())}}}}
    )
    pinned = locked_nixpkgs_time(lock)
    assert pinned == NOW - 10 * 24 * H
    check = nixos_check("builder", NOW - 15 * 24 * H, pinned, now=NOW, limit=timedelta(days=14))
    assert not check.ok and check.detail == "nixpkgs pinned 10d ago"
    assert nixos_check("b", NOW - 24 * H, None, now=NOW, limit=timedelta(days=14)).ok
    for bad in ("", "{}", '{"nodes": {"nixpkgs": {"locked": {"lastModified": "x"}}}}'):
        with pytest.raises(ParseError):
            locked_nixpkgs_time(bad)


def test_node_updates_are_judged_only_with_a_limit() -> None:
    pending = [{"Package": f"pkg{i}"} for i in range(7)]
    shown = node_check("pve1", pending, None)
    assert shown.ok and shown.detail == "7 pending: pkg0, pkg1, pkg2, pkg3, pkg4 and 2 more"
    judged = node_check("pve1", pending, 5)
    assert not judged.ok and judged.status == "TOO MANY" and judged.detail.endswith("(limit 5)")
    assert node_check("pve2", [], 0).ok


def test_a_report_without_snapshots_drops_their_columns() -> None:
    from moxflow.report import Outcome, ReportRow, RunReport

    health = RunReport(job="health-report", label="backups")
    health.add(ReportRow(target="101 (media) backup", outcome=Outcome.OK, detail="last 1h ago"))
    assert health.columns() == ["target", "outcome", "detail"]
    assert health.to_text().splitlines()[0].split() == ["TARGET", "OUTCOME", "DETAIL"]
    assert set(health.table()[0]) == {"target", "outcome", "detail"}
    snap = RunReport(job="zfs-snapshot", label="hourly")
    snap.add(ReportRow(target="pve1:rpool", outcome=Outcome.OK, taken="moxflow-hourly-x"))
    assert snap.columns() == ["target", "taken", "kept", "removed", "outcome", "detail"]


def test_offsite_names_are_read_in_the_nodes_time_zone() -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in November
    guests = [Guest(101, "media", "pve1", "qemu")]
    archives = {101: parse_content([entry(101, NOW - 3 * H)])}
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
    archives = {g.vmid: parse_content([entry(g.vmid, NOW - H)]) for g in guests}
    checks = backup_checks(guests, archives, now=NOW, tz=UTC, backup_limit=26 * H,
                           backed_up=[101], offsite=[], offsite_limit=48 * H,
                           restore_tested=[104], restore_limit=timedelta(days=8))  # fmt: skip
    assert [(c.target, c.kind) for c in checks] == [
        ("101 (media)", "backup"),
        ("101 (media)", "offsite"),
        ("104 (ha)", "restore test"),
    ]
