"""End to end: flows.health_report against the lab, after the jobs ran (or did not)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from flows.health_report import main as health_main
from flows.jobs.guest_snapshot import guest_snapshot
from flows.jobs.health_report import health_report
from flows.jobs.nixos_update import nixos_update
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from flows.jobs.zfs_snapshot import zfs_snapshot
from labsim.client import LabClient, wait_until
from moxflow.errors import RunFailed
from moxflow.report import Outcome, RunReport
from tests.flows.conftest import all_zfs_snapshots, edit_inventory

GUESTS = ("100 (dns)", "101 (media-vm)", "102 (nixos-builder)", "103 (win11-gaming)",
          "104 (homeassistant)", "105 (backup-ct)")  # fmt: skip


@pytest.fixture
def fast_lab(fresh_lab: LabClient) -> LabClient:
    """The fresh lab with a backup storage fast enough that dumps and restores take ms."""
    fresh_lab.set_storage("nas-backup", bandwidth=10**13)
    return fresh_lab


def run_every_job(inv: str, backup_select: str = "@all") -> None:
    """What the schedules do in a day: snapshots of each label, backups, restore tests."""
    for label in ("hourly", "daily"):
        zfs_snapshot(label=label, inventory=inv)
        guest_snapshot(label=label, inventory=inv)
    vzdump_backup(select=backup_select, inventory=inv)
    restore_test(inventory=inv)


def lasting(state: dict[str, Any]) -> dict[str, Any]:
    """What a run could change: archives with their notes, guests' snapshots, ZFS snapshots."""
    return {
        "archives": {
            a["volid"]: (a["notes"], a["protected"])
            for st in state["storages"].values()
            for a in st["archives"]
        },
        "snapshots": {v: sorted(g["snapshots"]) for v, g in state["guests"].items()},
        "zfs": all_zfs_snapshots(state),
    }


def outcomes(report: RunReport) -> dict[str, Outcome]:
    return {r.target: r.outcome for r in report.rows}


def test_passes_on_a_lab_whose_jobs_ran(fast_lab: LabClient, lab_inventory: Path) -> None:
    run_every_job(str(lab_inventory))
    before = fast_lab.state()
    requests = len(fast_lab.api_requests())
    report = health_report(inventory=str(lab_inventory))
    assert isinstance(report, RunReport) and report.ok
    got = outcomes(report)
    for guest in GUESTS:
        for kind in ("backup", "offsite", "restore test"):
            assert got[f"{guest} {kind}"] is Outcome.OK, (guest, kind)
        # 103 is tagged nosnap: [guest_snapshots] select leaves it out, and so does the report
        for label in ("hourly", "daily"):
            assert (f"{guest} {label} snapshots" in got) is ("103" not in guest)
    assert "9000 (debian-template) backup" not in got  # templates are not judged
    for ds in ("pve1:rpool/data", "pve1:tank/media", "pve2:rpool/data", "nas:tank/backups"):
        assert got[f"{ds} hourly snapshots"] is got[f"{ds} daily snapshots"] is Outcome.OK
    assert {t for t in got if t.endswith(" nixos")} == {"builder nixos", "dns nixos", "media nixos"}
    assert got["pve1 node updates"] is Outcome.OK and got["pve2 node updates"] is Outcome.OK
    rows = {r.target: r for r in report.rows}
    assert "2 pending: openssl, pve-manager" in rows["pve1 node updates"].detail
    assert "0 pending" in rows["pve2 node updates"].detail
    assert "nixpkgs pinned 10d ago" in rows["builder nixos"].detail
    assert len({r.target for r in report.rows}) == len(report.rows)
    # one table, a line per check: no second list of the same checks in the notes
    assert report.columns() == ["target", "kind", "last", "limit", "outcome", "detail"]
    head, *lines = report.to_text().splitlines()
    assert head.split() == ["TARGET", "KIND", "LAST", "LIMIT", "OUTCOME", "DETAIL"]
    assert len(lines) == len(report.rows) + len(report.notes) + 1  # + the summary line
    pairs = [(t["target"], t["kind"]) for t in report.table()]
    assert len(set(pairs)) == len(pairs) == len(report.rows)
    assert not any("fleet health" in n or n.startswith("CHECK") for n in report.notes)
    pve1 = [line for line in lines if line.split()[:3] == ["pve1", "node", "updates"]]
    assert len(pve1) == 1 and pve1[0].split()[:6] == ["pve1", "node", "updates", "—", "—", "ok"]
    # each node's last upgrade is the newest upgrade/install line of its own dpkg log (the
    # lab's pve1 last upgraded 9 days before it started, pve2 a day earlier), no reboot waits
    for node, age in (("pve1", "9d ago"), ("pve2", "10d ago")):
        log = Path(before["hosts"][node]["apt"]["dpkg_log"]).read_text().splitlines()
        newest = next(ln for ln in reversed(log) if " install " in ln or " upgrade " in ln)
        last = rows[f"{node} last upgrade"]
        assert last.outcome is Outcome.OK and f"dpkg's log: {newest[:19]}" in last.detail
        assert last.cell("last") == age
        assert rows[f"{node} reboot"].detail.startswith("no reboot pending: running ")
    # the limits as the rules say them: 1.5 x the label's period
    media = {r.cell("kind"): r for r in report.rows if r.cell("target") == "pve1:tank/media"}
    assert media["hourly snapshots"].cell("limit") == "90m"
    assert media["daily snapshots"].cell("limit") == "36h"
    assert media["hourly snapshots"].cell("last").endswith("m ago")
    assert report.table()[0] == {k: report.rows[0].cell(k) for k in report.table()[0]}
    # it only read
    assert all(r["method"] == "GET" for r in fast_lab.api_requests()[requests:])
    assert lasting(fast_lab.state()) == lasting(before)


