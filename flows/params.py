"""Every job's parameters, defined once as a pydantic model.

One model per flow drives both faces of the job:

- the flow's keyword parameters (:func:`flow_parameters` gives the flow function the model's
  fields as its signature, and their descriptions as its docstring's ``Args``), which the
  Prefect UI shows as a form with a description and a default per field;
- the ``python -m flows.<name>`` command line (:func:`build_parser`): one option per field,
  with the description as its help.

Light on purpose (pydantic and argparse only): ``--help`` answers before Prefect is imported.
"""

from __future__ import annotations

import argparse
import inspect
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moxflow.errors import ConfigError

__all__ = [
    "Cli",
    "FlowParams",
    "GuestSnapshotParams",
    "HealthReportParams",
    "NixosUpdateParams",
    "OffsiteCopyParams",
    "ProxmoxUpdateParams",
    "RestoreParams",
    "RestoreTestParams",
    "VzdumpBackupParams",
    "WindowsProvisionParams",
    "WindowsUpdateParams",
    "ZfsSnapshotParams",
    "build_parser",
    "flow_parameters",
    "params_from_args",
]

EPILOG = """\
exit status: 0 every target ok (or skipped on purpose), 1 a target failed or was busy
(another run or operation held it; the report says which and who), 2 bad input
(inventory, option or name), nothing changed.

The inventory is read from --inventory, else $MOXFLOW_INVENTORY, else ./inventory.toml.
Any setting can be overridden from the environment: MOXFLOW_PROXMOX__PORT=8007.
"""


@dataclass(frozen=True)
class Cli:
    """How a field looks on the command line (metadata of its ``Annotated`` type)."""

    metavar: str | None = None
    flag: str | None = None  # the option's name when it is not --FIELD-NAME


class FlowParams(BaseModel):
    """What every job takes: the base of the parameter models."""

    model_config = ConfigDict(extra="forbid", frozen=True)


DryRun = Annotated[
    bool,
    Field(description="read the current state and show the full plan; change nothing anywhere"),
]
InventoryFile = Annotated[
    str | None,
    Cli(metavar="FILE"),
    Field(description="inventory TOML file (default: $MOXFLOW_INVENTORY or ./inventory.toml)"),
]
LockTimeout = Annotated[
    float,
    Cli(metavar="SECONDS"),
    Field(gt=0, description="seconds to keep retrying a locked guest or a failing API first"),
]


