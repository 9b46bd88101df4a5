"""Prefect tasks provisioning a Windows VM through the QEMU guest agent: the pre-flight
facts, then one task run per step, named ``<vm>: <step>``: snapshot → one run per unit that
has something to do (``steamcmd``, ``steam:740``, ``rust``, ``task:Backup games``) → verify →
prune (``moxflow.windows_provision`` plans, these only act).

Scripts run through :func:`tasks.windows.run_script` (one of moxflow's ``.ps1`` files sent
unchanged, its values as JSON on stdin, exec-status polled with backoff and read once, its
stdout and stderr in the log). The pre-flight checks, the snapshot and the prune are
``tasks.windows``' own; the pre-flight also refuses a VM on which an update run died
half-way (``tasks.windows.find_interrupted``): the windows-update run that finishes it
comes first. The Steam password is read from its secret reference inside the
unit's task, at the last moment, and goes only into that exec's input: never into a task
parameter, a command line, a log line or an error.

A unit never stops the others: its task run fails, naming its failed items, and the next unit
runs. It is not retried: each script checks before it acts, but a second try while the first
process may still run in the VM would run two installers at once; the next run tries again.
The facts, the snapshot, the check after and the prune are idempotent and retried on
transient errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import blocks  # noqa: F401 - registers the reader of block: password references
from moxflow.errors import ConfigError, MoxflowError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, WindowsSettings, WindowsVm
from moxflow.proxmox import ProxmoxClient
from moxflow.windows import ItemOutcome, OsInfo, parse_items
from moxflow.windows_provision import (
    FACTS_SCRIPT,
    ProvisionFacts,
    ProvisionPlan,
    Unit,
    check_after,
    facts_request,
    merge_items,
    parse_provision_facts,
    password_problem,
    plan_units,
)
from tasks._logging import LoggerLike, run_logger
from tasks._retry import step
from tasks.windows import (
    WindowsStepFailed,
    find_interrupted,
    prune_snapshots,
    require_windows,
    run_script,
    take_snapshot,
)

SNAPSHOT_LABEL = "pre-provision"
"""The label of a Windows VM's snapshot before provisioning (kept by [windows.policies])."""


class ItemsFailed(WindowsStepFailed):
    """Items of a VM's provisioning failed (in a unit, or in the check after); ``items``
    names them. The run goes on with the next unit."""

    def __init__(self, vm: str, step: str, failed: list[ItemOutcome]) -> None:
        text = "; ".join(f"{o.item} failed" + (f": {o.detail}" if o.detail else "") for o in failed)
        super().__init__(vm, step, text)
        self.items = tuple(o.item for o in failed)


def _log() -> LoggerLike:
    return run_logger("moxflow.windows")


@dataclass(frozen=True, slots=True)
class VmState:
    """A Windows VM before provisioning: its config, the OS, what provisioning finds."""

    guest: Guest
    config: dict[str, Any]
    os: OsInfo
    facts: ProvisionFacts

    @property
    def os_text(self) -> str:
        return f"{self.os.version}, build {self.os.build}"


def _facts(
    client: ProxmoxClient, guest: Guest, settings: WindowsSettings, vm: WindowsVm
) -> ProvisionFacts:
    _, out = run_script(
        client, guest, FACTS_SCRIPT, facts_request(vm), timeout=settings.script_timeout
    )
    return parse_provision_facts(out)


@step("windows-provision-preflight", "{guest.label}: pre-flight")
def preflight(
    inv: Inventory, client: ProxmoxClient, guest: Guest, key: str, run: str = ""
) -> VmState:
    """Read-only, before any change: no interrupted update is on the VM (an update run
    killed half-way, whose pre-update snapshot the next windows-update run adopts: setting
    things up on top of it would be undone by that update's rollback, or leave its rollback
    point behind; :func:`tasks.windows.find_interrupted`, ``run`` being this flow run); the
    VM runs, its agent is configured and answers, get-osinfo says Windows; then what
    ``provision-facts.ps1`` finds of what [windows.vms.KEY] asks for. A VM that fails any of
    these is refused."""
    left = find_interrupted(client, guest, run, inv.windows)
    if left is not None:
        raise WindowsStepFailed(
            guest.label,
            "pre-flight",
            f"an interrupted update is on the VM: {left.describe()} ({left.age()}); nothing "
            "was changed",
            hint="run windows_update first to finish that update, then provision",
        )
    config, os = require_windows(client, guest, verb="provisions")
    facts = _facts(client, guest, inv.windows, inv.windows.vms[key])
    return VmState(guest, config, os, facts)


