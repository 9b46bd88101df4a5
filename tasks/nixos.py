"""Prefect tasks for NixOS hosts: pre-flight facts, and the steps of one host's update.

Each step is its own task run, named "HOST: step": lock → snapshot → flake-update → build →
arm-dead-man → switch → verify → confirm → prune → unlock. A failed verification is followed by
the recovery steps :func:`moxflow.nixos.next_recovery_step` picks: switch-back,
wait-for-dead-man, snapshot-rollback (each verifies the host again), else the host "needs
attention" with its snapshot kept. A lock and a journal on the host let the next run recognise
a run that died half-way. The subflow that chains the steps is ``flows/nixos_update.py``.

The steps share one :class:`HostRun`: the host's settings, its SSH connection and Proxmox
client (built once, closed by the subflow), and the notes the report row is made of. Steps
run in the subflow's thread, so the notes they add are seen by the next.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.ssh import ssh_runner
from moxflow.errors import ConfigError, MoxflowError, ParseError, SshCommandError, SshError
from moxflow.inventory import (
    Inventory,
    NoSnapshotMethod,
    ProxmoxSnapshotMethod,
    ZfsSnapshotMethod,
)
from moxflow.naming import snapshot_description, snapshot_name
from moxflow.nixos import (
    HostFacts,
    Journal,
    JournalPhase,
    LockChange,
    arm_deadman_argv,
    build_argv,
    clear_journal_argv,
    current_generation,
    deadman_armed_argv,
    deadman_service_active_argv,
    disarm_deadman_argv,
    evaluate,
    failed_units_argv,
    flake_update_argv,
    generation_text,
    generations_argv,
    lock_argv,
    lock_changes,
    lock_holder,
    lock_orphaned_argv,
    lock_path,
    next_generation,
    parse_failed_units,
    parse_flake_lock,
    parse_generations,
    parse_system_state,
    prepare_state_dir_argv,
    read_journal_argv,
    revert_argvs,
    switch_argv,
    system_state_argv,
    unlock_argv,
    update_stands,
    write_checked_argv,
    write_journal_argv,
)
from moxflow.proxmox import ProxmoxClient
from moxflow.report import Outcome, ReportRow
from moxflow.retention import KeepPolicy
from moxflow.snapshots import plan_guest_prune
from moxflow.ssh import SshRunner
from moxflow.zfs import (
    destroy_argv,
    list_snapshots_argv,
    parse_snapshot_list,
    plan_dataset_prune,
    snapshot_argv,
)
from tasks._logging import LoggerLike
from tasks._retry import step
from tasks._runs import flow_run_alive
from tasks.verify import wait_healthy

LABEL = "pre-update"
DEFAULT_SNAPSHOT_POLICY = "keep-last=3"


@dataclass(frozen=True, slots=True)
class Preflight:
    """What pre-flight learned about a host, read-only."""

    host: str
    reachable: bool
    generation: int | None = None
    system_state: str = ""
    failed_units: frozenset[str] = frozenset()
    flake_ok: bool = False
    free_kib: int | None = None
    locked_by: str | None = None
    error: str = ""
    snapshot_error: str = ""
    """Why the pre-update snapshot could not be taken (a wrong token, no such guest or
    dataset); empty when it can, or when the host takes none."""

    def summary(self) -> str:
        if not self.reachable:
            return f"unreachable: {self.error}"
        if self.snapshot_error:
            return f"snapshot not possible: {self.snapshot_error}"
        bits = [f"generation {self.generation}", self.system_state or "?"]
        if self.failed_units:
            bits.append("already failed: " + ", ".join(sorted(self.failed_units)))
        if not self.flake_ok:
            bits.append("flake missing")
        if self.free_kib is not None:
            bits.append(f"{self.free_kib / 1024 / 1024:.1f} GiB free")
        if self.locked_by:
            bits.append(f"locked by {self.locked_by}")
        return "; ".join(bits)


def _system_state(r: SshRunner) -> str:
    """What ``systemctl is-system-running`` says; ``unknown`` when it prints no state."""
    try:
        return parse_system_state(r.run(system_state_argv(), check=False).stdout)
    except ParseError:
        return "unknown"


def _host_facts(r: SshRunner) -> HostFacts:
    """The host's active generation, system state and failed units, read over ``r``."""
    gens = parse_generations(r.run(generations_argv()).stdout)
    return HostFacts(
        generation=current_generation(gens).number,
        system_state=_system_state(r),
        failed_units=parse_failed_units(r.run(failed_units_argv()).stdout),
    )


