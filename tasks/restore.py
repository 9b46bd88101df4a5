"""Prefect tasks for restores: restore-test a guest's newest backup on a scratch VMID, and
restore a guest for real.

A restore test never sends a changing request about the original guest: everything it
starts, stops and destroys is the scratch guest it created itself, and the scratch guest is
destroyed even when a step fails (the report says so when that cleanup fails).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from moxflow.backups import Archive, mark_restore_tested
from moxflow.errors import MoxflowError, ProxmoxError
from moxflow.guests import Guest, GuestType
from moxflow.naming import snapshot_description, snapshot_name
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow
from moxflow.restore import RestorePlan, check_scratch_vmid, choose_scratch_vmid, restore_request
from tasks._logging import LoggerLike
from tasks.backups import list_archives

PRE_RESTORE_LABEL = "pre-restore"
POLL_START = 0.05
POLL_MAX = 2.0
POWER_TIMEOUT = 300.0


def record_restore_test(client: ProxmoxClient, node: str, archive: Archive, when: datetime) -> None:
    """Note a passed restore test in the archive's notes (``PUT .../content/{volume}``),
    where the backup coverage table and the health report find it."""
    # the notes as they are now, not as listed before the test
    current = client.volume_attributes(node, archive.storage, archive.volid)
    notes = str(current.get("notes") or "") if current else archive.notes
    client.set_volume_notes(node, archive.storage, archive.volid, mark_restore_tested(notes, when))


def start_restore(
    client: ProxmoxClient,
    node: str,
    archive: Archive,
    vmid: int,
    *,
    storage: str | None,
    unique: bool,
    force: bool,
) -> str:
    """``POST /nodes/{node}/qemu`` (``archive``) or ``.../lxc`` (``ostemplate``, ``restore``)."""
    tail, params = restore_request(
        archive.subtype, vmid, archive.volid, storage=storage, unique=unique, force=force
    )
    return client.restore(node, tail, **params)


def power(
    client: ProxmoxClient, node: str, gtype: GuestType, vmid: int, action: Literal["start", "stop"]
) -> None:
    """Start or stop a guest and wait for the task."""
    client.wait_task(client.power(node, gtype, vmid, action), timeout=POWER_TIMEOUT, node=node)


def find_guest(client: ProxmoxClient, vmid: int) -> Guest | None:
    return next((g for g in client.resources() if g.vmid == vmid), None)


def wait_booted(
    client: ProxmoxClient, node: str, gtype: GuestType, vmid: int, timeout: float
) -> tuple[bool, str, str]:
    """Poll until a VM's guest agent answers its ping (a container: it is running).

    Returns (booted, how, agent). A VM without a configured agent counts once it is
    running, and ``how`` says that only the running state was checked. ``agent`` is what
    the guest agent did: ``answered``, ``not configured``, ``no answer``; empty for a
    container, which has none.
    """
    deadline = time.monotonic() + timeout
    delay = POLL_START
    last = ""
    while True:
        try:
            if gtype == "qemu":
                client.agent_ping(node, vmid)
                return True, "guest agent answered", "answered"
            status = client.guest_status(node, gtype, vmid)
            if status == "running":
                return True, "running", ""
            last = f"status {status}"
        except ProxmoxError as exc:
            last = str(exc)
            if "No QEMU guest agent configured" in last:
                with suppress(ProxmoxError):
                    if client.guest_status(node, gtype, vmid) == "running":
                        return True, "running (no guest agent configured)", "not configured"
        if time.monotonic() + delay > deadline:
            agent = "no answer" if gtype == "qemu" else ""
            return False, f"not up after {timeout:g}s ({last or 'no answer'})", agent
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX)


def destroy(client: ProxmoxClient, node: str, gtype: GuestType, vmid: int, timeout: float) -> str:
    """Stop (if running) and destroy a scratch guest; what was done, in words."""
    current = find_guest(client, vmid)
    if current is None:
        return "nothing to clean up"
    if current.running:
        power(client, current.node, current.type, vmid, "stop")
    upid = client.destroy(current.node, current.type, vmid)
    client.wait_task(upid, timeout=timeout, node=current.node)
    return "destroyed"


@dataclass(frozen=True, slots=True)
class RestoreTestJob:
    """What every guest of a restore test gets."""

    backup_storage: str
    scratch_storage: str
    scratch_vmids: range
    scratch_vmid: int | None = None  # an explicit VMID (refused when in use)
    boot_timeout: float = 300.0
    task_timeout: float = 4 * 3600.0
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class RestoreTestResult:
    """One guest's restore test: its report row (archive, scratch VMID, boot, agent in its
    cells) and the same facts as values."""

    guest: Guest
    row: ReportRow
    archive: str | None = None
    scratch: int | None = None
    boot_seconds: float | None = None
    cleanup: str = ""


def restore_test_guest(
    client: ProxmoxClient,
    guest: Guest,
    job: RestoreTestJob,
    logger: LoggerLike,
    avoid: frozenset[int] = frozenset(),
) -> RestoreTestResult:
    """Restore ``guest``'s newest backup to a scratch VMID, boot it, check it, destroy it.

    Never raises. The original guest only ever appears in read requests; every changing
    request names the scratch VMID, which was checked to be free right before the restore.
    """
    t0 = time.monotonic()
    archive: Archive | None = None
    scratch: int | None = None
    boot: float | None = None
    booting = ""  # the boot column while the guest is not up: "not up" once it was started
    agent = ""
    cleanup = ""

    def done(outcome: Outcome, detail: str) -> RestoreTestResult:
        row = ReportRow(
            target=guest.label,
            outcome=outcome,
            taken=archive.filename if archive else None,
            detail=detail,
            seconds=round(time.monotonic() - t0, 3),
            cells={
                "archive": archive.filename if archive else "",
                "scratch": str(scratch) if scratch is not None else "",
                "boot": f"{boot:.1f}s" if boot is not None else booting,
                "agent": agent,
            },
        )
        return RestoreTestResult(
            guest, row, archive.filename if archive else None, scratch, boot, cleanup
        )

    try:
        listing = list_archives(client, guest.node, job.backup_storage, guest.vmid)
        mine = [a for a in listing if a.vmid == guest.vmid]
        if not mine:
            return done(Outcome.FAILED, f"no backup on {job.backup_storage} to restore")
        archive = mine[-1]
        in_use = client.resources()
        if job.scratch_vmid is not None:
            scratch = check_scratch_vmid(job.scratch_vmid, in_use)
        else:
            scratch = choose_scratch_vmid(job.scratch_vmids, in_use, avoid, {guest.vmid})
        if scratch == guest.vmid:  # never, by construction; the one thing that must not happen
            raise MoxflowError(f"scratch VMID {scratch} is the original guest's")
        if job.dry_run:
            return done(
                Outcome.PLANNED,
                f"would restore to scratch {scratch} on {guest.node}/{job.scratch_storage}, "
                f"start, wait for {'the guest agent' if guest.type == 'qemu' else 'running'}, "
                "destroy",
            )
    except MoxflowError as exc:
        logger.error("%s: %s", guest.label, exc)
        return done(Outcome.FAILED, str(exc))

    created = False
    outcome, detail = Outcome.FAILED, ""
    try:
        upid = start_restore(
            client,
            guest.node,
            archive,
            scratch,
            storage=job.scratch_storage,
            unique=True,
            force=False,
        )
        created = True  # from here on the scratch guest is ours to remove
        logger.info("%s: restoring %s to scratch %d", guest.label, archive.filename, scratch)
        client.wait_task(upid, timeout=job.task_timeout, node=guest.node)
        t_start = time.monotonic()
        power(client, guest.node, guest.type, scratch, "start")
        booting = "not up"
        ok, how, agent = wait_booted(client, guest.node, guest.type, scratch, job.boot_timeout)
        logger.info("%s: scratch %d: %s", guest.label, scratch, how)
        if ok:
            boot = round(time.monotonic() - t_start, 3)
            outcome, detail = Outcome.OK, "booted"
        else:
            detail = how
    except MoxflowError as exc:
        detail = str(exc)
    finally:
        if created:
            try:
                cleanup = destroy(client, guest.node, guest.type, scratch, job.task_timeout)
            except MoxflowError as exc:
                cleanup = f"FAILED: {exc}"
                outcome = Outcome.NEEDS_ATTENTION
                detail += f"; scratch guest {scratch} NOT cleaned up, remove it by hand: {exc}"
    if created and not cleanup.startswith("FAILED"):
        detail += f"; scratch guest {cleanup}" if cleanup == "destroyed" else f"; {cleanup}"
    if outcome is Outcome.OK and archive is not None:
        try:
            record_restore_test(client, guest.node, archive, datetime.now(UTC))
        except MoxflowError as exc:
            logger.warning("%s: cannot note the passed test on %s: %s", guest.label, archive, exc)
            detail += f"; not noted on the backup ({exc})"
    log = logger.info if outcome is Outcome.OK else logger.error
    log("%s: %s", guest.label, detail)
    return done(outcome, detail)


@task(name="restore-test", cache_policy=NO_CACHE)
def restore_test_guests(
    client: ProxmoxClient, guests: list[Guest], job: RestoreTestJob
) -> list[RestoreTestResult]:
    """Restore-test the guests one after the other (each scratch guest is gone before the
    next is made, so one scratch VMID is enough)."""
    logger = get_run_logger()
    return [restore_test_guest(client, g, job, logger) for g in guests]


# --- restore for real ----------------------------------------------------------------------


@task(name="restore", cache_policy=NO_CACHE)
def restore_guest(client: ProxmoxClient, plan: RestorePlan, task_timeout: float) -> ReportRow:
    """Carry out a restore plan: snapshot and stop the guest it overwrites, restore, start."""
    logger = get_run_logger()
    t0 = time.monotonic()
    notes: list[str] = []
    ex = plan.existing
    target = f"{plan.target} ({ex.name})" if ex is not None and ex.name else str(plan.target)

    def row(outcome: Outcome) -> ReportRow:
        return ReportRow(
            target=target,
            outcome=outcome,
            taken=plan.archive.filename,
            detail="; ".join(notes),
            seconds=round(time.monotonic() - t0, 3),
            cells={"archive": plan.archive.filename},
        )

    if ex is not None and plan.snapshot:
        now = datetime.now(UTC)
        name = snapshot_name(PRE_RESTORE_LABEL, now)
        try:
            upid = client.create_snapshot(ex, name, snapshot_description(PRE_RESTORE_LABEL, now))
            client.wait_task(upid, timeout=task_timeout, node=ex.node)
            notes.append(f"snapshot {name} taken first")
            logger.info("%s: snapshot %s taken", ex.label, name)
        except MoxflowError as exc:
            notes.append(f"no pre-restore snapshot ({exc})")
            logger.warning("%s: no pre-restore snapshot: %s", ex.label, exc)
    try:
        if ex is not None and ex.running:
            power(client, ex.node, ex.type, ex.vmid, "stop")
            notes.append("stopped")
        upid = start_restore(
            client,
            plan.node,
            plan.archive,
            plan.target,
            storage=plan.storage,
            unique=plan.unique,
            force=plan.overwrite,
        )
        client.wait_task(upid, timeout=task_timeout, node=plan.node)
        notes.append(f"restored on {plan.node}" + (" over the old guest" if ex else ""))
        logger.info("%d: restored %s", plan.target, plan.archive.filename)
        if ex is not None and ex.running:
            power(client, plan.node, ex.type, plan.target, "start")
            notes.append("started again")
    except MoxflowError as exc:
        notes.append(f"restore failed: {exc}")
        logger.error("%d: restore failed: %s", plan.target, exc)
        return row(Outcome.FAILED)
    return row(Outcome.OK)
