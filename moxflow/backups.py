"""Pure planning for vzdump backups: archives, verdicts, prune marks, offsite plans, coverage.

Nothing here does I/O. ``tasks/backups.py`` reads the facts (the storage's content listing,
the prune endpoint's marks, the offsite folder's listing, ``sha256sum`` output) and hands them
to these functions; the flows show and carry out what they return. A backup run's plan
(``plan_backups``) is a queue of guests per node, each with the archives it had before; the
offsite plan (``plan_offsite``) is made once the storage has been pruned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from moxflow.errors import (
    MoxflowError,
    ParseError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
    TargetBusyError,
    is_transient,
)
from moxflow.guests import Guest
from moxflow.pacing import DumpEstimator
from moxflow.report import (
    EMPTY,
    Outcome,
    ReportRow,
    cell_lines,
    format_age,
    format_names,
    format_rate,
    format_size,
)
from moxflow.retention import KeepPolicy, RetentionItem, plan_prune

__all__ = [
    "Archive",
    "BackupJob",
    "BackupPlan",
    "Coverage",
    "CoverageRow",
    "GuestDump",
    "OffsiteCopy",
    "OffsitePlan",
    "PruneMark",
    "Volid",
    "archive_problem",
    "archive_vmid",
    "coverage_rows",
    "coverage_text",
    "dump_failure",
    "find_new_archive",
    "mark_restore_tested",
    "needs_prune",
    "offsite_copies",
    "offsite_row",
    "parse_archive_name",
    "parse_offsite_listing",
    "parse_prune_marks",
    "parse_sha256sum",
    "parse_volid",
    "plan_backups",
    "plan_offsite",
    "planned_backup_row",
    "planned_offsite_row",
    "preview_prune",
    "restore_tested_at",
    "split_by_node",
    "split_content",
]

GuestType = Literal["qemu", "lxc"]

# vzdump-qemu-100-2026_11_26-02_00_05.vma.zst (the timestamp is the node's local time).
# The extensions are the ones PVE lists as backups: tgz, or tar/vma, bare or compressed with
# gz, lzo, zst or bz2 (any type with either format); openvz is the type of old container dumps.
_ARCHIVE_RE = re.compile(
    r"^vzdump-(?P<type>qemu|lxc|openvz)-(?P<vmid>[1-9][0-9]{2,8})-"
    r"(?P<stamp>[0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2})"
    r"\.(?P<ext>tgz|(?:vma|tar)(?:\.(?:gz|lzo|zst|bz2))?)$"
)
_VOLID_RE = re.compile(r"^(?P<storage>[A-Za-z][A-Za-z0-9_.-]*):backup/(?P<file>[^/\s]+)$")
# A Proxmox Backup Server snapshot: store:backup/{vm|ct|host}/ID/2026-11-26T02:00:05Z (UTC)
_PBS_VOLID_RE = re.compile(
    r"^(?P<storage>[A-Za-z][A-Za-z0-9_.-]*):backup/"
    r"(?P<name>(?P<type>[^\s_/]+)/(?P<id>[^\s_/]+)/"
    r"(?P<time>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z))$"
)
_PBS_TYPES: dict[str, GuestType] = {"vm": "qemu", "ct": "lxc"}
_SHA256_RE = re.compile(r"^(?P<sum>[0-9a-f]{64}) [ *](?P<file>.+)$")


@dataclass(frozen=True, slots=True)
class Volid:
    """A backup volume id, with what its name says: ``storage:backup/FILE`` on a file storage
    (a standard vzdump name gives guest, type and time), or a Proxmox Backup Server snapshot
    ``storage:backup/{vm|ct|host}/ID/TIME`` (``filename`` is then ``vm/ID/TIME``)."""

    storage: str
    filename: str
    vmid: int | None
    subtype: GuestType | None
    stamp: datetime | None  # naive (the node's local time) from a vzdump name; UTC from PBS


def parse_archive_name(filename: str) -> tuple[GuestType, int, datetime] | None:
    """(type, vmid, naive local time) of a standard vzdump file name; None for any other.

    An ``openvz`` archive counts as a container's: Proxmox restores it as one."""
    m = _ARCHIVE_RE.match(filename)
    if m is None:
        return None
    subtype: GuestType = "qemu" if m["type"] == "qemu" else "lxc"
    try:
        stamp = datetime.strptime(m["stamp"], "%Y_%m_%d-%H_%M_%S")
    except ValueError:
        return None
    return subtype, int(m["vmid"]), stamp