def test_fails_when_one_guests_backup_is_too_old(
    fast_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the nightly backup left 101 out: its newest backup is the lab's two-day-old one
    run_every_job(str(lab_inventory), backup_select="@all,-101")
    with pytest.raises(RunFailed) as info:
        health_report(only=["backups"], inventory=str(lab_inventory))
    report = info.value.report
    assert isinstance(report, RunReport)
    failed = {r.target: r.detail for r in report.failed_rows}
    assert set(failed) == {"101 (media-vm) backup", "101 (media-vm) offsite"}
    backup = next(r for r in report.rows if r.target == "101 (media-vm) backup")
    assert (backup.cell("target"), backup.cell("kind")) == ("101 (media-vm)", "backup")
    assert backup.cell("last").startswith("2d") and backup.cell("limit") == "26h"
    assert failed["101 (media-vm) backup"].startswith("TOO OLD: vzdump-qemu-101-")
    assert "no copy offsite" in failed["101 (media-vm) offsite"]
    assert all(outcomes(report)[f"{g} backup"] is Outcome.OK for g in GUESTS if "101" not in g)
    # the command line says the same, with exit status 1
    assert health_main(["--only", "backups", "--inventory", str(lab_inventory)]) == 1
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("101 (media-vm)") and " backup " in x]
    assert line.split()[2:] == ["backup", *backup.cell("last").split(), "26h", "failed",
                                *failed["101 (media-vm) backup"].split()]  # fmt: skip


def test_thresholds_come_from_the_inventory(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {"[backups]\n": "[health]\nnixos_max_age_days = 7\nnode_max_pending_updates = 1\n"
                        "label_hours = { hourly = 0.0001 }\n\n[backups]\n"},
    )  # fmt: skip
    zfs_snapshot(label="hourly", only=["nas"], inventory=str(inv))
    with pytest.raises(RunFailed) as info:
        health_report(only=["nixos", "nodes", "snapshots"], inventory=str(inv))
    report = info.value.report
    assert isinstance(report, RunReport)
    failed = {r.target: r.detail for r in report.failed_rows}
    assert failed["builder nixos"].startswith("TOO OLD: nixpkgs pinned")
    rows = {r.target: r for r in report.rows}
    assert rows["builder nixos"].cell("last").startswith("9d")
    assert rows["builder nixos"].cell("limit") == "7d"
    assert (
        failed["pve1 node updates"].startswith("TOO MANY: ")
        and "(limit 1)" in failed["pve1 node updates"]
    )
    assert "pve2 node updates" not in failed
    # an hourly snapshot just taken, against a limit of a fraction of a second
    assert failed["nas:tank/backups hourly snapshots"].startswith("TOO OLD")
    # no daily snapshot was ever taken: missing
    assert failed["nas:tank/backups daily snapshots"].startswith("MISSING: ")
    daily = rows["nas:tank/backups daily snapshots"]
    assert (daily.cell("last"), daily.cell("limit")) == ("never", "36h")
    assert failed["101 (media-vm) daily snapshots"].startswith("MISSING")