def _snapshot_check(inv: Inventory, host: str, proxmox: ProxmoxClient | None) -> str:
    """Whether the host's snapshot method can work, read-only: its guest is visible through
    the API with the token (and its snapshots listed), or its dataset exists. Why not, or ""."""
    sm = inv.nixos_host(host).snapshot
    try:
        if isinstance(sm, ProxmoxSnapshotMethod):
            if proxmox is None:
                return "no Proxmox client (the inventory has no [proxmox] section)"
            proxmox.list_snapshots(proxmox.guest(sm.vmid))
        elif isinstance(sm, ZfsSnapshotMethod):
            with ssh_runner(inv, sm.host) as zr:
                zr.run(["zfs", "list", "-H", "-o", "name", sm.dataset])
    except MoxflowError as exc:
        return str(exc)
    return ""


def _read_journal(r: SshRunner, state_dir: str) -> Journal | None:
    res = r.run(read_journal_argv(state_dir), check=False)
    if res.exit_code != 0 or not res.stdout.strip():
        return None
    try:
        return Journal.from_json(res.stdout)
    except ParseError:
        return None


@task(name="nixos-preflight", cache_policy=NO_CACHE, task_run_name="{host}: preflight")
def preflight(inv: Inventory, host: str, proxmox: ProxmoxClient | None) -> Preflight:
    """Read-only facts: generation, system state, failed units, flake, disk, lock, and
    whether the pre-update snapshot can be taken (the credentials it needs work)."""
    spec = inv.nixos_host(host)
    state_dir = inv.nixos_state_dir(host)
    snapshot_error = _snapshot_check(inv, host, proxmox)
    try:
        with ssh_runner(inv, host) as r:
            gens = parse_generations(r.run(generations_argv()).stdout)
            state = _system_state(r)
            failed = parse_failed_units(r.run(failed_units_argv()).stdout)
            flake_ok = r.run(["test", "-f", f"{spec.flake}/flake.nix"], check=False).exit_code == 0
            df = r.run(["df", "-Pk", spec.flake], check=False).stdout.splitlines()
            free = int(df[-1].split()[3]) if len(df) >= 2 else None
            journal = _read_journal(r, state_dir)
            locked = r.run(["test", "-d", lock_path(state_dir)], check=False).exit_code == 0
            owner = (journal.flow_run_id if journal else None) or "an unknown run"
            return Preflight(
                host=host,
                reachable=True,
                generation=current_generation(gens).number,
                system_state=state,
                failed_units=failed,
                flake_ok=flake_ok,
                free_kib=free,
                locked_by=owner if locked else None,
                snapshot_error=snapshot_error,
            )
    except (MoxflowError, ValueError, IndexError) as exc:
        return Preflight(host=host, reachable=False, error=str(exc), snapshot_error=snapshot_error)


# --- one host's update: what its steps share ------------------------------------------------