def parse_volid(volid: str) -> Volid:
    """Split a backup volid; ``ParseError`` for anything that is neither
    ``storage:backup/FILE`` nor a Proxmox Backup Server snapshot."""
    m = _VOLID_RE.match(volid)
    if m is not None:
        parsed = parse_archive_name(m["file"])
        return Volid(
            storage=m["storage"],
            filename=m["file"],
            vmid=parsed[1] if parsed else None,
            subtype=parsed[0] if parsed else None,
            stamp=parsed[2] if parsed else None,
        )
    m = _PBS_VOLID_RE.match(volid)
    if m is None:
        raise ParseError(f"not a backup volume id: {volid!r}", source="volid", text=volid)
    try:
        stamp = datetime.strptime(m["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ParseError(f"bad time in backup volume id: {volid!r}", source="volid") from exc
    subtype = _PBS_TYPES.get(m["type"])
    # a host backup belongs to no guest
    guest = subtype is not None and re.fullmatch(r"[0-9]+", m["id"]) is not None
    return Volid(
        storage=m["storage"],
        filename=m["name"],
        vmid=int(m["id"]) if guest else None,
        subtype=subtype,
        stamp=stamp,
    )


RESTORE_TEST_MARK = "moxflow restore test ok:"
"""The line a passed restore test adds to the archive's notes, followed by an ISO time (UTC).

The result lives with the backup itself (visible in the Proxmox UI as the backup's notes),
so the coverage table and the health report read it from the storage listing, from any
machine, and it goes away with the archive when the archive is pruned."""


def restore_tested_at(notes: str) -> datetime | None:
    """When the archive with these notes last passed a restore test; None if never."""
    for line in notes.splitlines():
        text = line.strip()
        if text.startswith(RESTORE_TEST_MARK):
            try:
                when = datetime.fromisoformat(text.removeprefix(RESTORE_TEST_MARK).strip())
            except ValueError:
                return None
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def mark_restore_tested(notes: str, when: datetime) -> str:
    """The notes with the restore-test line set to ``when`` (any older one replaced)."""
    kept = [ln for ln in notes.splitlines() if not ln.strip().startswith(RESTORE_TEST_MARK)]
    while kept and not kept[-1].strip():  # no blank lines before the mark
        kept.pop()
    stamp = when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return "\n".join([*kept, f"{RESTORE_TEST_MARK} {stamp}"])


@dataclass(frozen=True, slots=True)
class Archive:
    """One backup archive from ``GET /nodes/{node}/storage/{storage}/content?content=backup``."""

    volid: str
    storage: str
    filename: str
    vmid: int
    subtype: str
    size: int
    created: datetime
    notes: str = ""
    protected: bool = False

    @property
    def restore_tested(self) -> datetime | None:
        """When this archive last passed a restore test (from its notes); None if never."""
        return restore_tested_at(self.notes)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Archive:
        """Parse one content entry; ``ParseError`` when a field is missing or malformed."""
        try:
            vol = parse_volid(str(item["volid"]))
            return cls(
                volid=str(item["volid"]),
                storage=vol.storage,
                filename=vol.filename,
                vmid=int(item["vmid"]),
                subtype=str(item.get("subtype") or vol.subtype or ""),
                size=int(item.get("size") or 0),
                created=datetime.fromtimestamp(int(item["ctime"]), tz=UTC),
                notes=str(item.get("notes") or ""),
                protected=bool(int(item.get("protected") or 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            why = f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
            raise ParseError(
                f"cannot parse backup content entry: {why}",
                source="storage content",
                text=str(item),
            ) from exc


def split_content(items: Iterable[Mapping[str, Any]]) -> tuple[list[Archive], list[str]]:
    """The backup archives of a content listing, oldest first, and one note (volid: why) per
    backup entry left out: a volume id of neither known kind, or one without a VMID (a file
    of a name of its own on an unfiltered listing) never fails the whole listing."""
    archives: list[Archive] = []
    skipped: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            skipped.append(f"{item!r}: not an object")
            continue
        if item.get("content", "backup") != "backup":
            continue
        try:
            archives.append(Archive.from_api(item))
        except ParseError as exc:
            skipped.append(f"{item.get('volid', '(no volid)')}: {exc.message}")
    return sorted(archives, key=lambda a: (a.created, a.volid)), skipped


def find_new_archive(
    listing: Sequence[Archive], vmid: int, before: Iterable[str], started: datetime
) -> Archive | None:
    """The archive of ``vmid`` a backup started at ``started`` made: not listed before it
    ran, created at or after it started (with a second of slack for rounding); the newest."""
    known = set(before)
    since = started - timedelta(seconds=1)
    new = [a for a in listing if a.vmid == vmid and a.volid not in known and a.created >= since]
    return max(new, key=lambda a: (a.created, a.volid)) if new else None


def archive_problem(
    archive: Archive | None, previous: Archive | None, size_drop_ratio: float
) -> str | None:
    """Why a new archive is not trustworthy, or None when it looks sane.

    Not listed, empty, or smaller than ``size_drop_ratio`` × the guest's previous archive.
    """
    if archive is None:
        return "no new archive is listed on the storage"
    if archive.size <= 0:
        return f"{archive.filename} is empty"
    if previous is not None and previous.size > 0 and size_drop_ratio > 0:
        floor = previous.size * size_drop_ratio
        if archive.size < floor:
            return (
                f"{archive.filename} is {format_size(archive.size)}, below "
                f"{size_drop_ratio:g} × the previous backup's {format_size(previous.size)}"
            )
    return None


# --- prune ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneMark:
    """One mark of ``GET .../prunebackups``: keep, remove, protected or renamed."""

    volid: str
    vmid: int
    mark: str
    created: datetime


def parse_prune_marks(items: Iterable[Mapping[str, Any]]) -> list[PruneMark]:
    """The prune endpoint's dry run, newest first."""
    try:
        marks = [
            PruneMark(
                volid=str(i["volid"]),
                vmid=int(i["vmid"]),
                mark=str(i["mark"]),
                created=datetime.fromtimestamp(int(i["ctime"]), tz=UTC),
            )
            for i in items
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"cannot parse prune marks: {exc}", source="prunebackups") from exc
    return sorted(marks, key=lambda m: (m.created, m.volid), reverse=True)


def needs_prune(marks: Iterable[PruneMark], new: Archive | None) -> bool:
    """Whether Proxmox's prune ``marks`` for a guest remove anything but its new archive."""
    keep = new.volid if new is not None else None
    return any(m.mark == "remove" and m.volid != keep for m in marks)


# --- per-node plans ------------------------------------------------------------------------


def split_by_node(guests: Iterable[Guest]) -> dict[str, list[Guest]]:
    """Guests grouped by the node that owns them, by vmid: each node's list runs in series
    (vzdump holds a node-wide lock), the nodes run in parallel."""
    out: dict[str, list[Guest]] = {}
    for guest in sorted(guests, key=lambda g: g.vmid):
        out.setdefault(guest.node, []).append(guest)
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class BackupJob:
    """What every guest of a backup run gets: where, how, and the limits."""

    storage: str
    mode: str = "snapshot"
    compress: str = "zstd"
    notes_template: str = "{{guestname}} {{vmid}} {{node}} moxflow"
    protected: bool = False
    bwlimit: int | None = None
    policy: KeepPolicy | None = None
    size_drop_ratio: float = 0.5
    task_timeout: float = 4 * 3600.0
    retry_timeout: float = 120.0  # how long a locked guest or an API 5xx is waited out
    # learnt during the run, shared by its vzdump steps: hints for waiting on each dump
    durations: DumpEstimator = field(default_factory=DumpEstimator, compare=False, repr=False)

    def how(self, node: str) -> str:
        """What the vzdump of a guest on ``node`` does, in a few words."""
        return f"vzdump on {node} to {self.storage} ({self.mode}, {self.compress})"


@dataclass(frozen=True, slots=True)
class GuestDump:
    """One guest's backup in a run's plan: its archives on the storage before the run (the
    facts), and its place in its node's queue (``position`` of ``count``, from 1)."""

    guest: Guest
    storage: str
    before: tuple[Archive, ...] = ()
    position: int = 1
    count: int = 1

    @property
    def target(self) -> str:
        """The guest as the report and the task runs name it: ``101 (media-vm)``."""
        return self.guest.label

    @property
    def previous(self) -> Archive | None:
        """The guest's newest archive before the run: the new one is checked against it."""
        return self.before[-1] if self.before else None

    @property
    def known(self) -> tuple[str, ...]:
        """The volids listed before the run: none of them is the run's new archive."""
        return tuple(a.volid for a in self.before)


@dataclass(frozen=True, slots=True)
class BackupPlan:
    """A backup run's plan: per node, the guests to back up one after the other (vzdump holds
    a node-wide lock), the nodes in parallel; and, per guest, the archives the keep policy
    would remove if it ran now (what a dry run shows)."""

    storage: str
    queues: Mapping[str, tuple[GuestDump, ...]]
    would_remove: Mapping[int, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def dumps(self) -> tuple[GuestDump, ...]:
        """Every guest's backup, node by node, each node's in its order."""
        return tuple(d for queue in self.queues.values() for d in queue)


def preview_prune(archives: Sequence[Archive], policy: KeepPolicy, tz: tzinfo) -> tuple[str, ...]:
    """The file names of ``archives`` (one guest's) that ``policy`` would remove now, as
    Proxmox's prune does: protected archives and names of no standard form are never removed,
    buckets are in ``tz`` (the nodes' zone)."""
    items: list[RetentionItem] = []
    names: dict[str, str] = {}
    for a in archives:
        if parse_volid(a.volid).stamp is None:
            continue  # Proxmox marks these "renamed" and keeps them
        items.append(RetentionItem(a.volid, a.created, protected=a.protected))
        names[a.volid] = a.volid.rpartition("/")[2]
    return tuple(names[v] for v in plan_prune(items, policy, tz).remove)


def plan_backups(
    guests: Iterable[Guest],
    before: Mapping[int, Sequence[Archive]],
    storage: str,
    policy: KeepPolicy | None,
    tz: tzinfo,
) -> BackupPlan:
    """Plan a backup run from the facts: ``before`` holds each guest's archives on
    ``storage`` (oldest first). Each node's guests are queued by vmid."""
    queues: dict[str, tuple[GuestDump, ...]] = {}
    would_remove: dict[int, tuple[str, ...]] = {}
    for node, mine in split_by_node(guests).items():
        queues[node] = tuple(
            GuestDump(g, storage, tuple(before.get(g.vmid, ())), i, len(mine))
            for i, g in enumerate(mine, 1)
        )
        for g in mine:
            if policy is not None:
                would_remove[g.vmid] = preview_prune(before.get(g.vmid, ()), policy, tz)
    return BackupPlan(storage, queues, would_remove)


def planned_backup_row(dump: GuestDump, job: BackupJob, removed: Sequence[str]) -> ReportRow:
    """A dry run's row for one guest: the vzdump it would run and what pruning would remove."""
    how = job.how(dump.guest.node)
    if job.policy is not None:
        how += f"; prune {job.policy} now would remove {len(removed)}"
        how += f": {format_names(removed)}" if removed else ""
    return ReportRow(
        target=dump.target,
        outcome=Outcome.PLANNED,
        kept=len(dump.before) - len(removed),
        removed=tuple(removed),
        detail=how,
        cells={"archive": "", "size": ""},
    )


def dump_failure(exc: MoxflowError, retry_timeout: float) -> str:
    """A guest's report detail for a vzdump that did not end well."""
    if isinstance(exc, TargetBusyError):
        return f"not backed up: {exc}"
    if isinstance(exc, ProxmoxTaskTimeout):
        return f"vzdump timed out and was stopped: {exc}"
    if isinstance(exc, ProxmoxTaskError):
        return f"vzdump failed twice: {exc}"
    if is_transient(exc):
        return f"vzdump failed after retrying for {retry_timeout:g}s: {exc}"
    return f"vzdump failed: {exc}"


# --- offsite -------------------------------------------------------------------------------


def parse_sha256sum(stdout: str) -> str:
    """The checksum of ``sha256sum FILE`` output; ``ParseError`` for anything else."""
    line = stdout.strip().splitlines()[0] if stdout.strip() else ""
    m = _SHA256_RE.match(line)
    if m is None:
        raise ParseError("not sha256sum output", source="sha256sum", text=stdout[:200])
    return m["sum"]


def parse_offsite_listing(stdout: str) -> list[str]:
    """The archive names in ``ls -1 -- DIR`` output; partial copies (``.part``) and other
    files never count as copies."""
    return sorted(
        name for name in (line.strip() for line in stdout.splitlines()) if parse_archive_name(name)
    )


@dataclass(frozen=True, slots=True)
class OffsitePlan:
    """What the offsite step does: archives to copy, copies to remove, copies that stay."""

    copy: tuple[Archive, ...]
    remove: tuple[str, ...]
    keep: tuple[str, ...]
    reasons: Mapping[str, str] = field(default_factory=dict, hash=False)


def plan_offsite(
    archives: Sequence[Archive],
    offsite: Sequence[str],
    vmids: Iterable[int],
    policy: KeepPolicy,
    tz: tzinfo,
) -> OffsitePlan:
    """Plan the offsite side for the guests ``vmids``, one retention group per guest.

    The keep policy runs over the union of the offsite copies and the storage's archives
    (times from the archive names, read in ``tz``, the nodes' zone): an archive it keeps and
    the offsite folder lacks is copied (so a run after an outage copies what is missing),
    an offsite copy it does not keep is removed. Copies of other guests are left alone.
    """
    wanted = set(vmids)
    by_name: dict[str, Archive] = {a.filename: a for a in archives if a.vmid in wanted}
    present = set(offsite)
    groups: dict[int, list[RetentionItem]] = {}
    for name in sorted(set(by_name) | present):
        parsed = parse_archive_name(name)
        if parsed is None or parsed[1] not in wanted:
            continue
        created = parsed[2].replace(tzinfo=tz)
        groups.setdefault(parsed[1], []).append(RetentionItem(name, created))
    copy: list[Archive] = []
    remove: list[str] = []
    keep: list[str] = []
    reasons: dict[str, str] = {}
    for vmid in sorted(groups):
        plan = plan_prune(groups[vmid], policy, tz)
        reasons.update(plan.reasons)
        for name in plan.keep:
            if name in present:
                keep.append(name)
            else:
                copy.append(by_name[name])
        remove.extend(n for n in plan.remove if n in present)
    return OffsitePlan(tuple(copy), tuple(remove), tuple(keep), reasons)


def archive_vmid(name: str) -> int | None:
    """The guest of a standard archive name; None for any other name."""
    parsed = parse_archive_name(name)
    return parsed[1] if parsed else None


@dataclass(frozen=True, slots=True)
class OffsiteCopy:
    """One archive of one guest to copy offsite: a step of its own."""

    guest: Guest
    archive: Archive

    @property
    def target(self) -> str:
        """``101 (media-vm) vzdump-qemu-101-2026_11_26-02_00_05.vma.zst``"""
        return f"{self.guest.label} {self.archive.filename}"


def offsite_copies(plan: OffsitePlan, guests: Iterable[Guest]) -> list[OffsiteCopy]:
    """The plan's copies, guest by guest (by vmid), each guest's oldest first."""
    by_vmid = {g.vmid: g for g in guests}
    return sorted(
        (OffsiteCopy(by_vmid[a.vmid], a) for a in plan.copy if a.vmid in by_vmid),
        key=lambda c: (c.guest.vmid, c.archive.created, c.archive.filename),
    )


def planned_offsite_row(guest: Guest, plan: OffsitePlan) -> ReportRow:
    """A dry run's offsite row for one guest: what it would copy and remove."""
    copy = [a for a in plan.copy if a.vmid == guest.vmid]
    names = [a.filename for a in copy]
    remove = [n for n in plan.remove if archive_vmid(n) == guest.vmid]
    detail = f"would copy {len(copy)}" + (f": {', '.join(names)}" if copy else "")
    if remove:
        detail += f"; would remove {len(remove)}: {format_names(remove)}"
    size = format_size(sum(a.size for a in copy)) if copy else ""
    return ReportRow(
        target=f"{guest.label} offsite",
        outcome=Outcome.PLANNED,
        detail=detail,
        cells={"archive": format_names(names), "size": size},
    )


def offsite_row(
    guest: Guest,
    plan: OffsitePlan,
    *,
    copied: Sequence[str],
    size: int,
    took: float,
    problems: Sequence[str],
    mismatch: bool,
    removed: Sequence[str],
    seconds: float,
) -> ReportRow:
    """How the offsite side of one guest went: ``copied`` (``size`` bytes in ``took``
    seconds), ``problems`` (a copy or a removal that failed; ``mismatch``: a copy arrived
    corrupted twice), the copies ``removed`` there, and how many copies it keeps now."""
    kept = sum(1 for n in plan.keep if archive_vmid(n) == guest.vmid) + len(copied)
    what = [*problems] or [f"{len(copied)} copied" if copied else "nothing to copy"]
    what.append(f"{kept} cop{'y' if kept == 1 else 'ies'} offsite")
    if removed:
        what.append(f"removed {len(removed)}: {format_names(removed)}")
    checksum = "mismatch" if mismatch else "verified" if copied else ""
    return ReportRow(
        target=f"{guest.label} offsite",
        outcome=Outcome.FAILED if problems else Outcome.OK,
        detail="; ".join(what),
        seconds=round(seconds, 3),
        cells={
            "archive": format_names(copied),
            "size": format_size(size) if copied else "",
            "rate": format_rate(size, took) if copied else "",
            "checksum": checksum,
        },
    )


# --- coverage ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One guest's backup coverage at the end of a run."""

    guest: str
    vmid: int
    last_backup: datetime | None
    size: int
    verified: bool | None  # None: not checked in this run
    last_offsite: datetime | None
    offsite_ok: bool | None  # checksum verified in this run; None: not copied in this run
    stale: bool
    last_restore_test: datetime | None = None

    def cells(self, now: datetime) -> dict[str, str]:
        """The row as text, for the terminal and the Prefect table artifact."""
        return {
            "guest": self.guest,
            "last backup": format_age(now, self.last_backup),
            "size": format_size(self.size) if self.last_backup else EMPTY,
            "verified": _yes_no(self.verified),
            "last offsite": format_age(now, self.last_offsite),
            "checksum": _yes_no(self.offsite_ok),
            "last restore test": format_age(now, self.last_restore_test),
            "fresh": "NO" if self.stale else "yes",
        }


def coverage_rows(
    guests: Sequence[Guest],
    archives: Mapping[int, Sequence[Archive]],
    offsite: Sequence[str] | None,
    *,
    now: datetime,
    max_age: timedelta,
    tz: tzinfo,
    verified: Mapping[int, bool] | None = None,
    copied: Mapping[int, bool] | None = None,
) -> list[CoverageRow]:
    """Per guest: the newest backup (age, size, verified in this run), the newest offsite
    copy (age, checksum verified in this run), the last passed restore test of any archive
    still listed, and whether the newest backup is stale."""
    verified = verified or {}
    copied = copied or {}
    rows: list[CoverageRow] = []
    for guest in sorted(guests, key=lambda g: g.vmid):
        mine = sorted(archives.get(guest.vmid, ()), key=lambda a: a.created)
        last = mine[-1] if mine else None
        stamps = [
            p[2].replace(tzinfo=tz)
            for p in (parse_archive_name(n) for n in offsite or ())
            if p is not None and p[1] == guest.vmid
        ]
        tested = [t for t in (a.restore_tested for a in mine) if t is not None]
        rows.append(
            CoverageRow(
                guest=guest.label,
                vmid=guest.vmid,
                last_backup=last.created if last else None,
                size=last.size if last else 0,
                verified=verified.get(guest.vmid),
                last_offsite=max(stamps) if stamps else None,
                offsite_ok=copied.get(guest.vmid),
                stale=last is None or now - last.created > max_age,
                last_restore_test=max(tested) if tested else None,
            )
        )
    return rows


def coverage_text(rows: Sequence[CoverageRow], now: datetime) -> list[str]:
    """The coverage table as aligned lines for the terminal."""
    if not rows:
        return []
    return ["backup coverage:", *cell_lines([r.cells(now) for r in rows])]


@dataclass(frozen=True, slots=True)
class Coverage:
    """A run's coverage table: its rows, the moment they were made, and the age limit."""

    rows: tuple[CoverageRow, ...]
    now: datetime
    max_age_hours: float

    def text(self) -> list[str]:
        """The table as aligned lines for the terminal (none without rows)."""
        return coverage_text(self.rows, self.now)

    def table(self) -> list[dict[str, str]]:
        """The table as cells, for the Prefect table artifact."""
        return [r.cells(self.now) for r in self.rows]

    @classmethod
    def of(
        cls,
        guests: Sequence[Guest],
        archives: Mapping[int, Sequence[Archive]],
        offsite: Sequence[str] | None,
        *,
        now: datetime,
        max_age_hours: float,
        tz: tzinfo,
        verified: Mapping[int, bool] | None = None,
        copied: Mapping[int, bool] | None = None,
    ) -> Coverage:
        """The coverage of ``guests`` (see ``coverage_rows``) at ``now``."""
        rows = coverage_rows(
            guests,
            archives,
            offsite,
            now=now,
            max_age=timedelta(hours=max_age_hours),
            tz=tz,
            verified=verified,
            copied=copied,
        )
        return cls(tuple(rows), now, max_age_hours)

    def stale_rows(self) -> list[ReportRow]:
        """A failed report row for each guest without a backup newer than the limit."""
        return [
            ReportRow(
                target=f"{r.guest} coverage",
                outcome=Outcome.FAILED,
                detail=f"no backup newer than {self.max_age_hours:g}h",
            )
            for r in self.rows
            if r.stale
        ]


def _yes_no(value: bool | None) -> str:
    return EMPTY if value is None else ("yes" if value else "NO")
