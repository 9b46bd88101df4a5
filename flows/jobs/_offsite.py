"""The offsite side of a run, shared by ``vzdump_backup`` (after its backups) and
``offsite_copy`` (on its own): plan from the offsite folder's listing (pure,
``moxflow.backups.plan_offsite``), then one ``offsite-copy`` step per archive and one
``offsite-prune`` step, or with ``--dry-run`` the plan's rows and nothing else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect.futures import PrefectFuture
from prefect.utilities.annotations import allow_failure

from moxflow.backups import (
    Archive,
    OffsiteCopy,
    OffsitePlan,
    archive_vmid,
    offsite_copies,
    offsite_row,
    plan_offsite,
    planned_offsite_row,
)
from moxflow.errors import MoxflowError, SshChecksumError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, OffsiteSettings
from moxflow.report import ReportRow, RunReport
from moxflow.retention import KeepPolicy
from tasks._retry import tuned
from tasks.backups import Copied, OffsitePruned, copy_offsite, offsite_failed_row, prune_offsite


def offsite_policy(off: OffsiteSettings) -> KeepPolicy:
    """The [offsite] keep policy; keep everything when it has none."""
    return KeepPolicy.parse(off.policy, setting="offsite.policy") if off.policy else KeepPolicy()


def preview_offsite(
    report: RunReport,
    off: OffsiteSettings,
    listing: PrefectFuture[list[str]],
    guests: list[Guest],
    archives: Mapping[int, list[Archive]],
    tz: Any,
) -> list[str] | None:
    """A dry run's offsite rows: what the [offsite] policy would copy and remove now."""
    try:
        present = listing.result()
    except MoxflowError as exc:
        report.extend(offsite_failed_row(g, exc) for g in guests)
        return None
    mine = [a for g in guests for a in archives.get(g.vmid, [])]
    plan = plan_offsite(mine, present, [g.vmid for g in guests], offsite_policy(off), tz)
    report.extend(planned_offsite_row(g, plan) for g in guests)
    return present


def copy_offsite_steps(
    inv: Inventory,
    off: OffsiteSettings,
    report: RunReport,
    listing: PrefectFuture[list[str]],
    guests: Sequence[Guest],
    archives: Mapping[int, list[Archive]],
    upstream: Mapping[int, PrefectFuture[Any]],
    wait: PrefectFuture[Any] | None,
    tz: Any,
) -> tuple[list[str] | None, dict[int, bool], PrefectFuture[OffsitePruned] | None]:
    """Plan the offsite side for ``guests`` (pure, from the folder's listing and their
    ``archives``), copy each archive in a step of its own (one after the other, so that
    offsite.bwlimit holds for the link), then remove the copies the policy no longer keeps.

    A guest's copies take its ``upstream`` step's result as input (a backup run's verify
    step: a copy never starts for a backup that was not verified; every guest has one there,
    an offsite-copy run passes none) and wait for ``wait`` (the storage's prune step).
    Adds one row per guest; returns the folder's listing at the end,
    per guest whether every copy checked out, and the removal step."""
    try:
        present = listing.result()
    except MoxflowError as exc:
        report.extend(offsite_failed_row(g, exc) for g in guests)
        return None, {}, None
    mine = [a for g in guests for a in archives.get(g.vmid, [])]
    plan = plan_offsite(mine, present, [g.vmid for g in guests], offsite_policy(off), tz)
    copy = tuned(copy_offsite, inv)
    copies: dict[OffsiteCopy, PrefectFuture[Copied]] = {}
    previous: PrefectFuture[Copied] | None = None
    for item in offsite_copies(plan, guests):
        after = [allow_failure(f) for f in (previous, wait) if f is not None]
        previous = copies[item] = copy.submit(  # type: ignore[call-overload]
            inv, item, upstream[item.guest.vmid] if upstream else None, wait_for=after
        )
    done = tuned(prune_offsite, inv).submit(
        inv, off.host, plan.remove, [allow_failure(f) for f in copies.values()]
    )
    removal: OffsitePruned | str
    try:
        removal = done.result()
    except MoxflowError as exc:
        removal = str(exc)
    copied: dict[int, bool] = {}
    for g in guests:
        row, all_copied = _offsite_row(g, plan, copies, removal)
        report.add(row)
        if all_copied is not None:
            copied[g.vmid] = all_copied
    end = removal.listing if isinstance(removal, OffsitePruned) else None
    return (list(end) if end is not None else None), copied, done


def _offsite_row(
    guest: Guest,
    plan: OffsitePlan,
    copies: Mapping[OffsiteCopy, PrefectFuture[Copied]],
    removal: OffsitePruned | str,
) -> tuple[ReportRow, bool | None]:
    """How the offsite side of one guest went, from its copy steps and the removal step
    (its result, or why it failed); and whether every copy checked out (None: none was due)."""
    mine = [(item, fut) for item, fut in copies.items() if item.guest.vmid == guest.vmid]
    copied: list[str] = []
    problems: list[str] = []
    size, took, mismatch = 0, 0.0, False
    for item, fut in mine:
        try:
            done = fut.result()
        except MoxflowError as exc:
            mismatch = mismatch or isinstance(exc, SshChecksumError)
            problems.append(f"{item.archive.filename}: {exc}")
            continue
        copied.append(done.name)
        size += done.size
        took += done.seconds
    removed: list[str] = []
    for name in (n for n in plan.remove if archive_vmid(n) == guest.vmid):
        if isinstance(removal, str):
            problems.append(f"removing {name}: {removal}")
        elif name in removal.failures:
            problems.append(f"removing {name}: {removal.failures[name]}")
        else:
            removed.append(name)
    row = offsite_row(
        guest,
        plan,
        copied=copied,
        size=size,
        took=took,
        problems=problems,
        mismatch=mismatch,
        removed=removed,
        seconds=took,
    )
    return row, (not problems and len(copied) == len(mine)) if mine else None
