"""Prefect tasks for vzdump backups, one step each: list a node's backups (the facts), vzdump a
guest, verify its new archive, prune the storage; list, copy (one archive per step) and prune
the offsite folder; publish the coverage table.

Every API request about a guest goes to the node that owns it. The offsite copy reads the
archive on the node and writes it on the offsite host through the controller (see
``copy_archive``) in bounded chunks, paced to ``offsite.bwlimit``, verifying SHA-256 on both
sides before the copy gets its real name. Every step but the vzdump is safe to run twice, so
Prefect retries it on a transient error (``tasks._retry.step``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.ssh import ssh_runner
from moxflow.backups import (
    Archive,
    BackupJob,
    Coverage,
    GuestDump,
    OffsiteCopy,
    PruneMark,
    archive_problem,
    find_new_archive,
    needs_prune,
    parse_offsite_listing,
    parse_prune_marks,
    parse_sha256sum,
    split_content,
)
from moxflow.errors import (
    ConfigError,
    MoxflowError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
    SshChecksumError,
    SshCommandError,
    SshError,
    is_transient,
)
from moxflow.guests import Guest
from moxflow.inventory import Inventory, OffsiteSettings
from moxflow.pacing import Pacer
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow
from moxflow.retention import KeepPolicy
from moxflow.ssh import SshRunner
from tasks._logging import LoggerLike, run_logger
from tasks._retry import step
from tasks.targets import Reserved, guest_target, hold

__all__ = [
    "BackupJob",  # defined in moxflow.backups; imported from here by older code
    "Copied",
    "Dumped",
    "GuestPruned",
    "OffsitePruned",
    "Pruned",
    "Verified",
    "copy_archive",
    "copy_offsite",
    "list_archives",
    "list_backups",
    "list_offsite",
    "list_offsite_copies",
    "offsite_failed_row",
    "prune_backups",
    "prune_offsite",
    "publish_coverage",
    "report_coverage",
    "verify_backup",
    "vzdump_guest",
]

BACKOFF_START = 0.5
BACKOFF_MAX = 15.0
OFFSITE_CHUNK = 16 * 1024 * 1024  # bytes of archive per offsite copy command (two SSH trips)
PRUNE_WORKERS = 8  # guests pruned at once by the storage's prune step


def list_archives(client: ProxmoxClient, node: str, storage: str, vmid: int) -> list[Archive]:
    """The backups of guest ``vmid`` on ``storage`` as ``node`` (its owner) sees them; an
    entry that cannot be read is left out with a warning, never fails the listing."""
    archives, skipped = split_content(client.backup_content(node, storage, vmid))
    for note in skipped:
        run_logger("moxflow.backups").warning(
            "%s on %s: backup entry left out: %s", storage, node, note
        )
    return archives


def _item_vmid(item: object) -> int | None:
    if not isinstance(item, Mapping):
        return None
    try:
        return int(item.get("vmid"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@step("vzdump-list", "{node}:{storage}: list")
def list_backups(
    client: ProxmoxClient, node: str, storage: str, vmids: tuple[int, ...]
) -> dict[int, list[Archive]]:
    """The facts: the backups of the node's guests ``vmids`` on ``storage``, oldest first, as
    the node sees the storage (one listing). Read-only; an entry that cannot be read is left
    out with a warning."""
    wanted = set(vmids)
    items = [i for i in client.backup_content(node, storage) if _item_vmid(i) in wanted]
    archives, skipped = split_content(items)
    for note in skipped:
        get_run_logger().warning("%s on %s: backup entry left out: %s", storage, node, note)
    out: dict[int, list[Archive]] = {vmid: [] for vmid in vmids}
    for a in archives:
        out[a.vmid].append(a)
    return out


def prune_marks(
    client: ProxmoxClient, guest: Guest, storage: str, policy: KeepPolicy
) -> list[PruneMark]:
    """Proxmox's prune dry run for one guest (``GET .../prunebackups``): changes nothing."""
    data = client.prune_marks(guest.node, storage, guest.vmid, guest.type, str(policy))
    return parse_prune_marks(data)


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


