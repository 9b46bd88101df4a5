"""Prefect tasks for Windows VMs through the Proxmox API and the QEMU guest agent: the
pre-flight facts of a VM, then each step of its update, one task run each, named
``<vm>: <step>``: snapshot → install round N → reboot N → ... → verify → commit, or →
rollback (``moxflow.windows`` decides, these only act).

Every script is one of moxflow's own ``.ps1`` files, sent unchanged through ``agent/exec``
with its values as JSON on stdin (:func:`moxflow.windows.exec_request`). ``exec-status`` is
polled with backoff until the process ends; its final answer is read exactly once (the
agent forgets a process once it has reported its end), and its stdout and stderr go to the
run's log, each cut to its last :data:`moxflow.windows.LOG_TRIM` characters.

The running of a script (:func:`run_script`), the pre-flight checks
(:func:`require_windows`), the snapshot (:func:`take_snapshot`) and the prune of older
snapshots (:func:`prune_snapshots`) serve the provisioning tasks too
(``tasks/windows_provision.py``).

The facts, the snapshot, the verification and the commit are idempotent and retried on
transient errors. An install round, a reboot and a rollback are not (a second install while
the first still runs meets a busy installer; a second reboot request reboots twice): each
waits, bounded, and checks what happened instead.

The description of a pre-update snapshot names the run and says how its update stands:
``[in progress]`` from the snapshot on, ``[committed]`` once the commit kept the update,
``[rolled back]`` once the rollback went back to it.

A run killed half-way (its process gone, its VM's slot free again) leaves its pre-update
snapshot in progress, and maybe an install still at work in the guest, a reboot or a
rollback under way. The next run recognises it (:func:`find_interrupted`: the newest
pre-update snapshot names another run, still in progress, and the Prefect server says that
run is over) and finishes the update: it adopts that snapshot as its own rollback point
(the VM as it was before anything changed; never a new snapshot of a half-updated VM),
waits for that run's tasks, the agent and the install still running (the installer
answers busy: it is not started twice), then verifies, and commits or rolls back to that
snapshot. The report says what was recovered. Where adopting is not safe (a newer snapshot
after it, older than [windows] adopt_max_age_hours, a run the server does not know; or that
run still runs) the VM is left as it is, nothing changed (:class:`LeftAlone`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

from moxflow.errors import (
    GuestLockedError,
    MoxflowError,
    ParseError,
    ProxmoxError,
    WindowsScriptError,
)
from moxflow.guests import Guest
from moxflow.inventory import Inventory, WindowsSettings, WindowsVm
from moxflow.naming import (
    description_run,
    description_state,
    owned_by_moxflow,
    parse_snapshot_name,
    snapshot_description,
    snapshot_name,
)
from moxflow.pacing import poll_delay
from moxflow.proxmox import GuestSnapshot, ProxmoxClient
from moxflow.report import Outcome, format_age
from moxflow.snapshots import plan_guest_prune
from moxflow.windows import (
    EXIT_CODES,
    CheckResults,
    ExecStatus,
    InstallOutcome,
    InstallRun,
    OsInfo,
    PendingUpdate,
    RebootState,
    RoundPlan,
    SnapshotChoice,
    UpdateScan,
    Verdict,
    VmPlan,
    agent_enabled,
    describe_update,
    exec_request,
    left_as_is,
    newer_snapshots,
    not_adopted,
    parse_checks,
    parse_exec_status,
    parse_install,
    parse_osinfo,
    parse_reboot_pending,
    parse_update_scan,
    plan_round,
    readable_stderr,
    script_output,
    snapshot_taken,
    trim,
    unfinished_candidate,
    verdict,
)
from tasks._logging import LoggerLike, run_logger
from tasks._retry import step
from tasks._runs import flow_run_status, subflow_ended
from tasks.proxmox import wait_for_earlier_task

SNAPSHOT_LABEL = "pre-update"
"""The label of a Windows VM's snapshot before its update (kept by [windows.policies])."""
IN_PROGRESS = "in progress"
"""What the description of an update's snapshot says until its commit or rollback."""
POLL_FLOOR = 0.05
POLL_CAP = 15.0
"""Between two looks at a running script or a VM coming back: a tenth of the time waited so
far, within these bounds (seconds); every wait is bounded by a setting."""
TASK_TIMEOUT = 600.0
"""Seconds a snapshot, its deletion, a start or a rollback task may run."""


