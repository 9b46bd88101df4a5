"""Run reports: one row per target, rendered as a terminal table and as Markdown for Prefect.

Every job ends with a report: what was taken, kept and removed on each target, and how the
target ended. The same object feeds the terminal summary, the Prefect table artifact and the
exit code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Outcome(StrEnum):
    """How one target ended."""

    OK = "ok"
    PLANNED = "planned"  # --dry-run: nothing was changed
    SKIPPED = "skipped"  # deliberately not touched (locked, filtered, ...): not a failure
    PARTIAL = "partial"  # the change was made but a follow-up step (prune) failed
    FAILED = "failed"
    ROLLED_BACK = "rolled back"  # a change failed verification and was undone
    NEEDS_ATTENTION = "needs attention"  # a change failed and could not be undone


FAILING = frozenset({Outcome.FAILED, Outcome.PARTIAL, Outcome.ROLLED_BACK, Outcome.NEEDS_ATTENTION})


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The result for one target (a dataset or a guest)."""

    target: str
    outcome: Outcome
    taken: str | None = None
    kept: int = 0
    removed: tuple[str, ...] = ()
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome in FAILING

    def line(self) -> str:
        """Outcome and detail in a few words, for progress logs."""
        return f"{self.outcome}: {self.detail}" if self.detail else str(self.outcome)


@dataclass(slots=True)
class RunReport:
    """All rows of one run, with what the run was asked to do."""

    job: str
    label: str
    dry_run: bool = False
    rows: list[ReportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts_snapshots: bool = True
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None

    def add(self, row: ReportRow) -> None:
        self.rows.append(row)

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
    def ok(self) -> bool:
        return not self.failed_rows

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
        verdict = "FAILED" if not self.ok else "OK"
        what = f"{took} snapshots taken, {removed} pruned" if not self.dry_run else "plan only"
        body = ", ".join(parts) if parts else "no targets"
        head = f"{self.job} [{self.label}] {verdict}{mode}: {len(self.rows)} targets ({body})"
        return f"{head}; {what}" if self.counts_snapshots or self.dry_run else head

    def columns(self) -> list[str]:
        """The report's columns: the snapshot columns (taken, kept, removed) unless no row
        has anything in any of them, and seconds unless every row took none (a health
        report has neither)."""
        things = any(r.taken or r.removed or r.kept for r in self.rows)
        seconds = any(r.seconds for r in self.rows)
        shown = {"taken": things, "kept": things, "removed": things, "seconds": seconds}
        return [c for c in COLUMNS if shown.get(c, True) or not self.rows]

    def table(self) -> list[dict[str, str]]:
        """Rows as plain dicts, for a Prefect table artifact."""
        keys = self.columns()
        return [
            {
                k: v
                for k, v in {
                    "target": r.target,
                    "taken": r.taken or "—",
                    "kept": str(r.kept),
                    "removed": _removed_text(r.removed),
                    "outcome": r.outcome.value,
                    "seconds": f"{r.seconds:.1f}",
                    "detail": r.detail,
                }.items()
                if k in keys
            }
            for r in self.rows
        ]

    def to_markdown(self) -> str:
        head = self.columns()
        lines = [f"## {self.job}: {self.label}", "", self.summary(), ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in self.table():
            cells = [_md_escape(row[h]) for h in head]
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {_md_escape(n)}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """An aligned table for the terminal, followed by the summary line."""
        keys = self.columns()
        head = [k.upper() for k in keys]
        rows = [[r[k] for k in keys] for r in self.table()]
        return _aligned(head, rows) + "\n".join([*self.notes, self.summary()]) + "\n"


COLUMNS = ("target", "taken", "kept", "removed", "outcome", "seconds", "detail")


def _removed_text(removed: Sequence[str]) -> str:
    if not removed:
        return "—"
    if len(removed) <= 2:
        return ", ".join(removed)
    return f"{removed[0]}, {removed[1]} (+{len(removed) - 2} more)"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
    """``"5m"``, ``"3h"`` (under two days) or ``"2d"``."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_age(now: datetime, when: datetime | None) -> str:
    """``"5m ago"``, ``"3h ago"``, ``"2d ago"`` or ``"never"``."""
    return "never" if when is None else format_span(now - when) + " ago"


def cell_lines(cells: Sequence[Mapping[str, str]]) -> list[str]:
    """Rows of the same keys as aligned terminal lines, the keys upper-cased as the header."""
    if not cells:
        return []
    head = list(cells[0])
    widths = {h: max(len(h), *(len(c[h]) for c in cells)) for h in head}
    lines = ["  ".join(h.upper().ljust(widths[h]) for h in head).rstrip()]
    lines += ["  ".join(c[h].ljust(widths[h]) for h in head).rstrip() for c in cells]
    return lines