@dataclass(frozen=True, slots=True)
class Dumped:
    """A vzdump that ended well: when it started (an archive made since then is its), how long
    the task ran as the waiter saw it (None when an earlier attempt's archive turned up), and
    the seconds the step took."""

    started: datetime
    upid: str | None
    dumped: float | None
    seconds: float
    adopted: str = ""  # the vzdump of an earlier run this step waited for instead of a second


@task(
    name="vzdump",
    task_run_name="{dump.target}: vzdump",
    cache_policy=NO_CACHE,
    retries=0,
)
def vzdump_guest(
    client: ProxmoxClient,
    dump: GuestDump,
    job: BackupJob,
    storage_gate: threading.Semaphore | None = None,
    reserved: Reserved | None = None,
) -> Dumped:
    """Back up one guest with vzdump on its node and wait for the task to end.

    Never retried by Prefect: starting a vzdump is not idempotent (a second start makes a
    second archive, or queues behind the first on the node's lock). A vzdump of the guest an
    earlier (killed) run left running is waited for and its archive taken, not doubled. The
    step tries again
    itself, and only after looking on the storage for an archive the earlier attempt made:
    a locked guest or an unavailable API is waited out with backoff for
    ``job.retry_timeout`` seconds, a dump that failed is run once more. A task still running
    at ``job.task_timeout`` is stopped so that it frees the node's lock. The guest's target
    slot (:mod:`tasks.targets`) is held throughout: a run that holds it for longer than
    ``job.retry_timeout`` from the step's start leaves this guest busy (``TargetBusy``);
    ``reserved``: the slot the flow asked for while the node's dump before this one ran.
    ``storage_gate`` caps how many dumps write to the storage at once. Raises
    ``ProxmoxTaskTimeout`` (the task was stopped), ``ProxmoxTaskError`` (it failed twice) or
    the last other error.
    """
    logger = run_logger("moxflow.backups")
    gate: AbstractContextManager[Any] = storage_gate if storage_gate is not None else nullcontext()
    guest, storage, target = dump.guest, dump.storage, dump.target
    # the guest's slot first (another run's backup or chain on it: wait, bounded), then the
    # storage's turn
    slot = (
        reserved
        if reserved is not None
        else hold([guest_target(guest.vmid)], wait=job.retry_timeout)
    )
    with slot, gate:
        t0 = time.monotonic()
        started = datetime.now(UTC)
        previous = dump.previous
        expect = job.durations.expect(storage, guest.maxdisk, previous.size if previous else None)
        upid: str | None = None
        failed_dumps = 0
        tries = 0
        delay = BACKOFF_START
        deadline = t0 + job.retry_timeout
        adopted = _adopt(client, dump, job, logger)
        if adopted is not None:
            return Dumped(
                adopted.started, adopted.upid, None, time.monotonic() - t0, adopted.adopted
            )
        while True:
            tries += 1
            try:
                if tries > 1:
                    listing = list_archives(client, guest.node, storage, guest.vmid)
                    if find_new_archive(listing, guest.vmid, dump.known, started) is not None:
                        logger.info("%s: an earlier attempt's archive is there", target)
                        return Dumped(started, upid, None, time.monotonic() - t0)
                upid = _start_vzdump(client, guest, job)
                result = client.wait_task(
                    upid, timeout=job.task_timeout, node=guest.node, expect=expect
                )
                return Dumped(started, upid, result.duration, time.monotonic() - t0)
            except ProxmoxTaskTimeout as exc:
                _stop_task(client, guest.node, upid)
                logger.error("%s: vzdump timed out, stopped: %s", target, exc)
                raise
            except ProxmoxTaskError as exc:
                failed_dumps += 1
                if failed_dumps > 1:
                    logger.error("%s: vzdump failed twice: %s", target, exc)
                    raise
                logger.warning("%s: vzdump failed, trying once more: %s", target, exc)
            except MoxflowError as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    logger.error("%s: vzdump failed after %d tries: %s", target, tries, exc)
                    raise
                logger.warning("%s: %s; trying again in %.1fs", target, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)


