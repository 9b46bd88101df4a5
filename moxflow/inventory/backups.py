"""``[backups]``, ``[offsite]`` and ``[restore_test]``: vzdump backups, their offsite copies
and the restore tests of the newest ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from moxflow.errors import ConfigError
from moxflow.inventory.fields import (
    HOURS_MAX,
    HostName,
    NodePath,
    PolicyText,
    RemotePath,
    Seconds,
    Section,
    StorageName,
    check_selection,
)
from moxflow.restore import parse_vmid_range

__all__ = [
    "DEFAULT_NOTES_TEMPLATE",
    "BackupSettings",
    "OffsiteSettings",
    "RestoreTestSettings",
]

DEFAULT_NOTES_TEMPLATE = "{{guestname}} {{vmid}} {{node}} moxflow"
"""The notes of a backup moxflow made: it marks the archive as moxflow's."""


class BackupSettings(Section):
    """Proxmox vzdump backups: where, how, how long to keep them, and when they are stale."""

    select: str = Field(
        default="@all",
        description="Which guests to back up, in the selection language (templates are skipped).",
    )
    storage: StorageName = Field(
        default="local", description="The Proxmox storage the archives are written to."
    )
    mode: Literal["snapshot", "suspend", "stop"] = Field(
        default="snapshot", description="vzdump mode: snapshot (no downtime), suspend or stop."
    )
    compress: Literal["zstd", "gzip", "lzo", "0"] = Field(
        default="zstd", description="vzdump compression (0: none)."
    )
    notes_template: str = Field(
        default=DEFAULT_NOTES_TEMPLATE,
        min_length=1,
        max_length=1024,
        description=(
            "Notes of each archive ({{guestname}}, {{vmid}}, {{node}}, {{cluster}}); "
            "keep the word moxflow in it so that a person can tell moxflow's backups apart."
        ),
    )
    protected: bool = Field(
        default=False, description="Mark new archives protected (prune never removes them)."
    )
    bwlimit: int | None = Field(
        default=None, ge=1, description="vzdump bandwidth limit in KiB/s; default: none."
    )
    policy: PolicyText | None = Field(
        default=None,
        description=(
            'Keep policy per guest on the storage, e.g. "keep-last=3,keep-daily=7", applied '
            "through Proxmox's prune endpoint once the run's backups are verified, to each "
            "guest whose new backup verified (a failed backup prunes nothing); default: do "
            "not prune."
        ),
    )
    max_per_storage: int = Field(
        default=0,
        ge=0,
        description=(
            "At most this many backups writing to one storage at once (0: one per node, "
            "all nodes in parallel)."
        ),
    )
    max_age_hours: float = Field(
        default=26.0,
        gt=0,
        le=HOURS_MAX,
        description="A guest whose newest backup is older than this makes the run fail.",
    )
    size_drop_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "A new archive smaller than this fraction of the guest's previous one fails "
            "verification (0: only an empty archive fails)."
        ),
    )
    task_timeout: Seconds = Field(
        default=4 * 3600.0, description="Seconds one vzdump task may run before it is given up."
    )
    storage_paths: dict[StorageName, NodePath] = Field(
        default_factory=dict,
        description=(
            "Folder of each storage's archives as seen on a node, for the offsite copy; "
            "{node} stands for the node's name. Default: /var/lib/vz/dump for local, "
            "/mnt/pve/STORAGE/dump for any other."
        ),
    )

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        return check_selection(value)

    def storage_path(self, storage: str, node: str) -> str:
        """Where the archives of ``storage`` are, as seen on ``node``."""
        if storage in self.storage_paths:
            return self.storage_paths[storage].replace("{node}", node)
        if storage == "local":
            return "/var/lib/vz/dump"
        return f"/mnt/pve/{storage}/dump"


class OffsiteSettings(Section):
    """Where copies of new backup archives go, over SSH, and how long they stay."""

    host: HostName = Field(description="The host (a key of [hosts]) that keeps the copies.")
    path: RemotePath = Field(description="Absolute folder on that host for the copies.")
    policy: PolicyText | None = Field(
        default=None,
        description=(
            'Keep policy per guest on the offsite folder, e.g. "keep-daily=7,keep-weekly=8"; '
            "archives it would not keep are not copied; default: keep everything."
        ),
    )
    bwlimit: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Bandwidth limit of the offsite copies in KiB/s, averaged over each archive; "
            "default: none."
        ),
    )


class RestoreTestSettings(Section):
    """Restore tests: which guests' newest backups are restored, booted and destroyed, where."""

    select: str = Field(
        default="@all",
        description="Which guests to restore-test, in the selection language (templates skipped).",
    )
    scratch_vmids: str = Field(
        default="9900:9999",
        description=(
            "VMIDs the test restores to, FIRST:LAST (inclusive) or one VMID; a VMID in use is "
            "never taken, and is checked again right before each restore."
        ),
    )
    scratch_storage: StorageName = Field(
        default="local-zfs", description="The storage the scratch guests' disks are written to."
    )
    boot_timeout: Seconds = Field(
        default=300.0,
        description=(
            "Seconds a restored guest has to answer: the guest agent's ping for a VM, the "
            "running state for a container."
        ),
    )
    task_timeout: Seconds = Field(
        default=4 * 3600.0, description="Seconds one restore task may run before it is given up."
    )

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        return check_selection(value)

    @field_validator("scratch_vmids")
    @classmethod
    def _scratch_vmids(cls, value: str) -> str:
        try:
            parse_vmid_range(value)
        except ConfigError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            raise ValueError(exc.message + hint) from None
        return value.strip()

    def vmid_range(self) -> range:
        """The scratch VMIDs as a range."""
        return parse_vmid_range(self.scratch_vmids)