class HostRun:
    """One host's update as its steps see it: the settings, the clients, what was done.

    A plain class with slots on purpose: Prefect stores a subflow's parameters as JSON and
    falls back to the placeholder ``<HostRun>`` for an object it cannot encode, so neither
    the inventory nor a client is copied into the flow run's record.
    """

    __slots__ = (
        "attr",
        "baseline",
        "before",
        "begun",
        "flow_run_id",
        "force",
        "holds_lock",
        "host",
        "inv",
        "journal",
        "log",
        "no_snapshot",
        "now",
        "old",
        "profile",
        "proxmox",
        "settings",
        "snapshot",
        "spec",
        "ssh",
        "started",
        "state_dir",
        "steps",
        "together",
        "tz",
    )

    def __init__(
        self,
        inv: Inventory,
        host: str,
        baseline: Preflight,
        *,
        now: datetime,
        tz: tzinfo,
        flow_run_id: str | None,
        proxmox: ProxmoxClient | None,
        log: LoggerLike,
        no_snapshot: bool = False,
        force: bool = False,
    ) -> None:
        generation = baseline.generation
        if generation is None:
            raise ParseError(f"{host}: pre-flight found no current generation")
        self.inv = inv
        self.host = host
        self.baseline = baseline
        self.now = now
        self.tz = tz
        self.flow_run_id = flow_run_id
        self.proxmox = proxmox
        self.log = log
        self.no_snapshot = no_snapshot
        self.force = force
        self.spec = inv.nixos_host(host)
        self.settings = inv.nixos
        self.state_dir = inv.nixos_state_dir(host)
        self.profile = inv.nixos_profile(host)
        self.attr = inv.nixos_attr(host)
        self.ssh = ssh_runner(inv, host)
        """The connection the steps up to the switch use; verification opens new ones."""
        self.started = time.monotonic()
        self.begun: Callable[[], None] = lambda: None
        """Called once the host's subflow run asked for its slots, or failed before (the flow
        then lets the next host's subflow run be created)."""
        self.together: Callable[[], object] = lambda: None
        """Waits until every host of the wave began (the flow's; at once by default)."""
        self.steps: list[str] = []
        self.holds_lock = False
        """Set once this run made the lock folder (its journal may not be written yet)."""
        self.snapshot: str | None = None
        self.old = generation
        self.before = HostFacts(generation, baseline.system_state, baseline.failed_units)
        self.journal = Journal(
            run_id=uuid.uuid4().hex,
            flow_run_id=flow_run_id,
            host=host,
            phase="started",
            old_generation=generation,
            new_generation=None,
            snapshot=None,
            started=now.isoformat(),
        )

    def close(self) -> None:
        self.ssh.close()

    def note(self, text: str) -> None:
        """A step done, for the report row and the run's log."""
        self.steps.append(text)
        self.log.info("%s: %s", self.host, text)

    @contextmanager
    def connect(self) -> Iterator[SshRunner]:
        """A new SSH connection (verification never reuses the one that switched); closed
        at the end unless :meth:`adopt` made it the run's connection."""
        runner = ssh_runner(self.inv, self.host)
        try:
            yield runner
        finally:
            if runner is not self.ssh:
                runner.close()

    def adopt(self, runner: SshRunner) -> None:
        """Make ``runner`` (a connection confirm opened after verification) the run's
        connection: prune and unlock use it, one handshake instead of one each. It
        reconnects by itself when it drops."""
        old, self.ssh = self.ssh, runner
        if old is not runner:
            old.close()

    def row(self, outcome: Outcome, detail: str, *, new: int | str | None = None) -> ReportRow:
        """The host's report row: the generation before (→ after, when it changed), the
        pre-update snapshot, the verdict, and every step done after ``detail``."""
        return ReportRow(
            target=self.host,
            outcome=outcome,
            detail="; ".join([detail, *self.steps]),
            seconds=round(time.monotonic() - self.started, 3),
            cells={
                "generation": generation_text(self.baseline.generation, new),
                "snapshot": self.snapshot or "",
            },
        )

    def write_journal(self, phase: JournalPhase, **changes: Any) -> None:
        """Record progress on the host, so that a run dying here can be recognised."""
        self.journal = self.journal.advance(phase, **changes)
        self.ssh.run(write_journal_argv(self.state_dir), stdin=self.journal.to_json())

    def backup(self) -> str:
        return f"{self.state_dir}/flake.lock.before"

    def restore_flake_lock(self, r: SshRunner) -> bool:
        """Put flake.lock back as it was before this run's update; whether there was one."""
        if r.run(["test", "-f", self.backup()], check=False).exit_code != 0:
            return False
        r.run(["cp", self.backup(), f"{self.spec.flake}/flake.lock"])
        return True

    def release(self, r: SshRunner) -> None:
        """Clear this run's backup of flake.lock, its journal and its lock."""
        r.run(["rm", "-f", self.backup()], check=False)
        r.run(clear_journal_argv(self.state_dir), check=False)
        r.run(unlock_argv(self.state_dir), check=False)

    def mark_checked(self, r: SshRunner) -> None:
        """Note on the host that it is up to date as of now (the health report reads it:
        a host with nothing new to install is not out of date)."""
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
        with suppress(MoxflowError):
            r.run(write_checked_argv(self.state_dir), stdin=stamp + "\n")

    def client(self) -> ProxmoxClient:
        if self.proxmox is None:
            raise ConfigError("the inventory has no [proxmox] section", setting="proxmox")
        return self.proxmox

    def generation_now(self) -> int:
        """The active generation, over a new connection (raises SshError when unreachable)."""
        with self.connect() as r:
            return current_generation(parse_generations(r.run(generations_argv()).stdout)).number

    def seen_generation(self, *, note: bool = True) -> int | None:
        """The active generation now, or ``None`` when the host does not answer (noted:
        the recovery then waits for the dead-man timer)."""
        try:
            return self.generation_now()
        except SshError as exc:
            if note:
                self.note(f"host unreachable ({exc.message}); waiting for the dead-man timer")
            return None

    def verify(self, expected: int, grace: float) -> tuple[bool, str]:
        """Over a new connection: the generation, no new failed units, health checks pass
        (:func:`~moxflow.nixos.evaluate` against the host's state before the update).

        Polls within ``grace`` while the host does not answer or is still starting; a
        wrong generation or a newly failed unit ends the wait at once (the generation does
        not change by itself, except when the dead-man timer reverts it).
        """
        deadline = time.monotonic() + grace
        reason = "not checked"
        while True:
            try:
                with self.connect() as r:
                    facts = _host_facts(r)
                    verdict = evaluate(self.before, facts, expected)
                    if facts.generation != expected or verdict.new_failures:
                        return False, "; ".join(verdict.reasons)
                    if verdict.ok:
                        remaining = max(0.0, deadline - time.monotonic())
                        _, results = wait_healthy(self.spec.health, lambda: r, grace=remaining)
                        verdict = evaluate(self.before, facts, expected, results)
                        if not verdict.ok:
                            return False, "; ".join(verdict.reasons)
                        # still the same generation? (the dead-man timer may have fired)
                        again = parse_generations(r.run(generations_argv()).stdout)
                        now_gen = current_generation(again).number
                        if now_gen != expected:
                            return False, (
                                f"health checks passed only once generation {now_gen} "
                                "was active again (the dead-man timer fired)"
                            )
                        return True, str(verdict)
                    reason = "; ".join(verdict.reasons)
            except SshError as exc:
                reason = f"host does not answer: {exc.message}"
            if time.monotonic() >= deadline:
                return False, reason
            time.sleep(min(1.0, max(0.05, grace / 20)))

    def drop_snapshot(self) -> None:
        """Delete the snapshot this run took (nothing changed, it is not needed)."""
        sm = self.spec.snapshot
        if self.snapshot is None or isinstance(sm, NoSnapshotMethod):
            return
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = self.client()
            guest = client.guest(sm.vmid)
            client.wait_task(client.delete_snapshot(guest, self.snapshot), timeout=600)
        else:
            with ssh_runner(self.inv, sm.host) as zr:
                zr.run(destroy_argv(sm.dataset, self.snapshot))
        self.note(f"released snapshot {self.snapshot}")
        self.snapshot = None

    def event(self, name: str, generation: int, **extra: str) -> None:
        from prefect.events import emit_event

        emit_event(
            event=name,
            resource={"prefect.resource.id": f"moxflow.host.{self.host}"},
            payload={
                "host": self.host,
                "generation": generation,
                "snapshot": self.snapshot,
                "steps": self.steps,
                **extra,
            },
        )