def _adopt(
    client: ProxmoxClient, dump: GuestDump, job: BackupJob, logger: LoggerLike
) -> Dumped | None:
    """An earlier run's vzdump of the guest still running (the run was killed; PVE's task
    was not): wait for it instead of queueing a second one behind it on the node's lock, and
    take its archive when it ends well. None: there is none, or it left no archive here (the
    step then makes its own)."""
    guest, target = dump.guest, dump.target
    orphan = client.running_task(guest.node, "vzdump", guest.vmid)
    if orphan is None:
        return None
    age = (datetime.now(UTC) - orphan.starttime).total_seconds()
    logger.warning(
        "%s: waiting for task %s of an earlier run (running for %.0fs) instead of starting "
        "a second vzdump",
        target,
        orphan,
        age,
    )
    t0 = time.monotonic()
    try:
        client.wait_task(str(orphan), timeout=job.task_timeout, node=guest.node)
    except ProxmoxTaskError as exc:
        logger.warning("%s: the earlier run's vzdump failed (%s); starting one", target, exc)
        return None
    listing = list_archives(client, guest.node, dump.storage, guest.vmid)
    if find_new_archive(listing, guest.vmid, dump.known, orphan.starttime) is None:
        logger.warning("%s: the earlier run's vzdump left no archive here; starting one", target)
        return None
    note = f"adopted vzdump {orphan} of an earlier run (found running for {age:.0f}s)"
    logger.info("%s: %s", target, note)
    return Dumped(orphan.starttime, str(orphan), None, time.monotonic() - t0, note)


