"""The :class:`Inventory` model: every section, the checks across sections, and the lookups
flows and tasks use (a host, its SSH target, a keep policy, a NixOS host's settings).

The model reads its sources through pydantic-settings: init kwargs, then ``MOXFLOW_``
environment variables, then the TOML file :func:`reading` names (the loader sets it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from moxflow.errors import ConfigError
from moxflow.inventory.backups import BackupSettings, OffsiteSettings, RestoreTestSettings
from moxflow.inventory.fields import HostName, validate_attr, validation_error
from moxflow.inventory.guest_snapshots import GuestSnapshotSettings
from moxflow.inventory.health import HealthSettings
from moxflow.inventory.hosts import HostSettings
from moxflow.inventory.nixos import NixosHost, NixosSettings, ZfsSnapshotMethod
from moxflow.inventory.notifications import NotificationSettings
from moxflow.inventory.proxmox import ProxmoxSettings
from moxflow.inventory.proxmox_update import ProxmoxUpdateSettings
from moxflow.inventory.retries import RetrySettings
from moxflow.inventory.schedules import DeploymentName, Schedule
from moxflow.inventory.secrets import resolve_path
from moxflow.inventory.ssh import SshSettings, SshTarget
from moxflow.inventory.windows import WindowsSettings
from moxflow.inventory.zfs import ZfsDataset, ZfsSettings
from moxflow.naming import validate_label
from moxflow.retention import KeepPolicy

__all__ = ["Inventory", "reading"]

# The file the current load reads and its parsed tables; a ContextVar so concurrent loads in
# threads do not mix.
_INVENTORY_FILE: ContextVar[tuple[Path, dict[str, Any]] | None] = ContextVar(
    "moxflow_inventory_file", default=None
)


@contextmanager
def reading(path: Path, data: dict[str, Any]) -> Iterator[None]:
    """While inside, an ``Inventory`` built in this context also reads ``data``, the parsed
    TOML file ``path`` (the loader parses it, so that its errors name the file)."""
    token = _INVENTORY_FILE.set((path, data))
    try:
        yield
    finally:
        _INVENTORY_FILE.reset(token)


class Inventory(BaseSettings):
    """The whole homelab as moxflow sees it, read from the inventory TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="MOXFLOW_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    timezone: str = Field(
        default="UTC",
        description=(
            "Time zone (IANA name such as Europe/Berlin) in which retention buckets "
            "(hours, days, weeks, ...) are counted."
        ),
    )
    proxmox: ProxmoxSettings | None = Field(
        default=None, description="The Proxmox VE API; leave out if there is no Proxmox."
    )
    ssh: SshSettings = Field(
        default_factory=SshSettings,
        description="Defaults for every SSH connection (login, key, host keys, timeouts).",
    )
    hosts: dict[HostName, HostSettings] = Field(
        default_factory=dict,
        description="Every host moxflow reaches over SSH, as [hosts.NAME] tables.",
    )
    zfs: ZfsSettings = Field(
        default_factory=ZfsSettings,
        description="ZFS datasets to snapshot, and how long to keep their snapshots.",
    )
    guest_snapshots: GuestSnapshotSettings = Field(
        default_factory=GuestSnapshotSettings,
        description="Proxmox VM and container snapshots: which guests, and how long to keep them.",
    )
    nixos: NixosSettings = Field(
        default_factory=NixosSettings,
        description="NixOS hosts to update with automatic rollback, and how.",
    )
    proxmox_update: ProxmoxUpdateSettings = Field(
        default_factory=ProxmoxUpdateSettings,
        description="Rolling Proxmox VE host updates: nodes, guests, reboots, time limits.",
    )
    windows: WindowsSettings = Field(
        default_factory=WindowsSettings,
        description=(
            "Windows VMs updated and provisioned through the QEMU guest agent, snapshot-guarded."
        ),
    )
    notifications: NotificationSettings = Field(
        default_factory=NotificationSettings,
        description="Notifications on failed runs, rollbacks and hosts that need attention.",
    )
    backups: BackupSettings = Field(
        default_factory=BackupSettings,
        description="Proxmox vzdump backups: storage, mode, retention, freshness.",
    )
    offsite: OffsiteSettings | None = Field(
        default=None, description="Offsite copies of backup archives; leave out for none."
    )
    restore_test: RestoreTestSettings = Field(
        default_factory=RestoreTestSettings,
        description="Restore tests of the newest backups on scratch guests.",
    )
    health: HealthSettings = Field(
        default_factory=HealthSettings,
        description="The daily health report's thresholds.",
    )
    retries: RetrySettings = Field(
        default_factory=RetrySettings,
        description="How often a step that failed for a passing reason is tried again.",
    )
    schedules: dict[DeploymentName, Schedule] = Field(
        default_factory=dict,
        description=(
            "When each deployment runs, replacing its default: "
            '{ "vzdump-backup/nightly" = "30 2 * * *" } (cron, in timezone), or "off" for '
            "no schedule (runs from the UI only). python -m deployments.serve --list shows "
            "the names and defaults."
        ),
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs, then ``MOXFLOW_`` variables, then the TOML file being loaded (if any)."""
        current = _INVENTORY_FILE.get()
        if current is None:
            return init_settings, env_settings
        return init_settings, env_settings, InitSettingsSource(settings_cls, current[1])

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value

    @field_validator("hosts")
    @classmethod
    def _no_key_file_with_ssh_credentials(
        cls, hosts: dict[str, HostSettings], info: ValidationInfo
    ) -> dict[str, HostSettings]:
        ssh = info.data.get("ssh")
        block = ssh.credentials if isinstance(ssh, SshSettings) else None
        if block is None:
            return hosts
        problems: list[tuple[tuple[int | str, ...], str]] = [
            (
                (name, "key_file"),
                f"not allowed with ssh.credentials = {block!r}: the key is the one in that "
                "moxflow SSH credentials block; remove key_file, or remove ssh.credentials "
                "to keep keys in files",
            )
            for name, host in hosts.items()
            if host.key_file is not None
        ]
        if problems:
            raise validation_error("HostSettings", problems)
        return hosts

    @field_validator("zfs")
    @classmethod
    def _datasets_on_known_hosts(cls, zfs: ZfsSettings, info: ValidationInfo) -> ZfsSettings:
        hosts = info.data.get("hosts")
        problems: list[str] = []
        known = ", ".join(sorted(hosts or {})) or "none yet"
        seen: dict[tuple[str, str], int] = {}
        for i, ds in enumerate(zfs.datasets):
            if hosts is not None and ds.host not in hosts:
                problems.append(
                    f"zfs.datasets[{i}].host: unknown host {ds.host!r}; add a [hosts.{ds.host}] "
                    f"table or use one of: {known}"
                )
            first = seen.setdefault((ds.host, ds.name), i)
            if first != i:
                problems.append(
                    f"zfs.datasets[{i}]: {ds.target} is already listed as zfs.datasets[{first}]"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return zfs

    @field_validator("offsite")
    @classmethod
    def _offsite_on_known_host(
        cls, offsite: OffsiteSettings | None, info: ValidationInfo
    ) -> OffsiteSettings | None:
        hosts = info.data.get("hosts")
        if offsite is not None and hosts is not None and offsite.host not in hosts:
            known = ", ".join(sorted(hosts)) or "none yet"
            raise ValueError(
                f"offsite.host: unknown host {offsite.host!r}; add a [hosts.{offsite.host}] "
                f"table or use one of: {known}"
            )
        return offsite

    @field_validator("nixos")
    @classmethod
    def _nixos_on_known_hosts(cls, nixos: NixosSettings, info: ValidationInfo) -> NixosSettings:
        hosts = info.data.get("hosts")
        if hosts is None:
            return nixos  # [hosts] itself is invalid; that error is reported already
        known = ", ".join(sorted(hosts)) or "none yet"
        problems: list[tuple[tuple[int | str, ...], str]] = []
        for name, host in nixos.hosts.items():
            if name not in hosts:
                problems.append(
                    (
                        ("hosts", name),
                        f"{name!r} is not a [hosts] name; add a [hosts.{name}] table with its "
                        f"address or use one of: {known}",
                    )
                )
            snap = host.snapshot
            if isinstance(snap, ZfsSnapshotMethod) and snap.host not in hosts:
                problems.append(
                    (
                        ("hosts", name, "snapshot", "host"),
                        f"unknown host {snap.host!r}; add a [hosts.{snap.host}] table or use "
                        f"one of: {known}",
                    )
                )
        if problems:
            raise validation_error("NixosSettings", problems)
        return nixos

    @field_validator("proxmox_update")
    @classmethod
    def _update_nodes_are_hosts(
        cls, update: ProxmoxUpdateSettings, info: ValidationInfo
    ) -> ProxmoxUpdateSettings:
        hosts = info.data.get("hosts")
        if hosts is None:
            return update  # [hosts] itself is invalid; that error is reported already
        known = ", ".join(sorted(hosts)) or "none yet"
        problems: list[tuple[tuple[int | str, ...], str]] = [
            (
                ("nodes", i),
                f"{name!r} is not a [hosts] name; the upgrade runs over SSH: add a "
                f"[hosts.{name}] table with its address or use one of: {known}",
            )
            for i, name in enumerate(update.nodes)
            if name not in hosts
        ]
        if problems:
            raise validation_error("ProxmoxUpdateSettings", problems)
        return update

    @model_validator(mode="after")
    def _resolve_paths(self) -> Inventory:
        current = _INVENTORY_FILE.get()
        self._base_dir = current[0].parent if current is not None else Path.cwd()
        base = self._base_dir

        def rebase(p: Path | None) -> Path | None:
            return None if p is None else resolve_path(p, base)

        if self.proxmox is not None:
            self.proxmox = self.proxmox.model_copy(update={"ca_file": rebase(self.proxmox.ca_file)})
        self.ssh = self.ssh.model_copy(
            update={
                "key_file": rebase(self.ssh.key_file),
                "known_hosts": rebase(self.ssh.known_hosts),
            }
        )
        self.hosts = {
            name: host.model_copy(update={"key_file": rebase(host.key_file)})
            for name, host in self.hosts.items()
        }
        return self

    @property
    def base_dir(self) -> Path:
        """The inventory file's folder; relative paths in the file are resolved against it."""
        return self._base_dir

    @property
    def tz(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)

    def host(self, name: str) -> HostSettings:
        """The host called ``name``; ``ConfigError`` listing the known hosts if there is none."""
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(
                f"unknown host {name!r}; known hosts: {known}",
                setting="hosts",
                hint=f"add a [hosts.{name}] table with its address to the inventory",
            ) from None

    def ssh_target(self, name: str) -> SshTarget:
        """How to connect to host ``name``: its settings with [ssh] filling the gaps.

        With ``ssh.credentials`` set, ``blocks.ssh.ssh_runner`` takes only the host's address,
        port and own user from the inventory, and the rest from that block.
        """
        host = self.host(name)
        return SshTarget(
            name=name,
            address=host.address,
            port=host.port,
            user=host.user or self.ssh.user,
            key_file=host.key_file or self.ssh.key_file,
            known_hosts=self.ssh.known_hosts,
            strict_host_keys=self.ssh.strict_host_keys,
            connect_timeout=self.ssh.connect_timeout,
            command_timeout=self.ssh.command_timeout,
        )

    def zfs_policy(self, dataset: ZfsDataset, label: str) -> KeepPolicy:
        """The keep policy for ``label`` snapshots of ``dataset``: its own, else [zfs.policies]."""
        validate_label(label)
        index = next((i for i, d in enumerate(self.zfs.datasets) if d == dataset), None)
        where = f"zfs.datasets[{index}]" if index is not None else "the dataset's table"
        if label in dataset.policies:
            return KeepPolicy.parse(dataset.policies[label], setting=f"{where}.policies.{label}")
        if label in self.zfs.policies:
            return KeepPolicy.parse(self.zfs.policies[label], setting=f"zfs.policies.{label}")
        raise ConfigError(
            f"no keep policy for {label!r} snapshots of {dataset.target}",
            setting=f"zfs.policies.{label}",
            hint=(
                f'add {label} = "keep-..." to [zfs.policies], or policies = '
                f'{{ {label} = "keep-..." }} to {where}'
            ),
        )

    def guest_policy(self, label: str) -> KeepPolicy:
        """The keep policy for ``label`` guest snapshots, from [guest_snapshots.policies]."""
        validate_label(label)
        if label in self.guest_snapshots.policies:
            return KeepPolicy.parse(
                self.guest_snapshots.policies[label],
                setting=f"guest_snapshots.policies.{label}",
            )
        raise ConfigError(
            f"no keep policy for {label!r} guest snapshots",
            setting=f"guest_snapshots.policies.{label}",
            hint=f'add {label} = "keep-..." to [guest_snapshots.policies]',
        )

    def proxmox_update_policy(self, label: str) -> KeepPolicy:
        """The keep policy for ``label`` snapshots of the nodes' root dataset, from
        [proxmox_update.policies]."""
        validate_label(label)
        if label in self.proxmox_update.policies:
            return KeepPolicy.parse(
                self.proxmox_update.policies[label],
                setting=f"proxmox_update.policies.{label}",
            )
        raise ConfigError(
            f"no keep policy for {label!r} snapshots of the nodes' root dataset",
            setting=f"proxmox_update.policies.{label}",
            hint=f'add {label} = "keep-..." to [proxmox_update.policies]',
        )

    def proxmox_update_nodes(self, cluster_nodes: Sequence[str]) -> list[str]:
        """The nodes a Proxmox update covers: [proxmox_update] nodes, else every node of
        ``cluster_nodes``; ``ConfigError`` for a node the cluster does not have, or one
        without a [hosts] table (the upgrade runs over SSH)."""
        chosen = list(self.proxmox_update.nodes) or sorted(cluster_nodes)
        unknown = [n for n in chosen if n not in set(cluster_nodes)]
        if unknown:
            raise ConfigError(
                f"not nodes of the cluster: {', '.join(unknown)}; its nodes: "
                f"{', '.join(sorted(cluster_nodes)) or 'none'}",
                setting="proxmox_update.nodes",
            )
        missing = [n for n in chosen if n not in self.hosts]
        if missing:
            raise ConfigError(
                f"no [hosts] table for node{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}: moxflow upgrades a node over SSH",
                setting="hosts",
                hint=f"add [hosts.{missing[0]}] with its address, or list the nodes to update "
                "in [proxmox_update] nodes",
            )
        return chosen

    def windows_policy(self, label: str) -> KeepPolicy:
        """The keep policy for ``label`` snapshots of the Windows VMs, from
        [windows.policies]."""
        validate_label(label)
        if label in self.windows.policies:
            return KeepPolicy.parse(
                self.windows.policies[label], setting=f"windows.policies.{label}"
            )
        raise ConfigError(
            f"no keep policy for {label!r} snapshots of the Windows VMs",
            setting=f"windows.policies.{label}",
            hint=f'add {label} = "keep-..." to [windows.policies]',
        )

    def nixos_host(self, name: str) -> NixosHost:
        """The NixOS host ``name``; ``ConfigError`` listing the known ones if there is none."""
        try:
            return self.nixos.hosts[name]
        except KeyError:
            known = ", ".join(self.nixos.hosts) or "none"
            raise ConfigError(
                f"{name!r} is not a NixOS host; known NixOS hosts: {known}",
                setting="nixos.hosts",
                hint=f"add a [nixos.hosts.{name}] table to the inventory",
            ) from None

    def nixos_profile(self, name: str) -> str:
        """The system profile of NixOS host ``name``: its own, else [nixos] profile."""
        return self.nixos_host(name).profile or self.nixos.profile

    def nixos_state_dir(self, name: str) -> str:
        """Where moxflow keeps lock and journal on NixOS host ``name``."""
        return self.nixos_host(name).state_dir or self.nixos.state_dir

    def nixos_attr(self, name: str) -> str:
        """The nixosConfigurations attribute of NixOS host ``name``: its attr, else its name."""
        return self.nixos_host(name).attr or validate_attr(name)

    def proxmox_settings(self) -> ProxmoxSettings:
        """The [proxmox] section; ``ConfigError`` if the inventory has none."""
        if self.proxmox is None:
            raise ConfigError(
                "the inventory has no [proxmox] section",
                setting="proxmox",
                hint="add [proxmox] with host, token_id and token_secret",
            )
        return self.proxmox

    def proxmox_secret(self) -> SecretStr:
        """Resolve ``proxmox.token_secret`` now (``block:`` needs the blocks package loaded)."""
        pve = self.proxmox_settings()
        if pve.token_secret is None:
            raise ConfigError(
                f"the API token is in the Proxmox credentials block {pve.credentials!r}, "
                "not in the inventory",
                setting="proxmox.token_secret",
                hint="build the client with blocks.proxmox.proxmox_client(inv)",
            )
        return pve.token_secret.resolve(self.base_dir, setting="proxmox.token_secret")
