"""``[nixos]`` and ``[nixos.hosts.NAME]``: NixOS updates with automatic rollback, each host's
snapshot method and its ``[[nixos.hosts.NAME.health]]`` checks.

:func:`find_cycle` lives here because the inventory refuses ``after`` cycles at load time;
the wave planner in :mod:`moxflow.nixos` uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from moxflow.errors import ConfigError
from moxflow.inventory.fields import (
    SECONDS_MAX,
    DatasetName,
    HostName,
    RemotePath,
    Seconds,
    Section,
    check_address,
    validate_attr,
    validation_error,
)

__all__ = [
    "HealthCheck",
    "NixosHost",
    "NixosSettings",
    "NoSnapshotMethod",
    "ProxmoxSnapshotMethod",
    "SnapshotMethod",
    "ZfsSnapshotMethod",
    "find_cycle",
]


def _check_attr(value: str) -> str:
    return validate_attr(value)


NixAttr = Annotated[str, AfterValidator(_check_attr)]
NonNegativeSeconds = Annotated[float, Field(ge=0, le=SECONDS_MAX)]

_SNAPSHOT_HELP = (
    "How to snapshot the host before updating it, so a failed update can be rolled back: "
    '{ method = "proxmox", vmid = N } for a VM or container, '
    '{ method = "zfs", host = "pve1", dataset = "rpool/..." } for a ZFS dataset, '
    'or { method = "none" } to update without a snapshot.'
)


class ProxmoxSnapshotMethod(Section):
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


class ZfsSnapshotMethod(Section):
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


class NoSnapshotMethod(Section):
    """snapshot = { method = "none" }: update without a snapshot (the dead-man timer remains)."""

    method: Literal["none"] = Field(
        description='"none": take no snapshot; only the previous generation is there to go back to.'
    )

    def describe(self) -> str:
        """One line for plans and reports."""
        return "none (opted out)"


SnapshotMethod = ProxmoxSnapshotMethod | ZfsSnapshotMethod | NoSnapshotMethod


def _check_tcp(value: str) -> str:
    check_address(_split_host_port(value)[0])
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


class HealthCheck(Section):
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


class NixosHost(Section):
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


class NixosSettings(Section):
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
            "Seconds a run waits for another run that holds a host (its slot in Prefect, or "
            "its lock on the host) before leaving the host as busy; 0 tries once."
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
            raise validation_error("NixosSettings", problems)
        return self


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, a]``, or ``None``; names outside ``graph`` are ignored.

    Deterministic: nodes and their edges are visited in the mapping's and sequences' order.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph[node]:
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
