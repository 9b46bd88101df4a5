"""The fleet at a glance: pure checks behind the daily health report.

``tasks/health.py`` reads the facts (storage listings, the offsite folder, snapshot lists,
NixOS generations, each node's pending updates, last upgrade and kernels) and hands them to
these functions; each returns ``Check`` rows that say what was looked at, how old it is,
what the limit is, and whether it passed; ``check_row`` makes each one a line of the run's
report. Nothing here does I/O.

Like sanoid's ``--monitor-snapshots``, a snapshot label is judged by its newest snapshot:
it passes while that snapshot is younger than ``grace`` × the label's period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from moxflow.backups import Archive, parse_archive_name
from moxflow.errors import ParseError
from moxflow.guests import Guest
from moxflow.nixos import locked_input
from moxflow.report import EMPTY, Outcome, ReportRow, format_age, format_span
from moxflow.windows import RebootState, UpdateScan

__all__ = [
    "Check",
    "backup_checks",
    "check_row",
    "checks_summary",
    "last_upgrade_check",
    "locked_nixpkgs_time",
    "nixos_check",
    "node_check",
    "reboot_check",
    "snapshot_check",
    "windows_checks",
]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the health report."""

    kind: str  # backup | offsite | restore test | LABEL snapshots | nixos | node updates |
    # last upgrade | reboot | windows update | windows pending | windows reboot
    target: str  # a guest, dataset, NixOS host or node
    last: datetime | None  # when it last happened; None: never (or not applicable)
    limit: timedelta | None  # how old ``last`` may be; None: shown, not judged
    ok: bool
    detail: str = ""
    status: str = "ok"  # ok | TOO OLD | MISSING | TOO MANY

    def cells(self, now: datetime) -> dict[str, str]:
        """The row as text, for the terminal and the Prefect table artifact."""
        return {
            "check": self.kind,
            "target": self.target,
            "last": format_age(now, self.last) if self.last or self.limit else EMPTY,
            "limit": format_span(self.limit) if self.limit else EMPTY,
            "status": self.status,
            "detail": self.detail or EMPTY,
        }


def _judge(
    kind: str,
    target: str,
    last: datetime | None,
    limit: timedelta | None,
    now: datetime,
    detail: str = "",
) -> Check:
    ok = limit is None or (last is not None and now - last <= limit)
    status = "ok" if ok else "TOO OLD" if last is not None else "MISSING"
    return Check(kind, target, last, limit, ok, detail, status)


def backup_checks(
    guests: Sequence[Guest],
    archives: Mapping[int, Sequence[Archive]],
    *,
    now: datetime,
    tz: tzinfo,
    backup_limit: timedelta,
    backed_up: Iterable[int] | None = None,
    offsite: Sequence[str] | None = None,
    offsite_limit: timedelta | None = None,
    restore_tested: Iterable[int] = (),
    restore_limit: timedelta | None = None,
) -> list[Check]:
    """Per guest of ``backed_up`` (default: all): its newest backup and its newest offsite
    copy (when ``offsite`` is a listing); per guest of ``restore_tested``: its last passed
    restore test."""
    tested = set(restore_tested)
    judged = {g.vmid for g in guests} if backed_up is None else set(backed_up)
    out: list[Check] = []
    for guest in sorted(guests, key=lambda g: g.vmid):
        mine = sorted(archives.get(guest.vmid, ()), key=lambda a: a.created)
        if guest.vmid in judged:
            newest = mine[-1] if mine else None
            detail = newest.filename if newest else "no backup listed"
            last = newest.created if newest else None
            out.append(_judge("backup", guest.label, last, backup_limit, now, detail))
        if guest.vmid in judged and offsite is not None:
            stamps = sorted(
                (p[2].replace(tzinfo=tz), name)
                for name, p in ((n, parse_archive_name(n)) for n in offsite)
                if p is not None and p[1] == guest.vmid
            )
            last, name = stamps[-1] if stamps else (None, "no copy offsite")
            out.append(_judge("offsite", guest.label, last, offsite_limit, now, name))
        if guest.vmid in tested:
            passed = [(a.restore_tested, a.filename) for a in mine if a.restore_tested]
            when, name = max(passed) if passed else (None, "no passed test on a listed backup")
            out.append(_judge("restore test", guest.label, when, restore_limit, now, name))
    return out


def snapshot_check(
    target: str, label: str, taken: Iterable[datetime], *, now: datetime, limit: timedelta
) -> Check:
    """A dataset's or guest's newest moxflow snapshot of ``label`` against the limit."""
    times = list(taken)
    newest = max(times) if times else None
    return _judge(f"{label} snapshots", target, newest, limit, now, f"{len(times)} snapshot(s)")


def locked_nixpkgs_time(flake_lock: str) -> datetime | None:
    """When the nixpkgs a ``flake.lock`` pins was published (``lastModified``, UTC): the
    node the root's ``nixpkgs`` input points to, by key or ``follows`` path."""
    modified = locked_input(flake_lock, "nixpkgs").get("lastModified")
    if modified is None:
        raise ParseError("flake.lock: no nixpkgs lastModified", source="flake.lock")
    if isinstance(modified, bool) or not isinstance(modified, int):
        raise ParseError("flake.lock: nixpkgs lastModified is not a number", source="flake.lock")
    return datetime.fromtimestamp(modified, tz=UTC)