def test_an_unreachable_host_is_a_failed_check_not_a_crash(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    fast_lab.fault(target="connect", host="nas", action="drop")
    with pytest.raises(RunFailed) as info:
        health_report(only=["snapshots"], inventory=str(lab_inventory))
    report = info.value.report
    assert isinstance(report, RunReport)
    failed = {r.target: r.detail for r in report.failed_rows}
    assert failed["nas:tank/backups snapshots"].startswith("ERROR: cannot read")
    assert "pve1:rpool/data hourly snapshots" in failed  # never snapshotted, still checked


def test_dry_run_lists_the_checks_and_reads_only_the_guests(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    start = len(fast_lab.api_requests())
    report = health_report(dry_run=True, inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    assert {r.target: r.outcome for r in report.rows} == {
        k: Outcome.PLANNED for k in ("backups", "snapshots", "nixos", "nodes", "windows")
    }
    paths = {r["path"] for r in fast_lab.api_requests()[start:]}
    assert paths == {"/cluster/resources"}


def test_a_proxmox_outage_fails_the_api_check_and_the_ssh_checks_still_run(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    zfs_snapshot(label="hourly", inventory=str(lab_inventory))
    zfs_snapshot(label="daily", inventory=str(lab_inventory))
    fast_lab.fault(target="api", path="^/cluster/resources", action="error", status=503)
    with pytest.raises(RunFailed) as info:
        health_report(inventory=str(lab_inventory))
    report = info.value.report
    assert isinstance(report, RunReport)
    got = outcomes(report)
    assert got["proxmox api"] is Outcome.FAILED
    assert "503" in next(r.detail for r in report.rows if r.target == "proxmox api")
    # ZFS and NixOS are read over SSH: still judged, and fine
    assert got["pve1:rpool/data hourly snapshots"] is Outcome.OK
    assert got["builder nixos"] is Outcome.OK
    assert not any(t.endswith((" backup", " node updates")) for t in got)


def test_one_unreadable_dataset_does_not_hide_the_others_on_its_host(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {"[guest_snapshots]\n": '[[zfs.datasets]]\nhost = "nas"\nname = "tank/gone"\n\n'
                                "[guest_snapshots]\n"},
    )  # fmt: skip
    zfs_snapshot(label="hourly", only=["nas/tank/backups"], inventory=str(inv))
    zfs_snapshot(label="daily", only=["nas/tank/backups"], inventory=str(inv))
    with pytest.raises(RunFailed) as info:
        health_report(only=["snapshots"], inventory=str(inv))
    report = info.value.report
    assert isinstance(report, RunReport)
    rows = {r.target: r for r in report.rows}
    assert rows["nas:tank/gone snapshots"].detail.startswith("ERROR: cannot read")
    assert "tank/gone" in rows["nas:tank/gone snapshots"].detail
    assert rows["nas:tank/backups hourly snapshots"].outcome is Outcome.OK
    assert rows["nas:tank/backups daily snapshots"].outcome is Outcome.OK


def test_event_labels_are_listed_not_judged(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {'daily = "keep-daily=7"\n': 'daily = "keep-daily=7"\npre-update = "keep-last=2"\n'},
    )
    for label in ("hourly", "daily"):
        zfs_snapshot(label=label, inventory=str(inv))
        guest_snapshot(label=label, inventory=str(inv))
    report = health_report(only=["snapshots"], inventory=str(inv))
    assert isinstance(report, RunReport) and report.ok, [r.line() for r in report.failed_rows]
    assert not any("pre-update" in r.target for r in report.rows)
    assert any("not judged" in n and n.endswith(": pre-update") for n in report.notes)


def test_the_nixpkgs_pin_is_the_node_the_roots_nixpkgs_input_names(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    # builder's flake has a disko input with a nixpkgs of its own, locked long ago; nix writes
    # that node first as "nixpkgs", so the system's nixpkgs (10 days old) is "nixpkgs_2"
    root = Path(fast_lab.state()["hosts"]["builder"]["nixos"]["root"])
    lock = json.loads((root / "etc/nixos/flake.lock").read_text())
    assert lock["nodes"]["root"]["inputs"]["nixpkgs"] == "nixpkgs_2"
    report = health_report(only=["nixos"], inventory=str(lab_inventory))
    assert isinstance(report, RunReport)
    rows = {r.target: r for r in report.rows}
    for host in ("builder", "dns", "media"):
        assert rows[f"{host} nixos"].detail == "nixpkgs pinned 10d ago", host


def test_a_half_deleted_guest_snapshot_is_not_counted(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    guest_snapshot(label="daily", select="101", inventory=str(lab_inventory))
    guest_snapshot(label="hourly", select="101", inventory=str(lab_inventory))
    [daily] = [n for n in fast_lab.guest(101)["snapshots"] if n.startswith("moxflow-daily-")]
    # its delete task dies half-way: PVE leaves the snapshot in snapstate "delete" (and the
    # guest locked, which an admin clears with `qm unlock`)
    fast_lab.fault(target="task", type="qmdelsnapshot", id="101", action="error",
                   exitstatus="zfs error: dataset is busy", times=1)  # fmt: skip
    r = requests.delete(
        f"{fast_lab.api_url}/nodes/pve1/qemu/101/snapshot/{daily}",
        headers=fast_lab.auth_header,
        verify=str(fast_lab.ca_file),
        timeout=10,
    )
    assert r.status_code == 200, r.reason
    wait_until(lambda: all(t["status"] == "stopped" for t in fast_lab.state()["tasks"]))
    assert fast_lab.guest(101)["lock"] == "snapshot-delete"
    fast_lab.set_guest(101, lock="")
    assert fast_lab.guest(101)["snapshots"][daily]["snapstate"] == "delete"
    with pytest.raises(RunFailed) as info:
        health_report(only=["snapshots"], inventory=str(lab_inventory))
    report = info.value.report
    assert isinstance(report, RunReport)
    rows = {r.target: r for r in report.rows}
    daily_row = rows["101 (media-vm) daily snapshots"]
    assert daily_row.outcome is Outcome.FAILED and daily_row.detail.startswith("MISSING: ")
    assert rows["101 (media-vm) hourly snapshots"].outcome is Outcome.OK


def test_a_nixos_host_with_nothing_new_is_up_to_date_not_stale(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    inv = edit_inventory(
        lab_inventory, tmp_path, {"[backups]\n": "[health]\nnixos_max_age_days = 7\n\n[backups]\n"}
    )
    with pytest.raises(RunFailed) as info:  # generations from 9-10 days ago
        health_report(only=["nixos"], inventory=str(inv))
    assert info.value.report is not None
    assert {r.target for r in info.value.report.failed_rows} == {
        "builder nixos",
        "dns nixos",
        "media nixos",
    }
    report = nixos_update(only=["dns"], inventory=str(inv))  # nothing new upstream
    assert isinstance(report, RunReport) and report.rows[0].detail.startswith("up to date;")
    with pytest.raises(RunFailed) as info:
        health_report(only=["nixos"], inventory=str(inv))
    rows = {r.target: r for r in info.value.report.rows} if info.value.report else {}
    assert rows["dns nixos"].outcome is Outcome.OK
    assert re.search(
        r"up to date as of 0m ago, generation from 9d(\d+h)? ago", rows["dns nixos"].detail
    )
    assert rows["media nixos"].outcome is Outcome.FAILED  # not checked: still stale
