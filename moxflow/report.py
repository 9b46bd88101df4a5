"""Run reports: one row per target, rendered as a terminal table and as a Prefect table.

Every job ends with a report: how each target ended and why, in the columns the job's users
think in (see ``JOB_COLUMNS``): a snapshot job says what was taken, kept and removed; a NixOS
update the generation before and after and its pre-update snapshot; a backup the archive, its
size and the offsite copy's rate and checksum; a restore test the scratch VMID, the boot and
the guest agent; the health report each check's last time and limit. The same object feeds
the terminal table, the Prefect table artifact and the exit code. A cell without a value
shows ``EMPTY`` everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How one target ended."""

    OK = "ok"
    PLANNED = "planned"  # --dry-run: nothing was changed
    SKIPPED = "skipped"  # deliberately not touched (a template, filtered out, ...): not a failure
    BUSY = "busy"  # not done now: another run or operation holds the target; not OK
    PARTIAL = "partial"  # the change was made but a follow-up step (prune) failed
    FAILED = "failed"
    ROLLED_BACK = "rolled back"  # a change failed verification and was undone
    NEEDS_ATTENTION = "needs attention"  # a change failed and could not be undone


FAILING = frozenset({Outcome.FAILED, Outcome.PARTIAL, Outcome.ROLLED_BACK, Outcome.NEEDS_ATTENTION})
"""What went wrong with a target: a failed row (a NixOS roll stops on one)."""
NOT_OK = FAILING | {Outcome.BUSY}
"""What makes a run not OK: its Prefect state is Failed, its exit status 1, it notifies. A
busy target is no failure of its own, but it was not done and somebody has to know why."""

EMPTY = "—"
"""What a cell without a value shows, on the terminal and in the Prefect artifact."""


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The result for one target (a dataset, a guest, a host, a check).

    ``taken``, ``kept`` and ``removed`` are what a snapshot job took, kept and removed there
    (``summary()`` counts them); ``cells`` holds the job's own columns as text (``"generation":
    "41 → 42"``), and may also override what a common column (``target``) shows.
    """

    target: str
    outcome: Outcome
    taken: str | None = None
    kept: int = 0
    removed: tuple[str, ...] = ()
    detail: str = ""
    seconds: float = 0.0
    cells: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILING

    @property
    def ok(self) -> bool:
        """Whether this row lets the run end OK (``NOT_OK``: failed or busy)."""
        return self.outcome not in NOT_OK

    def cell(self, key: str) -> str:
        """The text of column ``key`` in this row; ``EMPTY`` when it has no value."""
        if key in self.cells:
            text = self.cells[key]
        elif key == "target":
            text = self.target
        elif key == "outcome":
            text = self.outcome.value
        elif key == "detail":
            text = self.detail
        elif key == "taken":
            text = self.taken or ""
        elif key == "kept":  # nothing taken and nothing counted: not known, rather than 0
            text = str(self.kept) if self.kept or self.taken else ""
        elif key == "removed":
            text = _removed_text(self.removed)
        elif key == "seconds":
            text = f"{self.seconds:.1f}" if self.seconds else ""
        else:
            text = ""
        return text.replace("\n", " ").strip() or EMPTY

    def line(self) -> str:
        """Outcome and detail in a few words, for progress logs."""
        return f"{self.outcome}: {self.detail}" if self.detail else str(self.outcome)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a job's report: the row value it shows and its header.

    ``key`` is a key of the row's ``cells`` or one of its fields (target, outcome, detail,
    taken, kept, removed, seconds); ``title`` is the header (default: the key). An
    ``optional`` column is left out when no row has a value in it.
    """

    key: str
    title: str = ""
    optional: bool = False

    @property
    def header(self) -> str:
        return self.title or self.key


TARGET, OUTCOME, DETAIL = Column("target"), Column("outcome"), Column("detail")
SECONDS = Column("seconds", optional=True)

DEFAULT_COLUMNS = (TARGET, OUTCOME, SECONDS, DETAIL)
"""A job not in ``JOB_COLUMNS``: how each target ended, and why."""

