"""Every moxflow deployment, defined once: name, flow, default parameters, schedule.

The same list is used two ways:

- ``python -m deployments.serve`` serves every schedule from one process (no worker);
- ``prefect.yaml`` (written by ``python -m deployments.render > prefect.yaml``) lets
  ``prefect deploy --all`` register them on the process work pool ``moxflow``.

Schedules are cron expressions in the inventory's time zone (``timezone = ...``, UTC when
there is no inventory yet). Every deployment runs at most once at a time: a run that would
overlap a running one is cancelled by the server with "Deployment concurrency limit reached."

This module imports Prefect only inside the functions that need it, so ``--help`` and
``render`` stay fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import RunnerDeployment

    from moxflow.inventory import Inventory

WORK_POOL = "moxflow"
"""The process work pool that ``prefect.yaml`` deploys onto."""

TAGS = ("moxflow",)
DEFAULT_TIMEZONE = "UTC"
INTERVAL_LEAD_SECONDS = 10
"""With ``every``: seconds from now to the first run (the server plans runs every ~5 s)."""


@dataclass(frozen=True)
class Definition:
    """One deployment: which flow, with which defaults, when."""

    flow_name: str
    """The flow's Prefect name (``@flow(name=...)``); a test checks it against the flow."""
    name: str
    """The deployment's name, unique per flow; the UI shows ``flow_name/name``."""
    entrypoint: str
    """``path/to/file.py:function``, relative to the repository root."""
    cron: str
    """When it runs, in the inventory's time zone."""
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Default parameters; everything else is the flow's own default."""
    off: bool = False
    """Off unless the inventory's [schedules] turns it on (a job that reboots machines)."""

    @property
    def full_name(self) -> str:
        """``flow-name/deployment-name``, as Prefect's CLI and UI name it."""
        return f"{self.flow_name}/{self.name}"

    @property
    def module(self) -> str:
        """The flow's module, e.g. ``flows.zfs_snapshot``."""
        path = self.entrypoint.split(":", 1)[0]
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        """The flow function's name in its module."""
        return self.entrypoint.split(":", 1)[1]

    def load_flow(self) -> Flow[..., Any]:
        """Import the flow object."""
        flow_obj: Flow[..., Any] = getattr(importlib.import_module(self.module), self.function)
        return flow_obj