# --- what the steps hand on (each the next step's input: the graph's edges) -----------------


@dataclass(frozen=True, slots=True)
class Locked:
    """The host's lock is held by this run, or ``busy`` says who else holds it since when."""

    host: str
    busy: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshotted:
    host: str
    name: str | None
    """The pre-update snapshot; ``None`` when the host takes none."""


@dataclass(frozen=True, slots=True)
class FlakeUpdated:
    host: str
    changes: tuple[LockChange, ...]


@dataclass(frozen=True, slots=True)
class Built:
    host: str


@dataclass(frozen=True, slots=True)
class Armed:
    host: str
    seconds: float
    next_generation: int  # the number the switch gives its generation


@dataclass(frozen=True, slots=True)
class Switched:
    host: str
    generation: int
    note: str = ""
    """What went wrong with the switch command itself (its exit status, a cut connection)."""


@dataclass(frozen=True, slots=True)
class Verified:
    host: str
    generation: int
    verdict: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    host: str
    late: bool
    """The dead-man timer reverted the host before the confirmation reached it."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """A recovery step taken, and whether the host verified healthy on its old generation."""

    host: str
    healthy: bool
    generation: int | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Unlocked:
    host: str


class BuildFailed(MoxflowError):
    """``nixos-rebuild build`` failed: nothing was activated."""


class VerificationFailed(MoxflowError):
    """The switched host did not verify; ``generation`` is its active one as last seen
    (``None``: it did not answer)."""

    def __init__(self, message: str, generation: int | None) -> None:
        super().__init__(message)
        self.generation = generation


# --- the steps -------------------------------------------------------------------------------


@step("nixos-lock", "{run.host}: lock")
def lock(run: HostRun) -> Locked:
    """Take the host's lock; a run that died holding it is cleaned up first. ``busy`` when
    another live run holds it: who since when, and what to do (the host's row is busy). Safe
    to retry: a lock this run took before a connection dropped has no live owner and is
    taken again."""
    r = run.ssh
    r.run(prepare_state_dir_argv(run.state_dir))
    deadline = time.monotonic() + run.settings.lock_wait
    while True:
        if r.run(lock_argv(run.state_dir), check=False).exit_code == 0:
            run.holds_lock = True  # before the journal: a retry after a drop here knows
            run.write_journal("started")
            return Locked(run.host)
        journal = _read_journal(r, run.state_dir)
        if journal is not None and journal.run_id == run.journal.run_id:
            return Locked(run.host)  # an earlier attempt of this step took it
        if journal is None and run.holds_lock:  # an earlier attempt took it, then dropped
            run.write_journal("started")
            return Locked(run.host)
        owner = journal.flow_run_id if journal else None
        age = _lock_age(r, run.state_dir) if journal is None else "old"
        if age == "gone":
            continue  # released meanwhile: try to take it
        if age == "old" and not flow_run_alive(owner):
            _recover_stale(run, journal)
            continue
        if time.monotonic() >= deadline:
            return Locked(run.host, lock_holder(run.host, journal, datetime.now(UTC)))
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _lock_age(r: SshRunner, state_dir: str) -> Literal["young", "old", "gone"]:
    """A lock found without a journal: ``old`` enough to be a dead run's, ``young`` (a run
    writing its journal right now), or ``gone`` (released since)."""
    found = r.run(lock_orphaned_argv(state_dir), check=False)
    if found.exit_code != 0:
        return "gone"
    return "old" if found.stdout.strip() else "young"


def _recover_stale(run: HostRun, journal: Journal | None) -> None:
    """A run died half-way: undo what it left (timer, unverified generation, flake.lock);
    an update it had confirmed stands (only its leftovers go)."""
    r = run.ssh
    phase = journal.phase if journal else "unknown"
    run.note(f"found an interrupted run (phase {phase}); cleaning up")
    if r.run(deadman_armed_argv(), check=False).exit_code == 0:
        r.run(disarm_deadman_argv(), check=False)
        run.note("disarmed its dead-man timer")
    if update_stands(journal):
        r.run(["rm", "-f", run.backup()])
        run.note("its update was confirmed and stands")
    elif journal and journal.old_generation is not None:
        current = current_generation(parse_generations(r.run(generations_argv()).stdout)).number
        if current != journal.old_generation:
            for argv in revert_argvs(run.profile, journal.old_generation):
                r.run(argv)
            run.note(f"reverted its unverified generation {current} to {journal.old_generation}")
    if not update_stands(journal) and run.restore_flake_lock(r):
        r.run(["rm", "-f", run.backup()])
    if journal and journal.snapshot:
        run.note(f"its snapshot {journal.snapshot} is kept")
    r.run(clear_journal_argv(run.state_dir), check=False)
    r.run(unlock_argv(run.state_dir), check=False)


@step("nixos-snapshot", "{run.host}: snapshot")
def snapshot(run: HostRun, locked: Locked) -> Snapshotted:
    """The pre-update snapshot (a Proxmox guest snapshot or a ZFS snapshot), dropped again
    (``undo_before_switch``) if the build fails or there is nothing to update. Safe to retry: a
    snapshot of this run's name that an earlier attempt made is taken as this one."""
    sm = run.spec.snapshot
    if run.no_snapshot or isinstance(sm, NoSnapshotMethod):
        why = "--no-snapshot" if run.no_snapshot else "opted out in the inventory"
        run.note(f"no snapshot ({why})")
        return Snapshotted(run.host, None)
    name = snapshot_name(LABEL, run.now)
    try:
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = run.client()
            guest = client.guest(sm.vmid)
            upid = client.create_snapshot(guest, name, snapshot_description(LABEL, run.now))
            client.wait_task(upid, timeout=600, node=guest.node)
        else:
            with ssh_runner(run.inv, sm.host) as zr:
                zr.run(snapshot_argv(sm.dataset, name, False))
    except MoxflowError:
        if not _snapshot_exists(run, name):
            raise
    run.snapshot = name
    run.note(f"snapshot {name}")
    run.write_journal("snapshotted", snapshot=name)
    return Snapshotted(run.host, name)