SNAPSHOT_COLUMNS = (
    *(TARGET, Column("taken"), Column("kept"), Column("removed")),
    *(OUTCOME, SECONDS, DETAIL),
)
NIXOS_COLUMNS = (
    Column("target", "host"),
    Column("generation"),  # "41 → 42", or "41" when it did not change
    Column("snapshot"),  # the pre-update snapshot
    *(OUTCOME, DETAIL),
)
# a guest's backup (archive, size), its offsite copies (archives, size, rate, checksum) and
# its coverage: one set of columns for every kind of row
BACKUP_COLUMNS = (
    *(TARGET, Column("archive"), Column("size"), Column("rate"), Column("checksum")),
    *(OUTCOME, DETAIL),
)
RESTORE_TEST_COLUMNS = (
    *(Column("target", "guest"), Column("archive"), Column("scratch", "scratch vmid")),
    *(Column("boot"), Column("agent"), OUTCOME, DETAIL),
)
RESTORE_COLUMNS = (Column("archive"), Column("target", "target vmid"), OUTCOME, DETAIL)
PROXMOX_UPDATE_COLUMNS = (
    Column("target", "node"),
    Column("packages"),  # how many packages the upgrade installs
    Column("reboot"),  # yes, no, or pending (needed but --reboot never)
    Column("snapshot"),  # the pre-update snapshot of the root dataset
    *(OUTCOME, DETAIL),
)
WINDOWS_UPDATE_COLUMNS = (
    Column("target", "vm"),
    Column("updates"),  # "3 installed, 1 failed", or in a dry run "4 to install"
    Column("reboots"),
    Column("snapshot"),  # the pre-update snapshot and its kind
    *(OUTCOME, DETAIL),
)
WINDOWS_PROVISION_COLUMNS = (
    Column("target", "item"),  # "<vm>: steam:740", "<vm>: snapshot", or the VM alone
    Column("status"),  # installed, present, updated, failed; "taken"; in a dry run "to install"
    *(OUTCOME, DETAIL),
)
HEALTH_COLUMNS = (TARGET, Column("kind"), Column("last"), Column("limit"), OUTCOME, DETAIL)

JOB_COLUMNS: Mapping[str, tuple[Column, ...]] = {
    "zfs-snapshot": SNAPSHOT_COLUMNS,
    "guest-snapshot": SNAPSHOT_COLUMNS,
    "nixos-update": NIXOS_COLUMNS,
    "proxmox-update": PROXMOX_UPDATE_COLUMNS,
    "windows-update": WINDOWS_UPDATE_COLUMNS,
    "windows-provision": WINDOWS_PROVISION_COLUMNS,
    "vzdump-backup": BACKUP_COLUMNS,
    "offsite-copy": BACKUP_COLUMNS,
    "restore-test": RESTORE_TEST_COLUMNS,
    "restore": RESTORE_COLUMNS,
    "health-report": HEALTH_COLUMNS,
}
"""The columns of each job's report, in order."""


