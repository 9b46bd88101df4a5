"""Prefect tasks for vzdump backups: back up, verify and prune over the API; copy offsite over SSH.

Every API request about a guest goes to the node that owns it. The offsite copy reads the
archive on the node and writes it on the offsite host through the controller (see
``copy_archive``) in bounded chunks, paced to ``offsite.bwlimit``, verifying SHA-256 on both
sides before the copy gets its real name.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.ssh import ssh_runner
from moxflow.backups import (
    Archive,
    OffsitePlan,
    PruneMark,
    archive_problem,
    find_new_archive,
    parse_archive_name,
    parse_offsite_listing,
    parse_prune_marks,
    parse_sha256sum,
    plan_offsite,
    split_content,
)
from moxflow.errors import (
    MoxflowError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
    SshChecksumError,
    SshError,
    is_transient,
)
from moxflow.guests import Guest
from moxflow.inventory import Inventory
from moxflow.pacing import DumpEstimator, Pacer
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, format_names, format_rate, format_size
from moxflow.retention import KeepPolicy
from moxflow.ssh import SshRunner
from tasks._logging import LoggerLike, run_logger

BACKOFF_START = 0.5
BACKOFF_MAX = 15.0
OFFSITE_CHUNK = 16 * 1024 * 1024  # bytes of archive per offsite copy command (two SSH trips)


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
    retry_timeout: float = 120.0  # how long transient errors (locked guest, 5xx) are retried
    dry_run: bool = False
    # learnt during the run, shared by its node workers: hints for waiting on each dump
    durations: DumpEstimator = field(default_factory=DumpEstimator, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class GuestBackup:
    """How one guest's backup went: its report row, the verified new archive (if any) and
    the guest's archives on the storage at the end."""

    guest: Guest
    row: ReportRow
    archive: Archive | None = None
    verified: bool | None = None
    archives: tuple[Archive, ...] = ()


def list_archives(client: ProxmoxClient, node: str, storage: str, vmid: int) -> list[Archive]:
    """The backups of guest ``vmid`` on ``storage`` as ``node`` (its owner) sees them; an
    entry that cannot be read is left out with a warning, never fails the listing."""
    archives, skipped = split_content(client.backup_content(node, storage, vmid))
    for note in skipped:
        run_logger("moxflow.backups").warning(
            "%s on %s: backup entry left out: %s", storage, node, note
        )
    return archives


def prune_marks(
    client: ProxmoxClient, guest: Guest, storage: str, policy: KeepPolicy
) -> list[PruneMark]:
    """Proxmox's prune dry run for one guest (``GET .../prunebackups``): changes nothing."""
    data = client.prune_marks(guest.node, storage, guest.vmid, guest.type, str(policy))
    return parse_prune_marks(data)


def _prune(
    client: ProxmoxClient, guest: Guest, storage: str, policy: KeepPolicy, timeout: float
) -> None:
    """Prune one guest's backups through Proxmox (protected archives are never removed)."""
    upid = client.prune(guest.node, storage, guest.vmid, guest.type, str(policy))
    if upid is not None:
        client.wait_task(upid, timeout=timeout, node=guest.node)


def _start_vzdump(client: ProxmoxClient, guest: Guest, job: BackupJob) -> str:
    """POST vzdump to the guest's node; its UPID (an error when the guest is not there)."""
    return client.vzdump(
        guest.node,
        guest.vmid,
        storage=job.storage,
        mode=job.mode,
        compress=job.compress,
        protected=True if job.protected else None,
        bwlimit=job.bwlimit,
        remove=False,  # moxflow prunes itself, after verifying the new archive
        **{"notes-template": job.notes_template},
    )


def _stop_task(client: ProxmoxClient, node: str, upid: str | None) -> None:
    """Stop a task that ran out of time so that it frees the node's vzdump lock."""
    if upid is None:
        return
    with suppress(MoxflowError):
        client.stop_task(node, upid)