def _snapshot_exists(run: HostRun, name: str) -> bool:
    """Whether a whole snapshot ``name`` exists (an earlier attempt of this run made it)."""
    sm = run.spec.snapshot
    try:
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = run.client()
            guest_snaps = client.list_snapshots(client.guest(sm.vmid))
            return any(s.name == name and s.complete for s in guest_snaps)
        if isinstance(sm, ZfsSnapshotMethod):
            with ssh_runner(run.inv, sm.host) as zr:
                zfs_snaps = parse_snapshot_list(zr.run(list_snapshots_argv(sm.dataset)).stdout)
            return any(s.name == name for s in zfs_snaps)
    except MoxflowError:
        return False
    return False


@step("nixos-flake-update", "{run.host}: flake-update")
def flake_update(run: HostRun, snapshotted: Snapshotted) -> FlakeUpdated:
    """``nix flake update``, keeping the flake.lock before it on the host (put back by
    ``undo_before_switch``). Safe to retry: the first attempt's copy of flake.lock is kept."""
    r, flake = run.ssh, run.spec.flake
    if r.run(["test", "-f", run.backup()], check=False).exit_code != 0:
        r.run(["cp", f"{flake}/flake.lock", run.backup()])
    before = r.run(["cat", run.backup()]).stdout
    r.run(flake_update_argv(flake, run.spec.commit_lock_file), timeout=1800)
    after = r.run(["cat", f"{flake}/flake.lock"]).stdout
    changes = lock_changes(parse_flake_lock(before), parse_flake_lock(after))
    for change in changes:
        run.note(str(change))
    return FlakeUpdated(run.host, tuple(changes))


