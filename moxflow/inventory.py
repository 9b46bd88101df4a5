"""The inventory: one TOML file describing the homelab, with ``MOXFLOW_`` environment overrides.

``load_inventory()`` reads it through pydantic-settings (init kwargs > environment > file),
validates every name and policy before anything runs, resolves relative paths against the
file's folder, and turns every problem into one :class:`~moxflow.errors.ConfigError`.
Secrets are never in the file: settings such as ``proxmox.token_secret`` hold a
:class:`SecretRef` (``env:NAME``, ``file:PATH``, ``block:NAME``) resolved at the last moment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from moxflow.errors import ConfigError, SecretError
from moxflow.naming import validate_dataset, validate_host_name, validate_label
from moxflow.nixos import find_cycle, validate_attr, validate_remote_path
from moxflow.retention import KeepPolicy
from moxflow.selection import parse_selection

__all__ = [
    "DEFAULT_INVENTORY",
    "ENV_INVENTORY",
    "BackupSettings",
    "GuestSnapshotSettings",
    "HealthCheck",
    "HostSettings",
    "Inventory",
    "NixosHost",
    "NixosSettings",
    "NoSnapshotMethod",
    "NotificationSettings",
    "OffsiteSettings",
    "ProxmoxSettings",
    "ProxmoxSnapshotMethod",
    "SecretRef",
    "SnapshotMethod",
    "SshSettings",
    "SshTarget",
    "ZfsDataset",
    "ZfsSettings",
    "ZfsSnapshotMethod",
    "inventory_path",
    "load_inventory",
]

ENV_INVENTORY = "MOXFLOW_INVENTORY"
"""Environment variable naming the inventory file when no path is passed."""

DEFAULT_INVENTORY = Path("inventory.toml")
"""The inventory file used when neither a path nor ``MOXFLOW_INVENTORY`` is given."""

# The file the current load reads; a ContextVar so concurrent loads in threads do not mix.
_INVENTORY_FILE: ContextVar[Path | None] = ContextVar("moxflow_inventory_file", default=None)


# --- secret references ---------------------------------------------------------------------

SecretScheme = Literal["env", "file", "block"]
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_BLOCK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*", re.ASCII)
_SECRET_SCHEMES: tuple[SecretScheme, ...] = ("env", "file", "block")


class SecretRef(str):
    """Where a secret lives: ``env:NAME``, ``file:PATH`` or ``block:NAME``; never the secret.

    ``resolve()`` reads the secret at the last moment and returns it as a ``SecretStr``.
    """

    __slots__ = ()

    @property
    def scheme(self) -> SecretScheme:
        """``env``, ``file`` or ``block``."""
        scheme = self.partition(":")[0]
        for known in _SECRET_SCHEMES:
            if scheme == known:
                return known
        raise SecretError(f"{self!r} is not a secret reference")  # pragma: no cover

    @property
    def target(self) -> str:
        """The variable name, file path or block name after the scheme."""
        return self.partition(":")[2]

    @classmethod
    def check(cls, value: str, field: str = "token_secret") -> SecretRef:
        """Validate a reference without ever echoing it; raises ``ValueError``."""
        scheme, colon, target = value.partition(":")
        if not colon or scheme not in _SECRET_SCHEMES:
            raise ValueError(
                f"looks like a plain secret; store it in the environment and write "
                f'{field} = "env:PVE_TOKEN" (or file:PATH, or block:NAME for a Prefect '
                f"Secret block)"
            )
        if scheme == "env" and not _ENV_NAME_RE.fullmatch(target):
            raise ValueError(
                "env: needs an environment variable name of A-Z, a-z, 0-9 and '_', "
                f'e.g. {field} = "env:PVE_TOKEN"'
            )
        if scheme == "file" and not target.strip():
            raise ValueError(f'file: needs a path, e.g. {field} = "file:pve-token"')
        if scheme == "block" and not _BLOCK_NAME_RE.fullmatch(target):
            raise ValueError(
                "block: needs a Prefect block name of a-z, 0-9 and '-', "
                f'e.g. {field} = "block:pve-token"'
            )
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: str, info: ValidationInfo) -> SecretRef:
            try:
                return cls.check(value, info.field_name or "secret")
            except ValueError as exc:
                raise PydanticCustomError("secret_ref", str(exc)) from None

        return core_schema.with_info_after_validator_function(
            validate,
            core_schema.str_schema(strict=True),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    def resolve(self, base_dir: Path | None = None, *, setting: str = "secret") -> SecretStr:
        """Read the secret now; ``file:`` paths are relative to ``base_dir`` (the inventory's)."""
        match self.scheme:
            case "env":
                return self._from_env(setting)
            case "file":
                return self._from_file(base_dir or Path.cwd(), setting)
            case "block":
                return self._from_block(setting)

    def _from_env(self, setting: str) -> SecretStr:
        value = os.environ.get(self.target)
        if value is None:
            raise SecretError(
                f"environment variable {self.target} is not set",
                setting=setting,
                hint=f"set {self.target} in the environment of the process running moxflow",
            )
        if not value:
            raise SecretError(f"environment variable {self.target} is empty", setting=setting)
        return SecretStr(value)

    def _from_file(self, base_dir: Path, setting: str) -> SecretStr:
        path = _resolve_path(Path(self.target), base_dir)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SecretError(f"secret file {path} not found", setting=setting) from None
        except OSError as exc:
            raise SecretError(
                f"secret file {path} cannot be read: {exc.strerror or type(exc).__name__}",
                setting=setting,
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret file {path} is not UTF-8 text", setting=setting) from None
        value = text.removesuffix("\n").removesuffix("\r")
        if not value.strip():
            raise SecretError(f"secret file {path} is empty", setting=setting)
        return SecretStr(value)

    def _from_block(self, setting: str) -> SecretStr:
        try:
            from prefect.blocks.system import Secret

            load: Any = Secret.load  # dispatches to async in a running loop unless _sync=True
            value: Any = load(self.target, _sync=True).get()
        except Exception as exc:
            raise SecretError(
                f"Prefect Secret block {self.target!r} cannot be loaded: "
                f"{type(exc).__name__}: {exc}",
                setting=setting,
                hint=f"create it with Secret(value=...).save({self.target!r})",
            ) from None
        text = value if isinstance(value, str) else json.dumps(value)
        if not text:
            raise SecretError(f"Prefect Secret block {self.target!r} is empty", setting=setting)
        return SecretStr(text)


# --- field types ---------------------------------------------------------------------------

_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}", re.ASCII)
_TOKEN_ID_RE = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+![A-Za-z][A-Za-z0-9_.-]+", re.ASCII)
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    re.ASCII,
)


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOSTNAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is neither an IP address nor a DNS name "
                "(letters, digits, '-' and '.', not starting with '-')"
            ) from None
    return value


