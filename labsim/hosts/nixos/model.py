"""The NixOS simulation's data: versions and paths, what a command gets and answers, builds,
generations, transient timers, host specs, and the nix hashes labsim derives names from."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NIXOS_RELEASE = "25.11"
NIX_VERSION = "2.31.2"
SYSTEMD_VERSION = "258 (258.2)"
NIXPKGS_BRANCH = "nixos-25.11"
CANONICAL_PROFILE = "/nix/var/nix/profiles/system"
FLAKE_REL = "etc/nixos"
PROFILE_REL = "nix/var/nix/profiles/system"
STATE_REL = "var/lib/moxflow"
DEFAULT_BUILD_SECONDS = 8.0

# The commands a NixOS host has (dispatched by the basename of argv[0]).
COMMAND_NAMES = (
    "nix",
    "nixos-rebuild",
    "nix-env",
    "systemctl",
    "systemd-run",
    "reboot",
    "switch-to-configuration",
)
# Shims written into DIR/bin (switch-to-configuration lives in each generation's folder).
SHIM_NAMES = COMMAND_NAMES[:-1]

_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"

Result = tuple[int, str, str]


@dataclass
class Deferred:
    """A command that goes on after ``delay`` real seconds; the lab sleeps outside its lock."""

    delay: float
    finish: Callable[[], Result | Deferred]


@dataclass
class Ctx:
    """What a command needs from the lab besides the host."""

    wall: float  # time.time()
    mono: float  # time.monotonic()
    time_scale: float
    boot_seconds: float  # before the time scale
    cwd: str | None = None
    internal: bool = False  # run by a timer inside the lab: no sleeping, finish at once


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a generation behaves once built and activated."""

    build_fails: bool = False
    failed_units: tuple[str, ...] = ()
    health_broken: bool = False
    cut_network: bool = False
    deadman_broken: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "build_fails": self.build_fails,
            "failed_units": list(self.failed_units),
            "health_broken": self.health_broken,
            "cut_network": self.cut_network,
            "deadman_broken": self.deadman_broken,
        }

    def key(self) -> str:
        """Part of the store path: a different behaviour is a different system."""
        if self == Behaviour():
            return ""
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True)
class Build:
    """A built system (a NixOS toplevel in the store)."""

    toplevel: str
    rev: str  # the nixpkgs revision it was built from
    last_modified: int  # of that revision
    behaviour: Behaviour

    @property
    def nixos_version(self) -> str:
        day = dt.datetime.fromtimestamp(self.last_modified, dt.UTC).strftime("%Y%m%d")
        return f"{NIXOS_RELEASE}.{day}.{self.rev[:7]}"

    @property
    def kernel_version(self) -> str:
        return f"6.12.{8 + int(self.rev[:4], 16) % 24}"

    def to_json(self) -> dict[str, Any]:
        return {
            "toplevel": self.toplevel,
            "rev": self.rev,
            "nixos_version": self.nixos_version,
            "kernel_version": self.kernel_version,
            "behaviour": self.behaviour.to_json(),
        }


@dataclass(frozen=True)
class Generation:
    """One generation of the system profile."""

    number: int
    created: float  # wall clock
    build: Build

    @property
    def date(self) -> str:
        return dt.datetime.fromtimestamp(self.created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.number, "date": self.date, **self.build.to_json()}


@dataclass
class Timer:
    """A transient timer armed by ``systemd-run``."""

    unit: str  # without the .timer/.service suffix
    description: str
    command: list[str]
    due: float  # monotonic
    due_wall: float
    armed_wall: float
    collect: bool = False

    def to_json(self, mono: float) -> dict[str, Any]:
        return {
            "unit": f"{self.unit}.timer",
            "service": f"{self.unit}.service",
            "description": self.description,
            "command": list(self.command),
            "fires_in": round(max(0.0, self.due - mono), 3),
            "due": self.due_wall,
        }


@dataclass
class NixosSpec:
    """A NixOS host of a topology."""

    name: str
    vmid: int | None = None  # the Proxmox guest it lives in (None: a machine of its own)
    build_seconds: float = DEFAULT_BUILD_SECONDS
    services: dict[str, str] = field(default_factory=dict)  # its own units -> description
    canary: bool = False
    after: tuple[str, ...] = ()
    # a flake input with a nixpkgs of its own (it does not follow the system's): nix writes
    # that one first, as node ``nixpkgs``, and the system's as ``nixpkgs_2``
    side_input: str | None = None


BASE_UNITS: dict[str, str] = {
    "dbus.service": "D-Bus System Message Bus",
    "nix-daemon.service": "Nix Daemon",
    "nscd.service": "Name Service Cache Daemon (nsncd)",
    "sshd.service": "SSH Daemon",
    "systemd-journald.service": "Journal Service",
    "systemd-networkd.service": "Network Configuration",
    "systemd-resolved.service": "Network Name Resolution",
    "systemd-timesyncd.service": "Network Time Synchronization",
}
STATIC_TIMERS: dict[str, str] = {
    "logrotate.timer": "logrotate.service",
    "nix-gc.timer": "nix-gc.service",
    "systemd-tmpfiles-clean.timer": "systemd-tmpfiles-clean.service",
}


def _nix32(data: bytes, length: int = 32) -> str:
    n = int.from_bytes(data, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 32)
        out.append(_NIX32[r])
    return "".join(out)


def _hash32(*parts: object) -> str:
    return _nix32(hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest())


def revision(text: str) -> str:
    """A 40-hex git revision: ``text`` itself when it is one, else one derived from it."""
    if re.fullmatch(r"[0-9a-f]{40}", text):
        return text
    return hashlib.sha1(f"labsim:{text}".encode(), usedforsecurity=False).hexdigest()


def unit_name(name: str) -> str:
    """``jellyfin`` → ``jellyfin.service``; names with a unit suffix stay as they are."""
    if re.search(r"\.(service|timer|socket|target|mount|path|slice|scope|device|swap)$", name):
        return name
    return f"{name}.service"