def undo_before_switch(run: HostRun) -> None:
    """Nothing was activated (the build failed, nothing changed, a step failed for good): put
    flake.lock back and drop this run's snapshot. Whatever cannot be undone is noted."""
    try:
        run.restore_flake_lock(run.ssh)
    except MoxflowError as exc:
        run.note(f"could not restore flake.lock: {exc}")
    try:
        run.drop_snapshot()
    except MoxflowError as exc:
        run.note(f"could not release snapshot {run.snapshot}: {exc}")


@step("nixos-build", "{run.host}: build")
def build(run: HostRun, updated: FlakeUpdated) -> Built:
    """``nixos-rebuild build``: nothing is activated; a failed build raises
    :class:`BuildFailed` (never retried) and the flow undoes the steps before."""
    built = run.ssh.run(build_argv(run.spec.flake, run.attr), check=False, timeout=6 * 3600)
    if built.exit_code != 0:
        tail = "\n".join(built.stderr.strip().splitlines()[-5:])
        raise BuildFailed(tail or f"nixos-rebuild build exited {built.exit_code}")
    run.write_journal("built")
    return Built(run.host)


@step("nixos-arm-dead-man", "{run.host}: arm-dead-man")
def arm_dead_man(run: HostRun, built: Built) -> Armed:
    """Start the timer that switches the host back to its old generation unless confirmed.
    Safe to retry: a timer an earlier attempt started is stopped first."""
    timeout = run.settings.confirm_timeout
    # if the switch cuts us off, the generation it makes is the next number (the timer has it)
    upcoming = next_generation(parse_generations(run.ssh.run(generations_argv()).stdout))
    run.ssh.run(disarm_deadman_argv(), check=False)
    run.ssh.run(arm_deadman_argv(run.profile, run.old, int(timeout)))
    run.write_journal("armed")
    run.note(f"dead-man timer armed ({timeout:g}s)")
    return Armed(run.host, timeout, upcoming)


