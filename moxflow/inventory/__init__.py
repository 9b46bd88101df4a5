"""The inventory: one TOML file describing the homelab, with ``MOXFLOW_`` environment overrides.

``load_inventory()`` reads it through pydantic-settings (init kwargs > environment > file),
validates every name and policy before anything runs, resolves relative paths against the
file's folder, and turns every problem into one :class:`~moxflow.errors.ConfigError`.
Secrets are never in the file: settings such as ``proxmox.token_secret`` hold a
:class:`SecretRef` (``env:NAME``, ``file:PATH``, ``block:NAME``) resolved at the last moment.

The package, bottom up:

- ``secrets``: secret references and how ``env:`` and ``file:`` are read; ``block:`` is read
  by the resolver ``blocks/`` registers (the core imports no Prefect);
- ``fields``: field types shared by the sections (addresses, names, paths, policies);
- one module per section: ``proxmox``, ``ssh``, ``hosts``, ``zfs``, ``guest_snapshots``,
  ``nixos`` (with the health checks), ``proxmox_update``, ``windows`` (with its checks;
  ``windows_provision``: what provisioning sets up in a VM), ``backups`` (with offsite and
  restore tests), ``notifications``, ``health``, ``retries``, ``schedules``;
- ``model``: the :class:`Inventory` and its checks across sections;
- ``loader``: ``load_inventory()`` and its error messages.
"""

from __future__ import annotations

from moxflow.inventory.backups import (
    DEFAULT_NOTES_TEMPLATE,
    BackupSettings,
    OffsiteSettings,
    RestoreTestSettings,
)
from moxflow.inventory.guest_snapshots import GuestSnapshotSettings
from moxflow.inventory.health import LABEL_PERIOD_HOURS, HealthSettings
from moxflow.inventory.hosts import HostSettings
from moxflow.inventory.loader import (
    DEFAULT_INVENTORY,
    ENV_INVENTORY,
    inventory_path,
    load_inventory,
)
from moxflow.inventory.model import Inventory
from moxflow.inventory.nixos import (
    HealthCheck,
    NixosHost,
    NixosSettings,
    NoSnapshotMethod,
    ProxmoxSnapshotMethod,
    SnapshotMethod,
    ZfsSnapshotMethod,
)
from moxflow.inventory.notifications import NotificationSettings, NotifyOn
from moxflow.inventory.proxmox import ProxmoxSettings
from moxflow.inventory.proxmox_update import ProxmoxUpdateSettings
from moxflow.inventory.retries import RetrySettings
from moxflow.inventory.schedules import DeploymentName, Schedule
from moxflow.inventory.secrets import (
    BlockResolver,
    SecretRef,
    SecretScheme,
    register_block_resolver,
)
from moxflow.inventory.ssh import SshSettings, SshTarget
from moxflow.inventory.windows import WindowsCheck, WindowsSettings, WindowsVm
from moxflow.inventory.windows_provision import RustSettings, SteamApp, SteamSettings, WindowsTask
from moxflow.inventory.zfs import ZfsDataset, ZfsSettings

__all__ = [
    "DEFAULT_INVENTORY",
    "DEFAULT_NOTES_TEMPLATE",
    "ENV_INVENTORY",
    "LABEL_PERIOD_HOURS",
    "BackupSettings",
    "BlockResolver",
    "DeploymentName",
    "GuestSnapshotSettings",
    "HealthCheck",
    "HealthSettings",
    "HostSettings",
    "Inventory",
    "NixosHost",
    "NixosSettings",
    "NoSnapshotMethod",
    "NotificationSettings",
    "NotifyOn",
    "OffsiteSettings",
    "ProxmoxSettings",
    "ProxmoxSnapshotMethod",
    "ProxmoxUpdateSettings",
    "RestoreTestSettings",
    "RetrySettings",
    "RustSettings",
    "Schedule",
    "SecretRef",
    "SecretScheme",
    "SnapshotMethod",
    "SshSettings",
    "SshTarget",
    "SteamApp",
    "SteamSettings",
    "WindowsCheck",
    "WindowsSettings",
    "WindowsTask",
    "WindowsVm",
    "ZfsDataset",
    "ZfsSettings",
    "ZfsSnapshotMethod",
    "inventory_path",
    "load_inventory",
    "register_block_resolver",
]
