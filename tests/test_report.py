"""Run reports: each job's own columns, one mark for an empty cell, spans that do not lie."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from moxflow.report import (
    EMPTY,
    Column,
    Outcome,
    ReportRow,
    RunReport,
    format_age,
    format_rate,
    format_size,
    format_span,
)

MIN = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)


@pytest.mark.parametrize(
    ("job", "headers"),
    [
        ("zfs-snapshot", ["target", "taken", "kept", "removed", "outcome", "detail"]),
        ("guest-snapshot", ["target", "taken", "kept", "removed", "outcome", "detail"]),
        ("nixos-update", ["host", "generation", "snapshot", "outcome", "detail"]),
        ("vzdump-backup", ["target", "archive", "size", "rate", "checksum", "outcome", "detail"]),
        ("offsite-copy", ["target", "archive", "size", "rate", "checksum", "outcome", "detail"]),
        ("restore-test",
         ["guest", "archive", "scratch vmid", "boot", "agent", "outcome", "detail"]),
        ("restore", ["archive", "target vmid", "outcome", "detail"]),
        ("health-report", ["target", "kind", "last", "limit", "outcome", "detail"]),
        ("notify-test", ["target", "outcome", "detail"]),  # a job of no known kind
    ],
)  # fmt: skip
def test_each_job_has_its_own_columns(job: str, headers: list[str]) -> None:
    report = RunReport(job=job, label="x")
    report.add(ReportRow("t1", Outcome.OK, taken="x", kept=2, detail="fine"))
    assert report.columns() == headers
    head = report.to_text().splitlines()[0]
    assert [c for c in head.split("  ") if c] == [h.upper() for h in headers]
    assert list(report.table()[0]) == headers


def test_a_nixos_row_reads_generation_snapshot_and_verdict() -> None:
    report = RunReport(job="nixos-update", label="update", counts_snapshots=False)
    snap = "moxflow-pre-update-20261128-030012"
    report.add(ReportRow("media", Outcome.OK, taken=snap, kept=0, detail="updated",
                         cells={"generation": "41 → 42", "snapshot": snap}))  # fmt: skip
    report.add(ReportRow("dns", Outcome.OK, detail="up to date", cells={"generation": "7"}))
    head, dns, media = report.finish().to_text().splitlines()[:3]
    assert head.split() == ["HOST", "GENERATION", "SNAPSHOT", "OUTCOME", "DETAIL"]
    assert dns.split() == ["dns", "7", EMPTY, "ok", "up", "to", "date"]
    assert media.split() == ["media", "41", "→", "42", snap, "ok", "updated"]
    assert "KEPT" not in head and "TAKEN" not in head


def test_every_empty_cell_is_the_same_dash_on_the_terminal_and_in_the_artifact() -> None:
    report = RunReport(job="vzdump-backup", label="nas-backup")
    backup = {"archive": "vzdump-lxc-100.tar.zst", "size": "1.2 MiB"}
    report.add(ReportRow("100 (dns)", Outcome.OK, taken=backup["archive"], kept=3, cells=backup))
    report.add(ReportRow("100 (dns) offsite", Outcome.OK, detail="1 copied",
                         cells={"archive": "vzdump-lxc-100.tar.zst", "size": "1.2 MiB",
                                "rate": "40.1 MiB/s", "checksum": "verified"}))  # fmt: skip
    report.add(ReportRow("101 (media-vm) offsite", Outcome.FAILED, detail="offsite: refused"))
    report.add(ReportRow("9000 (template)", Outcome.SKIPPED, detail="a template"))
    table = report.finish().table()
    cells = [v for row in table for v in row.values()]
    assert "" not in cells and "-" not in cells and "0" not in cells
    assert table[0] == {"target": "100 (dns)", "archive": "vzdump-lxc-100.tar.zst",
                        "size": "1.2 MiB", "rate": EMPTY, "checksum": EMPTY,
                        "outcome": "ok", "detail": EMPTY}  # fmt: skip
    assert table[2]["archive"] == table[2]["checksum"] == EMPTY
    text = report.to_text().splitlines()
    assert text[1].split() == ["100", "(dns)", "vzdump-lxc-100.tar.zst", "1.2", "MiB",
                               EMPTY, EMPTY, "ok", EMPTY]  # fmt: skip
    assert text[3].split() == ["101", "(media-vm)", "offsite", EMPTY, EMPTY, EMPTY, EMPTY,
                               "failed", "offsite:", "refused"]  # fmt: skip


def test_snapshot_jobs_keep_taken_kept_removed_with_one_dash() -> None:
    report = RunReport(job="zfs-snapshot", label="hourly")
    report.add(ReportRow("pve1:rpool", Outcome.OK, taken="rpool@a", kept=3,
                         removed=("rpool@1", "rpool@2", "rpool@3"), seconds=0.25))  # fmt: skip
    report.add(ReportRow("pve1:tank", Outcome.FAILED, detail="exit 1: out of space"))
    ok, failed = report.table()
    assert ok == {"target": "pve1:rpool", "taken": "rpool@a", "kept": "3",
                  "removed": "rpool@1, rpool@2 (+1 more)", "outcome": "ok", "seconds": "0.2",
                  "detail": EMPTY}  # fmt: skip
    # nothing was taken there: kept is not known, not 0
    assert (failed["taken"], failed["kept"], failed["removed"], failed["seconds"]) == ((EMPTY,) * 4)
    assert report.summary().endswith("1 snapshots taken, 3 pruned")


def test_a_busy_target_is_not_ok_but_a_skipped_one_is() -> None:
    """A target another run held was not done: the run is not OK (its summary and state say
    so); a deliberately skipped one (a template, a selection) leaves the run OK."""
    skipped = RunReport(job="guest-snapshot", label="daily")
    skipped.add(ReportRow("100 (dns)", Outcome.OK, taken="s", kept=1))
    skipped.add(ReportRow("9000 (template)", Outcome.SKIPPED, detail="a template"))
    assert skipped.ok and skipped.verdict == "OK" and skipped.problem() == ""

    busy = RunReport(job="nixos-update", label="update", counts_snapshots=False)
    busy.add(ReportRow("dns", Outcome.BUSY, detail="another run (flow run 1234) is updating dns"))
    busy.add(ReportRow("media", Outcome.OK, detail="up to date"))
    busy.finish()
    row = busy.rows[0]
    assert not row.ok and not row.failed  # not done, but nothing went wrong there
    assert not busy.ok and busy.not_ok_rows == [row] and busy.failed_rows == []
    assert busy.summary() == "nixos-update [update] INCOMPLETE: 2 targets (1 ok, 1 busy)"
    assert busy.problem() == "1 target(s) busy: dns"
    assert busy.table()[0]["outcome"] == "busy"

    busy.add(ReportRow("web", Outcome.FAILED, detail="build failed"))
    assert busy.verdict == "FAILED"
    assert busy.problem() == "1 target(s) failed: web; 1 target(s) busy: dns"


def test_an_optional_column_is_left_out_when_no_row_has_it() -> None:
    layout = (Column("target"), Column("seconds", optional=True), Column("detail", "what happened"))
    report = RunReport(job="restore", label="101", layout=layout)
    report.add(ReportRow("101", Outcome.OK, detail="restored"))
    assert report.columns() == ["target", "what happened"]
    report.add(ReportRow("102", Outcome.OK, seconds=3.0))
    assert report.columns() == ["target", "seconds", "what happened"]


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(seconds=59), "0m"),
        (5 * MIN, "5m"),
        (90 * MIN, "90m"),  # the hourly snapshot limit: 1.5 x one hour, not "1h"
        (119 * MIN + timedelta(seconds=59), "119m"),
        (2 * H, "2h"),
        (26 * H, "26h"),
        (36 * H, "36h"),  # the daily snapshot limit: 1.5 days
        (27 * H + 15 * MIN + timedelta(seconds=30), "27h15m"),
        (2 * D, "2d"),
        (2 * D + 20 * H, "2d20h"),  # not "2d": almost three days
        (8 * D, "8d"),
        (9 * D + 4 * H + 59 * MIN, "9d4h"),
        (-MIN, "0m"),
    ],
)
def test_a_span_is_never_rounded_into_something_else(span: timedelta, text: str) -> None:
    assert format_span(span) == text


def test_ages() -> None:
    now = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert format_age(now, now - 90 * MIN) == "90m ago"
    assert format_age(now, now - 36 * H) == "36h ago"
    assert format_age(now, None) == "never"


def test_sizes_and_rates() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 2**30) == "3.0 GiB"
    assert format_rate(100 * 2**20, 2.0) == "50.0 MiB/s"
    assert format_rate(8 * 1024, 1.0) == "8.0 KiB/s"
    assert format_rate(1000, 0.0) == EMPTY
