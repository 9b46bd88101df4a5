"""Prefect tasks for the Proxmox VE API: list guests, snapshot a guest and prune its snapshots."""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, tzinfo

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from moxflow.errors import GuestLockedError, MoxflowError, is_transient
from moxflow.guests import Guest
from moxflow.naming import snapshot_description
from moxflow.proxmox import GuestSnapshot, ProxmoxClient
from moxflow.report import Outcome, ReportRow
from moxflow.retention import KeepPolicy
from moxflow.snapshots import plan_guest_prune
from tasks._logging import LoggerLike


@task(name="list-guests", cache_policy=NO_CACHE)
def list_guests(client: ProxmoxClient) -> list[Guest]:
    """Every VM and container of the cluster (``/cluster/resources?type=vm``)."""
    return client.resources()


def _create(
    client: ProxmoxClient,
    guest: Guest,
    snapname: str,
    description: str,
    *,
    vmstate: bool,
    task_timeout: float,
    retry: bool,
) -> None:
    """One idempotent attempt: if a retry finds the snapshot already there, whole, it is done."""
    if retry and any(s.name == snapname and s.complete for s in client.list_snapshots(guest)):
        return
    upid = client.create_snapshot(guest, snapname, description, vmstate=vmstate)
    client.wait_task(upid, timeout=task_timeout, node=guest.node)


@dataclass(frozen=True, slots=True)
class GuestJob:
    """What every guest of a run gets: the same name, policy and limits."""

    label: str
    snapname: str
    now: datetime
    policy: KeepPolicy
    tz: tzinfo
    dry_run: bool = False
    vmstate: bool = False
    lock_timeout: float = 120.0
    task_timeout: float = 600.0


@task(name="guest-snapshot", cache_policy=NO_CACHE, task_run_name="{node}: {count} guests")
def snapshot_node(
    client: ProxmoxClient,
    node: str,
    count: int,
    guests: list[Guest],
    job: GuestJob,
    gate: threading.Semaphore,
    limit: int,
) -> list[ReportRow]:
    """Snapshot and prune the guests of one node, as many at once as ``gate`` lets through.

    One Prefect task per node (not per guest) keeps the orchestration overhead small on
    large clusters; the report still has a row per guest, and the log a line per guest.
    """
    logger = get_run_logger()
    done = 0
    lock = threading.Lock()

    def one(guest: Guest) -> ReportRow:
        nonlocal done
        with gate:
            row = snapshot_guest(client, guest, job, logger)
        with lock:
            done += 1
            logger.info("[%s %d/%d] %s: %s", node, done, count, row.target, row.line())
        return row

    # Each thread runs in a copy of this task's context: Prefect's settings (the API URL an
    # ad-hoc run chose) and run context live in context variables, which a bare thread lacks;
    # without them a log line from a thread would start a temporary Prefect server of its own.
    with ThreadPoolExecutor(max_workers=max(1, min(len(guests), limit))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, g) for g in guests]
        return [f.result() for f in futures]


def snapshot_guest(
    client: ProxmoxClient, guest: Guest, job: GuestJob, logger: LoggerLike
) -> ReportRow:
    """Snapshot one guest, then prune moxflow's snapshots of the job's label on it.

    A locked guest (backup running, another snapshot, ...) and API hiccups are retried with
    backoff for up to ``job.lock_timeout`` seconds; a guest still locked then is reported as
    skipped, not failed. Never raises: the row says what happened.
    """
    label, snapname, now, policy, tz = job.label, job.snapname, job.now, job.policy, job.tz
    dry_run = job.dry_run
    vmstate = job.vmstate and guest.type == "qemu" and guest.running  # RAM only of running VMs
    lock_timeout, task_timeout = job.lock_timeout, job.task_timeout
    started = time.monotonic()
    target = guest.label
    took = False

    def row(
        outcome: Outcome, *, kept: int = 0, removed: tuple[str, ...] = (), detail: str = ""
    ) -> ReportRow:
        return ReportRow(
            target=target,
            outcome=outcome,
            taken=snapname if took or outcome is Outcome.PLANNED else None,
            kept=kept,
            removed=removed,
            detail=detail,
            seconds=round(time.monotonic() - started, 3),
        )

    try:
        if dry_run:
            # plan as if the new snapshot were there: it is the newest and always kept
            would = client.list_snapshots(guest)
            would.append(
                GuestSnapshot(
                    name=snapname,
                    description=snapshot_description(label, now),
                    snaptime=now,
                    vmstate=vmstate,
                    parent=None,
                )
            )
            plan = plan_guest_prune(would, label, policy, tz, just_taken=snapname)
            return row(
                Outcome.PLANNED,
                kept=len(plan.keep) + len(plan.protected),
                removed=plan.remove,
                detail=f"on {guest.node}" + (" with RAM state" if vmstate else ""),
            )

        wait = wait_exponential(multiplier=max(lock_timeout / 16, 0.05), max=15)
        try:
            for attempt in Retrying(
                retry=retry_if_exception(is_transient),
                stop=stop_after_delay(lock_timeout),
                wait=wait,
                reraise=False,
            ):
                with attempt:
                    again = attempt.retry_state.attempt_number > 1
                    _create(
                        client,
                        guest,
                        snapname,
                        snapshot_description(label, now),
                        vmstate=vmstate,
                        task_timeout=task_timeout,
                        retry=again,
                    )
        except RetryError as exc:
            last = exc.last_attempt.exception()
            tries = exc.last_attempt.attempt_number
            if isinstance(last, GuestLockedError):
                logger.warning("%s: still locked after %d tries, skipped: %s", target, tries, last)
                return row(
                    Outcome.SKIPPED, detail=f"guest locked, {tries} tries over {lock_timeout:g}s"
                )
            logger.error("%s: snapshot failed after %d tries: %s", target, tries, last)
            return row(Outcome.FAILED, detail=f"snapshot failed after {tries} tries: {last}")
        took = True
        logger.info("%s: took %s", target, snapname)

        plan = plan_guest_prune(client.list_snapshots(guest), label, policy, tz, snapname)
        removed: list[str] = []
        failures: list[str] = []
        for name in plan.remove:
            try:
                upid = client.delete_snapshot(guest, name)
                client.wait_task(upid, timeout=task_timeout, node=guest.node)
                removed.append(name)
            except MoxflowError as exc:
                failures.append(f"{name}: {exc}")
        kept = len(plan.keep) + len(plan.protected) + len(failures)
        if removed:
            logger.info("%s: pruned %d: %s", target, len(removed), ", ".join(removed))
        if failures:
            return row(
                Outcome.PARTIAL,
                kept=kept,
                removed=tuple(removed),
                detail="prune incomplete: " + "; ".join(failures),
            )
        return row(Outcome.OK, kept=kept, removed=tuple(removed))
    except MoxflowError as exc:
        if took:
            logger.error("%s: snapshot taken, but pruning failed: %s", target, exc)
            return row(Outcome.PARTIAL, detail=f"snapshot taken, prune failed: {exc}")
        logger.error("%s: %s", target, exc)
        return row(Outcome.FAILED, detail=str(exc))
