"""Prefect tasks for NixOS hosts: pre-flight facts, and one host's guarded update.

The update of one host follows the safe order snapshot → flake update → build → arm the
dead-man timer → switch → verify over a new SSH connection → confirm, and walks the
recovery ladder on any failure after the switch: switch back to the previous generation,
else wait for the dead-man timer to revert the host, else roll back the snapshot, else mark
the host "needs attention" with the snapshot kept. A lock and a journal on the host let the
next run recognise a run that died half-way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.proxmox import proxmox_client
from blocks.ssh import ssh_runner
from moxflow.errors import ConfigError, MoxflowError, ParseError, SshError
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
    arm_deadman_argv,
    build_argv,
    clear_journal_argv,
    current_generation,
    deadman_armed_argv,
    disarm_deadman_argv,
    evaluate,
    failed_units_argv,
    flake_update_argv,
    generation_text,
    generations_argv,
    lock_argv,
    lock_changes,
    lock_path,
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
    write_checked_argv,
    write_journal_argv,
)
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


def _lock_path(inv: Inventory, host: str) -> str:
    return lock_path(inv.nixos_state_dir(host))


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


def _snapshot_check(inv: Inventory, host: str) -> str:
    """Whether the host's snapshot method can work, read-only: its guest is visible through
    the API with the token (and its snapshots listed), or its dataset exists. Why not, or ""."""
    sm = inv.nixos_host(host).snapshot
    try:
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = proxmox_client(inv)
            client.list_snapshots(client.guest(sm.vmid))
        elif isinstance(sm, ZfsSnapshotMethod):
            with ssh_runner(inv, sm.host) as zr:
                zr.run(["zfs", "list", "-H", "-o", "name", sm.dataset])
    except MoxflowError as exc:
        return str(exc)
    return ""


@task(name="nixos-preflight", cache_policy=NO_CACHE, task_run_name="preflight-{host}")
def preflight(inv: Inventory, host: str) -> Preflight:
    """Read-only facts: generation, system state, failed units, flake, disk, lock, and
    whether the pre-update snapshot can be taken (the credentials it needs work)."""
    spec = inv.nixos_host(host)
    snapshot_error = _snapshot_check(inv, host)
    try:
        with ssh_runner(inv, host) as r:
            gens = parse_generations(r.run(generations_argv()).stdout)
            state = _system_state(r)
            failed = parse_failed_units(r.run(failed_units_argv()).stdout)
            flake_ok = r.run(["test", "-f", f"{spec.flake}/flake.nix"], check=False).exit_code == 0
            df = r.run(["df", "-Pk", spec.flake], check=False).stdout.splitlines()
            free = int(df[-1].split()[3]) if len(df) >= 2 else None
            journal = _read_journal(r, inv, host)
            locked = r.run(["test", "-d", _lock_path(inv, host)], check=False).exit_code == 0
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


def _read_journal(r: SshRunner, inv: Inventory, host: str) -> Journal | None:
    res = r.run(read_journal_argv(inv.nixos_state_dir(host)), check=False)
    if res.exit_code != 0 or not res.stdout.strip():
        return None
    try:
        return Journal.from_json(res.stdout)
    except ParseError:
        return None


def flow_run_alive(flow_run_id: str | None) -> bool:
    """Whether the Prefect flow run that holds a host's lock is still running."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
    except ObjectNotFound:
        return False
    except (ValueError, TypeError):
        return False
    except Exception:  # the API is unreachable: assume the run is alive, never break a lock
        return True
    return run.state is not None and not run.state.is_final()