@dataclass(slots=True)
class RunReport:
    """All rows of one run, with what the run was asked to do.

    ``layout`` is the report's columns; by default the job's from ``JOB_COLUMNS``.
    """

    job: str
    label: str
    dry_run: bool = False
    rows: list[ReportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts_snapshots: bool = True
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    layout: tuple[Column, ...] = ()

    def __post_init__(self) -> None:
        if not self.layout:
            self.layout = JOB_COLUMNS.get(self.job, DEFAULT_COLUMNS)

    def add(self, row: ReportRow) -> None:
        self.rows.append(row)

    def add_selection(
        self, unmatched: Iterable[str], skipped: Iterable[tuple[Any, str]]
    ) -> list[str]:
        """What a guest selection left out: a note per name that matched no guest, a skipped
        row per guest it skipped (``(guest, why)``, by ``guest.label``). The notes, to log."""
        notes = [f"selection: {name!r} matches no guest" for name in unmatched]
        self.notes.extend(notes)
        for guest, why in skipped:
            self.add(ReportRow(target=guest.label, outcome=Outcome.SKIPPED, detail=why))
        return notes

    def extend(self, rows: Iterable[ReportRow]) -> None:
        self.rows.extend(rows)

    def finish(self) -> RunReport:
        self.finished = datetime.now(UTC)
        self.rows.sort(key=lambda r: r.target)
        return self

    @property
    def failed_rows(self) -> list[ReportRow]:
        return [r for r in self.rows if r.failed]

    @property
    def not_ok_rows(self) -> list[ReportRow]:
        """The rows that keep the run from being OK: failed ones and busy ones."""
        return [r for r in self.rows if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.not_ok_rows

    @property
    def verdict(self) -> str:
        """``OK``; ``FAILED`` when a target failed; ``INCOMPLETE`` when targets were only busy."""
        if self.failed_rows:
            return "FAILED"
        return "INCOMPLETE" if self.not_ok_rows else "OK"

    def problem(self) -> str:
        """Why the run is not OK, in one line (the Prefect state's message): the failed and
        the busy targets; empty for an OK run."""
        parts = []
        for what, rows in (
            ("failed", self.failed_rows),
            ("busy", [r for r in self.rows if r.outcome is Outcome.BUSY]),
        ):
            if rows:
                parts.append(f"{len(rows)} target(s) {what}: " + ", ".join(r.target for r in rows))
        return "; ".join(parts)

    def counts(self) -> dict[Outcome, int]:
        counts = dict.fromkeys(Outcome, 0)
        for row in self.rows:
            counts[row.outcome] += 1
        return counts

    def summary(self) -> str:
        """One line: what happened overall."""
        counts = self.counts()
        parts = [f"{n} {o.value}" for o, n in counts.items() if n]
        took = sum(1 for r in self.rows if r.taken and r.outcome is not Outcome.PLANNED)
        removed = sum(len(r.removed) for r in self.rows if r.outcome is not Outcome.PLANNED)
        mode = " (dry run: nothing changed)" if self.dry_run else ""
        verdict = self.verdict
        what = f"{took} snapshots taken, {removed} pruned" if not self.dry_run else "plan only"
        body = ", ".join(parts) if parts else "no targets"
        head = f"{self.job} [{self.label}] {verdict}{mode}: {len(self.rows)} targets ({body})"
        return f"{head}; {what}" if self.counts_snapshots or self.dry_run else head

    def shown(self) -> list[Column]:
        """The columns of the layout, less the optional ones no row has a value in."""
        return [
            c
            for c in self.layout
            if not c.optional or any(r.cell(c.key) != EMPTY for r in self.rows)
        ]

    def columns(self) -> list[str]:
        """The headers of the report's columns, in order."""
        return [c.header for c in self.shown()]

    def table(self) -> list[dict[str, str]]:
        """Rows as plain dicts (header → text), for a Prefect table artifact."""
        shown = self.shown()
        return [{c.header: r.cell(c.key) for c in shown} for r in self.rows]

    def to_text(self) -> str:
        """An aligned table for the terminal, followed by the summary line."""
        keys = self.columns()
        head = [k.upper() for k in keys]
        rows = [[r[k] for k in keys] for r in self.table()]
        return _aligned(head, rows) + "\n".join([*self.notes, self.summary()]) + "\n"


def _removed_text(removed: Sequence[str]) -> str:
    return format_names(removed) or EMPTY


def format_names(names: Sequence[str]) -> str:
    """Up to two names, then how many more: ``"a, b (+3 more)"``; empty for none."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]}, {names[1]} (+{len(names) - 2} more)"


def _aligned(head: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in head]
    clipped = [[c.replace("\n", " ") for c in row] for row in rows]
    for row in clipped:
        for i, cell in enumerate(row):
            widths[i] = min(max(widths[i], len(cell)), 72)
    out = []
    for row in [head, *clipped]:
        last = len(row) - 1  # the last column (detail) is never cut: nothing follows it
        cells = [
            c if len(c) <= widths[i] or i == last else c[: widths[i] - 1] + "…"
            for i, c in enumerate(row)
        ]
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip())
    return "\n".join(out) + "\n"


def format_span(delta: timedelta) -> str:
    """A duration, never rounded up: whole minutes under two hours (``"90m"``), hours and
    minutes under two days (``"26h"``, ``"36h"``, ``"27h15m"``), days and hours beyond (``"2d"``,
    ``"9d4h"``); what is cut off is under 1% of it below two days, under 2% beyond."""
    seconds = max(0, int(delta.total_seconds()))
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 2 * 3600:
        return f"{minutes}m"
    if seconds < 2 * 86400:
        return f"{hours}h" + (f"{minutes % 60}m" if minutes % 60 else "")
    return f"{hours // 24}d" + (f"{hours % 24}h" if hours % 24 else "")


def format_age(now: datetime, when: datetime | None) -> str:
    """``"5m ago"``, ``"27h15m ago"``, ``"2d ago"`` or ``"never"`` (see ``format_span``)."""
    return "never" if when is None else format_span(now - when) + " ago"


def format_size(size: float) -> str:
    """Bytes in binary units: ``"512 B"``, ``"1.5 KiB"``, ``"3.2 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_rate(size: float, seconds: float) -> str:
    """Bytes over seconds, ``"48.2 MiB/s"``; ``EMPTY`` when no time was measured."""
    return format_size(size / seconds) + "/s" if seconds > 0 else EMPTY


def cell_lines(cells: Sequence[Mapping[str, str]]) -> list[str]:
    """Rows of the same keys as aligned terminal lines, the keys upper-cased as the header."""
    if not cells:
        return []
    head = list(cells[0])
    widths = {h: max(len(h), *(len(c[h]) for c in cells)) for h in head}
    lines = ["  ".join(h.upper().ljust(widths[h]) for h in head).rstrip()]
    lines += ["  ".join(c[h].ljust(widths[h]) for h in head).rstrip() for c in cells]
    return lines