@dataclass(frozen=True, slots=True)
class Verified:
    """The verdict on one guest's new backup: the archive (None: none listed), why it is not
    trustworthy (None: it is), the guest's archives on the storage now, Proxmox's prune marks
    for them (the facts of the storage's prune; none without a keep policy), and the seconds
    the step took."""

    dump: GuestDump
    archive: Archive | None
    problem: str | None
    archives: tuple[Archive, ...]
    seconds: float
    marks: tuple[PruneMark, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None and self.archive is not None


@step("vzdump-verify", "{dump.target}: verify")
def verify_backup(
    client: ProxmoxClient, dump: GuestDump, job: BackupJob, dumped: Dumped
) -> Verified:
    """Verify the archive the vzdump (``dumped``, its step's result) made: listed, made by this
    run, not empty, not far smaller than the guest's previous one. A backup that fails the
    check is a verdict, not an error: the step completes and says why. With a keep policy
    it also reads Proxmox's prune marks for the guest's backups (a dry run of the prune),
    what the storage's prune step goes by. Read-only, so retried (Prefect) on a transient
    error."""
    t0 = time.monotonic()
    guest = dump.guest
    listing = list_archives(client, guest.node, dump.storage, guest.vmid)
    new = find_new_archive(listing, guest.vmid, dump.known, dumped.started)
    problem = archive_problem(new, dump.previous, job.size_drop_ratio)
    logger = get_run_logger()
    if problem is not None or new is None:
        logger.error("%s: backup not verified: %s", dump.target, problem)
        return Verified(dump, new, problem, tuple(listing), time.monotonic() - t0)
    logger.info("%s: %s verified (%d bytes)", dump.target, new.filename, new.size)
    if dumped.dumped is not None:
        job.durations.observe(dump.storage, dumped.dumped, guest.maxdisk, new.size)
    marks = prune_marks(client, guest, dump.storage, job.policy) if job.policy else []
    return Verified(dump, new, None, tuple(listing), time.monotonic() - t0, tuple(marks))


@dataclass(frozen=True, slots=True)
class GuestPruned:
    """What pruning did to one guest's backups: the archives it removed (file names) and the
    ones left; or why it could not."""

    removed: tuple[str, ...] = ()
    archives: tuple[Archive, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What the storage's prune step did, per guest (by vmid), and the seconds it took."""

    guests: Mapping[int, GuestPruned]
    seconds: float


def _prune_guest(
    client: ProxmoxClient, v: Verified, policy: KeepPolicy, timeout: float
) -> GuestPruned:
    """Prune one guest's backups through Proxmox (protected archives are never removed) when
    its marks (read by its verify step) remove any but the new archive. What was removed is
    what the verified listing held and the storage no longer does, so another attempt of the
    step reports what an earlier one removed."""
    if not needs_prune(v.marks, v.archive):
        return GuestPruned((), v.archives)
    guest, storage = v.dump.guest, v.dump.storage
    upid = client.prune(guest.node, storage, guest.vmid, guest.type, str(policy))
    if upid is not None:
        client.wait_task(upid, timeout=timeout, node=guest.node)
    after = list_archives(client, guest.node, storage, guest.vmid)
    left = {a.volid for a in after}
    removed = tuple(a.volid.rpartition("/")[2] for a in v.archives if a.volid not in left)
    return GuestPruned(removed, tuple(after))


@step("vzdump-prune", "{storage}: prune")
def prune_backups(
    client: ProxmoxClient,
    storage: str,
    policy: KeepPolicy,
    timeout: float,
    verified: Sequence[object],
) -> Pruned:
    """Prune ``storage`` by ``policy``, guest by guest, for each guest whose new backup
    ``verified`` (the verify steps' results; a failed step's error is passed over) holds
    sound, as Proxmox's marks read there say; the others keep every backup.

    Idempotent, so retried (Prefect) on a transient error: pruning by the same policy again
    removes nothing more. An error that is not transient fails that guest's prune only.
    """
    logger = get_run_logger()
    t0 = time.monotonic()
    ok = [v for v in verified if isinstance(v, Verified) and v.ok]
    transient: list[MoxflowError] = []

    def one(v: Verified) -> GuestPruned:
        try:
            return _prune_guest(client, v, policy, timeout)
        except MoxflowError as exc:
            if is_transient(exc):
                transient.append(exc)
            return GuestPruned(archives=v.archives, error=str(exc))

    with ThreadPoolExecutor(max_workers=max(1, min(PRUNE_WORKERS, len(ok)))) as pool:
        done = dict(zip([v.dump.guest.vmid for v in ok], pool.map(one, ok), strict=True))
    if transient:
        raise transient[0]  # Prefect tries the whole step again
    for v in ok:
        result = done[v.dump.guest.vmid]
        if result.error:
            logger.error("%s: prune failed: %s", v.dump.target, result.error)
        elif result.removed:
            logger.info(
                "%s: pruned %d: %s", v.dump.target, len(result.removed), ", ".join(result.removed)
            )
    return Pruned(done, time.monotonic() - t0)


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


def _offsite(inv: Inventory) -> OffsiteSettings:
    if inv.offsite is None:
        raise ConfigError("the inventory has no [offsite] section", setting="offsite")
    return inv.offsite


@step("offsite-list", "{host}: list")
def list_offsite_copies(inv: Inventory, host: str) -> list[str]:
    """The facts: the archive copies in the [offsite] folder on ``host`` (its ``host``);
    a folder not made yet holds none. Read-only."""
    off = _offsite(inv)
    with ssh_runner(inv, host) as runner:
        try:
            return list_offsite(runner, off.path, create=False)
        except SshCommandError as exc:
            if "No such file or directory" in (exc.stderr or ""):
                return []
            raise


@dataclass(frozen=True, slots=True)
class Copied:
    """An archive copied offsite: its name, SHA-256 (the same on both sides), bytes, and the
    seconds the copy took."""

    name: str
    sha256: str
    size: int
    seconds: float


@step("offsite-copy-archive", "{item.target}: offsite-copy")
def copy_offsite(inv: Inventory, item: OffsiteCopy, verified: Verified | None) -> Copied:
    """Copy one archive from its node to the [offsite] folder, SHA-256 checked on both sides
    (``copy_archive``); in a backup run once ``verified`` (its guest's verify step's result)
    holds the guest's new backup sound (None: an offsite-copy run, no verify step).
    Retried (Prefect) when a connection drops: the copy is written to NAME.part and renamed
    only when whole, so another attempt starts it over."""
    off = _offsite(inv)
    logger = get_run_logger()
    guest, archive = item.guest, item.archive
    src = f"{inv.backups.storage_path(archive.storage, guest.node)}/{archive.filename}"
    t0 = time.monotonic()
    with ssh_runner(inv, guest.node) as source, ssh_runner(inv, off.host) as dest:
        dest.run(["mkdir", "-p", "--", off.path])
        done = copy_archive(source, src, dest, off.path, logger, bwlimit=off.bwlimit)
    logger.info("%s: copied %s to %s", guest.label, archive.filename, off.host)
    return Copied(archive.filename, done.sha256, done.size, time.monotonic() - t0)


@dataclass(frozen=True, slots=True)
class OffsitePruned:
    """What pruning the offsite folder did: the copies removed, the ones that could not be
    (name: why), and the folder's copies at the end (None: it could not be listed)."""

    removed: tuple[str, ...]
    failures: Mapping[str, str]
    listing: tuple[str, ...] | None


@step("offsite-prune", "{host}: prune")
def prune_offsite(
    inv: Inventory, host: str, remove: tuple[str, ...], copies: Sequence[object]
) -> OffsitePruned:
    """Remove the offsite copies ``remove`` (those the [offsite] policy no longer keeps) once
    the copies are done (``copies``, the copy steps' results or errors), then list the
    folder. Idempotent (``rm -f``), so retried (Prefect) when the connection drops."""
    off = _offsite(inv)
    logger = get_run_logger()
    removed: list[str] = []
    failures: dict[str, str] = {}
    listing: tuple[str, ...] | None = None
    with ssh_runner(inv, host) as dest:
        for name in remove:
            try:
                dest.run(["rm", "-f", "--", f"{off.path}/{name}"])
                removed.append(name)
            except MoxflowError as exc:
                if is_transient(exc):
                    raise
                failures[name] = str(exc)
        try:
            listing = tuple(list_offsite(dest, off.path, create=False))
        except MoxflowError as exc:
            if is_transient(exc):
                raise
            logger.warning("offsite host %s: cannot list the copies: %s", host, exc)
    if removed:
        logger.info("%s: removed %d offsite: %s", host, len(removed), ", ".join(removed))
    return OffsitePruned(tuple(removed), failures, listing)


def publish_coverage(coverage: Coverage) -> None:
    """The coverage table as the Prefect table artifact ``vzdump-backup-coverage``."""
    if coverage.rows:
        create_table_artifact(
            key="vzdump-backup-coverage",
            table=coverage.table(),
            description=f"backup coverage (max age {coverage.max_age_hours:g}h)",
        )


@task(name="backup-coverage", task_run_name="{storage}: coverage", cache_policy=NO_CACHE)
def report_coverage(
    storage: str,
    guests: list[Guest],
    archives: dict[int, list[Archive]],
    listing: list[str] | None,
    max_age_hours: float,
    tz: tzinfo,
    verified: dict[int, bool],
    copied: dict[int, bool],
) -> Coverage:
    """The run's coverage: per guest the newest backup and offsite copy, whether this run
    verified and copied them, and whether the backup is fresh; published as a table."""
    coverage = Coverage.of(
        guests,
        archives,
        listing,
        now=datetime.now(UTC),
        max_age_hours=max_age_hours,
        tz=tz,
        verified=verified,
        copied=copied,
    )
    publish_coverage(coverage)
    return coverage


def offsite_failed_row(guest: Guest, exc: MoxflowError) -> ReportRow:
    """A guest's offsite row when the offsite folder could not be read at all."""
    return ReportRow(
        target=f"{guest.label} offsite", outcome=Outcome.FAILED, detail=f"offsite: {exc}"
    )