@dataclass
class HostUpdate:
    """One host's update; ``steps`` records what was done, for the report."""

    inv: Inventory
    host: str
    baseline: Preflight
    now: datetime
    tz: tzinfo
    flow_run_id: str | None
    no_snapshot: bool = False
    force: bool = False
    steps: list[str] = field(default_factory=list)
    snapshot: str | None = None
    log: Any = None

    def __post_init__(self) -> None:
        self.spec = self.inv.nixos_host(self.host)
        self.settings = self.inv.nixos
        self.state_dir = self.inv.nixos_state_dir(self.host)
        self.profile = self.inv.nixos_profile(self.host)
        self.attr = self.inv.nixos_attr(self.host)
        self.started = time.monotonic()
        generation = self.baseline.generation
        if generation is None:
            raise ParseError(f"{self.host}: pre-flight found no current generation")
        self.old = generation
        self.before = HostFacts(generation, self.baseline.system_state, self.baseline.failed_units)
        self.journal = Journal(
            run_id=uuid.uuid4().hex,
            flow_run_id=self.flow_run_id,
            host=self.host,
            phase="started",
            old_generation=generation,
            new_generation=None,
            snapshot=None,
            started=self.now.isoformat(),
        )

    # -- plumbing ---------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.steps.append(text)
        if self.log is not None:
            self.log.info("%s: %s", self.host, text)

    @contextmanager
    def connect(self) -> Iterator[SshRunner]:
        """A new SSH connection (verification never reuses the one that switched)."""
        runner = ssh_runner(self.inv, self.host)
        try:
            yield runner
        finally:
            runner.close()

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

    def write_journal(self, r: SshRunner, phase: JournalPhase, **changes: Any) -> None:
        """Record progress on the host, so that a run dying here can be recognised."""
        self.journal = self.journal.advance(phase, **changes)
        r.run(write_journal_argv(self.state_dir), stdin=self.journal.to_json())

    # -- lock and crash recovery ------------------------------------------------------------

    def acquire(self, r: SshRunner) -> str | None:
        """Take the host's lock; a message when another live run holds it (then skip)."""
        r.run(prepare_state_dir_argv(self.state_dir))
        deadline = time.monotonic() + self.settings.lock_wait
        while True:
            if r.run(lock_argv(self.state_dir), check=False).exit_code == 0:
                return None
            journal = _read_journal(r, self.inv, self.host)
            owner = journal.flow_run_id if journal else None
            if not flow_run_alive(owner):
                self.recover_stale(r, journal)
                continue
            if time.monotonic() >= deadline:
                return f"another run (flow run {owner}) is updating {self.host}; skipped"
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def recover_stale(self, r: SshRunner, journal: Journal | None) -> None:
        """A run died half-way: undo what it left (timer, unverified generation, flake.lock)."""
        phase = journal.phase if journal else "unknown"
        self.note(f"found an interrupted run (phase {phase}); cleaning up")
        armed = r.run(deadman_armed_argv(), check=False).exit_code == 0
        if armed:
            r.run(disarm_deadman_argv(), check=False)
            self.note("disarmed its dead-man timer")
        if journal and journal.old_generation is not None:
            gens = parse_generations(r.run(generations_argv()).stdout)
            current = current_generation(gens).number
            if current != journal.old_generation:
                for argv in revert_argvs(self.profile, journal.old_generation):
                    r.run(argv)
                self.note(
                    f"reverted its unverified generation {current} to {journal.old_generation}"
                )
        backup = f"{self.state_dir}/flake.lock.before"
        if r.run(["test", "-f", backup], check=False).exit_code == 0:
            r.run(["cp", backup, f"{self.spec.flake}/flake.lock"])
            r.run(["rm", "-f", backup])
        if journal and journal.snapshot:
            self.note(f"its snapshot {journal.snapshot} is kept")
        r.run(clear_journal_argv(self.state_dir), check=False)
        r.run(unlock_argv(self.state_dir), check=False)

    def mark_checked(self, r: SshRunner) -> None:
        """Note on the host that it is up to date as of now (the health report reads it:
        a host with nothing new to install is not out of date)."""
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
        with suppress(MoxflowError):
            r.run(write_checked_argv(self.state_dir), stdin=stamp + "\n")

    def release(self, r: SshRunner) -> None:
        r.run(["rm", "-f", f"{self.state_dir}/flake.lock.before"], check=False)
        r.run(clear_journal_argv(self.state_dir), check=False)
        r.run(unlock_argv(self.state_dir), check=False)

    # -- snapshots --------------------------------------------------------------------------

    def take_snapshot(self) -> None:
        sm = self.spec.snapshot
        if self.no_snapshot or isinstance(sm, NoSnapshotMethod):
            why = "--no-snapshot" if self.no_snapshot else "opted out in the inventory"
            self.note(f"no snapshot ({why})")
            return
        name = snapshot_name(LABEL, self.now)
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = proxmox_client(self.inv)
            guest = client.guest(sm.vmid)
            upid = client.create_snapshot(guest, name, snapshot_description(LABEL, self.now))
            client.wait_task(upid, timeout=600, node=guest.node)
        else:
            with ssh_runner(self.inv, sm.host) as zr:
                zr.run(snapshot_argv(sm.dataset, name, False))
        self.snapshot = name
        self.note(f"snapshot {name}")

    def drop_snapshot(self) -> None:
        """Delete the snapshot this run took (nothing changed, it is not needed)."""
        sm = self.spec.snapshot
        if self.snapshot is None or isinstance(sm, NoSnapshotMethod):
            return
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = proxmox_client(self.inv)
            guest = client.guest(sm.vmid)
            client.wait_task(client.delete_snapshot(guest, self.snapshot), timeout=600)
        else:
            with ssh_runner(self.inv, sm.host) as zr:
                zr.run(destroy_argv(sm.dataset, self.snapshot))
        self.note(f"released snapshot {self.snapshot}")
        self.snapshot = None

    def _policy(self) -> KeepPolicy:
        try:
            return self.inv.guest_policy(LABEL)
        except ConfigError:
            return KeepPolicy.parse(DEFAULT_SNAPSHOT_POLICY)

    def prune_snapshots(self) -> None:
        """Keep the pre-update snapshots by retention; prune the older ones."""
        sm = self.spec.snapshot
        if self.snapshot is None or isinstance(sm, NoSnapshotMethod):
            return
        policy = self._policy()
        removed: list[str] = []
        if isinstance(sm, ProxmoxSnapshotMethod):
            client = proxmox_client(self.inv)
            guest = client.guest(sm.vmid)
            plan = plan_guest_prune(
                client.list_snapshots(guest), LABEL, policy, self.tz, self.snapshot
            )
            for name in plan.remove:
                client.wait_task(client.delete_snapshot(guest, name), timeout=600)
                removed.append(name)
        else:
            with ssh_runner(self.inv, sm.host) as zr:
                snaps = parse_snapshot_list(zr.run(list_snapshots_argv(sm.dataset)).stdout)
                zplan = plan_dataset_prune(snaps, sm.dataset, LABEL, policy, self.tz, self.snapshot)
                for name in zplan.remove:
                    zr.run(destroy_argv(sm.dataset, name))
                    removed.append(name)
        if removed:
            self.note("pruned older snapshots " + ", ".join(removed))

    def rollback_snapshot(self) -> bool:
        """Last resort: restore the pre-update snapshot and start the guest again."""
        sm = self.spec.snapshot
        if self.snapshot is None or isinstance(sm, NoSnapshotMethod):
            return False
        try:
            if isinstance(sm, ProxmoxSnapshotMethod):
                client = proxmox_client(self.inv)
                guest = client.guest(sm.vmid)
                upid = client.rollback_snapshot(guest, self.snapshot, start=True)
                client.wait_task(upid, timeout=600, node=guest.node)
            else:
                with ssh_runner(self.inv, sm.host) as zr:
                    zr.run(["zfs", "rollback", "-r", f"{sm.dataset}@{self.snapshot}"])
        except MoxflowError as exc:
            self.note(f"snapshot rollback failed: {exc}")
            return False
        self.note(f"rolled back snapshot {self.snapshot}")
        return True

    # -- verification -----------------------------------------------------------------------

    def generation_now(self) -> int:
        """The active generation, over a new connection (raises SshError when unreachable)."""
        with self.connect() as r:
            return current_generation(parse_generations(r.run(generations_argv()).stdout)).number

    def verify(self, expected: int, grace: float) -> tuple[bool, str]:
        """Over a new connection: the generation, no new failed units, health checks pass
        (:func:`~moxflow.nixos.evaluate` against the host's state before the update).

        Retries within ``grace`` while the host does not answer or is still starting; a
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

    # -- the update -------------------------------------------------------------------------

    def run(self) -> ReportRow:
        with self.connect() as r:
            busy = self.acquire(r)
            if busy:
                return self.row(Outcome.SKIPPED, busy)
            try:
                self.write_journal(r, "started")
                try:
                    self.take_snapshot()
                except MoxflowError as exc:
                    self.release(r)
                    return self.row(Outcome.FAILED, f"snapshot failed, nothing changed: {exc}")
                self.write_journal(r, "snapshotted", snapshot=self.snapshot)

                flake = self.spec.flake
                before = r.run(["cat", f"{flake}/flake.lock"]).stdout
                r.run(["cp", f"{flake}/flake.lock", f"{self.state_dir}/flake.lock.before"])
                r.run(flake_update_argv(flake, self.spec.commit_lock_file), timeout=1800)
                after = r.run(["cat", f"{flake}/flake.lock"]).stdout
                changes = lock_changes(parse_flake_lock(before), parse_flake_lock(after))
                if not changes and not self.force:
                    self.drop_snapshot()
                    self.mark_checked(r)
                    self.release(r)
                    return self.row(Outcome.OK, "up to date")
                for change in changes:
                    self.note(str(change))

                built = r.run(build_argv(flake, self.attr), check=False, timeout=6 * 3600)
                if built.exit_code != 0:
                    tail = "\n".join(built.stderr.strip().splitlines()[-5:])
                    r.run(["cp", f"{self.state_dir}/flake.lock.before", f"{flake}/flake.lock"])
                    self.drop_snapshot()
                    self.release(r)
                    return self.row(Outcome.FAILED, f"build failed, nothing activated: {tail}")
                self.write_journal(r, "built")
            except MoxflowError as exc:
                self.release(r)
                return self.row(Outcome.FAILED, f"failed before any change: {exc}")

            old = self.baseline.generation
            assert old is not None
            timeout = self.settings.confirm_timeout
            r.run(arm_deadman_argv(self.profile, old, int(timeout)))
            self.write_journal(r, "armed")
            self.note(f"dead-man timer armed ({timeout:g}s)")
            try:
                switched = r.run(switch_argv(flake, self.attr), check=False, timeout=3600)
                switch_note = "" if switched.exit_code == 0 else f"switch exit {switched.exit_code}"
            except SshError as exc:
                switch_note = f"switch interrupted: {exc}"
            # the generation the switch made (the same one when the configuration did not
            # change); if the switch cut us off, the next one, and the timer has it
            new = old + 1
            with suppress(SshError):
                gens = parse_generations(r.run(generations_argv()).stdout)
                new = current_generation(gens).number
                self.write_journal(r, "switched", new_generation=new)
            if new == old:
                self.note("the configuration did not change: no new generation")

        ok, why = self.verify(expected=new, grace=self.settings.health_grace)
        if ok:
            with self.connect() as r:
                late = False
                if r.run(disarm_deadman_argv(), check=False).exit_code != 0:
                    # no timer to stop: did it fire and revert the host before we confirmed?
                    gens = parse_generations(r.run(generations_argv()).stdout)
                    late = current_generation(gens).number != new
                if not late:
                    self.note("confirmed")
                    self.write_journal(r, "confirmed")
                    self.mark_checked(r)
                    try:
                        self.prune_snapshots()
                    except MoxflowError as exc:
                        self.note(f"pruning old snapshots failed: {exc}")
                    self.release(r)
            if late:
                return self.recover(old, "the dead-man timer fired before the confirmation")
            done = "updated" + (f" ({switch_note})" if switch_note else "")
            return self.row(Outcome.OK, done, new=new)
        return self.recover(old, why)

    def recover(self, old: int, why: str) -> ReportRow:
        """The recovery ladder after a failed verification."""
        self.note(f"verification failed: {why}")
        grace = self.settings.health_grace
        wait_for_timer = self.settings.confirm_timeout + grace
        try:
            current: int | None = self.generation_now()
        except SshError as exc:
            current = None
            self.note(f"host unreachable ({exc.message}); waiting for the dead-man timer")
        if current == old:
            # 1. the dead-man timer already reverted it
            ok, why2 = self.verify(expected=old, grace=grace)
            if ok:
                return self._rolled_back(old, "dead-man timer")
            self.note(f"reverted by the dead-man timer, but still unhealthy: {why2}")
        elif current is not None:
            # 2. reachable on the new generation: switch back ourselves
            try:
                with self.connect() as r:
                    r.run(disarm_deadman_argv(), check=False)
                    for argv in revert_argvs(self.profile, old):
                        r.run(argv)
                self.note(f"switched back to generation {old}")
                ok, why2 = self.verify(expected=old, grace=grace)
                if ok:
                    return self._rolled_back(old, "generation rollback")
                self.note(f"still unhealthy on generation {old}: {why2}")
            except SshError as exc:
                self.note(f"switching back failed: {exc.message}")
        else:
            # 3. unreachable: the dead-man timer reverts it by itself (bounded wait)
            ok, why2 = self.verify(expected=old, grace=wait_for_timer)
            if ok:
                return self._rolled_back(old, "dead-man timer")
            self.note(f"the dead-man timer did not bring it back: {why2}")
        # 4. the snapshot
        if self.rollback_snapshot():
            ok, why3 = self.verify(expected=old, grace=wait_for_timer)
            if ok:
                return self._rolled_back(old, "snapshot rollback")
            self.note(f"still not healthy after the snapshot rollback: {why3}")
        # 5. a human
        kept = f"snapshot {self.snapshot} kept" if self.snapshot else "no snapshot to restore"
        self._event("moxflow.needs-attention", old)
        return self.row(Outcome.NEEDS_ATTENTION, f"needs attention: {kept}", new="?")

    def _rolled_back(self, old: int, how: str) -> ReportRow:
        """Back on the old generation: put flake.lock back too, so the next run retries."""
        try:
            with self.connect() as r:
                r.run(disarm_deadman_argv(), check=False)
                backup = f"{self.state_dir}/flake.lock.before"
                if r.run(["test", "-f", backup], check=False).exit_code == 0:
                    r.run(["cp", backup, f"{self.spec.flake}/flake.lock"])
                    self.note("flake.lock restored")
                self.release(r)
        except SshError as exc:
            self.note(f"could not clear the lock: {exc}")
        self._event("moxflow.rollback", old, how=how)
        return self.row(Outcome.ROLLED_BACK, f"rolled back by {how}", new=old)

    def _event(self, name: str, generation: int, **extra: str) -> None:
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


@task(name="nixos-update-host", cache_policy=NO_CACHE, task_run_name="update-{host}")
def update_host(
    inv: Inventory,
    host: str,
    baseline: Preflight,
    now: datetime,
    tz: tzinfo,
    flow_run_id: str | None,
    *,
    no_snapshot: bool = False,
    force: bool = False,
) -> ReportRow:
    """Update one NixOS host safely; never raises, the row says what happened."""
    job = HostUpdate(
        inv=inv,
        host=host,
        baseline=baseline,
        now=now,
        tz=tz,
        flow_run_id=flow_run_id,
        no_snapshot=no_snapshot,
        force=force,
        log=get_run_logger(),
    )
    try:
        return job.run()
    except MoxflowError as exc:
        return job.row(Outcome.FAILED, f"{exc}")


__all__ = ["Preflight", "flow_run_alive", "preflight", "update_host"]