@dataclass
class ProvisionRun:
    """One VM's provisioning as the steps share it: the plan, the task definitions, and what
    the steps did so far (the snapshot taken, each item's outcome)."""

    inv: Inventory
    client: ProxmoxClient
    key: str
    state: VmState
    plan: ProvisionPlan
    xml: dict[str, str]
    now: datetime
    tz: tzinfo
    run_id: str = ""
    snapshot: str | None = None
    outcomes: list[ItemOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def guest(self) -> Guest:
        return self.state.guest

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
    def failed(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def note(self, text: str) -> None:
        self.notes.append(text)
        _log().info("%s: %s", self.label, text)


@step("windows-provision-snapshot", "{run.label}: snapshot")
def snapshot(run: ProvisionRun) -> str:
    """The pre-provision snapshot, before the first change, of the kind the plan chose (with
    RAM state where configured and possible, else disk only; see tasks.windows.take_snapshot).
    Idempotent."""
    choice = run.plan.snapshot
    taken = take_snapshot(
        run.client, run.guest, run.settings, choice, SNAPSHOT_LABEL, run.now, run.run_id
    )
    run.snapshot = taken.name
    run.note(f"took snapshot {taken.name}: {choice.reason}")
    return taken.name


def _data(run: ProvisionRun, unit: Unit) -> dict[str, Any]:
    """The unit's script input; for a Steam login, with the password read now."""
    data = dict(unit.data)
    steam = run.vm.steam
    if unit.login and steam is not None and steam.password is not None:
        setting = f"windows.vms.{run.key}.steam.password"
        secret = steam.password.resolve(run.inv.base_dir, setting=setting).get_secret_value()
        problem = password_problem(secret)
        if problem is not None:
            raise ConfigError(problem, setting=setting)
        data["password"] = secret
    return data


@step("windows-provision-item", "{run.label}: {unit.name}", retries=0)  # see the module
def provision_unit(run: ProvisionRun, unit: Unit, upstream: object) -> tuple[ItemOutcome, ...]:
    """Run the unit's script (steamcmd.ps1, steam-app.ps1, rustup.ps1, scheduled-task.ps1)
    with its data, bounded by [windows] provision_timeout; each item's outcome (installed,
    present, updated, failed) joins the run's. ``ItemsFailed`` naming the failed items, after
    they are recorded; a script that fails as a whole fails the items it was to change."""
    try:
        data = _data(run, unit)
        _, out = run_script(
            run.client,
            run.guest,
            unit.script,
            data,
            timeout=run.settings.provision_timeout,
        )
        outcomes = merge_items(unit, parse_items(out, unit.script))
    except MoxflowError as exc:
        outcomes = tuple(
            ItemOutcome(i.item, "present")
            if i.action == "present"
            else ItemOutcome(i.item, "failed", str(exc))
            for i in unit.items
        )
    run.outcomes.extend(outcomes)
    for o in outcomes:
        text = f"{o.item} {o.status}" + (f": {o.detail}" if o.detail else "")
        (_log().error if o.status == "failed" else _log().info)("%s: %s", run.label, text)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise ItemsFailed(run.label, unit.name, failed)
    return outcomes


@step("windows-provision-verify", "{run.label}: verify")
def verify(run: ProvisionRun, upstream: object) -> tuple[ItemOutcome, ...]:
    """Read the facts again and plan again: an item its script called done that still needs
    doing is failed (``ItemsFailed``); the run's outcomes are replaced by the checked ones."""
    after = plan_units(run.vm, run.xml, _facts(run.client, run.guest, run.settings, run.vm))
    before = {o.item: o for o in run.outcomes}
    run.outcomes[:] = check_after(run.outcomes, after)
    found = [o for o in run.outcomes if o.status == "failed" and before[o.item] != o]
    if found:
        raise ItemsFailed(run.label, "verify", found)
    done = sum(o.changed for o in run.outcomes)
    run.note(f"verified: {done} item(s) changed, nothing left to do")
    return tuple(run.outcomes)


@step("windows-provision-prune", "{run.label}: prune")
def prune(run: ProvisionRun, upstream: object) -> list[str]:
    """The new snapshot stays; the VM's older ``pre-provision`` snapshots go by
    [windows.policies] (only moxflow's own). Safe to retry."""
    removed = prune_snapshots(run.client, run.guest, run.inv, SNAPSHOT_LABEL, run.tz, run.snapshot)
    if removed:
        run.note("pruned older snapshots " + ", ".join(removed))
    return removed
