"""The nixos-update flow; what it does and its command line: ``flows/nixos_update.py``."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow, tags
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.params import NixosUpdateParams, flow_parameters
from moxflow.errors import MoxflowError, TargetBusyError
from moxflow.inventory import Inventory, ProxmoxSnapshotMethod, load_inventory
from moxflow.nixos import (
    RecoveryState,
    RecoveryStep,
    UpdatePlan,
    generation_text,
    next_recovery_step,
    plan_update,
)
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.snapshots import utc_now
from tasks._retry import tuned
from tasks.nixos import (
    BuildFailed,
    HostRun,
    Preflight,
    Recovered,
    VerificationFailed,
    arm_dead_man,
    build,
    confirm,
    flake_update,
    lock,
    preflight,
    prune,
    snapshot,
    snapshot_rollback,
    switch,
    switch_back,
    undo_before_switch,
    unlock,
    verify,
    wait_for_dead_man,
)
from tasks.targets import guest_target, hold, host_target, make_slots

HOW = {
    "wait-for-dead-man": "dead-man timer",
    "switch-back": "generation rollback",
    "snapshot-rollback": "snapshot rollback",
}
"""How a host came back, by the recovery step that brought it back."""


def _flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except RuntimeError:
        return None
    run = getattr(ctx, "flow_run", None)
    return str(run.id) if run is not None else None


def _cells(facts: Preflight) -> dict[str, str]:
    """The report cells of a host the run did not update: its generation, no snapshot."""
    return {"generation": generation_text(facts.generation)}


def _needs_proxmox(inv: Inventory, plan: UpdatePlan, no_snapshot: bool) -> bool:
    snaps = (inv.nixos_host(h).snapshot for h in plan.hosts)
    return not no_snapshot and any(isinstance(sm, ProxmoxSnapshotMethod) for sm in snaps)


@flow(name="nixos-update-host", flow_run_name="{host}", validate_parameters=False)
def update_host(host: str, wave: int, run: HostRun) -> ReportRow | State[ReportRow]:
    """One host, step by step: lock → snapshot → flake-update → build → arm-dead-man →
    switch → verify → confirm → prune → unlock, or after a failed verification the recovery
    steps. The snapshot and the flake update are undone when the build fails
    or there is nothing to update. The host's target slots (:mod:`tasks.targets`) are held
    throughout. The run is Failed when the host did not end up updated (or up to date):
    failed, or busy (another run holds its slot or its lock)."""
    try:
        with _slots(run):
            row = _update(run)
    except TargetBusyError as exc:  # another moxflow run has the host (or its guest)
        row = run.row(Outcome.BUSY, f"not updated: {exc}")
    except MoxflowError as exc:
        row = run.row(Outcome.FAILED, str(exc))
    finally:
        run.close()
    if not row.ok:
        return Failed(message=f"{host}: {row.outcome.value}", data=row)
    return Completed(message=row.outcome.value, data=row)


@contextmanager
def _slots(run: HostRun) -> Iterator[None]:
    """Hold the host's slots. The next host's subflow run is created once they were asked
    for (the two would meet on the server, see :class:`_Starts`), and the steps begin once
    every host of the wave began; while another run holds a slot, the others go ahead."""
    with ExitStack() as held:
        try:
            try:
                held.enter_context(hold(_targets(run.inv, run.host), wait=0))
            except TargetBusyError:
                run.begun()
                wait = run.inv.nixos.lock_wait
                if not wait:  # one try only: that was it
                    raise
                held.enter_context(hold(_targets(run.inv, run.host), wait=wait))
        finally:
            run.begun()
        with suppress(MoxflowError):  # the lock step says why it cannot connect
            run.ssh.connect()  # while the others are created
        run.together()
        yield


def _targets(inv: Inventory, host: str) -> list[str]:
    """The slots an update of ``host`` holds: the host, and the guest it is, if it is one."""
    method = inv.nixos_host(host).snapshot
    vmid = [guest_target(method.vmid)] if isinstance(method, ProxmoxSnapshotMethod) else []
    return [host_target(host), *vmid]


def _update(run: HostRun) -> ReportRow:
    """The steps up to the switch; then verification and, on failure, the ladder."""
    inv = run.inv
    try:
        locked = tuned(lock, inv)(run)
    except MoxflowError as exc:
        return run.row(Outcome.FAILED, f"could not take the host's lock: {exc}")
    if locked.busy:  # not done, and not OK: another run holds the host
        return run.row(Outcome.BUSY, locked.busy)
    # nothing is active before the switch: when the build fails, nothing changed, or a step
    # fails for good, the snapshot and the flake update are undone (explicitly, not by a
    # Prefect transaction: a failed attempt that Prefect then retries rolls one back)
    try:
        snap = tuned(snapshot, inv)(run, locked)
    except MoxflowError as exc:
        _unlock(run, locked, restore_lock=True)
        return run.row(Outcome.FAILED, f"snapshot failed, nothing changed: {exc}")
    try:
        updated = tuned(flake_update, inv)(run, snap)
        if not updated.changes and not run.force:
            undo_before_switch(run)
            run.mark_checked(run.ssh)
            _unlock(run, updated, restore_lock=True)
            return run.row(Outcome.OK, "up to date")
        built = tuned(build, inv)(run, updated)
    except BuildFailed as exc:
        undo_before_switch(run)
        _unlock(run, locked, restore_lock=True)
        return run.row(Outcome.FAILED, f"build failed, nothing activated: {exc}")
    except MoxflowError as exc:
        undo_before_switch(run)
        _unlock(run, locked, restore_lock=True)
        return run.row(Outcome.FAILED, f"failed before any change: {exc}")

    try:
        armed = tuned(arm_dead_man, inv)(run, built)
    except MoxflowError as exc:
        # an attempt may have started the timer before it failed: the unlock step stops it
        undo_before_switch(run)
        _unlock(run, built, restore_lock=True)
        return run.row(
            Outcome.FAILED, f"could not arm the dead-man timer, nothing activated: {exc}"
        )
    switched = switch(run, armed)
    run.ssh.close()  # the switch may have cut it; what follows opens new connections
    try:
        verified = tuned(verify, inv)(run, switched)
    except VerificationFailed as exc:
        return _recover(run, switched, exc.generation)
    except MoxflowError as exc:  # not verified: the ladder decides, as for a failed check
        run.note(f"verification failed: {exc}")
        return _recover(run, switched, run.seen_generation())
    try:
        confirmed = tuned(confirm, inv)(run, verified)
    except MoxflowError as exc:  # not confirmed: the timer will revert it; the ladder decides
        run.note(f"confirmation failed: {exc}")
        return _recover(run, verified, run.seen_generation())
    if confirmed.late:
        return _recover(run, confirmed, run.seen_generation())
    try:
        tuned(prune, inv)(run, confirmed)
    except MoxflowError as exc:
        run.note(f"pruning old snapshots failed: {exc}")
    _unlock(run, confirmed)
    done = "updated" + (f" ({switched.note})" if switched.note else "")
    return run.row(Outcome.OK, done, new=switched.generation)


def _unlock(run: HostRun, upstream: object, *, restore_lock: bool = False) -> None:
    """The unlock step (``restore_lock``: nothing was activated, so it also stops a timer an
    arm attempt may have started and puts flake.lock back, inside the retried step: its
    backup goes only once it is back). A host that cannot be unlocked keeps its outcome (the
    next run finds the lock and the journal, and clears them)."""
    try:
        tuned(unlock, run.inv)(run, upstream, restore_lock=restore_lock)
    except MoxflowError as exc:
        run.note(f"could not clear the lock: {exc}")


def _recover(run: HostRun, upstream: object, generation: int | None) -> ReportRow:
    """The recovery ladder: each rung a task run, chosen by :func:`next_recovery_step`."""
    state = RecoveryState(run.old, generation, has_snapshot=run.snapshot is not None)
    last: object = upstream
    while True:
        action: RecoveryStep = next_recovery_step(state)
        if action == "rolled-back":
            how = HOW[state.tried[-1]]
            try:
                tuned(unlock, run.inv)(run, last, restore_lock=True)
            except MoxflowError as exc:
                run.note(f"could not clear the lock: {exc}")
            run.event("moxflow.rollback", run.old, how=how)
            return run.row(Outcome.ROLLED_BACK, f"rolled back by {how}", new=run.old)
        if action == "needs-attention":
            kept = f"snapshot {run.snapshot} kept" if run.snapshot else "no snapshot to restore"
            run.event("moxflow.needs-attention", run.old)
            return run.row(Outcome.NEEDS_ATTENTION, f"needs attention: {kept}", new="?")
        try:
            if action == "wait-for-dead-man":
                reverted = state.generation == run.old
                done = tuned(wait_for_dead_man, run.inv)(run, last, reverted=reverted)
            elif action == "switch-back":
                done = tuned(switch_back, run.inv)(run, last)
            else:
                done = tuned(snapshot_rollback, run.inv)(run, last)
        except MoxflowError as exc:
            run.note(f"{action} failed: {exc}")
            done = Recovered(run.host, False, None, str(exc))
        state = state.after(action, done.healthy, done.generation)
        last = done


@flow(
    name="nixos-update",
    description="Update NixOS hosts with snapshot, verification and automatic rollback.",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
)
@flow_parameters(NixosUpdateParams)
def nixos_update(
    *,
    only: list[str] | None = None,
    max_parallel: int | None = None,
    continue_on_failure: bool = False,
    no_snapshot: bool = False,
    force: bool = False,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Update the NixOS hosts in waves: pre-flight every host, plan, then per wave one
    ``nixos-update-host`` subflow run per host."""
    p = NixosUpdateParams(
        only=only,
        max_parallel=max_parallel,
        continue_on_failure=continue_on_failure,
        no_snapshot=no_snapshot,
        force=force,
        dry_run=dry_run,
        inventory=inventory,
    )
    logger = get_run_logger()
    inv = load_inventory(p.inventory)
    plan = plan_update(inv, p.only or (), max_parallel=p.max_parallel)
    report = RunReport(
        job="nixos-update", label="update", dry_run=p.dry_run, counts_snapshots=False
    )
    hosts = [h for wave in plan.waves for h in wave]
    logger.info("plan: %s", " → ".join("[" + ", ".join(w) + "]" for w in plan.waves))
    proxmox = proxmox_client(inv) if _needs_proxmox(inv, plan, p.no_snapshot) else None
    try:
        # facts: every host, read-only
        futures = [preflight.submit(inv, h, proxmox) for h in hosts]
        facts: dict[str, Preflight] = {f.host: f for f in (fut.result() for fut in futures)}
        if p.dry_run:
            _planned(report, plan, facts, p.no_snapshot)
            return finish(report, artifact_key="nixos-update-report", inv=inv)
        _roll(report, inv, plan, facts, proxmox, p.no_snapshot, p.force, p.continue_on_failure)
    finally:
        if proxmox is not None:
            proxmox.close()
    return finish(report, artifact_key="nixos-update-report", inv=inv)