class WindowsStepFailed(MoxflowError):
    """A step of a Windows VM's update failed (``vm``, ``step``); never retried as such."""

    def __init__(self, vm: str, step: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{vm}: {step}: {message}", hint=hint)
        self.vm = vm
        self.step = step


class VerificationFailed(WindowsStepFailed):
    """The VM did not pass verification after its update; ``problems`` says each reason."""

    def __init__(self, vm: str, problems: Sequence[str]) -> None:
        super().__init__(vm, "verify", "; ".join(problems))
        self.problems = tuple(problems)


class LeftAlone(WindowsStepFailed):
    """The VM is left as it is, before any change, for what an earlier run left on it;
    ``outcome`` is how its row reads (busy: that run still runs; needs attention: a person
    decides what becomes of that run's update)."""

    def __init__(
        self, vm: str, step: str, message: str, outcome: Outcome, *, hint: str | None = None
    ) -> None:
        super().__init__(vm, step, message, hint=hint)
        self.outcome = outcome


# --- running one script ----------------------------------------------------------------------


def _log() -> LoggerLike:
    return run_logger("moxflow.windows")


def _wait_exit(
    client: ProxmoxClient, guest: Guest, pid: int, what: str, timeout: float
) -> ExecStatus:
    """Poll ``exec-status`` of ``pid`` with backoff until it reports the end (read once),
    at most ``timeout`` seconds; a passing API or agent error is waited through."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            status = parse_exec_status(client.agent_exec_status(guest.node, guest.vmid, pid))
        except ProxmoxError as exc:
            if "Invalid parameter 'pid'" in str(exc):
                raise WindowsScriptError(
                    f"the guest agent no longer knows process {pid}",
                    vm=guest.label,
                    script=what,
                    hint="the guest restarted (or the agent did) before the script's end "
                    "was read; what it did is unknown",
                ) from exc
            if not exc.transient:
                raise
            status = None
        if status is not None and status.exited:
            return status
        now = time.monotonic()
        if now >= deadline:
            raise WindowsScriptError(
                f"still running after {now - started:.0f} s (limit {timeout:g} s)",
                vm=guest.label,
                script=what,
                hint="it may still finish inside the VM; raise the [windows] timeout if it "
                "is just slow",
            )
        delay = poll_delay(now - started, None, floor=POLL_FLOOR, cap=POLL_CAP)
        time.sleep(min(delay, max(0.0, deadline - now)))


def _log_streams(guest: Guest, what: str, status: ExecStatus, seconds: float) -> None:
    """How ``what`` ended, and its stdout and stderr (each cut to its end), in the run's log."""
    log = _log()
    log.info("%s: %s ended (%s) after %.1f s", guest.label, what, status.describe(), seconds)
    if status.out.strip():
        cut = " (cut by the agent at 16 MiB)" if status.out_truncated else ""
        log.info("%s: %s stdout%s:\n%s", guest.label, what, cut, trim(status.out.strip()))
    if status.err.strip():
        cut = " (cut by the agent at 16 MiB)" if status.err_truncated else ""
        err = trim(readable_stderr(status.err).strip())
        log.warning("%s: %s stderr%s:\n%s", guest.label, what, cut, err)


def run_script(
    client: ProxmoxClient,
    guest: Guest,
    script: str,
    data: Mapping[str, Any] | None,
    *,
    timeout: float,
) -> tuple[ExecStatus, dict[str, Any]]:
    """Run one of moxflow's scripts in ``guest`` with ``data`` as its JSON input; its end and
    the JSON object it answered. ``WindowsScriptError`` when it ends with a code it must not
    (:data:`moxflow.windows.EXIT_CODES`), crashes, or does not end within ``timeout``."""
    req = exec_request(script, data)
    started = time.monotonic()
    pid = client.agent_exec(guest.node, guest.vmid, req.command, req.input_data)
    status = _wait_exit(client, guest, pid, script, timeout)
    _log_streams(guest, script, status, time.monotonic() - started)
    if status.signal is not None or status.exitcode not in EXIT_CODES.get(script, (0,)):
        raise WindowsScriptError(
            "failed",
            vm=guest.label,
            script=script,
            exit_code=status.exitcode,
            signal=status.signal,
            stderr=trim(readable_stderr(status.err).strip(), 600),
        )
    try:
        return status, script_output(status, script)
    except ParseError as exc:
        raise WindowsScriptError(
            exc.message.removeprefix(f"{script}: "),
            vm=guest.label,
            script=script,
            exit_code=status.exitcode,
        ) from exc


def run_command(
    client: ProxmoxClient, guest: Guest, argv: Sequence[str], *, timeout: float
) -> ExecStatus:
    """Run a program of the inventory's checks in ``guest`` (no shell, no stdin); its end."""
    started = time.monotonic()
    pid = client.agent_exec(guest.node, guest.vmid, argv)
    status = _wait_exit(client, guest, pid, argv[0], timeout)
    _log_streams(guest, argv[0], status, time.monotonic() - started)
    return status


def _agent_answers(client: ProxmoxClient, guest: Guest) -> bool:
    try:
        client.agent_ping(guest.node, guest.vmid)
    except ProxmoxError:
        return False
    return True


def wait_agent(
    client: ProxmoxClient,
    guest: Guest,
    settings: WindowsSettings,
    *,
    what: str,
    booted_after: str | None = None,
) -> RebootState:
    """Wait, at most ``settings.agent_timeout`` seconds, until the VM's agent answers and
    (with ``booted_after``, the boot time before a reboot) Windows says it booted since; then
    its reboot state. ``WindowsStepFailed`` naming ``what`` when it does not."""
    started = time.monotonic()
    deadline = started + settings.agent_timeout
    last = "the agent did not answer"
    while True:
        if _agent_answers(client, guest):
            try:
                _, out = run_script(
                    client, guest, "reboot-pending.ps1", {}, timeout=settings.script_timeout
                )
                state = parse_reboot_pending(out)
                if booted_after is None or state.last_boot != booted_after:
                    return state
                last = f"Windows still reports its boot at {booted_after}"
            except (MoxflowError, OSError) as exc:
                last = str(exc)
        now = time.monotonic()
        if now >= deadline:
            raise WindowsStepFailed(
                guest.label,
                what,
                f"the VM did not come back within {settings.agent_timeout:g} s ({last})",
                hint="look at its console in the Proxmox UI",
            )
        delay = poll_delay(now - started, None, floor=POLL_FLOOR, cap=POLL_CAP)
        time.sleep(min(delay, max(0.0, deadline - now)))


# --- an interrupted run ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A pre-update snapshot an earlier run took and never finished with: that run's
    update of the VM never reached its commit or its rollback (its process died half-way).
    The snapshot is the VM as it was before that run changed anything."""

    snapshot: str
    vmstate: bool
    run: str  # the flow run that took it (its description says)
    taken: datetime | None = None

    def describe(self) -> str:
        return f"snapshot {self.snapshot} of the interrupted run {self.run}"

    def age(self) -> str:
        """How long ago it was taken: what a rollback to it undoes is that old."""
        return f"taken {format_age(datetime.now(UTC), self.taken)}"


def find_interrupted(
    client: ProxmoxClient,
    guest: Guest,
    this_run: str,
    settings: WindowsSettings,
    snapshots: Sequence[GuestSnapshot] | None = None,
    *,
    step: str = "pre-flight",
) -> Interrupted | None:
    """What an interrupted run left on ``guest`` for this run (``this_run``) to finish: the
    VM's newest pre-update snapshot names another run and does not say that run committed
    or rolled back (:func:`moxflow.windows.unfinished_candidate`); that run is over (the
    Prefect server says so; for a description written before they said ``in progress``:
    its subflow for the VM never ended by itself); and a rollback to the snapshot undoes
    that run only: no snapshot was taken after it, and it is not older than [windows]
    adopt_max_age_hours (:func:`moxflow.windows.not_adopted`).

    None when there is none (a new snapshot is taken, as always), also when an old-style
    description names a run the Prefect server does not know. ``LeftAlone`` (``step``
    failing, nothing changed) when the VM must be left as it is: busy while that run still
    runs; needing attention when the snapshot may not be adopted, or says ``in progress``
    for a run the server does not know."""
    snaps = client.list_snapshots(guest) if snapshots is None else list(snapshots)
    found = unfinished_candidate(snaps, SNAPSHOT_LABEL, this_run)
    owner = description_run(found.description) if found is not None else None
    if found is None or owner is None:
        return None
    legacy = description_state(found.description) is None
    try:
        known = subflow_ended(owner, guest.label) if legacy else flow_run_status(owner)
    except Exception as exc:  # the Prefect server did not answer: judge nothing
        raise WindowsStepFailed(
            guest.label,
            step,
            f"the Prefect server could not say whether run {owner}, which took "
            f"{found.name}, finished: {exc}",
            hint="nothing was changed; run again once the Prefect server answers",
        ) from exc
    now = datetime.now(UTC)
    taken = snapshot_taken(found)
    age = f"taken {format_age(now, taken)}"
    if legacy:  # judged as before descriptions said their state: by its subflow
        if known is None:
            _log().warning(
                "%s: %s names run %s, which the Prefect server does not know: not adopted",
                guest.label,
                found.name,
                owner,
            )
        if known is not False:  # unknown, or its subflow ended by itself
            return None
    elif known:  # the run still runs (as far as the server knows)
        raise LeftAlone(
            guest.label,
            step,
            f"run {owner}, which took {found.name} ({age}) and has not finished with it, "
            "still runs as far as the Prefect server knows: left alone, nothing was changed",
            Outcome.BUSY,
            hint=f"if that run is dead (its worker or machine lost), cancel it (prefect "
            f"flow-run cancel {owner}); the next run then finishes its update",
        )
    elif known is None:
        raise LeftAlone(
            guest.label,
            step,
            f"snapshot {found.name} ({age}) says run {owner} was updating the VM, but the "
            "Prefect server does not know that run: whether that update finished is "
            f"unknown; {left_as_is(guest.vmid, found.name, newer_snapshots(snaps, found))}",
            Outcome.NEEDS_ATTENTION,
        )
    refused = not_adopted(guest.vmid, snaps, found, owner, now, settings.adopt_max_age_hours)
    if refused is not None:
        raise LeftAlone(guest.label, step, refused, Outcome.NEEDS_ATTENTION)
    return Interrupted(found.name, found.vmstate, owner, taken)


def wait_earlier_tasks(client: ProxmoxClient, guest: Guest) -> Guest:
    """Wait for the snapshot, reboot or rollback task an interrupted run left running on
    ``guest`` (the VM is locked meanwhile, or not yet back); the guest as it is after."""
    waited = False
    for op in ("snapshot", "reboot", "rollback"):
        waited = wait_for_earlier_task(client, guest, op) or waited
    if not waited:
        return guest
    return replace(guest, status=client.guest_status(guest.node, "qemu", guest.vmid))


# --- pre-flight --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VmFacts:
    """A Windows VM before any change: its config, the OS, its reboot state, the updates;
    what an interrupted run left on it (``interrupted``) and what pre-flight did about it
    (``recovery``: lines for the report)."""

    guest: Guest
    config: dict[str, Any]
    os: OsInfo
    reboot: RebootState
    scan: UpdateScan
    interrupted: Interrupted | None = None
    recovery: tuple[str, ...] = ()

    @property
    def os_text(self) -> str:
        if self.os.build is None:
            return "not known: its agent did not answer"
        return f"{self.os.version}, build {self.os.build}"


def require_windows(
    client: ProxmoxClient, guest: Guest, *, verb: str = "updates"
) -> tuple[dict[str, Any], OsInfo]:
    """Read-only, before any change: the VM runs, its agent is configured and answers,
    get-osinfo says Windows; its config and OS. ``WindowsStepFailed`` ("pre-flight") saying
    which is not so (what moxflow does to a running VM only: ``verb``)."""
    config = _require_agent(client, guest, verb)
    try:
        client.agent_ping(guest.node, guest.vmid)
    except ProxmoxError as exc:
        raise _silent(guest, exc) from exc
    return config, _require_os(client, guest)


def _require_agent(
    client: ProxmoxClient, guest: Guest, verb: str, stopped_hint: str | None = None
) -> dict[str, Any]:
    """The VM runs and has its agent configured; its config."""
    if not guest.running:
        raise WindowsStepFailed(
            guest.label,
            "pre-flight",
            f"the VM is {guest.status}; moxflow {verb} a running Windows VM only",
            hint=stopped_hint or "start it, or leave it out with --only",
        )
    config = client.guest_config(guest.node, "qemu", guest.vmid)
    if not agent_enabled(config):
        raise WindowsStepFailed(
            guest.label,
            "pre-flight",
            "No QEMU guest agent configured",
            hint="enable it (VM → Options → QEMU Guest Agent, or qm set VMID --agent "
            "enabled=1) and install the agent in Windows (virtio-win)",
        )
    return config


def _silent(guest: Guest, exc: ProxmoxError) -> WindowsStepFailed:
    return WindowsStepFailed(
        guest.label,
        "pre-flight",
        f"the guest agent does not answer: {exc.message}",
        hint="check that the QEMU-GA service runs in Windows",
    )


def _require_os(client: ProxmoxClient, guest: Guest) -> OsInfo:
    """get-osinfo says Windows; the OS."""
    os = parse_osinfo(client.agent_get_osinfo(guest.node, guest.vmid))
    if not os.is_windows:
        raise WindowsStepFailed(
            guest.label,
            "pre-flight",
            f"get-osinfo says {os.pretty_name or os.id or 'nothing'}, not Windows",
            hint="list only Windows VMs in [windows.vms]",
        )
    return os


@step("windows-preflight", "{guest.label}: pre-flight")
def preflight(inv: Inventory, client: ProxmoxClient, guest: Guest, run: str = "") -> VmFacts:
    """Read-only, before any change: the VM runs, its agent is configured and answers,
    get-osinfo says Windows; then whether a reboot is pending and which updates Windows
    Update offers (``list-updates.ps1``). A VM that fails any of these is refused. First
    what an interrupted run left (``run``: this flow run; :func:`find_interrupted`): a VM
    it must leave alone is (``LeftAlone``); on one whose update this run is to finish, that
    run's snapshot, reboot or rollback task still running is waited for, and then an agent
    that does not answer, bounded by [windows] agent_timeout: that run's reboot may be under
    way; when it still does not answer, the facts say nothing of Windows (no build, no
    updates) and the update goes on to adopt that run's snapshot and roll back to it."""
    settings = inv.windows
    step_name = "pre-flight"
    stopped_hint = None
    interrupted = find_interrupted(client, guest, run, settings)
    if interrupted is not None:  # its snapshot, reboot or rollback task ends first
        guest = wait_earlier_tasks(client, guest)
        stopped_hint = (
            f"{interrupted.describe()} is on it (that run may have shut it down for a "
            "consistent snapshot): start it, and the next run finishes that update"
        )
    config = _require_agent(client, guest, "updates", stopped_hint)
    recovery: list[str] = []
    try:
        client.agent_ping(guest.node, guest.vmid)
    except ProxmoxError as exc:
        if interrupted is None:
            raise _silent(guest, exc) from exc
        _log().info(
            "%s: the agent does not answer (%s); %s: waiting for it",
            guest.label,
            exc.message,
            interrupted.describe(),
        )
        started = time.monotonic()
        try:
            wait_agent(client, guest, settings, what=step_name)
        except WindowsStepFailed as lost:  # the update is rolled back (holding the VM)
            _log().warning("%s: %s", guest.label, lost.message)
            return VmFacts(
                guest,
                config,
                OsInfo("", "", None, ""),
                RebootState(False, (), ""),
                UpdateScan(False, ()),
                interrupted,
                (
                    f"the agent stayed silent for {time.monotonic() - started:.0f} s after "
                    f"the interrupted run {interrupted.run}: its update is rolled back",
                ),
            )
        recovery.append(
            f"recovered: waited {time.monotonic() - started:.0f} s for the agent, silent "
            f"after the interrupted run {interrupted.run} (its reboot, most likely)"
        )
    os = _require_os(client, guest)
    _, out = run_script(client, guest, "reboot-pending.ps1", {}, timeout=settings.script_timeout)
    reboot = parse_reboot_pending(out)
    _, out = run_script(
        client,
        guest,
        "list-updates.ps1",
        {"drivers": settings.drivers},
        timeout=settings.scan_timeout,
    )
    scan = parse_update_scan(out)
    _log().info(
        "%s: %s, %d update(s) offered%s",
        guest.label,
        os.version,
        len(scan.updates),
        ", a reboot pending" if reboot.pending or scan.reboot_required else "",
    )
    return VmFacts(guest, config, os, reboot, scan, interrupted, tuple(recovery))


# --- one VM's update ---------------------------------------------------------------------------


@dataclass
class VmRun:
    """One VM's update as the steps share it: the plan, the facts before, and what the steps
    did so far (the snapshot taken and its kind, each round's install, the reboots)."""

    inv: Inventory
    client: ProxmoxClient
    key: str
    facts: VmFacts
    plan: VmPlan
    now: datetime
    tz: tzinfo
    run_id: str = ""
    snapshot: str | None = None
    snapshot_kind: str = ""
    rounds: list[InstallRun] = field(default_factory=list)
    reboots: int = 0
    last_boot: str = ""
    notes: list[str] = field(default_factory=list)
    adopted: Interrupted | None = None  # the interrupted run's snapshot this run adopted
    recovered: list[str] = field(default_factory=list)  # what it recovered, for the report

    def __post_init__(self) -> None:
        self.last_boot = self.facts.reboot.last_boot
        for line in self.facts.recovery:
            self.recover(line)

    @property
    def guest(self) -> Guest:
        return self.facts.guest

    @property
    def label(self) -> str:
        return self.guest.label

    @property
    def settings(self) -> WindowsSettings:
        return self.inv.windows

    @property
    def vm(self) -> WindowsVm:
        return self.settings.vms[self.key]

    @property
    def adopted_from(self) -> str | None:
        """The interrupted run whose snapshot this run adopted as its rollback point."""
        return None if self.adopted is None else self.adopted.run

    @property
    def installed(self) -> list[InstallOutcome]:
        return [u for r in self.rounds for u in r.updates if not u.failed]

    @property
    def failed(self) -> list[InstallOutcome]:
        return [u for r in self.rounds for u in r.failed]

    def note(self, text: str) -> None:
        self.notes.append(text)
        _log().info("%s: %s", self.label, text)

    def recover(self, text: str) -> None:
        """A note of what this run recovered from an interrupted one (``recovered: ...``)."""
        self.recovered.append(text)
        self.note(text)


@dataclass(frozen=True, slots=True)
class Taken:
    """A snapshot :func:`take_snapshot` took (or found taken by an earlier attempt), and the
    VM's new boot time when it was shut down for it (None: it kept running)."""

    name: str
    booted: str | None


def take_snapshot(
    client: ProxmoxClient,
    guest: Guest,
    settings: WindowsSettings,
    choice: SnapshotChoice,
    label: str,
    now: datetime,
    run_id: str,
    state: str = "",
) -> Taken:
    """The ``label`` snapshot of a Windows VM, of the kind ``choice`` says: with RAM state,
    disk only (the agent freezing the file systems), or disk only with the VM shut down
    cleanly first and started again after (then its agent is waited for); its description
    names the run and (``state``) how the change it guards stands. Idempotent: the name
    carries the run's time; a whole snapshot of that name is an earlier attempt's."""
    name = snapshot_name(label, now)
    description = snapshot_description(label, now, run_id, state=state)
    done = any(s.name == name and s.complete for s in client.list_snapshots(guest))
    stopped = False
    try:
        if not done and choice.shutdown:
            if client.guest_status(guest.node, "qemu", guest.vmid) == "running":
                timeout = settings.shutdown_timeout
                upid = client.shutdown(guest.node, "qemu", guest.vmid, int(timeout))
                client.wait_task(upid, timeout=timeout + 30, node=guest.node)
            stopped = True
            _log().info("%s: shut down cleanly for a consistent snapshot", guest.label)
        if not done:
            _create_snapshot(client, guest, name, description, vmstate=choice.vmstate)
    finally:
        if stopped:  # started again whether the snapshot was taken or not
            upid = client.power(guest.node, "qemu", guest.vmid, "start")
            client.wait_task(upid, timeout=TASK_TIMEOUT, node=guest.node)
    booted = None
    if stopped:  # a new boot: what the first reboot's proof compares with
        booted = wait_agent(client, guest, settings, what="snapshot").last_boot
    return Taken(name, booted)


@step("windows-snapshot", "{run.label}: snapshot")
def snapshot(run: VmRun) -> str:
    """The pre-update snapshot, of the kind the plan chose: with RAM state, disk only (the
    agent freezing the file systems), or disk only with the VM shut down cleanly first and
    started again after (then its agent is waited for). Idempotent: the name carries the
    run's time; a whole snapshot of that name is an earlier attempt's.

    Its description says ``[in progress]`` until the commit or the rollback says otherwise.

    First what an interrupted run left (the caller holds the VM's slot: no other run is at
    work on it). Its snapshot task still running is waited for. Its pre-update snapshot,
    never committed nor rolled back to, is adopted as this run's rollback point: the VM may
    be half-updated now, and that snapshot is how it was before (:func:`_adopt`); unless
    :func:`find_interrupted` says to leave the VM alone (``LeftAlone``: nothing changed)."""
    client, guest, choice = run.client, run.guest, run.plan.snapshot
    if run.adopted is not None:  # an earlier attempt adopted one (and claimed it)
        return _adopt(run, run.adopted)
    snaps = client.list_snapshots(guest)
    mine = [s for s in snaps if owned_by_moxflow(s.name, SNAPSHOT_LABEL)]
    if mine and not mine[-1].complete and wait_for_earlier_task(client, guest, "snapshot"):
        snaps = client.list_snapshots(guest)  # the earlier run's snapshot task has ended
    left = find_interrupted(client, guest, run.run_id, run.settings, snaps, step="snapshot")
    if left is not None:
        return _adopt(run, left)
    taken = take_snapshot(
        client, guest, run.settings, choice, SNAPSHOT_LABEL, run.now, run.run_id, IN_PROGRESS
    )
    if taken.booted is not None:
        run.last_boot = taken.booted
    run.snapshot, run.snapshot_kind = taken.name, choice.kind
    run.note(f"took snapshot {taken.name}: {choice.reason}")
    return taken.name


def _adopt(run: VmRun, left: Interrupted) -> str:
    """Take ``left``'s snapshot as this run's rollback point. Wait first for what the
    interrupted run may have left under way: its snapshot, reboot or rollback task (the VM
    is locked meanwhile, and PVE refuses to change a snapshot's description while it is).
    Then claim the snapshot: its description names this run from now on (and the
    interrupted one), ``[in progress]``, so that the run after this one judges it by how
    this run ends (committed, rolled back, or interrupted in turn). Then wait for the agent
    (and Windows' boot time, which the first reboot's proof compares with). A VM that does
    not come back fails the step with the rollback point set: the caller rolls back."""
    client, guest = run.client, run.guest
    if run.adopted is None:  # once, whatever happens next: the rollback point is set
        run.snapshot = left.snapshot
        run.snapshot_kind = "ram" if left.vmstate else "disk-live"
        run.adopted = left
        run.recover(
            f"recovered: adopted {left.describe()} ({left.age()}) as this run's rollback point"
        )
    wait_earlier_tasks(client, guest)
    mark_snapshot(run, IN_PROGRESS)
    run.last_boot = wait_agent(client, guest, run.settings, what="snapshot").last_boot
    return left.snapshot


def mark_snapshot(run: VmRun, state: str) -> None:
    """Write into the run's snapshot's description how its update stands (``in progress``,
    ``committed``, ``rolled back``): what the run after this one goes by."""
    if run.snapshot is None:
        return
    parsed = parse_snapshot_name(run.snapshot)
    created = parsed.created if parsed else run.now
    text = snapshot_description(
        SNAPSHOT_LABEL, created, run.run_id, adopted_from=run.adopted_from or "", state=state
    )
    run.client.set_snapshot_description(run.guest, run.snapshot, text)


def _create_snapshot(
    client: ProxmoxClient, guest: Guest, name: str, description: str, *, vmstate: bool
) -> None:
    """Take snapshot ``name`` and wait for it; when the VM is locked by the snapshot task of
    an earlier attempt of this step (its wait failed), wait for that task instead."""

    def create() -> None:
        upid = client.create_snapshot(guest, name, description, vmstate=vmstate)
        client.wait_task(upid, timeout=TASK_TIMEOUT, node=guest.node)

    try:
        create()
    except GuestLockedError:
        if not wait_for_earlier_task(client, guest, "snapshot"):
            raise
        if not any(s.name == name and s.complete for s in client.list_snapshots(guest)):
            create()


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One install round: its plan, the install's answer (None when nothing was installed),
    and whether a reboot comes next."""

    round: int
    plan: RoundPlan
    install: InstallRun | None
    reboot: bool

    @property
    def failed(self) -> tuple[InstallOutcome, ...]:
        return () if self.install is None else self.install.failed


@step("windows-install", "{run.label}: install round {n}", retries=0)  # never twice at once
def install_round(run: VmRun, n: int, upstream: object) -> RoundResult:
    """Search again (``list-updates.ps1``), plan the round (the chosen categories, never an
    update that failed earlier in this run) and install it (``install-updates.ps1``: the
    Windows Update API downloads and installs them as SYSTEM); each update's result code;
    then whether a reboot is pending (the updates say so, or ``reboot-pending.ps1`` does).
    A reboot pending first ends the round at once, for the reboot step. Not retried: a
    second install while the first still runs meets a busy installer."""
    client, guest, settings = run.client, run.guest, run.settings
    _, out = run_script(
        client,
        guest,
        "list-updates.ps1",
        {"drivers": settings.drivers},
        timeout=settings.scan_timeout,
    )
    scan = parse_update_scan(out)
    plan = plan_round(
        scan,
        round_no=n,
        max_rounds=run.plan.max_rounds,
        categories=run.plan.categories,
        failed_before=[u.id for u in run.failed],
    )
    for u, why in plan.skipped:
        _log().info("%s: round %d leaves %s: %s", run.label, n, u.kb, why)
    if scan.reboot_required:
        run.note(f"round {n}: a reboot is pending before anything more can be installed")
        return RoundResult(n, plan, None, reboot=True)
    if not plan.install:
        run.note(f"round {n}: {plan.reason}")
        return RoundResult(n, plan, None, reboot=False)
    for u in plan.install:
        _log().info("%s: round %d installs %s", run.label, n, describe_update(u))
    status, result = _install(run, plan.install)
    if status.exitcode == 3:  # a reboot came first after all
        run.note(f"round {n}: Windows wants a reboot before it installs anything")
        return RoundResult(n, plan, None, reboot=True)
    if status.exitcode == 4:
        run.note(f"round {n}: Windows Update no longer offers the planned updates")
        return RoundResult(n, plan, None, reboot=False)
    run.rounds.append(result)
    for done in result.updates:
        text = f"{done.kb} {done.result} (result code {done.result_code}, {done.hresult})"
        (_log().error if done.failed else _log().info)("%s: round %d: %s", run.label, n, text)
    reboot_needed = result.reboot_required or any(u.reboot_required for u in result.updates)
    if not reboot_needed:  # another installer's pending reboot counts too (verify checks it)
        _, out = run_script(
            client, guest, "reboot-pending.ps1", {}, timeout=settings.script_timeout
        )
        reboot_needed = parse_reboot_pending(out).pending
    ok = len(result.updates) - len(result.failed)
    run.note(
        f"round {n}: {ok} installed, {len(result.failed)} failed"
        + (", a reboot needed" if reboot_needed else "")
    )
    return RoundResult(n, plan, result, reboot=reboot_needed)


def _install(run: VmRun, updates: Sequence[PendingUpdate]) -> tuple[ExecStatus, InstallRun]:
    """``install-updates.ps1`` with ``updates``; while the installer is busy (exit 5: Windows
    is installing by itself, or finishing what a reboot started, or an interrupted run's
    install is still at work; the script then changed nothing) it is asked again, with
    backoff, within [windows] install_timeout."""
    client, guest, settings = run.client, run.guest, run.settings
    ids = [u.id for u in updates]
    started = time.monotonic()
    deadline = started + settings.install_timeout
    busy = False
    while True:
        left = max(1.0, deadline - time.monotonic())
        status, out = run_script(client, guest, "install-updates.ps1", {"ids": ids}, timeout=left)
        if status.exitcode != 5:
            if busy and run.adopted_from is not None:
                waited = time.monotonic() - started
                run.recover(
                    f"recovered: waited {waited:.0f} s for the install still at work in the "
                    f"guest (the interrupted run {run.adopted_from}'s) to end; it was not "
                    "started again" + _finished_by_it(run, updates, status)
                )
            return status, parse_install(out)
        busy = True
        now = time.monotonic()
        if now >= deadline:
            raise WindowsScriptError(
                f"the Windows Update installer stayed busy for {settings.install_timeout:g} s",
                vm=run.label,
                script="install-updates.ps1",
                exit_code=5,
                hint="Windows is installing updates by itself; the next run tries again",
            )
        _log().info("%s: the Windows Update installer is busy; asking again", run.label)
        delay = poll_delay(now - started, None, floor=POLL_FLOOR, cap=60.0)
        time.sleep(min(delay, max(0.0, deadline - now)))


def _finished_by_it(run: VmRun, updates: Sequence[PendingUpdate], status: ExecStatus) -> str:
    """When this run's install did nothing (a reboot comes first, or nothing is left): the
    planned updates Windows Update no longer offers, which the install waited for took."""
    if status.exitcode not in (3, 4):
        return ""
    _, out = run_script(
        run.client,
        run.guest,
        "list-updates.ps1",
        {"drivers": run.settings.drivers},
        timeout=run.settings.scan_timeout,
    )
    offered = {u.id for u in parse_update_scan(out).updates}
    gone = [u.kb for u in updates if u.id not in offered]
    return f"; no longer offered since: {', '.join(gone)}" if gone else ""


@step("windows-reboot", "{run.label}: reboot {n}", retries=0)  # a retry would reboot twice
def reboot(run: VmRun, n: int, upstream: object) -> RebootState:
    """Reboot the VM through the API (``qmreboot``, a clean restart), then wait, bounded by
    [windows] agent_timeout, until its agent answers and Windows says it booted anew (its
    boot time changed: one failed ping proves nothing). Not retried."""
    client, guest, settings = run.client, run.guest, run.settings
    before = run.last_boot
    upid = client.reboot_vm(guest.node, guest.vmid)
    client.wait_task(upid, timeout=settings.shutdown_timeout + 60, node=guest.node)
    state = wait_agent(client, guest, settings, what=f"reboot {n}", booted_after=before)
    run.last_boot = state.last_boot
    run.reboots += 1
    run.note(f"rebooted (booted {state.last_boot})")
    return state


def _checks(run: VmRun) -> tuple[CheckResults | None, dict[str, ExecStatus], dict[str, int]]:
    """The inventory's checks, once: services and ports through ``checks.ps1``, each
    command through the agent."""
    client, guest, settings = run.client, run.guest, run.settings
    checks = run.vm.checks
    services = [c.service for c in checks if c.service is not None]
    ports = [c.port for c in checks if c.port is not None]
    results = None
    if services or ports:
        _, out = run_script(
            client,
            guest,
            "checks.ps1",
            {"services": services, "ports": ports},
            timeout=settings.script_timeout,
        )
        results = parse_checks(out)
    commands: dict[str, ExecStatus] = {}
    expect: dict[str, int] = {}
    for c in checks:
        if c.command is not None:
            name = " ".join(c.command)
            commands[name] = run_command(client, guest, c.command, timeout=c.timeout)
            expect[name] = c.exit_code
    return results, commands, expect


def _judge(run: VmRun) -> Verdict:
    """The verdict now: agent, updates, pending reboot, the inventory's checks."""
    if not _agent_answers(run.client, run.guest):
        return verdict(agent_ok=False, installs=run.rounds, reboot=None)
    _, out = run_script(
        run.client, run.guest, "reboot-pending.ps1", {}, timeout=run.settings.script_timeout
    )
    results, commands, expect = _checks(run)
    checks = run.vm.checks
    return verdict(
        agent_ok=True,
        installs=run.rounds,
        reboot=parse_reboot_pending(out),
        checks=results,
        services=[c.service for c in checks if c.service is not None],
        ports=[c.port for c in checks if c.port is not None],
        commands=commands,
        expect=expect,
    )


@step("windows-verify", "{run.label}: verify")
def verify(run: VmRun, upstream: object) -> Verdict:
    """The agent answers, no update failed, no reboot is pending, and the inventory's checks
    pass (a service running, a TCP port listening, a command's exit code), within [windows]
    verify_grace (services may start late). ``VerificationFailed`` names every problem."""
    started = time.monotonic()
    deadline = started + run.settings.verify_grace
    while True:
        try:
            found = _judge(run)
        except (MoxflowError, OSError) as exc:
            found = Verdict(False, (f"the checks could not run: {exc}",))
        if found.ok:
            run.note("verified: " + _verified_text(run))
            return found
        now = time.monotonic()
        if run.failed or now >= deadline:  # a failed update does not heal by waiting
            raise VerificationFailed(run.label, found.problems)
        _log().info("%s: not yet verified: %s", run.label, "; ".join(found.problems))
        delay = poll_delay(now - started, None, floor=POLL_FLOOR, cap=POLL_CAP)
        time.sleep(min(delay, max(0.0, deadline - now)))


def _verified_text(run: VmRun) -> str:
    checks = [c.describe() for c in run.vm.checks]
    return ", ".join(["agent answers", "no update failed", "no reboot pending", *checks])


def prune_snapshots(
    client: ProxmoxClient, guest: Guest, inv: Inventory, label: str, tz: tzinfo, keep: str | None
) -> list[str]:
    """The VM's older ``label`` snapshots removed by [windows.policies] (only moxflow's own,
    never ``keep``, the one just taken); the names removed. Safe to retry: it plans from the
    snapshots there."""
    policy = inv.windows_policy(label)
    plan = plan_guest_prune(client.list_snapshots(guest), label, policy, tz, keep)
    removed: list[str] = []
    for name in plan.remove:
        try:
            client.wait_task(client.delete_snapshot(guest, name), timeout=TASK_TIMEOUT)
        except ProxmoxError as exc:
            if f"snapshot '{name}' does not exist" not in str(exc):
                raise
        removed.append(name)
    return removed


@step("windows-commit", "{run.label}: commit")
def commit(run: VmRun, upstream: object) -> list[str]:
    """Keep the update: the snapshot stays, its description says ``[committed]`` (the run
    after this one does not adopt it), and the VM's older ``pre-update`` snapshots go by
    [windows.policies] (:func:`prune_snapshots`). Safe to retry."""
    mark_snapshot(run, "committed")
    removed = prune_snapshots(run.client, run.guest, run.inv, SNAPSHOT_LABEL, run.tz,
                              run.snapshot)  # fmt: skip
    if removed:
        run.note("pruned older snapshots " + ", ".join(removed))
    return removed


@step("windows-rollback", "{run.label}: rollback", retries=0)  # waits and checks instead
def rollback(run: VmRun, upstream: object) -> RebootState:
    """Back to the pre-update snapshot: roll back (the VM started again: a disk-only
    snapshot leaves it stopped otherwise), then wait, bounded, until its agent answers. Not
    retried; a rollback that fails leaves the snapshot for a person to use. Once the
    rollback task ended well, the snapshot's description says ``[rolled back]`` (the run
    after this one does not adopt it; should that fail, it does: the VM is as it was
    then)."""
    client, guest = run.client, run.guest
    if run.snapshot is None:
        raise WindowsStepFailed(run.label, "rollback", "no snapshot to roll back to")
    upid = client.rollback_snapshot(guest, run.snapshot, start=True)
    client.wait_task(upid, timeout=TASK_TIMEOUT, node=guest.node)
    try:
        mark_snapshot(run, "rolled back")
    except MoxflowError as exc:
        run.note(f"could not mark {run.snapshot} rolled back ({exc}): the next run adopts it")
    status = client.guest_status(guest.node, "qemu", guest.vmid)
    if status != "running":
        raise WindowsStepFailed(run.label, "rollback", f"the VM is {status} after the rollback")
    state = wait_agent(client, guest, run.settings, what="rollback")
    run.note(f"rolled back to {run.snapshot}; the VM runs and its agent answers")
    return state
