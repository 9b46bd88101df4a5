"""``[windows]`` and ``[windows.vms.KEY]``: Windows VMs updated and provisioned through the
QEMU guest agent.

Which VMs (KEY is a VMID or a guest name), which update categories, how many install rounds,
how each VM is snapshotted first (with RAM state where configured and possible; a VM with
PCI passthrough cannot save it), how long each bounded wait may last, how old an interrupted
update's snapshot may be for the next run to finish that update, and the
``[[windows.vms.KEY.checks]]`` that must pass after the update (a service running, a TCP
port listening inside the guest, a command's exit code). A VM's own setting replaces the
section's; unset, the section's applies. What provisioning sets up in a VM (its ``steam``,
``rust`` and ``scheduled_tasks``) is in ``windows_provision``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from moxflow.inventory.fields import (
    POLICIES_HELP,
    Hours,
    Policies,
    Port,
    Seconds,
    Section,
    validation_error,
)
from moxflow.inventory.windows_provision import RustSettings, SteamSettings, WindowsTask

__all__ = ["WindowsCheck", "WindowsSettings", "WindowsVm"]

DEFAULT_POLICIES = {"pre-update": "keep-last=3", "pre-provision": "keep-last=3"}
"""The keep policies of the Windows VMs' snapshots; [windows.policies] replaces each label it
names and keeps the others."""

MAX_ROUNDS_LIMIT = 20
"""The most install rounds a setting may ask for (each may end in a reboot)."""

_VM_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?", re.ASCII)
_WINDOWS_PATH_RE = re.compile(r"[A-Za-z]:\\[^\x00-\x1f\"<>|?*]*")
_SERVICE_RE = re.compile(r"[^\x00-\x1f/\\]{1,256}")


def _check_vm_key(key: str) -> str:
    if key.isdigit():
        if not 100 <= int(key) <= 999_999_999:
            raise ValueError(f"{key!r}: a VMID is between 100 and 999999999")
        return key
    if not _VM_NAME_RE.fullmatch(key):
        raise ValueError(
            f"{key!r} is neither a VMID nor a guest name (letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return key


def _check_category(value: str) -> str:
    if not value.strip() or value != value.strip():
        raise ValueError(
            f"{value!r} is not a Windows Update category; write it as Windows names it, "
            'e.g. "Security Updates", "Critical Updates", "Definition Updates"'
        )
    if len(value) > 100 or any(not c.isprintable() for c in value):
        raise ValueError(
            f"{ascii(value)[:60]} is not a Windows Update category (at most 100 printable "
            "characters)"
        )
    return value


Category = Annotated[str, AfterValidator(_check_category)]
Categories = Annotated[list[Category], Field(max_length=64)]


def _no_twice(values: list[str]) -> list[str]:
    folded = [v.casefold() for v in values]
    twice = sorted({v for i, v in enumerate(values) if folded[i] in folded[:i]})
    if twice:
        raise ValueError(f"categories listed twice: {', '.join(twice)}")
    return values


class WindowsCheck(Section):
    """One check after an update, inside the VM: exactly one of service, port or command."""

    service: str | None = Field(
        default=None,
        description=(
            'A Windows service (its name, as sc query shows it, e.g. "Spooler") that must be '
            "Running."
        ),
    )
    port: Port | None = Field(
        default=None,
        description="A TCP port that something inside the VM must listen on, e.g. 3389.",
    )
    command: list[str] | None = Field(
        default=None,
        description=(
            "A program run in the VM through the guest agent (no shell), as a list of "
            'arguments starting with its absolute path, e.g. ["C:\\\\Tools\\\\check.exe", '
            '"--quick"]; it must exit with exit_code.'
        ),
    )
    exit_code: int = Field(
        default=0,
        ge=0,
        le=0xFFFFFFFF,
        description="The exit code a command check must end with (default 0).",
    )
    timeout: Seconds = Field(
        default=120.0, description="Seconds a command check may run before it fails."
    )

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not _SERVICE_RE.fullmatch(value):
            raise ValueError(
                f"{ascii(value)[:60]} is not a Windows service name (1-256 characters, no "
                "'/', '\\' or control characters)"
            )
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or not _WINDOWS_PATH_RE.fullmatch(value[0]):
            raise ValueError(
                "a command is a list of arguments whose first is the program's absolute path, "
                'e.g. ["C:\\\\Windows\\\\System32\\\\sc.exe", "query", "Spooler"] (the agent '
                "runs it without a shell and without the PATH)"
            )
        if any("\x00" in arg for arg in value):
            raise ValueError("a command argument must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> WindowsCheck:
        given = [k for k in ("service", "port", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            what = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one of service, port or command (got {what})")
        if given != ["command"]:
            extra = sorted({"exit_code", "timeout"} & self.model_fields_set)
            if extra:
                verb = "applies" if len(extra) == 1 else "apply"
                raise ValueError(f"{' and '.join(extra)} only {verb} to command checks")
        return self

    @property
    def kind(self) -> Literal["service", "port", "command"]:
        """Which kind of check this is."""
        if self.service is not None:
            return "service"
        return "port" if self.port is not None else "command"

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.service is not None:
            return f"service {self.service} running"
        if self.port is not None:
            return f"TCP {self.port} listening"
        return f"command {(self.command or [''])[0]} exits {self.exit_code}"


class WindowsVm(Section):
    """One Windows VM to update and provision (KEY: its VMID or its name).

    Each update setting left out is the [windows] section's."""

    categories: Categories | None = Field(
        default=None,
        description="Update categories to install on this VM; default: [windows] categories.",
    )
    max_rounds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ROUNDS_LIMIT,
        description="Install rounds on this VM at most; default: [windows] max_rounds.",
    )
    snapshot_ram: bool | None = Field(
        default=None,
        description="Snapshot this VM with its RAM state; default: [windows] snapshot_ram.",
    )
    snapshot_consistent: bool | None = Field(
        default=None,
        description=(
            "Shut this VM down cleanly for a disk-only snapshot; default: [windows] "
            "snapshot_consistent."
        ),
    )
    checks: list[WindowsCheck] = Field(
        default_factory=list,
        description=(
            "Checks that must pass after the update, each a [[windows.vms.KEY.checks]] table; "
            "the agent answering, no failed update and no pending reboot are always checked."
        ),
    )
    steam: SteamSettings | None = Field(
        default=None,
        description=(
            "steamcmd and Steam apps the provisioning job installs in this VM, as a "
            "[windows.vms.KEY.steam] table."
        ),
    )
    rust: RustSettings | None = Field(
        default=None,
        description=(
            "The Rust toolchain the provisioning job installs in this VM (rustup), as a "
            "[windows.vms.KEY.rust] table."
        ),
    )
    scheduled_tasks: list[WindowsTask] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Scheduled tasks the provisioning job registers in this VM from XML files beside "
            "the inventory, each a [[windows.vms.KEY.scheduled_tasks]] table."
        ),
    )

    @property
    def provisioned(self) -> bool:
        """Whether the provisioning job has anything to set up in this VM."""
        return bool(self.steam or self.rust or self.scheduled_tasks)

    @field_validator("categories")
    @classmethod
    def _categories_once(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _no_twice(value)

    @field_validator("scheduled_tasks")
    @classmethod
    def _tasks_once(cls, tasks: list[WindowsTask]) -> list[WindowsTask]:
        problems: list[tuple[tuple[int | str, ...], str]] = []
        seen: dict[str, int] = {}
        for i, t in enumerate(tasks):
            first = seen.setdefault(t.name.casefold(), i)
            if first != i:
                problems.append(
                    ((i, "name"), f"task {t.name!r} is already listed as scheduled_tasks[{first}]")
                )
        if problems:
            raise validation_error("WindowsVm", problems)
        return tasks


class WindowsSettings(Section):
    """Windows VMs updated (snapshot, rollback) and provisioned through the QEMU guest agent."""

    vms: dict[str, WindowsVm] = Field(
        default_factory=dict,
        description=(
            "The Windows VMs to update, as [windows.vms.KEY] tables, KEY being the VMID "
            "([windows.vms.103]) or the guest name ([windows.vms.win11-gaming]); updated one "
            "at a time, in this order."
        ),
    )
    categories: Categories = Field(
        default_factory=list,
        description=(
            "Install only updates of these categories, as Windows Update names them, e.g. "
            '["Security Updates", "Critical Updates", "Definition Updates"]; empty: every '
            "category."
        ),
    )
    drivers: bool = Field(
        default=False,
        description="Offer driver updates too (Windows Update's Type='Driver'); default: not.",
    )
    max_rounds: int = Field(
        default=3,
        ge=1,
        le=MAX_ROUNDS_LIMIT,
        description=(
            "Install rounds at most per run: install, reboot when needed, search again "
            "(some updates show only after another one is installed and the VM rebooted)."
        ),
    )
    snapshot_ram: bool = Field(
        default=True,
        description=(
            "Snapshot each VM with its RAM state, so a rollback resumes it where it was; a "
            "VM with PCI passthrough (hostpci) cannot save it and gets a disk-only snapshot."
        ),
    )
    snapshot_consistent: bool = Field(
        default=False,
        description=(
            "For a disk-only snapshot, shut the VM down cleanly first and start it again "
            "afterwards (consistent on disk); otherwise the agent freezes its file systems "
            "(VSS) while the snapshot is taken."
        ),
    )
    policies: Policies = Field(
        default_factory=lambda: dict(DEFAULT_POLICIES),
        description=(
            "Keep policy of the VMs' pre-update and pre-provision snapshots (default "
            'pre-update = "keep-last=3", pre-provision = "keep-last=3"; a label left out keeps '
            "its default). " + POLICIES_HELP
        ),
    )
    scan_timeout: Seconds = Field(
        default=1800.0,
        description="Seconds a search for updates (Windows Update's Search) may take.",
    )
    install_timeout: Seconds = Field(
        default=4 * 3600.0,
        description="Seconds one install round (download and install) may take.",
    )
    script_timeout: Seconds = Field(
        default=300.0,
        description=("Seconds a short script (pending reboot, service and port checks) may take."),
    )
    agent_timeout: Seconds = Field(
        default=900.0,
        description=(
            "Seconds a VM may take after a reboot, a start or a rollback until its guest "
            "agent answers again (and, after a reboot, Windows says it booted anew)."
        ),
    )
    shutdown_timeout: Seconds = Field(
        default=600.0,
        description="Seconds a VM gets to shut down cleanly for a consistent snapshot.",
    )
    provision_timeout: Seconds = Field(
        default=4 * 3600.0,
        description=(
            "Seconds one provisioning item may take (a game's download, a toolchain's "
            "install); the provisioning facts and checks get script_timeout."
        ),
    )
    verify_grace: Seconds = Field(
        default=300.0,
        description=(
            "Seconds the checks get to pass after the last reboot (services may start late) "
            "before the update is rolled back."
        ),
    )
    adopt_max_age_hours: Hours = Field(
        default=6.0,
        description=(
            "Hours old at most an interrupted update's pre-update snapshot may be for the next "
            "run to adopt it as its rollback point and finish that update (a rollback to it "
            "undoes everything since it was taken); an older one, or one with a newer "
            "snapshot after it, leaves the VM as it is, needing attention."
        ),
    )

    @field_validator("vms")
    @classmethod
    def _vm_keys(cls, vms: dict[str, WindowsVm]) -> dict[str, WindowsVm]:
        problems: list[tuple[tuple[int | str, ...], str]] = []
        for key in vms:
            try:
                _check_vm_key(key)
            except ValueError as exc:
                problems.append(((key,), str(exc)))
        if problems:
            raise validation_error("WindowsSettings", problems)
        return vms

    @field_validator("categories")
    @classmethod
    def _categories_once(cls, value: list[str]) -> list[str]:
        return _no_twice(value)

    @field_validator("policies")
    @classmethod
    def _default_policies(cls, value: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_POLICIES, **value}

    def provisioned_vms(self) -> list[str]:
        """The keys of the VMs the provisioning job sets something up in, in the file's
        order."""
        return [key for key, vm in self.vms.items() if vm.provisioned]

    def categories_of(self, key: str) -> list[str]:
        """The categories VM ``key`` installs (empty: all)."""
        own = self.vms[key].categories
        return list(self.categories if own is None else own)

    def max_rounds_of(self, key: str) -> int:
        """The install rounds VM ``key`` gets at most."""
        own = self.vms[key].max_rounds
        return self.max_rounds if own is None else own

    def snapshot_of(self, key: str) -> tuple[bool, bool]:
        """``(ram, consistent)`` for VM ``key``'s pre-update snapshot."""
        vm = self.vms[key]
        ram = self.snapshot_ram if vm.snapshot_ram is None else vm.snapshot_ram
        consistent = (
            self.snapshot_consistent if vm.snapshot_consistent is None else vm.snapshot_consistent
        )
        return ram, consistent