def _planned(
    report: RunReport, plan: UpdatePlan, facts: dict[str, Preflight], no_snapshot: bool
) -> None:
    """The dry run's report: per host its wave, what pre-flight found and what would run."""
    for wave_no, wave in enumerate(plan.waves, start=1):
        for host in wave:
            # the plan is only as good as what the real run could do: a snapshot that could
            # not be taken (a wrong token, say) fails the dry run as it would the run
            blocked = facts[host].snapshot_error and not no_snapshot
            report.add(
                ReportRow(
                    target=host,
                    outcome=Outcome.FAILED if blocked else Outcome.PLANNED,
                    detail=f"wave {wave_no}; {facts[host].summary()}; "
                    f"{plan.hosts[host].describe()}",
                    cells=_cells(facts[host]),
                )
            )
    report.notes.extend(plan.describe())


def _blocked(
    inv: Inventory, host: str, f: Preflight, failed: set[str], no_snapshot: bool
) -> ReportRow | None:
    """Why pre-flight keeps ``host`` out of its wave, as its row; ``None`` to go ahead."""
    cells = _cells(f)
    blockers = [a for a in inv.nixos_host(host).after if a in failed]
    if blockers:
        why = "not started: after " + ", ".join(blockers)
        return ReportRow(host, Outcome.SKIPPED, detail=why, cells=cells)
    if not f.reachable:
        return ReportRow(host, Outcome.FAILED, detail=f"pre-flight: {f.summary()}", cells=cells)
    if not f.flake_ok:
        return ReportRow(host, Outcome.FAILED, detail="pre-flight: no flake.nix", cells=cells)
    if f.snapshot_error and not no_snapshot:
        return ReportRow(host, Outcome.FAILED, detail=f"pre-flight: {f.summary()}", cells=cells)
    return None


