"""Prefect tasks for restores: restore-test a guest's newest backup on a scratch VMID, as
steps (list, then restore → start → wait-agent → destroy → record), and restore a guest for
real.

A restore test never sends a changing request about the original guest: everything it
starts, stops and destroys is the scratch guest it created itself, and the flow runs the
destroy step even when a step before it failed (the report says so when that cleanup fails).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from moxflow.backups import Archive, mark_restore_tested
from moxflow.errors import ConfigError, GuestLockedError, MoxflowError, ProxmoxError
from moxflow.guests import SCRATCH_TAG, Guest, GuestType
from moxflow.naming import description_run, snapshot_description, snapshot_name
from moxflow.proxmox import ProxmoxClient, parse_upid
from moxflow.report import Outcome, ReportRow
from moxflow.restore import RestorePlan, RestoreTestPlan, restore_request
from tasks._retry import attempt, step
from tasks._runs import flow_run_alive
from tasks.backups import list_archives
from tasks.proxmox import wait_for_earlier_task

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
    marks: Mapping[str, str] | None = None,
) -> str:
    """``POST /nodes/{node}/qemu`` (``archive``) or ``.../lxc`` (``ostemplate``, ``restore``)."""
    tail, params = restore_request(
        archive.subtype,
        vmid,
        archive.volid,
        storage=storage,
        unique=unique,
        force=force,
        marks=marks,
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


def destroy(client: ProxmoxClient, vmid: int, timeout: float) -> str:
    """Stop (if running) and destroy a scratch guest; what was done, in words.

    Only a guest that carries moxflow's mark (the tag ``moxflow-scratch``), read right
    before: any other guest at ``vmid`` is someone else's, and a ``ConfigError`` says so.
    """
    current = find_guest(client, vmid)
    if current is None:
        return "nothing to clean up"
    if not current.scratch:
        raise ConfigError(
            f"{current.label} on {current.node} is not a restore test's scratch guest (no tag "
            f"{SCRATCH_TAG}); a restore test never destroys a guest it did not make"
        )
    if current.running:
        power(client, current.node, current.type, vmid, "stop")
    upid = client.destroy(current.node, current.type, vmid)
    client.wait_task(upid, timeout=timeout, node=current.node)
    return "destroyed"


# --- restore test: restore → start → wait-agent → destroy (→ record), one guest at a time ---


@dataclass(frozen=True, slots=True)
class Restored:
    """A scratch guest restored from a backup, and the seconds the restore took."""

    scratch: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Started:
    """A scratch guest started, and the seconds that took."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Booted:
    """A scratch guest that came up: how that was seen, what its guest agent did
    (``answered``, ``not configured``; empty for a container), and the seconds it took."""

    how: str
    agent: str
    seconds: float


@step("restore-test-leftover", "{guest.label}: destroy leftover scratch")
def destroy_leftover(client: ProxmoxClient, guest: Guest, task_timeout: float, run: str) -> str:
    """Destroy a scratch guest an earlier restore test left behind (``leftover_scratch``),
    once its mark is read again right before; what was done, in words. Retried (Prefect) on a
    passing failure: one an earlier attempt destroyed is gone.

    The caller holds the scratch guests' slot (``tasks.targets.SCRATCH_TARGET``), so no
    other restore test is live: a scratch guest whose run Prefect still shows running (its
    description names the run; ``run``: this one) was left by a run that died without
    Prefect hearing of it, and goes too. One gone meanwhile (the run that left it was still
    going, and cleaned up before this run had the slot) is said so."""
    current = find_guest(client, guest.vmid)
    if current is None or not current.scratch:
        return f"leftover scratch guest {guest.label} was gone already"
    owner = description_run(client.guest_description(guest))
    if owner and owner != run and flow_run_alive(owner):
        get_run_logger().warning(
            "%s: run %s still shows as running, but holds no slot: it died; cleaning up",
            guest.label,
            owner,
        )
    try:
        done = destroy(client, guest.vmid, task_timeout)
    except GuestLockedError:  # the dead run's restore may still be writing it
        if not wait_for_earlier_task(client, guest, "restore"):
            raise
        done = destroy(client, guest.vmid, task_timeout)
    if done == "nothing to clean up":
        return f"leftover scratch guest {guest.label} was gone already"
    get_run_logger().info("%s: leftover scratch guest destroyed", guest.label)
    return f"leftover scratch guest {guest.label} destroyed"


@step("restore-test-list", "{guest.label}: list")
def list_guest_archives(client: ProxmoxClient, guest: Guest, storage: str) -> list[Archive]:
    """The facts: the guest's backups on ``storage``, as its node sees them; read-only."""
    return list_archives(client, guest.node, storage, guest.vmid)