@task(name="nixos-switch", task_run_name="{run.host}: switch", cache_policy=NO_CACHE, retries=0)
def switch(run: HostRun, armed: Armed) -> Switched:
    """``nixos-rebuild switch``. Never retried: a switch cut off half-way may have activated
    the new generation, and running it again would hide that; verification and the recovery
    ladder decide what happened. A switch that exits non-zero or loses its connection is
    noted and verified like any other."""
    r = run.ssh
    new = armed.next_generation
    try:
        done = r.run(switch_argv(run.spec.flake, run.attr), check=False, timeout=3600)
        note = "" if done.exit_code == 0 else f"switch exit {done.exit_code}"
    except SshError as exc:
        note = f"switch interrupted: {exc}"
    # the generation the switch made (the same one when the configuration did not change);
    # what cannot be read now (the switch cut the connection) verification finds out
    with suppress(MoxflowError):
        new = current_generation(parse_generations(r.run(generations_argv()).stdout)).number
        run.write_journal("switched", new_generation=new)
    if new == run.old:
        run.note("the configuration did not change: no new generation")
    return Switched(run.host, new, note)


@step("nixos-verify", "{run.host}: verify")
def verify(run: HostRun, switched: Switched) -> Verified:
    """Over a new connection, within ``health_grace``: the new generation is active, no unit
    failed anew, the health checks pass. A host that does not verify raises
    :class:`VerificationFailed` (never retried: the step already waited its grace)."""
    ok, why = run.verify(expected=switched.generation, grace=run.settings.health_grace)
    if not ok:
        run.note(f"verification failed: {why}")
        raise VerificationFailed(why, run.seen_generation())
    return Verified(run.host, switched.generation, why)


@step("nixos-confirm", "{run.host}: confirm")
def confirm(run: HostRun, verified: Verified) -> Confirmed:
    """Stop the dead-man timer; ``late`` when it had already reverted the host."""
    # a new connection: a host that takes no new ones (sshd down, a firewall for new
    # connections) is not confirmed, whatever an open connection still reaches
    r = ssh_runner(run.inv, run.host)
    run.adopt(r)  # prune and unlock go on over it
    for _ in range(3):
        r.run(disarm_deadman_argv(), check=False)
        if r.run(deadman_armed_argv(), check=False).exit_code != 0:
            break
    else:
        raise SshCommandError(
            "the dead-man timer is still armed after systemctl stop",
            host=run.host,
            command=disarm_deadman_argv(),
        )
    # did it fire before we stopped it? its revert may still be running, or done
    reverting = r.run(deadman_service_active_argv(), check=False).exit_code == 0
    gens = parse_generations(r.run(generations_argv()).stdout)
    if reverting or current_generation(gens).number != verified.generation:
        run.note("the dead-man timer fired before the confirmation")
        return Confirmed(run.host, True)
    run.note("confirmed")
    run.write_journal("confirmed")
    run.mark_checked(r)
    return Confirmed(run.host, False)


def _policy(inv: Inventory) -> KeepPolicy:
    try:
        return inv.guest_policy(LABEL)
    except ConfigError:
        return KeepPolicy.parse(DEFAULT_SNAPSHOT_POLICY)


@step("nixos-prune", "{run.host}: prune")
def prune(run: HostRun, confirmed: Confirmed) -> list[str]:
    """Keep the pre-update snapshots by retention; delete the older ones. A prune that fails
    is noted, never undoes the update. Safe to retry: it plans from the snapshots there."""
    sm = run.spec.snapshot
    if run.snapshot is None or isinstance(sm, NoSnapshotMethod):
        return []
    policy = _policy(run.inv)
    removed: list[str] = []
    if isinstance(sm, ProxmoxSnapshotMethod):
        client = run.client()
        guest = client.guest(sm.vmid)
        plan = plan_guest_prune(client.list_snapshots(guest), LABEL, policy, run.tz, run.snapshot)
        for name in plan.remove:
            client.wait_task(client.delete_snapshot(guest, name), timeout=600)
            removed.append(name)
    else:
        with ssh_runner(run.inv, sm.host) as zr:
            snaps = parse_snapshot_list(zr.run(list_snapshots_argv(sm.dataset)).stdout)
            zplan = plan_dataset_prune(snaps, sm.dataset, LABEL, policy, run.tz, run.snapshot)
            for name in zplan.remove:
                zr.run(destroy_argv(sm.dataset, name))
                removed.append(name)
    if removed:
        run.note("pruned older snapshots " + ", ".join(removed))
    return removed