# Times are local to the inventory's time zone; they are spread out so that jobs do not
# start in the same minute.
DEFINITIONS: tuple[Definition, ...] = (
    Definition(
        flow_name="zfs-snapshot",
        name="hourly",
        entrypoint="flows/jobs/zfs_snapshot.py:zfs_snapshot",
        cron="0 * * * *",
        description="Every hour: snapshot the ZFS datasets (label hourly) and prune by policy.",
        parameters={"label": "hourly"},
    ),
    Definition(
        flow_name="zfs-snapshot",
        name="daily",
        entrypoint="flows/jobs/zfs_snapshot.py:zfs_snapshot",
        cron="5 0 * * *",
        description="Every day at 00:05: snapshot the ZFS datasets (label daily) and prune.",
        parameters={"label": "daily"},
    ),
    Definition(
        flow_name="guest-snapshot",
        name="daily",
        entrypoint="flows/jobs/guest_snapshot.py:guest_snapshot",
        cron="30 0 * * *",
        description="Every day at 00:30: snapshot the selected Proxmox guests and prune.",
        parameters={"label": "daily"},
    ),
    # NixOS updates: weekly, Saturday 03:00, so that a host that needs attention is seen
    # over the weekend.
    Definition(
        flow_name="nixos-update",
        name="weekly",
        entrypoint="flows/jobs/nixos_update.py:nixos_update",
        cron="0 3 * * 6",
        description="Every Saturday at 03:00: update the NixOS hosts, canary first, "
        "with snapshot, verification and automatic rollback.",
    ),
    # Proxmox node updates: weekly, Sunday 03:00, off by default (they reboot the nodes):
    # [schedules] "proxmox-update/weekly" = "0 3 * * 0" turns it on.
    Definition(
        flow_name="proxmox-update",
        name="weekly",
        entrypoint="flows/jobs/proxmox_update.py:proxmox_update",
        cron="0 3 * * 0",
        description="Every Sunday at 03:00 (off by default): update the Proxmox nodes one "
        "at a time, with a root snapshot, guests moved away and back, a reboot when the "
        "kernel changed, and verification.",
        off=True,
    ),
    Definition(
        flow_name="vzdump-backup",
        name="nightly",
        entrypoint="flows/jobs/vzdump_backup.py:vzdump_backup",
        cron="0 1 * * *",
        description="Every night at 01:00: back up the selected guests, verify the archives, "
        "prune, copy offsite, and report coverage.",
    ),
    Definition(
        flow_name="restore-test",
        name="weekly",
        entrypoint="flows/jobs/restore_test.py:restore_test",
        cron="0 5 * * 0",
        description="Every Sunday at 05:00: restore the newest backup of each selected guest "
        "to a scratch VMID, boot it, check it, destroy it.",
    ),
    Definition(
        flow_name="health-report",
        name="daily",
        entrypoint="flows/jobs/health_report.py:health_report",
        cron="0 7 * * *",
        description="Every day at 07:00: check every guest's backup, offsite copy and restore "
        "test, the snapshots, NixOS and Proxmox updates against the [health] limits.",
    ),
    # Windows updates: monthly, the 16th at 04:00, off by default (they reboot the VMs):
    # Patch Tuesday (the second Tuesday) falls on the 8th to 14th, so the 16th always follows
    # it by a day or more ("the day after Patch Tuesday", "0 4 9-15 * 3", needs cron's
    # day_or=False, which a schedule in [schedules] cannot say). [schedules]
    # "windows-update/monthly" = "0 4 16 * *" turns it on.
    Definition(
        flow_name="windows-update",
        name="monthly",
        entrypoint="flows/jobs/windows_update.py:windows_update",
        cron="0 4 16 * *",
        description="Every month on the 16th at 04:00 (off by default): update the Windows "
        "VMs through the guest agent, with a snapshot, install rounds and reboots, "
        "verification, and a rollback on failure.",
        off=True,
    ),
    # Windows provisioning: weekly, Saturday at 05:00, off by default (it installs software
    # and takes a snapshot when something is to change); [schedules]
    # "windows-provision/weekly" = "0 5 * * 6" turns it on.
    Definition(
        flow_name="windows-provision",
        name="weekly",
        entrypoint="flows/jobs/windows_provision.py:windows_provision",
        cron="0 5 * * 6",
        description="Every Saturday at 05:00 (off by default): set up the Windows VMs through "
        "the guest agent (Steam and games, the Rust toolchain, scheduled tasks), a snapshot "
        "before the first change; a VM with nothing to change is left alone.",
        off=True,
    ),
    # Later jobs plug in here, one Definition each (then `python -m deployments.render >
    # prefect.yaml`).
)

OFF = "off"
"""An inventory schedule that turns a deployment's schedule off (it still runs from the UI)."""


DEFINITION_BY_NAME: dict[str, Definition] = {d.full_name: d for d in DEFINITIONS}


def select(
    names: Iterable[str], definitions: Sequence[Definition] = DEFINITIONS
) -> list[Definition]:
    """The definitions named (``flow/name``); ``ValueError`` naming an unknown one."""
    wanted = list(names)
    if not wanted:
        return list(definitions)
    known = {d.full_name: d for d in definitions}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"unknown deployment {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )
    return [known[n] for n in dict.fromkeys(wanted)]


def inventory_timezone(inventory: str | Path | None = None) -> str:
    """The inventory's time zone, or UTC when there is no inventory file (yet).

    The inventory is ``inventory``, else ``$MOXFLOW_INVENTORY``, else ``./inventory.toml``.
    A file that exists but is broken raises ``ConfigError``: schedules must not silently
    move to another time zone.
    """
    from moxflow.inventory import inventory_path, load_inventory

    if not inventory_path(inventory).is_file():
        return DEFAULT_TIMEZONE
    return load_inventory(inventory).timezone


def inventory_schedules(
    inventory: str | Path | None = None, definitions: Sequence[Definition] = DEFINITIONS
) -> dict[str, str]:
    """Each deployment's cron (or ``"off"``): its default, or the inventory's [schedules].

    A name in [schedules] that is no deployment is a ``ConfigError`` listing the known ones,
    so that a typo never leaves a job on its default time unnoticed.
    """
    from moxflow.errors import ConfigError
    from moxflow.inventory import inventory_path, load_inventory

    out = {d.full_name: OFF if d.off else d.cron for d in definitions}
    if not inventory_path(inventory).is_file():
        return out
    inv = load_inventory(inventory)
    overrides = inv.schedules
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise ConfigError(
            f"[schedules] names no deployment {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(out)}",
            setting="schedules",
        )
    idle: dict[str, str] = {}
    for d in definitions:
        why = nothing_to_do(inv, d.flow_name)
        if why and d.full_name not in overrides:
            print(f"moxflow: {d.full_name}: schedule off ({why})", file=sys.stderr)
            idle[d.full_name] = OFF
    return out | idle | overrides