@task(name="restore-test-restore", task_run_name="{plan.target}: restore", cache_policy=NO_CACHE)
def restore_scratch(client: ProxmoxClient, plan: RestoreTestPlan, task_timeout: float) -> Restored:
    """Restore the plan's archive to its scratch VMID (new MAC addresses), and wait for it.

    The scratch VMID is checked to be free again right before, against the guests there are
    now. Not retried: a restore whose answer was lost may be running or done under that VMID,
    and a second one cannot tell that guest from someone else's. A failure after Proxmox took
    the request names the restore task's UPID, which the destroy step cleans up after.
    """
    logger = get_run_logger()
    started = time.monotonic()
    guest, archive = plan.guest, plan.archive
    scratch = plan.scratch_now(client.resources())
    upid = start_restore(
        client,
        guest.node,
        archive,
        scratch,
        storage=plan.storage,
        unique=True,
        force=False,
        marks=plan.marks,
    )
    logger.info("%s: restoring %s to scratch %d", guest.label, archive.filename, scratch)
    client.wait_task(upid, timeout=task_timeout, node=guest.node)
    return Restored(scratch, round(time.monotonic() - started, 3))


@step("restore-test-start", "{plan.target}: start")
def start_scratch(client: ProxmoxClient, plan: RestoreTestPlan, restored: Restored) -> Started:
    """Start the scratch guest and wait for the task.

    Retried (Prefect) on a passing failure: a retry first asks whether an earlier attempt
    started it already.
    """
    started = time.monotonic()
    node, gtype = plan.guest.node, plan.guest.type
    again = attempt().number > 1
    if not (again and client.guest_status(node, gtype, restored.scratch) == "running"):
        power(client, node, gtype, restored.scratch, "start")
    return Started(round(time.monotonic() - started, 3))


@step("restore-test-wait-agent", "{plan.target}: wait-agent")
def wait_agent(
    client: ProxmoxClient,
    plan: RestoreTestPlan,
    restored: Restored,
    started: Started,
    timeout: float,
) -> Booted:
    """Wait until the scratch VM's guest agent answers (a container: until it runs), at most
    ``timeout`` seconds, once it was started (``started``: the start step's result);
    ``ProxmoxError`` saying what was last seen when it does not come up.

    Polls by itself, tolerating API errors until the deadline; read-only.
    """
    logger = get_run_logger()
    t0 = time.monotonic()
    node, gtype, scratch = plan.guest.node, plan.guest.type, restored.scratch
    ok, how, agent = wait_booted(client, node, gtype, scratch, timeout)
    logger.info("%s: scratch %d: %s", plan.target, scratch, how)
    if not ok:
        raise ProxmoxError(how)
    return Booted(how, agent, round(time.monotonic() - t0, 3))


@step("restore-test-destroy", "{plan.target}: destroy")
def destroy_scratch(
    client: ProxmoxClient,
    plan: RestoreTestPlan,
    restored: Restored | BaseException | None,
    task_timeout: float,
) -> str:
    """Stop and destroy the scratch guest the restore step made, whatever happened since;
    what was done, in words (empty when the restore made none).

    ``restored`` is the restore step's result, or its error: one that names the restore
    task's UPID means Proxmox took the request, so there may be a scratch guest to remove.
    Retried (Prefect) on a passing failure; a scratch guest an earlier attempt destroyed is
    gone, and counts as destroyed.
    """
    scratch = scratch_of(restored)
    if scratch is None:
        return ""
    if scratch == plan.guest.vmid:  # never, by construction; the one thing that must not happen
        raise ConfigError(f"scratch VMID {scratch} is the original guest's")
    done = destroy(client, scratch, task_timeout)
    if done == "nothing to clean up" and attempt().number > 1:
        return "destroyed"
    return done


@step("restore-test-record", "{plan.target}: record")
def record_passed(
    client: ProxmoxClient, plan: RestoreTestPlan, booted: Booted, cleanup: str
) -> datetime:
    """Note the passed test in the archive's notes, once the scratch guest booted
    (``booted``) and is gone (``cleanup``); idempotent (the note's line is replaced)."""
    when = datetime.now(UTC)
    record_restore_test(client, plan.guest.node, plan.archive, when)
    return when


def scratch_of(restored: Restored | BaseException | None) -> int | None:
    """The scratch VMID a restore step made: its result's, or the one its restore task's
    UPID names when it failed after Proxmox took the request; None when it made none."""
    if isinstance(restored, Restored):
        return restored.scratch
    upid = restored.upid if isinstance(restored, ProxmoxError) else None
    if upid is None:
        return None
    parsed = parse_upid(upid)
    if not parsed.type.endswith("restore") or not parsed.id.isdigit():
        return None
    return int(parsed.id)


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