@step("nixos-unlock", "{run.host}: unlock")
def unlock(run: HostRun, upstream: Any, *, restore_lock: bool = False) -> Unlocked:
    """Clear the journal and the lock (and, after a rollback, put flake.lock back so the
    next run tries the update again)."""
    r = run.ssh  # after the switch: a new connection (confirm's, when it confirmed)
    if restore_lock:
        r.run(disarm_deadman_argv(), check=False)
        if run.restore_flake_lock(r):
            run.note("flake.lock restored")
    run.release(r)
    return Unlocked(run.host)


# --- the recovery steps: each takes its action, then verifies the old generation ------------


@step("nixos-switch-back", "{run.host}: switch-back")
def switch_back(run: HostRun, upstream: Any) -> Recovered:
    """Reachable on the new generation: stop the timer and switch back to the old one
    ourselves, then verify. Safe to retry: switching to the old generation twice is the
    same as once."""
    with run.connect() as r:
        r.run(disarm_deadman_argv(), check=False)
        for argv in revert_argvs(run.profile, run.old):
            r.run(argv)
    run.note(f"switched back to generation {run.old}")
    ok, why = run.verify(expected=run.old, grace=run.settings.health_grace)
    if not ok:
        run.note(f"still unhealthy on generation {run.old}: {why}")
    return Recovered(run.host, ok, run.old if ok else run.seen_generation(note=False), why)


@step("nixos-wait-for-dead-man", "{run.host}: wait-for-dead-man")
def wait_for_dead_man(run: HostRun, upstream: Any, *, reverted: bool) -> Recovered:
    """Wait, bounded, for the dead-man timer to bring the old generation back and verify it
    (``reverted``: it already has, only verify)."""
    grace = run.settings.health_grace
    wait = grace if reverted else run.settings.confirm_timeout + grace
    ok, why = run.verify(expected=run.old, grace=wait)
    if not ok:
        if reverted:
            run.note(f"reverted by the dead-man timer, but still unhealthy: {why}")
        else:
            run.note(f"the dead-man timer did not bring it back: {why}")
    return Recovered(run.host, ok, run.old if ok else run.seen_generation(note=False), why)


@step("nixos-snapshot-rollback", "{run.host}: snapshot-rollback")
def snapshot_rollback(run: HostRun, upstream: Any) -> Recovered:
    """Last resort: roll the pre-update snapshot back, start the guest, and verify."""
    sm = run.spec.snapshot
    name = run.snapshot
    if name is None or isinstance(sm, NoSnapshotMethod):
        return Recovered(run.host, False, None, "no snapshot")
    try:
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = run.client()
            guest = client.guest(sm.vmid)
            upid = client.rollback_snapshot(guest, name, start=True)
            client.wait_task(upid, timeout=600, node=guest.node)
        else:
            with ssh_runner(run.inv, sm.host) as zr:
                zr.run(["zfs", "rollback", "-r", f"{sm.dataset}@{name}"])
    except MoxflowError as exc:
        if exc.transient:
            raise  # Prefect tries again
        run.note(f"snapshot rollback failed: {exc}")
        return Recovered(run.host, False, None, str(exc))
    run.note(f"rolled back snapshot {name}")
    wait = run.settings.confirm_timeout + run.settings.health_grace
    ok, why = run.verify(expected=run.old, grace=wait)
    if not ok:
        run.note(f"still not healthy after the snapshot rollback: {why}")
    return Recovered(run.host, ok, run.old if ok else None, why)


__all__ = [
    "Armed",
    "BuildFailed",
    "Built",
    "Confirmed",
    "FlakeUpdated",
    "HostRun",
    "Locked",
    "Preflight",
    "Recovered",
    "Snapshotted",
    "Switched",
    "Unlocked",
    "VerificationFailed",
    "Verified",
    "arm_dead_man",
    "build",
    "confirm",
    "flake_update",
    "lock",
    "preflight",
    "prune",
    "snapshot",
    "snapshot_rollback",
    "switch",
    "switch_back",
    "undo_before_switch",
    "unlock",
    "verify",
    "wait_for_dead_man",
]