def _check_user(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a login name (a-z, 0-9, '_', '.', '-', starting with a letter "
            "or '_', at most 32 characters)"
        )
    return value


def _check_policy(value: str) -> str:
    KeepPolicy.parse(value)
    return value


def _check_selection(value: str) -> str:
    parse_selection(value)
    return value


Address = Annotated[str, AfterValidator(_check_address)]
Login = Annotated[str, AfterValidator(_check_user)]
Label = Annotated[str, AfterValidator(validate_label)]
PolicyText = Annotated[str, AfterValidator(_check_policy)]
HostName = Annotated[str, AfterValidator(validate_host_name)]
DatasetName = Annotated[str, AfterValidator(validate_dataset)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
Policies = dict[Label, PolicyText]

_POLICIES_HELP = (
    'Keep policy per snapshot label, e.g. hourly = "keep-hourly=24". Keys are labels '
    "(lowercase, up to 16 characters); values are comma-separated keep-last, keep-hourly, "
    "keep-daily, keep-weekly, keep-monthly, keep-yearly counts, or keep-all=1."
)


class _Section(BaseModel):
    """Base of every inventory section: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- sections ------------------------------------------------------------------------------


class ProxmoxSettings(_Section):
    """How to reach the Proxmox VE API."""

    host: Address = Field(
        description="Address of one Proxmox VE node (IP or DNS name); the API is on its port."
    )
    port: Port = Field(default=8006, description="HTTPS port of the Proxmox VE API.")
    token_id: str = Field(
        description=(
            "API token id as USER@REALM!TOKENID, e.g. root@pam!moxflow. Create it under "
            "Datacenter > Permissions > API Tokens."
        )
    )
    token_secret: SecretRef = Field(
        description=(
            "Where the API token's secret is: env:NAME (an environment variable), file:PATH "
            "(a file, relative to the inventory's folder) or block:NAME (a Prefect Secret "
            "block). Never the secret itself."
        )
    )
    ca_file: Path | None = Field(
        default=None,
        description=(
            "CA certificate to verify the API's TLS certificate against, usually a copy of "
            "the cluster's /etc/pve/pve-root-ca.pem. Relative to the inventory's folder."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description=(
            "Verify the API's TLS certificate. Leave on: set ca_file instead of turning this off."
        ),
    )
    timeout: Seconds = Field(
        default=30.0, description="Seconds to wait for one API request before giving up."
    )

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, value: str) -> str:
        if not _TOKEN_ID_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an API token id; write USER@REALM!TOKENID, e.g. root@pam!moxflow"
            )
        return value


class SshSettings(_Section):
    """Defaults for every SSH connection; a host may override user and key_file."""

    user: Login = Field(default="root", description="Login name on the hosts.")
    key_file: Path | None = Field(
        default=None,
        description=(
            "Private key to log in with (e.g. an ed25519 key), relative to the inventory's "
            "folder. Only this key is offered; no agent and no key search."
        ),
    )
    known_hosts: Path | None = Field(
        default=None,
        description=(
            "known_hosts file with the hosts' public keys, relative to the inventory's folder."
        ),
    )
    strict_host_keys: bool = Field(
        default=True,
        description=(
            "Refuse hosts whose key is unknown or changed. Turning this off allows "
            "man-in-the-middle attacks."
        ),
    )
    connect_timeout: Seconds = Field(
        default=10.0, description="Seconds to wait for an SSH connection to be established."
    )
    command_timeout: Seconds = Field(
        default=300.0, description="Seconds one remote command may run before it is abandoned."
    )


class HostSettings(_Section):
    """One machine moxflow reaches over SSH (a Proxmox node, a NixOS host, a NAS)."""

    address: Address = Field(description="IP address or DNS name to connect to.")
    port: Port = Field(default=22, description="Port the host's SSH server listens on.")
    user: Login | None = Field(default=None, description="Login name; default: ssh.user.")
    key_file: Path | None = Field(
        default=None,
        description="Private key for this host, relative to the inventory's folder; "
        "default: ssh.key_file.",
    )


class ZfsDataset(_Section):
    """One ZFS dataset to snapshot and prune."""

    host: HostName = Field(description="Name of the host (a key of [hosts]) that has the pool.")
    name: DatasetName = Field(description="Dataset name, e.g. rpool/data.")
    recursive: bool = Field(
        default=False,
        description=(
            "Also snapshot every child dataset (zfs snapshot -r), and prune the children's "
            "snapshots together with the parent's."
        ),
    )
    policies: Policies = Field(
        default_factory=dict,
        description="Keep policies for this dataset that override [zfs.policies], per label.",
    )

    @property
    def target(self) -> str:
        """``host:name``, for logs and reports."""
        return f"{self.host}:{self.name}"


class ZfsSettings(_Section):
    """ZFS datasets to snapshot, and how long to keep their snapshots."""

    policies: Policies = Field(default_factory=dict, description=_POLICIES_HELP)
    datasets: list[ZfsDataset] = Field(
        default_factory=list,
        description="Datasets to snapshot, each as a [[zfs.datasets]] table.",
    )


class GuestSnapshotSettings(_Section):
    """Proxmox VM and container snapshots: which guests, and how long to keep them."""

    select: str = Field(
        default="@all",
        description=(
            "Which guests to snapshot: comma-separated ids (100), ranges (100:110), @all, "
            "@tag-X, @pool-X, @node-X or names; a leading '-' excludes (-@tag-nosnap)."
        ),
    )
    running_only: bool = Field(default=False, description="Skip guests that are not running.")
    vmstate: bool = Field(
        default=False,
        description="Include the RAM of running VMs in their snapshots (slower, larger).",
    )
    concurrency: int = Field(
        default=8, ge=1, le=256, description="How many guests to snapshot at the same time."
    )
    policies: Policies = Field(default_factory=dict, description=_POLICIES_HELP)

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        return _check_selection(value)


# --- backups -------------------------------------------------------------------------------

DEFAULT_NOTES_TEMPLATE = "{{guestname}} {{vmid}} {{node}} moxflow"
"""The notes of a backup moxflow made: it marks the archive as moxflow's."""


def _check_storage_path(value: str) -> str:
    # ``{node}`` stands for the node's name on a node-local storage
    validate_remote_path(value.replace("{node}", "node"))
    return value


StoragePath = Annotated[str, AfterValidator(_check_storage_path)]
RemotePath = Annotated[str, AfterValidator(validate_remote_path)]
StorageName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]


class BackupSettings(_Section):
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
            "through Proxmox's prune endpoint after each backup; default: do not prune."
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
    storage_paths: dict[StorageName, StoragePath] = Field(
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
        return _check_selection(value)

    def storage_path(self, storage: str, node: str) -> str:
        """Where the archives of ``storage`` are, as seen on ``node``."""
        if storage in self.storage_paths:
            return self.storage_paths[storage].replace("{node}", node)
        if storage == "local":
            return "/var/lib/vz/dump"
        return f"/mnt/pve/{storage}/dump"


class OffsiteSettings(_Section):
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


class RestoreTestSettings(_Section):
    """Restore tests: which guests' newest backups are restored, booted and destroyed, where."""

    select: str = Field(
        default="@all",
        description="Which guests to restore-test, in the selection language (templates skipped).",
    )
    scratch_vmids: str = Field(
        default="9900:9999",
        pattern=r"^\s*[0-9]+\s*(:\s*[0-9]+\s*)?$",
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
        return _check_selection(value)

    @field_validator("scratch_vmids")
    @classmethod
    def _scratch_vmids(cls, value: str) -> str:
        first, _, last = value.partition(":")
        lo, hi = int(first), int(last or first)
        if not 100 <= lo <= hi <= 999_999_999:
            raise ValueError(f"{value!r}: need 100 <= FIRST <= LAST <= 999999999")
        return value.strip()

    def vmid_range(self) -> range:
        """The scratch VMIDs as a range."""
        first, _, last = self.scratch_vmids.partition(":")
        return range(int(first), int(last or first) + 1)


# --- NixOS updates -------------------------------------------------------------------------


def _check_attr(value: str) -> str:
    return validate_attr(value)


NixAttr = Annotated[str, AfterValidator(_check_attr)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]

_SNAPSHOT_HELP = (
    "How to snapshot the host before updating it, so a failed update can be rolled back: "
    '{ method = "proxmox", vmid = N } for a VM or container, '
    '{ method = "zfs", host = "pve1", dataset = "rpool/..." } for a ZFS dataset, '
    'or { method = "none" } to update without a snapshot.'
)


class ProxmoxSnapshotMethod(_Section):
    """snapshot = { method = "proxmox", vmid = N }: a Proxmox snapshot of the host's guest."""

    method: Literal["proxmox"] = Field(
        description='"proxmox": snapshot the VM or container the host runs in.'
    )
    vmid: int = Field(
        ge=100,
        le=999_999_999,
        description="Id of the Proxmox VM or container the NixOS host runs in (100 or more).",
    )

    def describe(self) -> str:
        """One line for plans and reports."""
        return f"Proxmox snapshot of guest {self.vmid}"


class ZfsSnapshotMethod(_Section):
    """snapshot = { method = "zfs", host, dataset }: a ZFS snapshot of the host's storage."""

    method: Literal["zfs"] = Field(description='"zfs": snapshot a ZFS dataset.')
    host: HostName = Field(
        description="Name of the host (a key of [hosts]) whose pool holds the dataset."
    )
    dataset: DatasetName = Field(
        description=(
            "Dataset holding the NixOS host's root file system, e.g. rpool/data/subvol-100-disk-0."
        )
    )

    def describe(self) -> str:
        """One line for plans and reports."""
        return f"ZFS snapshot of {self.host}:{self.dataset}"


class NoSnapshotMethod(_Section):
    """snapshot = { method = "none" }: update without a snapshot (the dead-man timer remains)."""

    method: Literal["none"] = Field(
        description='"none": take no snapshot; only the previous generation is there to go back to.'
    )

    def describe(self) -> str:
        """One line for plans and reports."""
        return "none (opted out)"


SnapshotMethod = ProxmoxSnapshotMethod | ZfsSnapshotMethod | NoSnapshotMethod


def _check_tcp(value: str) -> str:
    _check_address(_split_host_port(value)[0])
    return value


def _split_host_port(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        port_text = rest[1:] if close and rest.startswith(":") else ""
    else:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            host = ""  # an IPv6 address needs brackets: [fd00::5]:22
    if not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(
            f'{value!r} is not "host:port"; write e.g. "10.0.0.5:8096" or "[fd00::5]:22"'
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is not between 1 and 65535")
    return host, port


class HealthCheck(_Section):
    """One health check after a switch: exactly one of http, tcp or command."""

    http: str | None = Field(
        default=None,
        description=(
            "URL moxflow fetches from where it runs (http:// or https://); healthy when the "
            "answer has status expect_status and its body contains expect_text."
        ),
    )
    tcp: str | None = Field(
        default=None,
        description=(
            'Address as "host:port" that must accept a TCP connection from where moxflow '
            'runs, e.g. "10.0.0.5:8096" or "[fd00::5]:22".'
        ),
    )
    command: list[str] | None = Field(
        default=None,
        description=(
            "Command run on the NixOS host over SSH, as a list of arguments, e.g. "
            '["systemctl", "is-active", "jellyfin"]; healthy when it exits 0.'
        ),
    )
    expect_status: int = Field(
        default=200, ge=100, le=599, description="HTTP status an http check must answer with."
    )
    expect_text: str | None = Field(
        default=None,
        description=(
            "Text the body of an http check must contain; leave out to check the status only."
        ),
    )
    timeout: Seconds = Field(
        default=5.0, description="Seconds one attempt of this check may take before it fails."
    )

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("a URL must not contain spaces or control characters")
        try:
            url = urlsplit(value)
            url.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL, e.g. http://10.0.0.5:8080/health"
            )
        if url.username is not None or url.password is not None:
            raise ValueError("a health URL must not carry a user or password")
        return value

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, value: str | None) -> str | None:
        return None if value is None else _check_tcp(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or not value[0].strip():
            raise ValueError(
                'a command is a non-empty list of arguments, e.g. ["systemctl", "is-active", "x"]'
            )
        if any("\x00" in arg for arg in value):
            raise ValueError("a command argument must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        given = [k for k in ("http", "tcp", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            what = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one of http, tcp or command (got {what})")
        if given != ["http"]:
            extra = sorted({"expect_status", "expect_text"} & self.model_fields_set)
            if extra:
                verb = "applies" if len(extra) == 1 else "apply"
                raise ValueError(f"{' and '.join(extra)} only {verb} to http checks")
        return self

    @property
    def kind(self) -> Literal["http", "tcp", "command"]:
        """Which kind of check this is."""
        if self.http is not None:
            return "http"
        return "tcp" if self.tcp is not None else "command"

    @property
    def tcp_target(self) -> tuple[str, int]:
        """``(host, port)`` of a tcp check (IPv6 without brackets)."""
        if self.tcp is None:
            raise ConfigError("not a tcp health check")
        return _split_host_port(self.tcp)


class NixosHost(_Section):
    """One NixOS host to update, as a [nixos.hosts.NAME] table (NAME is a [hosts] name)."""

    flake: RemotePath = Field(
        default="/etc/nixos",
        description="Folder on the host holding the system's flake.nix and flake.lock.",
    )
    attr: NixAttr | None = Field(
        default=None,
        description="Name of the host's entry in nixosConfigurations; default: the host's name.",
    )
    canary: bool = Field(
        default=False,
        description=(
            "Update this host first, in a wave of its own; the others wait until it is "
            "updated and healthy. Without any canary the first host goes first alone."
        ),
    )
    after: list[HostName] = Field(
        default_factory=list,
        description=(
            "NixOS hosts that must be updated successfully before this one, e.g. the DNS "
            'server: after = ["dns"].'
        ),
    )
    commit_lock_file: bool = Field(
        default=False,
        description=(
            "Commit the updated flake.lock in the flake's git repository "
            "(nix flake update --commit-lock-file)."
        ),
    )
    profile: RemotePath | None = Field(
        default=None, description="The system profile on this host; default: nixos.profile."
    )
    state_dir: RemotePath | None = Field(
        default=None,
        description=(
            "Folder for moxflow's lock, journal and last-check on this host; "
            "default: nixos.state_dir."
        ),
    )
    snapshot: SnapshotMethod = Field(discriminator="method", description=_SNAPSHOT_HELP)
    health: list[HealthCheck] = Field(
        default_factory=list,
        description=(
            "Checks that must pass after the switch, each a [[nixos.hosts.NAME.health]] "
            "table; the system state and failed units are always checked."
        ),
    )


class NixosSettings(_Section):
    """NixOS updates with automatic rollback: timings, where things are, and the hosts."""

    confirm_timeout: Seconds = Field(
        default=120.0,
        description=(
            "Seconds after a switch until the host switches back to its previous generation by "
            "itself, unless moxflow confirms the update (a dead-man timer on the host). "
            "Must be longer than health_grace."
        ),
    )
    health_grace: Seconds = Field(
        default=60.0,
        description="Seconds the health checks get to pass after a switch before it is undone.",
    )
    max_parallel: int = Field(
        default=2,
        ge=1,
        le=256,
        description="How many hosts are updated at the same time after the canary wave.",
    )
    lock_wait: NonNegativeSeconds = Field(
        default=0.0,
        description=(
            "Seconds a run waits for another run's lock on a host before skipping the host; "
            "0 skips at once."
        ),
    )
    profile: RemotePath = Field(
        default="/nix/var/nix/profiles/system",
        description="The system profile on the hosts (its generations are what a switch adds).",
    )
    state_dir: RemotePath = Field(
        default="/var/lib/moxflow",
        description=(
            "Folder on each host where moxflow keeps its update lock, journal and last-check "
            "(when a run last found the host up to date)."
        ),
    )
    hosts: dict[HostName, NixosHost] = Field(
        default_factory=dict,
        description="The NixOS hosts to update, as [nixos.hosts.NAME] tables, in update order.",
    )

    @model_validator(mode="after")
    def _dependencies(self) -> NixosSettings:
        problems: list[tuple[tuple[int | str, ...], str]] = []
        if self.confirm_timeout <= self.health_grace:
            problems.append(
                (
                    ("confirm_timeout",),
                    f"{self.confirm_timeout:g} s is not longer than health_grace "
                    f"({self.health_grace:g} s): the host would switch back while its health "
                    "is still being checked",
                )
            )
        known = ", ".join(self.hosts) or "none"
        for name, host in self.hosts.items():
            for i, other in enumerate(host.after):
                if other not in self.hosts:
                    problems.append(
                        (
                            ("hosts", name, "after", i),
                            f"{other!r} is not a NixOS host; after names [nixos.hosts] "
                            f"tables: {known}",
                        )
                    )
                elif host.canary and not self.hosts[other].canary:
                    problems.append(
                        (
                            ("hosts", name, "after", i),
                            f"canary {name} waits for {other}, which is not a canary; canaries "
                            "go first, so make it a canary too or drop it from after",
                        )
                    )
        cycle = find_cycle({n: h.after for n, h in self.hosts.items()})
        if cycle:
            problems.append(
                (
                    ("hosts", cycle[0], "after"),
                    f"dependency cycle {' → '.join(cycle)}; remove one of these names from an "
                    "after list",
                )
            )
        if problems:
            raise _problems("NixosSettings", problems)
        return self


# --- notifications -------------------------------------------------------------------------

NotifyOn = Literal["failed", "rollback", "needs-attention"]


def _check_webhook(value: str) -> str:
    """A plain https:// URL or an env:/file:/block: reference; never echoes the value."""
    if value.partition(":")[0] in _SECRET_SCHEMES:
        return SecretRef.check(value, "webhook")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("a URL must not contain spaces or control characters")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("is not a URL; write an https:// URL or env:NAME / file:PATH") from None
    if url.scheme != "https" or not url.hostname:
        raise ValueError(
            "is not an https:// URL; write one, or keep it in the environment and write "
            'webhook = "env:MOXFLOW_WEBHOOK" (or file:PATH)'
        )
    return value


def _check_block_name(value: str) -> str:
    if not _BLOCK_NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Prefect block name (a-z, 0-9 and '-'), "
            'e.g. block = "ntfy-alerts"'
        )
    return value


class NotificationSettings(_Section):
    """Who hears about failed runs, rollbacks and hosts that need attention, and how."""

    block: Annotated[str, AfterValidator(_check_block_name)] | None = Field(
        default=None,
        description=(
            "Name of a Prefect notification block (ntfy, Gotify, Slack, email, a custom "
            "webhook, ...) that the automations made by python -m deployments.notifications "
            "send through. Create the block in the Prefect UI first."
        ),
    )
    webhook: Annotated[str, AfterValidator(_check_webhook)] | None = Field(
        default=None,
        description=(
            "URL moxflow itself POSTs a JSON message to when a run fails, also for ad-hoc "
            "runs with no automation on the server: an https:// URL, or env:NAME / file:PATH "
            "when the URL carries a token."
        ),
    )
    on: list[NotifyOn] = Field(
        default=["failed", "rollback", "needs-attention"],
        description=(
            'What to notify about: "failed" (a run ended Failed or Crashed), "rollback" (a '
            'NixOS update was undone), "needs-attention" (a host could not be restored). '
            "Default: all three."
        ),
    )
    timeout: Seconds = Field(
        default=10.0, description="Seconds to wait for one webhook request before giving up."
    )

    def webhook_url(self, base_dir: Path | None = None) -> SecretStr | None:
        """The webhook URL, read now (a reference is resolved); ``None`` when there is none."""
        if self.webhook is None:
            return None
        if self.webhook.partition(":")[0] in _SECRET_SCHEMES:
            ref = SecretRef(self.webhook)
            url = ref.resolve(base_dir, setting="notifications.webhook")
            _check_resolved_webhook(url, ref)
            return SecretStr(url.get_secret_value().strip())
        return SecretStr(self.webhook)


def _check_resolved_webhook(url: SecretStr, ref: SecretRef) -> None:
    try:
        _check_webhook(url.get_secret_value().strip())
    except ValueError as exc:
        raise SecretError(
            f"the webhook URL in {ref.scheme}:{ref.target} {exc}", setting="notifications.webhook"
        ) from None


# --- the health report and the schedules ----------------------------------------------------

LABEL_PERIOD_HOURS: dict[str, float] = {
    "frequently": 0.25,
    "hourly": 1.0,
    "daily": 24.0,
    "weekly": 7 * 24.0,
    "monthly": 31 * 24.0,
    "yearly": 366 * 24.0,
}
"""How often a snapshot of each well-known label is taken, in hours (as sanoid's labels)."""

PositiveNumber = Annotated[float, Field(gt=0)]


class HealthSettings(_Section):
    """What the daily health report checks, and when it calls something too old."""

    backup_max_age_hours: PositiveNumber | None = Field(
        default=None,
        description=(
            "A guest's newest backup older than this fails the report; "
            "default: [backups] max_age_hours."
        ),
    )
    offsite_max_age_hours: PositiveNumber = Field(
        default=48.0,
        description="A guest's newest offsite copy older than this fails (with [offsite] set).",
    )
    restore_test_max_age_days: PositiveNumber = Field(
        default=8.0,
        description=(
            "Days since a guest's last passed restore test (of a backup still listed) after "
            "which the report fails; guests outside [restore_test] select are not checked."
        ),
    )
    snapshot_grace: float = Field(
        default=1.5,
        ge=1.0,
        description=(
            "The newest snapshot of a label may be this many of the label's periods old, "
            "e.g. 1.5: an hourly snapshot 90 minutes old is still fine, a daily one 36 hours."
        ),
    )
    label_hours: dict[Label, PositiveNumber] = Field(
        default_factory=dict,
        description=(
            "Period in hours of labels other than frequently, hourly, daily, weekly, monthly "
            "and yearly (or to override them), e.g. { twice-daily = 12 }. Every label with a "
            "keep policy in [zfs] or [guest_snapshots] and a period is checked; the others "
            "(pre-update: taken on events) are listed as not judged."
        ),
    )
    nixos_max_age_days: PositiveNumber = Field(
        default=14.0,
        description="A NixOS host whose current generation is older than this fails.",
    )
    node_max_pending_updates: int | None = Field(
        default=None,
        ge=0,
        description=(
            "A Proxmox node with more pending package updates than this fails; default: "
            "pending updates are shown, not judged."
        ),
    )

    def period(self, label: str) -> float | None:
        """The label's period in hours, None when unknown."""
        return self.label_hours.get(label, LABEL_PERIOD_HOURS.get(label))


_DEPLOYMENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*$")
# cron: minute hour day-of-month month day-of-week, each a list of *, N, N-M, with /STEP
_CRON_ITEM_RE = re.compile(
    r"^(?:\*|(?P<lo>[0-9a-z]+)(?:-(?P<hi>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?$"
)
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                      "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip


def _cron_value(text: str, lo: int, hi: int, names: tuple[str, ...], what: str) -> int:
    if text in names:
        return names.index(text) + lo
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"{text!r} is not a valid {what} ({lo}-{hi})")
    return int(text)


def _check_schedule(value: str) -> str:
    text = " ".join(value.lower().split())
    if text == "off":
        return text
    usage = (
        f"{value!r} is not a cron schedule: write five fields, minute hour day month "
        'weekday, e.g. "0 1 * * *" (01:00 every day), or "off"'
    )
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(usage)
    for field, (what, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in field.split(","):
            m = _CRON_ITEM_RE.fullmatch(item)
            if m is None or m["step"] == "0":
                raise ValueError(f"{usage}; {item!r} is not a {what}")
            try:
                first = _cron_value(m["lo"], lo, hi, names, what) if m["lo"] else lo
                last = _cron_value(m["hi"], lo, hi, names, what) if m["hi"] else first
            except ValueError as exc:
                raise ValueError(f"{usage}; {exc}") from None
            if last < first:
                raise ValueError(f"{usage}; {item!r} runs backwards")
    return text


def _check_deployment_name(value: str) -> str:
    if not _DEPLOYMENT_RE.fullmatch(value):
        raise ValueError(
            f'{value!r} is not a deployment name: write flow/name, e.g. "vzdump-backup/nightly"'
        )
    return value


Schedule = Annotated[str, AfterValidator(_check_schedule)]
DeploymentName = Annotated[str, AfterValidator(_check_deployment_name)]


def _problems(title: str, problems: list[tuple[tuple[int | str, ...], str]]) -> ValidationError:
    """One validation error per problem, each at its own setting (relative to the model)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("inventory", "{problem}", {"problem": text}),
                loc=loc,
                input=None,
            )
            for loc, text in problems
        ],
    )


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Everything needed to open an SSH connection to one inventory host."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path | None
    strict_host_keys: bool
    connect_timeout: float
    command_timeout: float


# --- the inventory -------------------------------------------------------------------------


def _resolve_path(path: Path, base_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base_dir / path


class Inventory(BaseSettings):
    """The whole homelab as moxflow sees it, read from the inventory TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="MOXFLOW_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
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
        path = _INVENTORY_FILE.get()
        if path is None:
            return init_settings, env_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path)

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
            raise _problems("NixosSettings", problems)
        return nixos

    @model_validator(mode="after")
    def _resolve_paths(self) -> Inventory:
        path = _INVENTORY_FILE.get()
        self._base_dir = path.parent if path is not None else Path.cwd()
        base = self._base_dir

        def rebase(p: Path | None) -> Path | None:
            return None if p is None else _resolve_path(p, base)

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
        """How to connect to host ``name``: its settings with [ssh] filling the gaps."""
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
        """Resolve ``proxmox.token_secret`` now."""
        return self.proxmox_settings().token_secret.resolve(
            self.base_dir, setting="proxmox.token_secret"
        )


# --- loading -------------------------------------------------------------------------------


def inventory_path(path: Path | str | None = None) -> Path:
    """The inventory file to read: ``path``, else ``$MOXFLOW_INVENTORY``, else ./inventory.toml."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV_INVENTORY) or DEFAULT_INVENTORY
    return Path(path).expanduser().absolute()


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    token = _INVENTORY_FILE.set(path)
    try:
        yield
    finally:
        _INVENTORY_FILE.reset(token)


def load_inventory(path: Path | str | None = None, **overrides: Any) -> Inventory:
    """Read and validate the inventory; every problem becomes one ``ConfigError``.

    ``overrides`` (keyword settings, e.g. ``timezone="UTC"``) beat the environment and file.
    """
    file = inventory_path(path)
    if not file.is_file():
        raise ConfigError(
            f"inventory file {file} not found; pass --inventory FILE or set {ENV_INVENTORY}"
        )
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"inventory file {file} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        with _reading(file):
            return Inventory(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"inventory file {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"inventory file {file} is not UTF-8 text") from None
    except SettingsError as exc:
        raise ConfigError(f"inventory file {file}: {exc}", hint=_env_hint()) from None
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        problems = [_describe_error(err) for err in errors]
        if len(problems) == 1:
            setting = _dotted(_walk(tuple(errors[0]["loc"]))[0]) or None
            text = problems[0]
        else:
            setting = None
            text = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise ConfigError(
            f"inventory file {file} has {len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}: {text}",
            setting=setting,
            hint=_env_hint(),
        ) from None


def _env_hint() -> str | None:
    """Name the ``MOXFLOW_`` variables in effect, since their settings are not in the file."""
    names = sorted(
        k for k in os.environ if k.upper().startswith("MOXFLOW_") and k.upper() != ENV_INVENTORY
    )
    return f"also read from the environment: {', '.join(names)}" if names else None


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_PREFIXES = ("Value error, ", "Assertion failed, ")

# What to write when a required setting is missing, by the setting's name.
_MISSING_HELP = {
    "snapshot": (
        'say how to snapshot the host before an update: snapshot = { method = "proxmox", '
        'vmid = N }, { method = "zfs", host = "...", dataset = "..." } or { method = "none" }'
    )
}


def _describe_error(err: Any) -> str:
    """``dotted.setting: message`` for one pydantic error, never including the input."""
    raw: tuple[int | str, ...] = tuple(err["loc"])
    loc, at = _walk(raw)
    kind: str = err["type"]
    message: str = err["msg"]
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    if kind == "extra_forbidden":
        known = _known_settings(raw[:-1])
        message = "unknown setting (a typo?)"
        if known:
            message += f"; known here: {', '.join(known)}"
    elif kind == "missing":
        message = "required setting is missing"
        if loc and str(loc[-1]) in _MISSING_HELP:
            message += f"; {_MISSING_HELP[str(loc[-1])]}"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        key = str(err.get("ctx", {}).get("discriminator", "")).strip("'") or "method"
        names = [f'"{t}"' for t in _union_tags(at)]
        tags = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
        if kind == "union_tag_invalid":
            message = f"unknown {key} {err['ctx']['tag']!r}; use {tags}"
        elif tags:
            message = f"needs a {key}: {tags}"
    where = _dotted(loc)
    if not where or message.startswith((f"{where}.", f"{where}[")):
        return message
    return f"{where}: {message}"


def _unwrap(annotation: Any) -> Any:
    """Drop ``None`` from ``X | None`` and the metadata from ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _union_tags(annotation: Any) -> dict[str, type[BaseModel]]:
    """For a union of sections told apart by a ``method`` literal: each tag and its section."""
    tags: dict[str, type[BaseModel]] = {}
    if get_origin(annotation) not in (Union, types.UnionType):
        return tags
    for member in get_args(annotation):
        field = member.model_fields.get("method") if _is_model(member) else None
        if field is not None and get_origin(field.annotation) is Literal:
            tags.update(dict.fromkeys(map(str, get_args(field.annotation)), member))
    return tags


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], Any]:
    """``loc`` without the tags pydantic inserts for tagged unions, and the type found there.

    The type is ``None`` when ``loc`` leads outside the models (e.g. into a dict key).
    """
    current: Any = Inventory
    clean: list[int | str] = []
    for part in loc:
        current = _unwrap(current)
        tags = _union_tags(current)
        if str(part) in tags:
            current = tags[str(part)]
            continue
        clean.append(part)
        if _is_model(current):
            field = current.model_fields.get(str(part))
            current = None if field is None else field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            current = None
    return tuple(clean), None if current is None else _unwrap(current)


def _known_settings(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the section at ``loc`` (for 'unknown setting' errors)."""
    current = _walk(loc)[1]
    return list(current.model_fields) if _is_model(current) else []