class ZfsSnapshotParams(FlowParams):
    """Snapshot the configured ZFS datasets with a label, then prune by its keep policy."""

    label: Annotated[str, Cli(metavar="LABEL")] = Field(
        default="hourly",
        description="snapshot label, e.g. hourly, daily, pre-update; picks the keep policy "
        "from [zfs.policies] or the dataset's own policies",
    )
    only: Annotated[list[str] | None, Cli(metavar="HOST[/DATASET]")] = Field(
        default=None,
        description="limit the run to these hosts or datasets (repeat or comma-separate)",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class GuestSnapshotParams(FlowParams):
    """Snapshot the selected Proxmox guests with a label, then prune by its keep policy."""

    label: Annotated[str, Cli(metavar="LABEL")] = Field(
        default="daily",
        description="snapshot label, e.g. hourly, daily; picks the keep policy from "
        "[guest_snapshots.policies]",
    )
    select: Annotated[str | None, Cli(metavar="EXPR")] = Field(
        default=None,
        description="which guests, e.g. '@all,-@tag-nosnap' or '100:110,media-vm' "
        "(default: [guest_snapshots] select in the inventory)",
    )
    running_only: bool | None = Field(
        default=None,
        description="skip guests that are not running (default: [guest_snapshots] running_only)",
    )
    vmstate: bool | None = Field(
        default=None,
        description="include the RAM of running VMs in the snapshot (slower, bigger; "
        "default: [guest_snapshots] vmstate)",
    )
    concurrency: Annotated[int | None, Cli(metavar="N")] = Field(
        default=None,
        ge=1,
        le=64,
        description="guests snapshotted at once (default: [guest_snapshots] concurrency)",
    )
    lock_timeout: LockTimeout = 120.0
    dry_run: DryRun = False
    inventory: InventoryFile = None


class NixosUpdateParams(FlowParams):
    """Update the NixOS hosts: snapshot, flake update, build, switch, verify, roll back."""

    only: Annotated[list[str] | None, Cli(metavar="HOST")] = Field(
        default=None, description="update only these hosts (repeat or comma-separate)"
    )
    max_parallel: Annotated[int | None, Cli(metavar="N")] = Field(
        default=None,
        ge=1,
        description="hosts updated at once after the canaries (default: [nixos] max_parallel)",
    )
    continue_on_failure: bool = Field(
        default=False,
        description="go on with the next waves when a host fails (hosts that depend on it "
        "through `after` are still skipped)",
    )
    no_snapshot: bool = Field(
        default=False,
        description="do not take a pre-update snapshot (the last line of recovery is then gone)",
    )
    force: bool = Field(
        default=False,
        description="rebuild and switch even when `nix flake update` changed nothing",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class ProxmoxUpdateParams(FlowParams):
    """Update the Proxmox nodes one at a time: snapshot, guests leave, upgrade, reboot, verify."""

    only: Annotated[list[str] | None, Cli(metavar="NODE")] = Field(
        default=None,
        description="update only these nodes (repeat or comma-separate; default: "
        "[proxmox_update] nodes, else every node)",
    )
    guests: Literal["migrate", "shutdown", "leave"] | None = Field(
        default=None,
        description="what happens to guests HA does not manage: migrate away and back, shut "
        "down and start again, or leave running (default: [proxmox_update] guests)",
    )
    reboot: Literal["auto", "always", "never"] | None = Field(
        default=None,
        description="reboot after the upgrade: auto (when the kernel changed), always, never "
        "(default: [proxmox_update] reboot)",
    )
    lock_timeout: LockTimeout = Field(
        default=120.0,
        description="seconds to wait for a node (or one of its guests) another moxflow run "
        "holds; then it is busy and the roll stops",
    )
    no_snapshot: bool = Field(
        default=False,
        description="do not snapshot the nodes' root datasets (nodes without a ZFS root): a "
        "failed upgrade then has no snapshot to go back to; the report says so",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class WindowsUpdateParams(FlowParams):
    """Update the Windows VMs through the guest agent: snapshot, install rounds, reboot,
    verify, commit or roll back."""

    only: Annotated[list[str] | None, Cli(metavar="VMID|NAME")] = Field(
        default=None,
        description="update only these of the [windows.vms] VMs, by VMID or name (repeat or "
        "comma-separate)",
    )
    categories: Annotated[list[str] | None, Cli(metavar="CATEGORY")] = Field(
        default=None,
        description="install only updates of these categories, e.g. 'Security Updates' "
        "(repeat or comma-separate; default: [windows] categories, else all)",
    )
    max_rounds: Annotated[int | None, Cli(metavar="N")] = Field(
        default=None,
        ge=1,
        le=20,
        description="install rounds at most per VM, each ending in a reboot when one is "
        "needed (default: [windows] max_rounds)",
    )
    lock_timeout: LockTimeout = Field(
        default=120.0,
        description="seconds to wait for a VM another moxflow run holds; then it is busy",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class WindowsProvisionParams(FlowParams):
    """Provision the Windows VMs through the guest agent: Steam and games, the Rust
    toolchain, scheduled tasks; a snapshot before the first change."""

    only: Annotated[list[str] | None, Cli(metavar="VMID|NAME")] = Field(
        default=None,
        description="provision only these of the [windows.vms] VMs with something to set up, "
        "by VMID or name (repeat or comma-separate)",
    )
    lock_timeout: LockTimeout = Field(
        default=120.0,
        description="seconds to wait for a VM another moxflow run holds; then it is busy",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class VzdumpBackupParams(FlowParams):
    """Back up the selected guests with vzdump; verify, prune, copy offsite, report coverage."""

    select: Annotated[str | None, Cli(metavar="EXPR")] = Field(
        default=None,
        description="which guests, e.g. '@all,-@tag-nobackup' or '100:110' "
        "(default: [backups] select in the inventory)",
    )
    storage: Annotated[str | None, Cli(metavar="S")] = Field(
        default=None,
        description="the Proxmox storage to back up to (default: [backups] storage)",
    )
    offsite: Annotated[bool, Cli(flag="--no-offsite")] = Field(
        default=True,
        description="copy the new archives to the [offsite] host when it is configured "
        "(--no-offsite: skip the copy)",
    )
    lock_timeout: LockTimeout = 120.0
    dry_run: DryRun = False
    inventory: InventoryFile = None


class OffsiteCopyParams(FlowParams):
    """Copy the selected guests' archives to the offsite host; prune the offsite copies."""

    select: Annotated[str | None, Cli(metavar="EXPR")] = Field(
        default=None,
        description="which guests' archives (default: [backups] select in the inventory)",
    )
    storage: Annotated[str | None, Cli(metavar="S")] = Field(
        default=None,
        description="the Proxmox storage the archives are on (default: [backups] storage)",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class RestoreTestParams(FlowParams):
    """Restore each selected guest's newest backup to a scratch VMID, boot, check, destroy."""

    select: Annotated[str | None, Cli(metavar="EXPR")] = Field(
        default=None,
        description="which guests, e.g. '@all,-@tag-norestore' or '101,104' "
        "(default: [restore_test] select in the inventory)",
    )
    storage: Annotated[str | None, Cli(metavar="S")] = Field(
        default=None,
        description="the backup storage to take the newest archives from "
        "(default: [backups] storage)",
    )
    scratch_vmid: Annotated[int | None, Cli(metavar="N")] = Field(
        default=None,
        ge=100,
        description="restore to this VMID instead of one from [restore_test] scratch_vmids; "
        "refused when a guest uses it",
    )
    lock_timeout: Annotated[float, Cli(metavar="SECONDS")] = Field(
        default=120.0,
        ge=0,
        description="seconds to wait for another restore test (or a Proxmox update) that "
        "holds the scratch guests before leaving every guest busy",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


class RestoreParams(FlowParams):
    """Restore a guest from a backup, beside it or (with force) over it."""

    vmid: Annotated[int, Cli(metavar="N")] = Field(
        ge=100, description="the guest whose backup to restore"
    )
    backup: Annotated[str, Cli(metavar="latest|VOLID")] = Field(
        default="latest",
        description="which backup: latest or a volid such as "
        "nas-backup:backup/vzdump-qemu-100-2026_11_26-02_00_05.vma.zst",
    )
    target_vmid: Annotated[int | None, Cli(metavar="N")] = Field(
        default=None,
        ge=100,
        description="restore as guest N instead of over vmid (default: vmid itself)",
    )
    force: bool = Field(
        default=False,
        description="overwrite an existing guest at the target VMID (a pre-restore snapshot "
        "of it is taken first where possible)",
    )
    storage: Annotated[str | None, Cli(metavar="S")] = Field(
        default=None,
        description="the storage for the restored disks (default: those in the backed-up config)",
    )
    node: Annotated[str | None, Cli(metavar="NODE")] = Field(
        default=None,
        description="the node to restore to when no guest has the target VMID "
        "(default: the node of vmid if it still exists, else the first online node)",
    )
    dry_run: DryRun = False
    inventory: InventoryFile = None


HealthKind = Literal["backups", "snapshots", "nixos", "nodes", "windows"]
HEALTH_KINDS: tuple[HealthKind, ...] = get_args(HealthKind)


class HealthReportParams(FlowParams):
    """Check the fleet against the [health] limits and report."""

    only: Annotated[list[HealthKind] | None,
                    Cli(metavar="KIND")] = Field(
        default=None,
        description=f"check only these kinds ({', '.join(HEALTH_KINDS)}); repeat or "
        "comma-separate (default: all)",
    )  # fmt: skip
    dry_run: DryRun = False
    inventory: InventoryFile = None


# --- the flow's signature ------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def flow_parameters(model: type[FlowParams]) -> Callable[[F], F]:
    """Check that a flow function's keyword parameters are the model's fields (names and
    defaults), then give Prefect the model's view of them.

    Prefect reads the signature (names, types with their limits, defaults) and the
    docstring's ``Args`` (the descriptions) to build the UI's form and to validate every
    run's parameters: both come from the model, so the form and the command line agree.
    The function's own annotations stay for the type checker; a field added to the model
    but not to the function (or a default that differs) fails at import.
    """

    def decorate(fn: F) -> F:
        own = {
            name: p.default
            for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        fields = {
            name: inspect.Parameter.empty if f.is_required() else f.default
            for name, f in model.model_fields.items()
        }
        if own != fields:
            raise TypeError(
                f"{fn.__name__}'s keyword parameters {own} are not {model.__name__}'s "
                f"fields {fields}"
            )
        params = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.is_required() else f.default,
                # with the field's limits (ge, le, ...): Prefect checks them too
                annotation=f.rebuild_annotation(),
            )
            for name, f in model.model_fields.items()
        ]
        returns = inspect.signature(fn).return_annotation
        fn.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
        args = "".join(
            f"        {name}: {' '.join((f.description or '').split())}\n"
            for name, f in model.model_fields.items()
        )
        fn.__doc__ = f"{(fn.__doc__ or '').rstrip()}\n\n    Args:\n{args}"
        return fn

    return decorate


# --- the command line ----------------------------------------------------------------------


def _cli(info: Any) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def _inner(annotation: Any) -> tuple[Any, bool]:
    """The type without ``None``, and whether ``None`` was allowed."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def option(name: str) -> str:
    """``dry_run`` -> ``--dry-run``."""
    return "--" + name.replace("_", "-")


def build_parser(prog: str, description: str, model: type[FlowParams]) -> argparse.ArgumentParser:
    """The job's command line: one option per field of ``model``, described by it."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, info in model.model_fields.items():
        cli = _cli(info)
        kind, _ = _inner(info.annotation)
        required = info.is_required()
        default = None if required else info.default
        text = info.description or name
        flag = cli.flag or option(name)
        if kind is bool:
            if default is True:
                parser.add_argument(flag, dest=name, action="store_false", help=text)
            elif default is None:  # unset: the inventory decides; --X / --no-X override it
                parser.add_argument(
                    flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                    help=text,
                )  # fmt: skip
            else:
                parser.add_argument(flag, dest=name, action="store_true", help=text)
            continue
        kwargs: dict[str, Any] = {"dest": name, "help": text, "metavar": cli.metavar}
        if get_origin(kind) is list:
            parser.add_argument(flag, action="append", **kwargs)
            continue
        if kind in (int, float):
            kwargs["type"] = kind
        if default is not None:
            kwargs["help"] = f"{text} (default: {default})"
        parser.add_argument(flag, required=required, default=default, **kwargs)
    return parser


M = TypeVar("M", bound=FlowParams)


def params_from_args(model: type[M], args: argparse.Namespace) -> M:
    """The model from parsed options (comma-separated lists split): ``ConfigError`` naming
    the option when one is invalid. ``model_dump()`` gives the flow's keyword arguments."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = getattr(args, name)
        kind, _ = _inner(info.annotation)
        if get_origin(kind) is list and value is not None:
            value = split_csv(value) or None
        out[name] = value
    try:
        return model(**out)
    except ValidationError as exc:
        problems = "; ".join(
            f"{option(str(e['loc'][0])) if e['loc'] else 'options'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(problems) from None


def split_csv(values: Sequence[str] | None) -> list[str]:
    """Accept both ``--only a,b`` and ``--only a --only b``."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out