def _roll(
    report: RunReport,
    inv: Inventory,
    plan: UpdatePlan,
    facts: dict[str, Preflight],
    proxmox: ProxmoxClient | None,
    no_snapshot: bool,
    force: bool,
    continue_on_failure: bool,
) -> None:
    """The waves, one after the other; the hosts of a wave side by side, each a subflow."""
    logger = get_run_logger()
    now, tz, run_id = utc_now(), ZoneInfo(inv.timezone), _flow_run_id()
    stopped: str | None = None
    failed: set[str] = set()
    # every host's slots exist before the first wave (a fresh server has none)
    make_slots(t for wave in plan.waves for host in wave for t in _targets(inv, host))
    for wave_no, wave in enumerate(plan.waves, start=1):
        runs: list[HostRun] = []
        for host in wave:
            if stopped is not None:
                why = f"not started: {stopped}"
                report.add(ReportRow(host, Outcome.SKIPPED, detail=why, cells=_cells(facts[host])))
                continue
            row = _blocked(inv, host, facts[host], failed, no_snapshot)
            if row is not None:
                failed.add(host)
                report.add(row)
                continue
            runs.append(
                _host_run(inv, host, facts[host], now, tz, run_id, proxmox, no_snapshot, force)
            )
        logger.info(
            "wave %d/%d: %s", wave_no, len(plan.waves), ", ".join(r.host for r in runs) or "-"
        )
        for row in _wave(runs, wave_no):
            report.add(row)
            logger.info("%s: %s", row.target, row.line())
            if not row.ok:  # failed, or busy (another run has it): not updated either way
                failed.add(row.target)
        if failed and stopped is None and not continue_on_failure:
            stopped = f"{', '.join(sorted(failed))} not updated in wave {wave_no}"