def nothing_to_do(inv: Inventory, flow_name: str) -> str:
    """Why the inventory gives the job ``flow_name`` nothing to do ("" when it does): its
    schedule is then off (a run would only fail saying so), unless [schedules] sets one."""
    if flow_name == "zfs-snapshot" and not inv.zfs.datasets:
        return "no [[zfs.datasets]] in the inventory"
    if flow_name == "nixos-update" and not inv.nixos.hosts:
        return "no [nixos.hosts] in the inventory"
    if flow_name == "proxmox-update":
        return 'off by default (it reboots nodes); [schedules] "proxmox-update/weekly" turns it on'
    if flow_name == "windows-update":
        return (
            'off by default (it reboots the VMs); [schedules] "windows-update/monthly" turns it on'
        )
    if flow_name == "windows-provision":
        return (
            "off by default (it installs software in the VMs); [schedules] "
            '"windows-provision/weekly" turns it on'
        )

    if flow_name in ("guest-snapshot", "vzdump-backup", "restore-test") and inv.proxmox is None:
        return "no [proxmox] in the inventory"
    return ""


def template_key(full_name: str) -> str:
    """``zfs-snapshot/hourly`` -> ``zfs_snapshot_hourly``: a name Prefect's templates take."""
    return "".join(c if c.isalnum() else "_" for c in full_name)


def concurrency_limit() -> ConcurrencyLimitConfig:
    """One run at a time per deployment; an overlapping run is cancelled, saying why."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def runner_deployments(
    definitions: Sequence[Definition],
    *,
    timezone: str,
    inventory: str | None = None,
    every: float | None = None,
    crons: Mapping[str, str] | None = None,
) -> list[RunnerDeployment]:
    """Prefect deployments for ``serve``: cron schedules in ``timezone``.

    ``crons`` (from :func:`inventory_schedules`) replaces a deployment's default cron, and
    ``"off"`` leaves it without a schedule. ``inventory`` becomes every run's ``inventory``
    parameter; ``every`` (seconds) replaces each schedule by an interval whose first run is
    about ten seconds from now, for trying the schedules out against the simulated lab.
    """
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Cron, Interval, Schedule
    from prefect.types.entrypoint import EntrypointType

    # the server plans runs from the anchor on, a few seconds after a deployment changes
    first_run = datetime.now(UTC) + timedelta(seconds=INTERVAL_LEAD_SECONDS)
    out: list[RunnerDeployment] = []
    for d in definitions:
        flow_obj = d.load_flow()
        if flow_obj.name != d.flow_name:
            raise ValueError(f"{d.entrypoint} is flow {flow_obj.name!r}, not {d.flow_name!r}")
        cron = (crons or {}).get(d.full_name, d.cron)
        schedules: list[Schedule] = (
            [Interval(every, anchor_date=first_run, timezone=timezone)]
            if every
            else []
            if cron == OFF
            else [Cron(cron, timezone=timezone)]
        )
        parameters = dict(d.parameters)
        if inventory is not None:
            parameters["inventory"] = inventory
        out.append(
            RunnerDeployment.from_flow(
                flow_obj,
                name=d.name,
                schedules=schedules,
                parameters=parameters,
                description=d.description,
                tags=list(TAGS),
                concurrency_limit=concurrency_limit(),
                # the flows are installed packages: runs import them from any directory
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def deploy_settings(inventory: str | None = None) -> dict[str, Any]:
    """A ``prefect.yaml`` build step: what ``prefect deploy`` needs from this checkout.

    ``timezone``: the inventory's (see :func:`inventory_timezone`); ``directory``: this
    checkout, where the worker runs the flows' entrypoints from; ``cron_KEY`` and
    ``active_KEY`` per deployment (see :func:`template_key`): its schedule from the
    inventory's [schedules], and whether it is on.
    """
    tz = inventory_timezone(inventory)
    print(f"moxflow: schedules in time zone {tz}", file=sys.stderr)
    out: dict[str, Any] = {"timezone": tz, "directory": str(Path.cwd().resolve())}
    for name, cron in inventory_schedules(inventory).items():
        key = template_key(name)
        out[f"cron_{key}"] = DEFINITION_BY_NAME[name].cron if cron == OFF else cron
        out[f"active_{key}"] = cron != OFF
        if cron == OFF:
            print(f"moxflow: {name}: schedule off ([schedules])", file=sys.stderr)
    return out