def nixos_check(
    host: str,
    switched: datetime | None,
    nixpkgs: datetime | None,
    *,
    now: datetime,
    limit: timedelta,
    checked: datetime | None = None,
) -> Check:
    """A NixOS host's last update against the limit: its current generation, or the last
    update run that found nothing new (``checked``), whichever is later. The age of the
    nixpkgs its flake.lock pins says how far behind it may be."""
    detail = f"nixpkgs pinned {format_age(now, nixpkgs)}" if nixpkgs else "nixpkgs pin unknown"
    last = switched
    if checked is not None and (switched is None or checked > switched):
        last = checked
        detail = (
            f"up to date as of {format_age(now, checked)}, "
            + (f"generation from {format_age(now, switched)}; " if switched else "")
            + detail
        )
    return _judge("nixos", host, last, limit, now, detail)


def node_check(node: str, pending: Sequence[Mapping[str, Any]], max_pending: int | None) -> Check:
    """A Proxmox node's pending package updates (``GET /nodes/{node}/apt/update``)."""
    names = sorted(str(p.get("Package", "?")) for p in pending)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    detail = f"{len(names)} pending" + (f": {shown}" if names else "")
    ok = max_pending is None or len(names) <= max_pending
    if max_pending is not None:
        detail += f" (limit {max_pending})"
    return Check("node updates", node, None, None, ok, detail, "ok" if ok else "TOO MANY")


def last_upgrade_check(node: str, last: datetime | None) -> Check:
    """When dpkg last upgraded or installed a package on a Proxmox node (its log): shown, not
    judged (the update job and its schedule decide when)."""
    detail = f"dpkg's log: {last:%Y-%m-%d %H:%M:%S}" if last else "no upgrade in dpkg's log"
    return Check("last upgrade", node, last, None, True, detail)


def reboot_check(node: str, running: str, next_boot: str | None) -> Check:
    """Whether a Proxmox node waits for a reboot: the kernel it boots next (pins included)
    is not the one it runs, as after an upgrade run with ``--reboot never``. Shown, not
    judged: the reboot is the owner's call."""
    if next_boot and next_boot != running:
        detail = f"reboot pending: running {running}, {next_boot} boots next"
    else:
        detail = f"no reboot pending: running {running}, the kernel that boots next"
    return Check("reboot", node, None, None, True, detail)


def windows_checks(
    vm: str,
    last_run: datetime | None,
    scan: UpdateScan | None,
    reboot: RebootState | None,
    *,
    now: datetime,
    limit: timedelta,
    why_unread: str = "",
) -> list[Check]:
    """A Windows VM's health: its last successful update run (shown), the updates Windows
    Update offers it with the oldest one's release against ``limit`` (judged), and whether
    a reboot is pending (shown). Without ``scan`` (the VM is stopped, ``why_unread``) the
    last two are shown as not read."""
    run = "last successful windows-update run" if last_run else "no successful windows-update run"
    out = [Check("windows update", vm, last_run, None, True, run)]
    if scan is None or reboot is None:
        unread = f"not read: {why_unread}" if why_unread else "not read"
        out.append(Check("windows pending", vm, None, None, True, unread))
        out.append(Check("windows reboot", vm, None, None, True, unread))
        return out
    dated = sorted((u.released, u.kb) for u in scan.updates if u.released is not None)
    if not scan.updates:
        out.append(Check("windows pending", vm, None, None, True, "0 pending"))
    else:
        oldest, kb = dated[0] if dated else (None, scan.updates[0].kb)
        kbs = ", ".join(u.kb for u in scan.updates[:5])
        more = f" and {len(scan.updates) - 5} more" if len(scan.updates) > 5 else ""
        detail = f"{len(scan.updates)} pending: {kbs}{more}; oldest {kb}"
        if oldest is None:
            out.append(Check("windows pending", vm, None, None, True, detail + " (no date)"))
        else:
            detail += f", released {oldest:%Y-%m-%d}"
            out.append(_judge("windows pending", vm, oldest, limit, now, detail))
    waiting = reboot.pending or scan.reboot_required
    reasons = ", ".join(reboot.reasons) or "Windows Update"
    detail = f"reboot pending ({reasons})" if waiting else "no reboot pending"
    out.append(
        Check("windows reboot", vm, None, None, True, f"{detail}; booted {reboot.last_boot}")
    )
    return out


def check_row(check: Check, now: datetime) -> ReportRow:
    """One check as a row of the health report: its target and kind (the row's ``target``
    names both, so that a failure message says which check of a guest failed), when it last
    happened, its limit, and the status in front of the detail when it did not pass."""
    cells = check.cells(now)
    status = "" if check.ok else f"{check.status}: "
    return ReportRow(
        target=f"{check.target} {check.kind}",
        outcome=Outcome.OK if check.ok else Outcome.FAILED,
        detail=f"{status}{check.detail}",
        cells={k: cells[k] for k in ("target", "last", "limit")} | {"kind": check.kind},
    )


def checks_summary(checks: Sequence[Check], named: int = 10) -> str:
    """One line for the log: how many checks, how many did not pass, the first ``named``
    of those, and how many more were left out."""
    bad = [c for c in checks if not c.ok]
    head = f"{len(checks)} check(s), {len(bad)} over the limit or unreadable"
    names = [f"{c.target} {c.kind}: {c.status}" for c in bad[:named]]
    more = [f"and {len(bad) - named} more"] if len(bad) > named else []
    return "; ".join([head, *names, *more])