def _host_run(
    inv: Inventory,
    host: str,
    facts: Preflight,
    now: datetime,
    tz: ZoneInfo,
    run_id: str | None,
    proxmox: ProxmoxClient | None,
    no_snapshot: bool,
    force: bool,
) -> HostRun:
    return HostRun(
        inv,
        host,
        facts,
        now=now,
        tz=tz,
        flow_run_id=run_id,
        proxmox=proxmox,
        log=get_run_logger(),
        no_snapshot=no_snapshot,
        force=force,
    )


class _Starts:
    """How the hosts of a wave begin: their subflow runs are created one at a time, and
    their steps begin together once every one of them is.

    Prefect's server writes each new flow run (and its parent's task run for it) at once; on
    SQLite, the default, writers that meet are refused (503: "database is locked") and
    Prefect's client asks again only 2 s later. Six subflows created side by side began
    over 9.6 s, one at a time over 3.9 s; one at a time while the earlier hosts' steps
    already ran, one host in two began 2 s late (those steps write too: their slots, their
    task runs). Waiting for the whole wave costs the first host the others' creation
    (about 0.15 s each) instead. The bodies then run side by side.
    """

    def __init__(self, hosts: int) -> None:
        self._gate = threading.Lock()
        self._mutex = threading.Lock()
        self._waiting = hosts
        self._all = threading.Event()
        if hosts == 0:
            self._all.set()

    def turn(self) -> tuple[Callable[[], None], Callable[[], object]]:
        """For one host, in its thread: wait for its turn to be created; returns ``begun``
        (call once its slots were asked for, or its run failed before: the next one goes)
        and ``together`` (wait until every host of the wave began)."""
        self._gate.acquire()
        done = False

        def begun() -> None:
            nonlocal done
            with self._mutex:
                if done:
                    return
                done = True
                self._waiting -= 1
                if self._waiting == 0:
                    self._all.set()
            self._gate.release()

        return begun, self._all.wait


def _wave(runs: list[HostRun], wave_no: int) -> list[ReportRow]:
    """Run one wave's hosts side by side, each as a subflow run in its own thread (a copy of
    this flow's context, so Prefect links the subflow runs to this one)."""
    if not runs:
        return []
    starts = _Starts(len(runs))
    # a deployment's tags (``moxflow``) are the parent run's, not in the tags context that
    # Prefect gives a subflow run: pass them on, so the UI's tag filter finds the hosts too
    ctx = get_run_context()
    parent = getattr(ctx, "flow_run", None)
    inherited = [t for t in (parent.tags if parent is not None else []) if t != "auto-scheduled"]

    def one(run: HostRun) -> ReportRow:
        run.begun, run.together = starts.turn()
        # no heartbeat of its own: the parent run's covers it, and joining a subflow's
        # heartbeat thread costs up to a second per host
        try:
            with (
                temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
                tags(*inherited),
            ):
                state = update_host(run.host, wave_no, run, return_state=True)
        except Exception as exc:  # the subflow run could not be created: this host failed
            run.close()
            return run.row(Outcome.FAILED, f"its subflow run could not start: {exc}")
        finally:
            run.begun()  # the subflow never began (it could not be created)
        row = state.result(raise_on_failure=False)
        if isinstance(row, ReportRow):
            return row
        return run.row(Outcome.FAILED, f"the host's update crashed: {row}")

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, r) for r in runs]
        return [f.result() for f in futures]


def check(p: NixosUpdateParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the hosts, and the token
    the pre-update snapshots need (a wrong one fails before the plan says OK)."""
    inv = load_inventory(p.inventory)
    plan = plan_update(inv, p.only or [], max_parallel=p.max_parallel)
    if _needs_proxmox(inv, plan, p.no_snapshot):
        with proxmox_client(inv) as client:
            client.version()