def backup_guest(
    client: ProxmoxClient, guest: Guest, job: BackupJob, logger: LoggerLike
) -> GuestBackup:
    """Back up one guest on its node, verify the new archive, then prune its backups.

    Transient errors (guest locked, API 5xx, connection) are retried with backoff for
    ``job.retry_timeout`` seconds; a dump that fails is retried once; a hanging task is
    stopped at ``job.task_timeout``. Before any retry the storage is checked for an archive
    the previous attempt made, so a retry never makes a second backup. Never raises.
    """
    t0 = time.monotonic()
    target = guest.label
    node, storage = guest.node, job.storage

    def done(outcome: Outcome, detail: str, **kw: Any) -> GuestBackup:
        new: Archive | None = kw.get("archive")
        taken = kw.pop("taken", None)
        row = ReportRow(
            target=target,
            outcome=outcome,
            taken=taken,
            kept=kw.pop("kept", 0),
            removed=kw.pop("removed", ()),
            detail=detail,
            seconds=round(time.monotonic() - t0, 3),
            cells={"archive": taken or "", "size": format_size(new.size) if new else ""},
        )
        return GuestBackup(guest=guest, row=row, **kw)

    try:
        before = list_archives(client, node, storage, guest.vmid)
        if job.dry_run:
            marks = prune_marks(client, guest, storage, job.policy) if job.policy else []
            removed = tuple(m.volid.rpartition("/")[2] for m in marks if m.mark == "remove")
            how = f"vzdump on {node} to {storage} ({job.mode}, {job.compress})"
            prune = f"; prune {job.policy} now would remove {len(removed)}" if job.policy else ""
            prune += f": {format_names(removed)}" if removed else ""
            return done(
                Outcome.PLANNED,
                how + prune,
                kept=len(before) - len(removed),
                removed=removed,
                archives=tuple(before),
            )
        started = datetime.now(UTC)
        known = [a.volid for a in before]
        previous = before[-1] if before else None
        upid: str | None = None
        dumped: float | None = None  # seconds the dump took, when this run saw it end
        expect = job.durations.expect(storage, guest.maxdisk, previous.size if previous else None)
        failed_dumps = 0
        tries = 0
        delay = BACKOFF_START
        deadline = t0 + job.retry_timeout
        while True:
            tries += 1
            try:
                if tries > 1:
                    listing = list_archives(client, node, storage, guest.vmid)
                    if find_new_archive(listing, guest.vmid, known, started) is not None:
                        break  # an earlier attempt made it after all
                upid = _start_vzdump(client, guest, job)
                result = client.wait_task(upid, timeout=job.task_timeout, node=node, expect=expect)
                dumped = result.duration
                break
            except ProxmoxTaskTimeout as exc:
                _stop_task(client, node, upid)
                logger.error("%s: vzdump timed out, stopped: %s", target, exc)
                return done(Outcome.FAILED, f"vzdump timed out and was stopped: {exc}")
            except ProxmoxTaskError as exc:
                failed_dumps += 1
                if failed_dumps > 1:
                    logger.error("%s: vzdump failed twice: %s", target, exc)
                    return done(Outcome.FAILED, f"vzdump failed twice: {exc}")
                logger.warning("%s: vzdump failed, retrying once: %s", target, exc)
            except MoxflowError as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    logger.error("%s: vzdump failed after %d tries: %s", target, tries, exc)
                    return done(Outcome.FAILED, f"vzdump failed after {tries} tries: {exc}")
                logger.warning("%s: %s; retrying in %.1fs", target, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

        listing = list_archives(client, node, storage, guest.vmid)
        new = find_new_archive(listing, guest.vmid, known, started)
        problem = archive_problem(new, previous, job.size_drop_ratio)
        if problem is not None or new is None:
            logger.error("%s: backup not verified: %s", target, problem)
            return done(
                Outcome.FAILED,
                f"backup not verified: {problem}",
                taken=new.filename if new else None,
                archive=new,
                verified=False,
                archives=tuple(listing),
            )
        logger.info("%s: %s verified (%d bytes)", target, new.filename, new.size)
        if dumped is not None:
            job.durations.observe(storage, dumped, guest.maxdisk, new.size)
        if job.policy is None:
            return done(
                Outcome.OK,
                f"verified, on {node}; {len(listing)} backup(s) on {storage}",
                taken=new.filename,
                kept=len(listing),
                archive=new,
                verified=True,
                archives=tuple(listing),
            )
        try:
            marks = prune_marks(client, guest, storage, job.policy)
            removing = [m for m in marks if m.mark == "remove" and m.volid != new.volid]
            if removing:
                _prune(client, guest, storage, job.policy, job.task_timeout)
            after = list_archives(client, node, storage, guest.vmid)
        except MoxflowError as exc:
            logger.error("%s: backup verified, prune failed: %s", target, exc)
            return done(
                Outcome.PARTIAL,
                f"backup verified, prune failed: {exc}",
                taken=new.filename,
                archive=new,
                verified=True,
                archives=tuple(listing),
            )
        left = {a.volid for a in after}
        removed = tuple(m.volid.rpartition("/")[2] for m in removing if m.volid not in left)
        if removed:
            logger.info("%s: pruned %d: %s", target, len(removed), ", ".join(removed))
        pruned = f", pruned {len(removed)}: {format_names(removed)}" if removed else ""
        return done(
            Outcome.OK,
            f"verified, on {node}; {len(after)} backup(s) on {storage}{pruned}",
            taken=new.filename,
            kept=len(after),
            removed=removed,
            archive=new,
            verified=True,
            archives=tuple(after),
        )
    except MoxflowError as exc:
        logger.error("%s: %s", target, exc)
        return done(Outcome.FAILED, str(exc))


@task(name="vzdump-backup", cache_policy=NO_CACHE, task_run_name="{node}: {count} guests")
def backup_node(
    client: ProxmoxClient,
    node: str,
    count: int,
    guests: list[Guest],
    job: BackupJob,
    storage_gate: threading.Semaphore | None,
) -> list[GuestBackup]:
    """Back up the guests of one node one after the other (vzdump holds a node-wide lock);
    ``storage_gate`` caps how many nodes write to the storage at once."""
    logger = get_run_logger()
    out: list[GuestBackup] = []
    for i, guest in enumerate(guests, 1):
        gate: AbstractContextManager[Any] = (
            storage_gate if storage_gate is not None and not job.dry_run else nullcontext()
        )
        with gate:
            result = backup_guest(client, guest, job, logger)
        logger.info("[%s %d/%d] %s: %s", node, i, count, guest.label, result.row.line())
        out.append(result)
    return out


@task(name="list-backups", cache_policy=NO_CACHE)
def list_guest_archives(
    client: ProxmoxClient, guests: list[Guest], storage: str
) -> dict[int, list[Archive]]:
    """Each guest's backups on ``storage``, each asked of the node that owns the guest."""
    return {g.vmid: list_archives(client, g.node, storage, g.vmid) for g in guests}


# --- offsite -------------------------------------------------------------------------------


def sha256_of(runner: SshRunner, path: str) -> str:
    """SHA-256 of a file on a host (``sha256sum``)."""
    return parse_sha256sum(runner.run(["sha256sum", "--", path]).stdout)


def list_offsite(runner: SshRunner, folder: str, *, create: bool = True) -> list[str]:
    """The complete archive copies in the offsite folder (created first if missing, unless
    ``create`` is false: then a missing folder is an ``SshCommandError``)."""
    if create:
        runner.run(["mkdir", "-p", "--", folder])
    return parse_offsite_listing(runner.run(["ls", "-1", "--", folder]).stdout)


# Positional parameters, so that the shell string stays constant (style rule 6).
_READ_CHUNK = 'dd if="$1" bs="$2" skip="$3" count=1 iflag=fullblock status=none | base64'
_WRITE_FIRST = 'base64 -d > "$1"'
_APPEND = 'base64 -d >> "$1"'


def file_size(runner: SshRunner, path: str) -> int:
    """Size in bytes of a file on a host (``stat -c %s``)."""
    out = runner.run(["stat", "-c", "%s", "--", path]).stdout.strip()
    if not out.isdigit():
        raise SshError(
            f"stat answered {out[:80]!r} instead of a size",
            host=runner.name,
            command=["stat", "-c", "%s", "--", path],
        )
    return int(out)


@dataclass(frozen=True, slots=True)
class CopiedArchive:
    """An archive copied offsite: its SHA-256 (the same on both sides) and its bytes."""

    sha256: str
    size: int


def copy_archive(
    source: SshRunner,
    src_path: str,
    dest: SshRunner,
    folder: str,
    logger: LoggerLike,
    *,
    bwlimit: int | None = None,
    chunk: int = OFFSITE_CHUNK,
) -> CopiedArchive:
    """Copy one archive from a node to the offsite folder; returns its SHA-256 and size.

    The bytes travel through the controller (the runner's stdin is text, and the node holds
    no key to reach the offsite host itself), ``chunk`` bytes at a time so that memory stays
    bounded: ``dd ... | base64`` on the node, ``base64 -d >> NAME.part`` on the offsite host
    (the first chunk truncates). With ``bwlimit`` (KiB/s) the chunks are paced so that the
    copy of each archive averages at most that. The copy's SHA-256 is compared with the
    source's, and only then is it renamed; a mismatch removes the partial file and is
    redone once, then raises ``SshChecksumError``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 byte, not {chunk}")
    name = src_path.rpartition("/")[2]
    part = f"{folder}/{name}.part"
    final = f"{folder}/{name}"
    size = file_size(source, src_path)
    expected = sha256_of(source, src_path)
    count = max(1, math.ceil(size / chunk))
    for attempt in (1, 2):
        pacer = Pacer(bwlimit * 1024 if bwlimit else None)
        try:
            for i in range(count):
                want = min(chunk, size - i * chunk)
                read = ["sh", "-c", _READ_CHUNK, "sh", src_path, str(chunk), str(i)]
                encoded = source.run(read).stdout
                if len(encoded.replace("\n", "")) != 4 * math.ceil(want / 3):
                    raise SshError(
                        f"{name} changed while being copied: chunk {i + 1}/{count} is not "
                        f"{want} bytes",
                        host=source.name,
                        command=read,
                    )
                script = _WRITE_FIRST if i == 0 else _APPEND
                dest.run(["sh", "-c", script, "sh", part], stdin=encoded)
                del encoded
                # also after the last chunk: the next archive's copy follows at once, and
                # the link should see the limit across archives too
                pacer.pace(want)
            got = sha256_of(dest, part)
        except MoxflowError:
            with suppress(MoxflowError):  # a half-written copy never stays behind
                dest.run(["rm", "-f", "--", part])
            raise
        if got == expected:
            dest.run(["mv", "-f", "--", part, final])
            if pacer.slept:
                logger.info(
                    "%s: %d bytes in %d chunk(s), %.1fs paused for the %d KiB/s limit",
                    name,
                    size,
                    count,
                    pacer.slept,
                    bwlimit or 0,
                )
            return CopiedArchive(sha256=expected, size=size)
        dest.run(["rm", "-f", "--", part])
        logger.warning(
            "offsite copy of %s arrived corrupted (sha256 %s, expected %s)%s",
            name,
            got[:12],
            expected[:12],
            ", copying again" if attempt == 1 else "",
        )
    raise SshChecksumError(
        f"copy of {name} arrived corrupted twice (sha256 mismatch)",
        host=dest.name,
        command=["sha256sum", "--", part],
    )


@dataclass(slots=True)
class OffsiteResult:
    """What the offsite step did: rows per guest, the folder's listing at the end, and per
    guest whether every copy of this run checked out (absent: nothing copied)."""

    rows: list[ReportRow] = field(default_factory=list)
    listing: list[str] | None = None
    copied: dict[int, bool] = field(default_factory=dict)


@task(name="offsite-copy", cache_policy=NO_CACHE)
def offsite_copy(
    inv: Inventory,
    guests: list[Guest],
    archives: dict[int, list[Archive]],
    storage: str,
    tz: tzinfo,
    dry_run: bool = False,
) -> OffsiteResult:
    """Copy the archives the offsite policy keeps and the offsite folder lacks, then remove
    the copies it does not keep. Unreachable hosts fail the guests' offsite rows; the
    backups on the storage are never touched."""
    logger = get_run_logger()
    out = OffsiteResult()
    off = inv.offsite
    if off is None:
        return out
    policy = KeepPolicy.parse(off.policy, setting="offsite.policy") if off.policy else KeepPolicy()
    all_archives = [a for g in guests for a in archives.get(g.vmid, [])]
    with ExitStack() as stack:
        dest = stack.enter_context(ssh_runner(inv, off.host))
        try:
            present = list_offsite(dest, off.path)
        except MoxflowError as exc:
            logger.error("offsite host %s: %s", off.host, exc)
            for g in guests:
                out.rows.append(_offsite_row(g, Outcome.FAILED, f"offsite: {exc}"))
            return out
        plan = plan_offsite(all_archives, present, [g.vmid for g in guests], policy, tz)
        if dry_run:
            for g in guests:
                out.rows.append(_planned_row(g, plan))
            out.listing = present
            return out
        runners: dict[str, SshRunner] = {}
        for g in guests:
            t0 = time.monotonic()
            mine = [a for a in plan.copy if a.vmid == g.vmid]
            copied: list[str] = []
            problems: list[str] = []
            size = 0  # bytes copied, and the seconds they took
            took = 0.0
            mismatch = False
            for a in mine:
                try:
                    if g.node not in runners:
                        runners[g.node] = stack.enter_context(ssh_runner(inv, g.node))
                    src = f"{inv.backups.storage_path(a.storage, g.node)}/{a.filename}"
                    t1 = time.monotonic()
                    done = copy_archive(
                        runners[g.node], src, dest, off.path, logger, bwlimit=off.bwlimit
                    )
                    took += time.monotonic() - t1
                    size += done.size
                    copied.append(a.filename)
                    logger.info("%s: copied %s to %s", g.label, a.filename, off.host)
                except MoxflowError as exc:
                    mismatch = mismatch or isinstance(exc, SshChecksumError)
                    problems.append(f"{a.filename}: {exc}")
                    logger.error("%s: offsite copy of %s failed: %s", g.label, a.filename, exc)
            removed: list[str] = []
            for name in plan.remove:
                parsed_vmid = _vmid_of(name)
                if parsed_vmid != g.vmid:
                    continue
                try:
                    dest.run(["rm", "-f", "--", f"{off.path}/{name}"])
                    removed.append(name)
                except MoxflowError as exc:
                    problems.append(f"removing {name}: {exc}")
            if mine:
                out.copied[g.vmid] = not problems and len(copied) == len(mine)
            kept = sum(1 for n in plan.keep if _vmid_of(n) == g.vmid) + len(copied)
            outcome = Outcome.FAILED if problems else Outcome.OK
            what = [*problems] or [f"{len(copied)} copied" if copied else "nothing to copy"]
            what.append(f"{kept} cop{'y' if kept == 1 else 'ies'} offsite")
            if removed:
                what.append(f"removed {len(removed)}: {format_names(removed)}")
            checksum = "mismatch" if mismatch else "verified" if copied else ""
            out.rows.append(
                ReportRow(
                    target=f"{g.label} offsite",
                    outcome=outcome,
                    detail="; ".join(what),
                    seconds=round(time.monotonic() - t0, 3),
                    cells={
                        "archive": format_names(copied),
                        "size": format_size(size) if copied else "",
                        "rate": format_rate(size, took) if copied else "",
                        "checksum": checksum,
                    },
                )
            )
        try:
            out.listing = list_offsite(dest, off.path)
        except MoxflowError as exc:
            logger.warning("offsite host %s: cannot list the copies: %s", off.host, exc)
    return out


def _vmid_of(name: str) -> int | None:
    parsed = parse_archive_name(name)
    return parsed[1] if parsed else None


def _offsite_row(guest: Guest, outcome: Outcome, detail: str) -> ReportRow:
    return ReportRow(target=f"{guest.label} offsite", outcome=outcome, detail=detail)


def _planned_row(guest: Guest, plan: OffsitePlan) -> ReportRow:
    copy = [a for a in plan.copy if a.vmid == guest.vmid]
    names = [a.filename for a in copy]
    remove = [n for n in plan.remove if _vmid_of(n) == guest.vmid]
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
