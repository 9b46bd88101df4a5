"""Simulated NixOS hosts: generations, the system profile, systemd units and transient timers.

Each host has a real folder ``DIR/hosts/<name>/`` that moxflow reaches with ordinary commands
(``cat``, ``mkdir``, ``rm``): ``etc/nixos/flake.nix`` and ``flake.lock`` (real JSON),
``nix/var/nix/profiles/system-N-link/bin/switch-to-configuration`` (an executable shim per
generation, plus the ``system`` symlink to the profile's generation) and ``var/lib/moxflow/``.
The rest lives in memory (``NixosHost``): the generations and the builds in the store, what runs
(the active configuration, its units, whether its network is cut or its health broken), armed
timers, and the behaviour the next build gets (``next``).

The commands (``nix``, ``nixos-rebuild``, ``nix-env``, ``systemctl``, ``systemd-run``,
``reboot``, ``switch-to-configuration``) print what the real tools print and exit as they do.
A command that takes time (a build) answers a ``Deferred``: the lab sleeps outside its lock and
then calls ``finish``, so that builds on many hosts really run in parallel.

Simulated failures, per generation (set for the next build with the lab op ``nixos``):
``build_fails`` (the build ends with nix's "error: builder for ... failed"), ``failed_units``
(switch exits 4, ``systemctl is-system-running`` says ``degraded``), ``health_broken`` (the
lab's health endpoint answers 503), ``cut_network`` (once active, the host drops every SSH
connection and its health endpoint answers nothing) and ``deadman_broken`` (while it runs, the
system profile cannot be changed and no other generation can be activated: the revert the
dead-man timer runs fails, and so does a manual one; only a snapshot rollback brings the host
back).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labsim import shim

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


@dataclass
class FileEntry:
    """One file, folder or symlink of a host folder, as a snapshot keeps it."""

    rel: str
    kind: str  # "d", "f" or "l"
    data: bytes = b""
    mode: int = 0o644


@dataclass
class HostImage:
    """What a guest snapshot keeps of a NixOS host: its disk and (with vmstate) what ran."""

    generations: dict[int, Generation]
    profile_generation: int
    store: dict[str, Build]
    lock_commits: int
    files: list[FileEntry]
    running: Build | None
    running_gen: int | None
    units: dict[str, str]
    transient_units: dict[str, str]
    network_cut: bool
    health_broken: bool

    def summary(self) -> dict[str, Any]:
        rev = None
        for entry in self.files:
            if entry.rel == f"{FLAKE_REL}/flake.lock":
                rev, _ = locked_nixpkgs(entry.data.decode("utf-8", "replace"))
        return {
            "generations": sorted(self.generations),
            "profile_generation": self.profile_generation,
            "current": self.running_gen,
            "flake_rev": rev,
        }


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


def nar_hash(rev: str) -> str:
    digest = hashlib.sha256(f"nar:{rev}".encode()).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


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


def flake_nix(host: str, attr: str, side: str | None = None) -> str:
    side_url = f'  inputs.{side}.url = "github:{SIDE_OWNER}/{side}";\n' if side else ""
    side_arg = f", {side}" if side else ""
    side_module = f" {side}.nixosModules.{side}" if side else ""
    return (
        "{\n"
        f'  description = "NixOS configuration of {host} (written by labsim)";\n'
        "\n"
        f'  inputs.nixpkgs.url = "github:NixOS/nixpkgs/{NIXPKGS_BRANCH}";\n'
        f"{side_url}"
        "\n"
        f"  outputs = {{ self, nixpkgs{side_arg} }}: {{\n"
        f"    nixosConfigurations.{attr} = nixpkgs.lib.nixosSystem {{\n"
        '      system = "x86_64-linux";\n'
        f"      modules = [ ./configuration.nix{side_module} ];\n"
        "    };\n"
        "  };\n"
        "}\n"
    )


def configuration_nix(host: str, services: Iterable[str]) -> str:
    enabled = "".join(
        f"  services.{unit.removesuffix('.service')}.enable = true;\n" for unit in services
    )
    return (
        "{ config, pkgs, ... }:\n"
        "{\n"
        f'  networking.hostName = "{host}";\n'
        "  services.openssh.enable = true;\n"
        f"{enabled}"
        f'  system.stateVersion = "{NIXOS_RELEASE}";\n'
        "}\n"
    )


SIDE_OWNER = "nix-community"
SIDE_MODIFIED = 1_733_011_200  # 2024-12-01: the side input, locked once and left alone
SIDE_NIXPKGS_MODIFIED = 1_730_419_200  # 2024-11-01: the nixpkgs the side input locks


def _github_node(owner: str, repo: str, rev: str, last_modified: int, ref: str | None) -> Any:
    original = {"owner": owner, "repo": repo, "type": "github"} | ({"ref": ref} if ref else {})
    locked = {
        "lastModified": last_modified,
        "narHash": nar_hash(rev),
        "owner": owner,
        "repo": repo,
        "rev": rev,
        "type": "github",
    }
    return {"locked": locked, "original": original}


def lock_text(rev: str, last_modified: int, side: str | None = None) -> str:
    """``flake.lock`` as nix writes it (sorted keys, two-space indent) for a nixpkgs input
    and, with ``side``, an input of that name that locks a nixpkgs of its own.

    Node keys as nix's ``LockFile::toJSON`` gives them: depth first from the root, inputs in
    name order, a key already taken gets ``_2``, ``_3``, ...
    """
    taken = {"root"}

    def key(base: str) -> str:
        out, n = base, 1
        while out in taken:
            n += 1
            out = f"{base}_{n}"
        taken.add(out)
        return out

    nodes: dict[str, Any] = {}
    inputs: dict[str, str] = {}
    for name in sorted({"nixpkgs", side or "nixpkgs"}):
        if name == "nixpkgs":
            inputs[name] = key(name)
            nodes[inputs[name]] = _github_node(
                "NixOS", "nixpkgs", rev, last_modified, NIXPKGS_BRANCH
            )
            continue
        inputs[name] = key(name)
        own = key("nixpkgs")
        node = _github_node(SIDE_OWNER, name, revision(name), SIDE_MODIFIED, None)
        nodes[inputs[name]] = {"inputs": {"nixpkgs": own}, **node}
        nodes[own] = _github_node(
            "NixOS", "nixpkgs", revision(f"{name}-nixpkgs"), SIDE_NIXPKGS_MODIFIED, "nixos-unstable"
        )
    nodes["root"] = {"inputs": inputs}
    lock = {"nodes": nodes, "root": "root", "version": 7}
    return json.dumps(lock, indent=2, sort_keys=True) + "\n"


def locked_nixpkgs(text: str) -> tuple[str | None, int]:
    """(rev, lastModified) of the system's nixpkgs, the node the root's ``nixpkgs`` input
    names (or reaches by a ``follows`` path); (None, 0) if unreadable."""
    try:
        data = json.loads(text)
        nodes, root = data["nodes"], data["root"]
        key: Any = nodes[root]["inputs"]["nixpkgs"]
        if isinstance(key, list):  # a follows path: input names walked from the root
            at: Any = root
            for name in key:
                at = nodes[at]["inputs"][name]  # a follows in a follows: TypeError, unreadable
            key = at
        locked = nodes[key]["locked"]
        return str(locked["rev"]), int(locked.get("lastModified", 0))
    except (ValueError, KeyError, TypeError):
        return None, 0


def _locked_url(rev: str, last_modified: int) -> str:
    day = dt.datetime.fromtimestamp(last_modified, dt.UTC).strftime("%Y-%m-%d")
    return f"'github:NixOS/nixpkgs/{rev}?narHash={nar_hash(rev)}' ({day})"


def _time_span(text: str) -> float | None:
    """Seconds in a systemd time span (``120s``, ``2min``, ``1h 30min``, ``90``), or None."""
    factors = {
        "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
        "secs": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0,
        "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
        "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0,
        "week": 604800.0, "weeks": 604800.0,
    }  # fmt: skip
    text = text.strip()
    if not re.fullmatch(r"(\d+(\.\d+)?\s*[a-z]*\s*)+", text):
        return None
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        if unit not in factors:
            return None
        total += float(number) * factors[unit]
    return total


# --- a host -----------------------------------------------------------------------------------


class NixosHost:
    """One simulated NixOS machine. Every method runs under the lab's lock."""

    def __init__(self, spec: NixosSpec, root: Path | None, now: float, mono: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.attr = spec.name
        self.vmid = spec.vmid
        self.root = root
        self.build_seconds = spec.build_seconds
        self.services = dict(spec.services)
        day = 86400
        revs = [revision(f"nixpkgs-{i}") for i in (1, 2, 3)]
        modified = [int(now) - 30 * day, int(now) - 20 * day, int(now) - 10 * day]
        self.upstream_rev = revs[-1]
        self.upstream_modified = modified[-1]
        self.next = Behaviour()
        self.store: dict[str, Build] = {}
        self.generations: dict[int, Generation] = {}
        for number, (rev, lm) in enumerate(zip(revs, modified, strict=True), start=1):
            build = self.make_build(rev, lm, Behaviour())
            self.store[build.toplevel] = build
            self.generations[number] = Generation(number, lm + 3 * 3600, build)
        self.profile_generation = 3
        self.lock_commits = 0
        self.builds = 0
        self.boots = 0
        self.running: Build | None = self.generations[3].build
        self.running_gen: int | None = 3
        self.units: dict[str, str] = {}
        self.transient_units: dict[str, str] = {}
        self.network_cut = False
        self.health_broken = False
        self.timers: dict[str, Timer] = {}
        self.timer_runs: list[dict[str, Any]] = []
        self.powered = True
        self.boot_until: float | None = None
        self.booted_at = now - 3 * day
        self.drop_now = False  # ask the lab to drop the host's SSH connections
        self.drop_at: float | None = None  # ... at this monotonic time (after a reboot command)
        self._apply_units(Behaviour())

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, rel: str) -> Path:
        if self.root is None:
            return Path("/") / rel
        return self.root / rel

    @property
    def flake_dir(self) -> Path:
        return self._path(FLAKE_REL)

    @property
    def profile(self) -> Path:
        return self._path(PROFILE_REL)

    @property
    def state_dir(self) -> Path:
        return self._path(STATE_REL)

    def generation_dir(self, number: int) -> Path:
        return self.profile.parent / f"system-{number}-link"

    def is_profile(self, path: str) -> bool:
        return path in (str(self.profile), CANONICAL_PROFILE) or (
            os.path.normpath(path) == str(self.profile)
        )

    # -- builds --------------------------------------------------------------------------------

    def make_build(self, rev: str, last_modified: int, behaviour: Behaviour) -> Build:
        text = flake_nix(self.name, self.attr, self.spec.side_input)
        digest = _hash32(self.name, self.attr, rev, behaviour.key(), text)
        probe = Build("", rev, last_modified, behaviour)
        toplevel = f"/nix/store/{digest}-nixos-system-{self.attr}-{probe.nixos_version}"
        return Build(toplevel, rev, last_modified, behaviour)

    # -- the folder ----------------------------------------------------------------------------

    def write_all(self) -> None:
        """(Re)write the whole host folder for the current state."""
        if self.root is None:
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        self.flake_dir.mkdir(parents=True)
        side = self.spec.side_input
        (self.flake_dir / "flake.nix").write_text(flake_nix(self.name, self.attr, side))
        (self.flake_dir / "configuration.nix").write_text(
            configuration_nix(self.name, self.services)
        )
        lock_gen = self.generations[self.profile_generation].build
        (self.flake_dir / "flake.lock").write_text(
            lock_text(lock_gen.rev, lock_gen.last_modified, side)
        )
        self.state_dir.mkdir(parents=True)
        self.write_profile()

    def write_profile(self, rewrite: bool = False) -> None:
        """Make the profile folder match the generations (link folders and ``system``);
        ``rewrite`` also rewrites the folders that exist already."""
        if self.root is None:
            return
        profiles = self.profile.parent
        profiles.mkdir(parents=True, exist_ok=True)
        wanted = {f"system-{n}-link" for n in self.generations}
        for entry in profiles.iterdir():
            if re.fullmatch(r"system-\d+-link", entry.name) and entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
        for gen in self.generations.values():
            shim_file = self.generation_dir(gen.number) / "bin" / "switch-to-configuration"
            if rewrite or not shim_file.exists():
                self.write_generation(gen)
        self.write_profile_link()

    def write_generation(self, gen: Generation) -> None:
        if self.root is None:
            return
        folder = self.generation_dir(gen.number)
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        target = folder / "bin" / "switch-to-configuration"
        shim.write_shim(target, str(target), python=sys.executable)
        (folder / "nixos-version").write_text(gen.build.nixos_version)
        (folder / "kernel-version").write_text(gen.build.kernel_version)
        (folder / "toplevel").write_text(gen.build.toplevel + "\n")

    def write_profile_link(self) -> None:
        if self.root is None:
            return
        link = self.profile
        tmp = link.with_name(".system.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"system-{self.profile_generation}-link")
        os.replace(tmp, link)

    def read_lock(self, flake_dir: Path) -> tuple[str | None, str | None]:
        """(text, error) of ``flake_dir/flake.lock``; text None when it does not exist."""
        try:
            return (flake_dir / "flake.lock").read_text(encoding="utf-8"), None
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"error: opening file '{flake_dir / 'flake.lock'}': {exc.strerror}\n"

    def flake_rev(self) -> str | None:
        text, _ = self.read_lock(self.flake_dir)
        return locked_nixpkgs(text)[0] if text is not None else None

    # -- what runs -----------------------------------------------------------------------------

    def up(self, mono: float) -> bool:
        return self.powered and (self.boot_until is None or mono >= self.boot_until)

    def reachable(self, mono: float) -> bool:
        return self.up(mono) and not self.network_cut

    def _apply_units(self, behaviour: Behaviour) -> None:
        units = {u: "active" for u in BASE_UNITS}
        units.update({u: "active" for u in self.services})
        for unit in behaviour.failed_units:
            units[unit_name(unit)] = "failed"
        self.units = units

    def all_units(self) -> dict[str, str]:
        return {**self.units, **self.transient_units}

    def failed_units(self) -> list[str]:
        return sorted(u for u, s in self.all_units().items() if s == "failed")

    def description(self, unit: str) -> str:
        if unit in BASE_UNITS:
            return BASE_UNITS[unit]
        if unit in self.services:
            return self.services[unit]
        base = unit.rsplit(".", 1)[0]
        timer = self.timers.get(base)
        if timer is not None:
            return timer.description
        return f"/bin/sh -c {base}" if unit in self.transient_units else base

    def profile_locked_error(self) -> str | None:
        """The error of any profile change while a ``deadman_broken`` generation runs."""
        if self.running is not None and self.running.behaviour.deadman_broken:
            return f"error: opening lock file '{self.profile}.lock': Read-only file system\n"
        return None

    def set_profile(self, build: Build, now: float) -> tuple[int | None, str]:
        """Point the profile at ``build`` (a new generation unless it is already current)."""
        err = self.profile_locked_error()
        if err:
            return None, err
        current = self.generations.get(self.profile_generation)
        if current is not None and current.build.toplevel == build.toplevel:
            return current.number, ""
        number = max(self.generations, default=0) + 1
        gen = Generation(number, now, build)
        self.generations[number] = gen
        self.profile_generation = number
        self.write_generation(gen)
        self.write_profile_link()
        return number, ""

    def switch_profile(self, number: int) -> tuple[int, str]:
        """``nix-env --switch-generation N``: (exit code, stderr)."""
        if number not in self.generations:
            return 1, f"error: generation {number} does not exist\n"
        err = self.profile_locked_error()
        if err:
            return 1, err
        before = self.profile_generation
        self.profile_generation = number
        self.write_profile_link()
        return 0, f"switching profile from version {before} to {number}\n"

    def activate(self, build: Build, generation: int | None, action: str = "switch") -> Result:
        """``switch-to-configuration switch|test``: (exit code, stdout, stderr)."""
        if (
            self.running is not None
            and self.running.behaviour.deadman_broken
            and build.toplevel != self.running.toplevel
        ):
            return (
                1,
                "",
                "activating the configuration...\n"
                "error: cannot activate: /nix/var/nix/profiles is a read-only file system\n"
                f"error: switch-to-configuration {action} failed\n",
            )
        before = self.all_units()
        self.running = build
        self.running_gen = generation
        self._apply_units(build.behaviour)
        self.health_broken = build.behaviour.health_broken
        if build.behaviour.cut_network and not self.network_cut:
            self.drop_now = True
        self.network_cut = build.behaviour.cut_network
        after = self.all_units()
        err = [
            "activating the configuration...",
            "setting up /etc...",
            "reloading user units for root...",
            "restarting sysinit-reactivation.target",
        ]
        started = sorted(u for u, s in after.items() if s == "active" and before.get(u) != "active")
        stopped = sorted(u for u in before if u not in after)
        if stopped:
            err.append("stopping the following units: " + ", ".join(stopped))
        if started:
            err.append("the following new units were started: " + ", ".join(started))
        failed = sorted(unit_name(u) for u in build.behaviour.failed_units)
        if failed:
            err.append("warning: the following units failed: " + ", ".join(failed))
            for unit in failed:
                stamp = dt.datetime.now(dt.UTC).strftime("%a %Y-%m-%d %H:%M:%S UTC")
                err += [
                    "",
                    f"× {unit} - {self.description(unit)}",
                    f"     Loaded: loaded (/etc/systemd/system/{unit}; enabled; preset: ignored)",
                    f"     Active: failed (Result: exit-code) since {stamp}; 12ms ago",
                    "   Main PID: 4242 (code=exited, status=1/FAILURE)",
                    "         IP: 0B in, 0B out",
                    "        CPU: 11ms",
                ]
            err.append("warning: error(s) occurred while switching to the new configuration")
            return 4, "", "\n".join(err) + "\n"
        return 0, "", "\n".join(err) + "\n"

    def boot(self, ctx: Ctx) -> None:
        """Power on or reboot: the profile's generation runs once ``boot_seconds`` are over."""
        gen = self.generations[self.profile_generation]
        self.running = gen.build
        self.running_gen = gen.number
        self._apply_units(gen.build.behaviour)
        self.transient_units.clear()
        self.timers.clear()
        self.network_cut = gen.build.behaviour.cut_network
        self.health_broken = gen.build.behaviour.health_broken
        self.powered = True
        self.boots += 1
        self.boot_until = ctx.mono + ctx.boot_seconds * ctx.time_scale
        self.booted_at = ctx.wall + ctx.boot_seconds * ctx.time_scale
        self.drop_now = True

    def power_off(self) -> None:
        self.powered = False
        self.boot_until = None
        self.timers.clear()
        self.transient_units.clear()
        self.drop_now = True

    def health(self, mono: float) -> tuple[int, str] | None:
        """What the health endpoint answers: (status, body), or None to answer nothing."""
        if not self.reachable(mono):
            return None
        if self.health_broken:
            gen = self.running_gen if self.running_gen is not None else "?"
            return 503, f"unhealthy: {self.name} health check failed (generation {gen})\n"
        return 200, "ok\n"

    # -- timers --------------------------------------------------------------------------------

    def tick(self, ctx: Ctx) -> None:
        """Fire every timer whose time has come (the lab's ticker calls this ~20 times a s)."""
        if self.drop_at is not None and ctx.mono >= self.drop_at:
            self.drop_at = None
            self.drop_now = True
        if not self.powered:
            return
        for timer in sorted(self.timers.values(), key=lambda t: t.due):
            if timer.due > ctx.mono:
                break
            del self.timers[timer.unit]
            rc, out, err = run_script(self, timer.command, ctx)
            self.timer_runs.append(
                {
                    "unit": f"{timer.unit}.timer",
                    "command": list(timer.command),
                    "fired": ctx.wall,
                    "exit": rc,
                    "stdout": out,
                    "stderr": err,
                }
            )
            if rc != 0 and not timer.collect:
                self.transient_units[f"{timer.unit}.service"] = "failed"

    # -- snapshots -----------------------------------------------------------------------------

    def capture(self) -> HostImage:
        files: list[FileEntry] = []
        if self.root is not None:
            for rel in (FLAKE_REL, STATE_REL):
                files += _read_tree(self.root, rel)
        return HostImage(
            generations=dict(self.generations),
            profile_generation=self.profile_generation,
            store=dict(self.store),
            lock_commits=self.lock_commits,
            files=files,
            running=self.running,
            running_gen=self.running_gen,
            units=dict(self.units),
            transient_units=dict(self.transient_units),
            network_cut=self.network_cut,
            health_broken=self.health_broken,
        )

    def restore(self, image: HostImage, *, with_ram: bool) -> None:
        """Back to a snapshot's disk; with its RAM too (running) or powered off."""
        self.generations = dict(image.generations)
        self.profile_generation = image.profile_generation
        self.store = dict(image.store)
        self.lock_commits = image.lock_commits
        if self.root is not None:
            for rel in (FLAKE_REL, STATE_REL):
                target = self.root / rel
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True, exist_ok=True)
            _write_tree(self.root, image.files)
            self.write_profile(rewrite=True)
        self.timers.clear()
        self.drop_now = True
        if with_ram:
            self.running = image.running
            self.running_gen = image.running_gen
            self.units = dict(image.units)
            self.transient_units = dict(image.transient_units)
            self.network_cut = image.network_cut
            self.health_broken = image.health_broken
            self.powered = True
            self.boot_until = None
        else:
            self.power_off()

    # -- views ---------------------------------------------------------------------------------

    def to_json(self, mono: float) -> dict[str, Any]:
        return {
            "attr": self.attr,
            "vmid": self.vmid,
            "root": str(self.root) if self.root is not None else None,
            "flake": str(self.flake_dir),
            "profile": str(self.profile),
            "state_dir": str(self.state_dir),
            "generations": [self.generations[n].to_json() for n in sorted(self.generations)],
            "current": self.running_gen,
            "running": self.running.to_json() if self.running is not None else None,
            "profile_generation": self.profile_generation,
            "units": dict(sorted(self.all_units().items())),
            "failed_units": self.failed_units(),
            "system_state": self.system_state(),
            "timers": [t.to_json(mono) for t in sorted(self.timers.values(), key=lambda t: t.due)],
            "timer_runs": list(self.timer_runs),
            "network_cut": self.network_cut,
            "health_broken": self.health_broken,
            "healthy": self.health(mono) == (200, "ok\n"),
            "up": self.up(mono),
            "powered": self.powered,
            "booting": self.powered and not self.up(mono),
            "flake_rev": self.flake_rev(),
            "upstream_rev": self.upstream_rev,
            "next": self.next.to_json(),
            "build_seconds": self.build_seconds,
            "builds": self.builds,
            "boots": self.boots,
            "lock_commits": self.lock_commits,
        }

    def system_state(self) -> str:
        return "degraded" if self.failed_units() else "running"


def _read_tree(root: Path, rel: str) -> list[FileEntry]:
    out: list[FileEntry] = []
    base = root / rel
    if not base.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        here = Path(dirpath)
        out.append(FileEntry(str(here.relative_to(root)), "d", mode=0o755))
        for name in sorted(filenames) + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            relpath = str(path.relative_to(root))
            try:
                if path.is_symlink():
                    out.append(FileEntry(relpath, "l", os.readlink(path).encode()))
                elif path.is_file():
                    mode = stat.S_IMODE(path.stat().st_mode)
                    out.append(FileEntry(relpath, "f", path.read_bytes(), mode))
            except OSError:
                continue
    return out


def _write_tree(root: Path, files: list[FileEntry]) -> None:
    for entry in files:
        path = root / entry.rel
        if entry.kind == "d":
            path.mkdir(parents=True, exist_ok=True)
        elif entry.kind == "l":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(entry.data.decode())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(entry.data)
            os.chmod(path, entry.mode)


def old_image(host: NixosHost) -> HostImage:
    """A snapshot image of the host as it was before its newest two generations (for the
    foreign snapshots that exist before the lab starts)."""
    first = host.generations[1]
    side = host.spec.side_input
    files = [
        FileEntry(FLAKE_REL, "d", mode=0o755),
        FileEntry(f"{FLAKE_REL}/flake.nix", "f", flake_nix(host.name, host.attr, side).encode()),
        FileEntry(
            f"{FLAKE_REL}/configuration.nix",
            "f",
            configuration_nix(host.name, host.services).encode(),
        ),
        FileEntry(
            f"{FLAKE_REL}/flake.lock",
            "f",
            lock_text(first.build.rev, first.build.last_modified, side).encode(),
        ),
        FileEntry(STATE_REL, "d", mode=0o755),
    ]
    return HostImage(
        generations={1: first},
        profile_generation=1,
        store={first.build.toplevel: first.build},
        lock_commits=0,
        files=files,
        running=first.build,
        running_gen=1,
        units=dict(host.units),
        transient_units={},
        network_cut=False,
        health_broken=False,
    )


# --- the commands -----------------------------------------------------------------------------

CommandFn = Callable[[NixosHost, list[str], Ctx], "Result | Deferred"]


def run(host: NixosHost, argv: list[str], ctx: Ctx) -> Result | Deferred:
    """Run one NixOS command; ``argv[0]`` may be a path (``switch-to-configuration``)."""
    prog = argv[0].rsplit("/", 1)[-1]
    impl = COMMANDS.get(prog)
    if impl is None:
        return 127, "", f"sh: 1: {prog}: not found\n"
    return impl(host, argv, ctx)


def run_now(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    """Run a command to its end without sleeping (timers: the lab runs them itself)."""
    result = run(host, argv, ctx)
    while isinstance(result, Deferred):
        result = result.finish()
    return result


def run_script(host: NixosHost, command: list[str], ctx: Ctx) -> Result:
    """Run what a transient service runs: one command, or ``sh -c`` with ``&&``/``||``/``;``."""
    internal = Ctx(ctx.wall, ctx.mono, ctx.time_scale, ctx.boot_seconds, None, internal=True)
    if (
        len(command) >= 3
        and command[0].rsplit("/", 1)[-1] in ("sh", "bash")
        and (command[1] == "-c")
    ):
        script = command[2]
    else:
        script = shlex.join(command)
    try:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as exc:
        return 2, "", f"/bin/sh: syntax error: {exc}\n"
    rc, out, err = 0, "", ""
    words: list[str] = []
    pending_op = ";"
    for token in [*tokens, ";"]:
        if token not in (";", "&&", "||"):
            words.append(token)
            continue
        if words:
            run_it = (
                pending_op == ";"
                or (pending_op == "&&" and rc == 0)
                or (pending_op == "||" and rc != 0)
            )
            if run_it:
                if words[0] in ("true", ":"):
                    rc = 0
                elif words[0] == "false":
                    rc = 1
                else:
                    rc, o, e = run_now(host, words, internal)
                    out += o
                    err += e
        words = []
        pending_op = token
    return rc, out, err


def _resolve(path: str, cwd: str | None) -> Path:
    for prefix in ("path:", "git+file://", "file://"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    path = path.split("?", 1)[0]
    p = Path(path)
    if not p.is_absolute():
        p = Path(cwd or "/") / p
    return Path(os.path.normpath(p))


def _no_flake(path: Path) -> str:
    return (
        f"error: path '{path}' is not part of a flake (neither it nor its parent directories "
        "contain a 'flake.nix' file)\n"
    )


def _flake_attrs(flake_dir: Path) -> set[str]:
    try:
        text = (flake_dir / "flake.nix").read_text(encoding="utf-8")
    except OSError:
        return set()
    return {
        a or b
        for a, b in re.findall(r'nixosConfigurations\.(?:"([^"]+)"|([A-Za-z0-9_-]+))\s*=', text)
    }


def _update_lock(host: NixosHost, flake_dir: Path, ctx: Ctx) -> tuple[int, str]:
    """Lock nixpkgs to the host's upstream revision; (exit code, stderr)."""
    text, error = host.read_lock(flake_dir)
    if error:
        return 1, error
    lock_path = flake_dir / "flake.lock"
    new = lock_text(host.upstream_rev, host.upstream_modified, host.spec.side_input)
    if text is None:
        lock_path.write_text(new)
        return 0, (
            f"warning: creating lock file '{lock_path}':\n"
            "• Added input 'nixpkgs':\n"
            f"    {_locked_url(host.upstream_rev, host.upstream_modified)}\n"
        )
    old_rev, old_modified = locked_nixpkgs(text)
    if old_rev is None:
        return 1, f"error: expected a JSON object while parsing the lock file '{lock_path}'\n"
    if old_rev == host.upstream_rev:
        return 0, ""
    lock_path.write_text(new)
    return 0, (
        f"warning: updating lock file '{lock_path}':\n"
        "• Updated input 'nixpkgs':\n"
        f"    {_locked_url(old_rev, old_modified)}\n"
        f"  → {_locked_url(host.upstream_rev, host.upstream_modified)}\n"
    )


def _cmd_nix(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    if args[:1] == ["--version"]:
        return 0, f"nix (Nix) {NIX_VERSION}\n", ""
    if args[:2] == ["flake", "update"]:
        return _nix_flake_update(host, args[2:], ctx)
    if args[:2] == ["flake", "metadata"]:
        return _nix_flake_metadata(host, args[2:], ctx)
    what = " ".join(args[:2]) or "(nothing)"
    return 1, "", f"error: labsim does not simulate 'nix {what}'\n"


def _nix_flake_update(host: NixosHost, args: list[str], ctx: Ctx) -> Result:
    flake: str | None = None
    commit = False
    inputs: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--flake":
            if i + 1 >= len(args):
                return 1, "", "error: flag '--flake' requires 1 argument\n"
            flake = args[i + 1]
            i += 1
        elif a.startswith("--flake="):
            flake = a.split("=", 1)[1]
        elif a == "--commit-lock-file":
            commit = True
        elif a in ("-L", "--print-build-logs", "--no-warn-dirty", "--refresh", "-v", "--quiet"):
            pass
        elif a.startswith("-"):
            return (
                1,
                "",
                f"error: unrecognised flag '{a}'\nTry 'nix --help' for more information.\n",
            )
        else:
            inputs.append(a)
        i += 1
    flake_dir = _resolve(flake or ".", ctx.cwd)
    if not (flake_dir / "flake.nix").is_file():
        return 1, "", _no_flake(flake_dir)
    for name in inputs:
        if name not in ("nixpkgs", host.spec.side_input):
            return 1, "", f"error: input '{name}' does not exist\n"
    rc, err = _update_lock(host, flake_dir, ctx)
    if rc == 0 and err and commit:
        host.lock_commits += 1
    return rc, "", err


def _nix_flake_metadata(host: NixosHost, args: list[str], ctx: Ctx) -> Result:
    as_json = "--json" in args
    refs = [a for a in args if not a.startswith("-")]
    flake_dir = _resolve(refs[0] if refs else ".", ctx.cwd)
    if not (flake_dir / "flake.nix").is_file():
        return 1, "", _no_flake(flake_dir)
    text, error = host.read_lock(flake_dir)
    if error:
        return 1, "", error
    lock = json.loads(text) if text else {"nodes": {"root": {}}, "root": "root", "version": 7}
    rev, modified = locked_nixpkgs(text or "")
    url = f"path:{flake_dir}"
    meta = {
        "description": f"NixOS configuration of {host.name} (written by labsim)",
        "lastModified": modified,
        "locked": {"lastModified": modified, "path": str(flake_dir), "type": "path"},
        "locks": lock,
        "original": {"path": str(flake_dir), "type": "path"},
        "originalUrl": url,
        "path": f"/nix/store/{_hash32('source', text or '')}-source",
        "resolved": {"path": str(flake_dir), "type": "path"},
        "resolvedUrl": url,
        "url": f"{url}?lastModified={modified}",
    }
    if as_json:
        return 0, json.dumps(meta) + "\n", ""
    lines = [
        f"Resolved URL:  {url}",
        f"Locked URL:    {url}?lastModified={modified}",
        f"Description:   {meta['description']}",
        f"Path:          {meta['path']}",
        "Inputs:",
        f"└───nixpkgs: github:NixOS/nixpkgs/{rev}" if rev else "",
    ]
    return 0, "\n".join(line for line in lines if line) + "\n", ""


_REBUILD_ACTIONS = (
    "switch", "boot", "test", "build", "dry-build", "dry-activate", "edit", "repl",
    "build-vm", "build-vm-with-bootloader", "build-image", "list-generations",
)  # fmt: skip
_REBUILD_IGNORED = (
    "-L", "--print-build-logs", "--show-trace", "-v", "--verbose", "--fast", "--no-reexec",
    "--impure", "--quiet", "--keep-going", "-k", "--refresh", "--offline", "--no-build-nix",
    "--use-substitutes", "--use-remote-sudo", "--sudo", "--no-flake", "--recreate-lock-file",
    "--no-update-lock-file", "--no-write-lock-file",
)  # fmt: skip
_REBUILD_USAGE = (
    "usage: nixos-rebuild [--verbose] [--quiet] [--max-jobs MAX_JOBS] [--cores CORES] ...\n"
    "                     [--flake [FLAKE]] [--rollback] [--json] ...\n"
    "                     [{switch,boot,test,build,edit,repl,dry-build,dry-run,dry-activate,"
    "build-vm,build-vm-with-bootloader,build-image,list-generations}]\n"
)


def _usage_error(message: str) -> Result:
    return 2, "", _REBUILD_USAGE + f"nixos-rebuild: error: {message}\n"


def _cmd_nixos_rebuild(host: NixosHost, argv: list[str], ctx: Ctx) -> Result | Deferred:
    args = argv[1:]
    action: str | None = None
    flake: str | None = None
    rollback = False
    as_json = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in _REBUILD_ACTIONS and action is None:
            action = a
        elif a == "dry-run" and action is None:
            action = "dry-build"
        elif a == "--flake":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                flake = "/etc/nixos"
            else:
                flake = args[i + 1]
                i += 1
        elif a.startswith("--flake="):
            flake = a.split("=", 1)[1]
        elif a == "--rollback":
            rollback = True
        elif a == "--json":
            as_json = True
        elif a in _REBUILD_IGNORED:
            pass
        elif a in ("--option",):
            i += 2
        elif a in ("--max-jobs", "-j", "--cores"):
            i += 1
        elif a in ("--target-host", "--build-host", "--profile-name", "-p", "--specialisation"):
            return 1, "", f"error: labsim does not simulate nixos-rebuild {a}\n"
        else:
            return _usage_error(f"unrecognized arguments: {a}")
        i += 1
    if action is None:
        return _usage_error("the following arguments are required: action")
    if action == "list-generations":
        return _list_generations(host, as_json)
    if action not in ("switch", "boot", "test", "build", "dry-build"):
        return 1, "", f"error: labsim does not simulate nixos-rebuild {action}\n"
    if rollback:
        if action not in ("switch", "boot", "test"):
            return 1, "", f"error: --rollback is incompatible with '{action}'\n"
        return _rebuild_rollback(host, action)
    ref = flake or str(host.flake_dir)
    path, _, attr = ref.partition("#")
    attr = attr.strip('"') or host.name
    flake_dir = _resolve(path or ".", ctx.cwd)
    if (flake_dir / "flake.nix").is_file() is False:
        return 1, "", _no_flake(flake_dir)
    if attr not in _flake_attrs(flake_dir):
        t = f'nixosConfigurations."{attr}".config.system.build.toplevel'
        return (
            1,
            "",
            (
                f"error: flake 'path:{flake_dir}' does not provide attribute "
                f"'packages.x86_64-linux.{t}', 'legacyPackages.x86_64-linux.{t}' or '{t}'\n"
            ),
        )
    log = "building the system configuration...\n"
    text, error = host.read_lock(flake_dir)
    if error:
        return 1, "", error
    if text is None:
        _, lock_err = _update_lock(host, flake_dir, ctx)
        log += lock_err
        text, _ = host.read_lock(flake_dir)
    rev, modified = locked_nixpkgs(text or "")
    if rev is None:
        lock_path = flake_dir / "flake.lock"
        return 1, "", log + f"error: expected a JSON object while parsing '{lock_path}'\n"
    build = host.make_build(rev, modified, host.next)

    def after_build() -> Result:
        return _rebuild_finish(host, action, build, log, ctx)

    if build.toplevel in host.store or action == "dry-build":
        if action == "dry-build" and build.toplevel not in host.store:
            log += "these 3 derivations would be built:\n" + _drv_lines(build)
        return after_build()
    host.builds += 1
    log += "these 3 derivations will be built:\n" + _drv_lines(build)
    log += "".join(f"building '{d}'...\n" for d in _drvs(build))
    fails = build.behaviour.build_fails

    def finish() -> Result:
        if fails:
            drv = _drvs(build)[0]
            top = _drvs(build)[-1]
            return (
                1,
                "",
                log
                + (
                    f"error: builder for '{drv}' failed with exit code 2;\n"
                    "       last 3 log lines:\n"
                    "       > checking the configuration...\n"
                    f"       > error: the option 'services.{host.name}' does not exist\n"
                    "       > configuration check failed\n"
                    f"       For full logs, run 'nix log {drv}'.\n"
                    f"error: 1 dependencies of derivation '{top}' failed to build\n"
                ),
            )
        host.store[build.toplevel] = build
        return after_build()

    delay = host.build_seconds * ctx.time_scale * (0.5 if fails else 1.0)
    if ctx.internal or delay <= 0:
        return finish()
    return Deferred(delay, finish)


def _drvs(build: Build) -> list[str]:
    name = build.toplevel.split("-", 1)[1]
    digest = build.toplevel.split("/")[3].split("-", 1)[0]
    return [
        f"/nix/store/{_hash32('etc', digest)}-etc.drv",
        f"/nix/store/{_hash32('units', digest)}-system-units.drv",
        f"/nix/store/{_hash32('drv', digest)}-{name}.drv",
    ]


def _drv_lines(build: Build) -> str:
    return "".join(f"  {d}\n" for d in _drvs(build))


def _rebuild_finish(host: NixosHost, action: str, build: Build, log: str, ctx: Ctx) -> Result:
    if action in ("build", "dry-build"):
        done = f"Done. The new configuration is {build.toplevel}\n" if action == "build" else ""
        return 0, "", log + done
    if action == "test":
        rc, out, err = host.activate(build, None, "test")
        return rc, out, log + err
    number, err = host.set_profile(build, ctx.wall)
    if number is None:
        return 1, "", log + err
    if action == "boot":
        return 0, "", log + "updating systemd-boot entries...\n"
    rc, out, err = host.activate(build, number, "switch")
    return rc, out, log + err


def _rebuild_rollback(host: NixosHost, action: str) -> Result:
    older = [n for n in host.generations if n < host.profile_generation]
    if not older:
        current = host.profile_generation
        return 1, "", f"error: no generation older than the current ({current}) exists\n"
    target = max(older)
    if action == "test":
        rc, out, err = host.activate(host.generations[target].build, target, "test")
        return rc, out, err
    rc, err = host.switch_profile(target)
    if rc != 0:
        return rc, "", err
    if action == "boot":
        return 0, "", err
    rc, out, act = host.activate(host.generations[target].build, target, "switch")
    return rc, out, err + act


def _list_generations(host: NixosHost, as_json: bool) -> Result:
    rows = []
    for number in sorted(host.generations, reverse=True):
        gen = host.generations[number]
        rows.append(
            {
                "generation": number,
                "date": gen.date,
                "nixosVersion": gen.build.nixos_version,
                "kernelVersion": gen.build.kernel_version,
                "configurationRevision": "",
                "specialisations": [],
                "current": number == host.profile_generation,
            }
        )
    if as_json:
        return 0, json.dumps(rows, indent=2) + "\n", ""
    lines = [
        "Generation  Build-date           NixOS version           Kernel   "
        "Configuration Revision  Specialisation"
    ]
    for row in rows:
        gen_col = f"{row['generation']}{' current' if row['current'] else ''}"
        lines.append(
            f"{gen_col:<11} {row['date']:<20} {row['nixosVersion']:<23} "
            f"{row['kernelVersion']:<8} {'':<23} *"
        )
    return 0, "\n".join(lines) + "\n", ""


def _cmd_nix_env(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    profile: str | None = None
    op: str | None = None
    target: int | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--profile", "-p"):
            if i + 1 >= len(args):
                return 1, "", f"error: flag '{a}' requires an argument\n"
            profile = args[i + 1]
            i += 1
        elif a.startswith("--profile="):
            profile = a.split("=", 1)[1]
        elif a in ("--switch-generation", "-G"):
            if i + 1 >= len(args):
                return 1, "", f"error: flag '{a}' requires an argument\n"
            op = "switch"
            try:
                target = int(args[i + 1])
            except ValueError:
                return 1, "", f"error: invalid generation number '{args[i + 1]}'\n"
            i += 1
        elif a in ("--list-generations", "--rollback"):
            op = a[2:]
        elif a in ("--quiet", "-v", "--verbose"):
            pass
        else:
            return 1, "", f"error: unknown flag '{a}'\nTry 'nix-env --help' for more information.\n"
        i += 1
    if op is None:
        return 1, "", "error: no operation specified\nTry 'nix-env --help' for more information.\n"
    if profile is None or not host.is_profile(profile):
        shown = profile or "/root/.nix-profile"
        if op == "list-generations":
            return 0, "", ""
        return 1, "", f"error: opening lock file '{shown}.lock': No such file or directory\n"
    if op == "list-generations":
        out = "".join(
            f"{n:4}   {host.generations[n].date}   "
            f"{'(current)' if n == host.profile_generation else ''}\n"
            for n in sorted(host.generations)
        )
        return 0, out, ""
    if op == "rollback":
        older = [n for n in host.generations if n < host.profile_generation]
        if not older:
            return (
                1,
                "",
                (
                    f"error: no generation older than the current ({host.profile_generation}) "
                    "exists\n"
                ),
            )
        target = max(older)
    assert target is not None
    rc, err = host.switch_profile(target)
    return rc, "", err


def _cmd_switch_to_configuration(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    m = re.search(r"system-(\d+)-link/bin/switch-to-configuration$", argv[0])
    if m is None or int(m.group(1)) not in host.generations:
        return 127, "", f"sh: 1: {argv[0]}: not found\n"
    number = int(m.group(1))
    action = argv[1] if len(argv) > 1 else ""
    gen = host.generations[number]
    if action in ("switch", "test"):
        return host.activate(gen.build, number, action)
    if action == "boot":
        return 0, "", "updating systemd-boot entries...\n"
    if action == "dry-activate":
        return 0, "", "would activate the configuration...\n"
    return (
        1,
        "",
        (
            "Usage: switch-to-configuration [switch|boot|test|dry-activate|check]\n"
            "switch:       make the configuration the boot default and activate now\n"
            "boot:         make the configuration the boot default\n"
            "test:         activate the configuration, but don't make it the boot default\n"
            "dry-activate: show what would be done if this configuration were activated\n"
        ),
    )


_SYSTEMCTL_IGNORED = (
    "--no-pager", "--plain", "--no-legend", "--no-block", "--wait", "--all", "-a", "--full",
    "-l", "--system", "--now", "--no-ask-password",
)  # fmt: skip


def _cmd_systemctl(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    words: list[str] = []
    output = "short"
    failed_only = False
    quiet = False
    types: set[str] = set()
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "--output"):
            output = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        elif a.startswith("--output="):
            output = a.split("=", 1)[1]
        elif a == "--failed":
            failed_only = True
        elif a.startswith("--state="):
            failed_only = failed_only or "failed" in a.split("=", 1)[1].split(",")
        elif a in ("-t", "--type"):
            types.add(args[i + 1] if i + 1 < len(args) else "")
            i += 1
        elif a.startswith("--type="):
            types.update(a.split("=", 1)[1].split(","))
        elif a in ("-q", "--quiet"):
            quiet = True
        elif a == "--user":
            return 1, "", "Failed to connect to user scope bus via local transport: No such file\n"
        elif a in _SYSTEMCTL_IGNORED:
            pass
        elif a.startswith("-"):
            return 1, "", f"systemctl: unrecognized option '{a}'\n"
        else:
            words.append(a)
        i += 1
    if output not in ("short", "json", "json-pretty", "cat", "verbose"):
        return 1, "", f"Unknown output '{output}'.\n"
    verb = words[0] if words else "list-units"
    units = [unit_name(u) for u in words[1:]]
    as_json = output.startswith("json")
    if verb == "is-system-running":
        state = host.system_state()
        return (0 if state == "running" else 1), "" if quiet else state + "\n", ""
    if verb in ("is-active", "is-failed"):
        if not units:
            return 1, "", "Too few arguments.\n"
        states = [_unit_state(host, u) for u in units]
        out = "" if quiet else "".join(s + "\n" for s in states)
        wanted = "active" if verb == "is-active" else "failed"
        return (0 if wanted in states else (3 if verb == "is-active" else 1)), out, ""
    if verb == "list-units":
        return _list_units(host, failed_only, types, as_json, output)
    if verb == "list-timers":
        return _list_timers(host, ctx, as_json, output)
    if verb in ("stop", "start", "restart", "reset-failed", "status"):
        return _unit_verb(host, verb, units, ctx)
    if verb in ("reboot", "kexec"):
        return _reboot(host, ctx)
    if verb == "daemon-reload":
        return 0, "", ""
    if verb == "--version":
        return 0, f"systemd {SYSTEMD_VERSION}\n", ""
    return 1, "", f"Unknown command verb '{verb}'.\n"


def _json(rows: list[dict[str, Any]], output: str) -> str:
    """systemctl's JSON: compact for ``json``, indented for ``json-pretty``."""
    if output == "json-pretty":
        return json.dumps(rows, indent=2)
    return json.dumps(rows, separators=(",", ":"))


def _unit_state(host: NixosHost, unit: str) -> str:
    if unit.endswith(".timer"):
        base = unit.removesuffix(".timer")
        if base in host.timers or unit in STATIC_TIMERS:
            return "active"
        return "inactive"
    return host.all_units().get(unit, "inactive")


def _list_units(
    host: NixosHost, failed_only: bool, types: set[str], as_json: bool, output: str
) -> Result:
    rows: list[dict[str, str]] = []
    for unit, state in sorted(host.all_units().items()):
        sub = {"active": "running", "failed": "failed", "inactive": "dead"}[state]
        rows.append(
            {
                "unit": unit,
                "load": "loaded",
                "active": state,
                "sub": sub,
                "description": host.description(unit),
            }
        )
    for timer in host.timers.values():
        rows.append(
            {
                "unit": f"{timer.unit}.timer",
                "load": "loaded",
                "active": "active",
                "sub": "waiting",
                "description": f"/bin/sh -c {timer.unit}"
                if not timer.description
                else timer.description,
            }
        )
    rows.sort(key=lambda r: r["unit"])
    if failed_only:
        rows = [r for r in rows if r["active"] == "failed"]
    else:
        rows = [r for r in rows if r["active"] != "inactive"]
    if types:
        rows = [r for r in rows if r["unit"].rsplit(".", 1)[-1] in types]
    if as_json:
        return 0, _json(rows, output) + "\n", ""
    if not rows:
        return 0, "  UNIT LOAD ACTIVE SUB DESCRIPTION\n\n0 loaded units listed.\n", ""
    width = max(len(r["unit"]) for r in rows)
    lines = [f"  {'UNIT':<{width}} LOAD   ACTIVE SUB     DESCRIPTION"]
    for r in rows:
        mark = "●" if r["active"] == "failed" else " "
        lines.append(
            f"{mark} {r['unit']:<{width}} {r['load']:<6} {r['active']:<6} {r['sub']:<7} "
            f"{r['description']}"
        )
    lines += [
        "",
        "Legend: LOAD   → Reflects whether the unit definition was properly loaded.",
        "        ACTIVE → The high-level unit activation state, i.e. generalization of SUB.",
        "        SUB    → The low-level unit activation state, values depend on unit type.",
        "",
        f"{len(rows)} loaded units listed.",
    ]
    return 0, "\n".join(lines) + "\n", ""


def _list_timers(host: NixosHost, ctx: Ctx, as_json: bool, output: str) -> Result:
    rows: list[dict[str, Any]] = []
    for timer in host.timers.values():
        left = max(0.0, timer.due - ctx.mono)
        rows.append(
            {
                "next": int(timer.due_wall * 1_000_000),
                "left": int(left * 1_000_000),
                "last": None,
                "passed": None,
                "unit": f"{timer.unit}.timer",
                "activates": f"{timer.unit}.service",
            }
        )
    day = 86400.0
    for n, (unit, service) in enumerate(sorted(STATIC_TIMERS.items())):
        nxt = (ctx.wall // day) * day + 3600 * (n + 1)
        if nxt <= ctx.wall:
            nxt += day
        rows.append(
            {
                "next": int(nxt * 1_000_000),
                "left": int((nxt - ctx.wall) * 1_000_000),
                "last": int((nxt - day) * 1_000_000),
                "passed": int((ctx.wall - nxt + day) * 1_000_000),
                "unit": unit,
                "activates": service,
            }
        )
    rows.sort(key=lambda r: r["next"])
    if as_json:
        return 0, _json(rows, output) + "\n", ""

    def stamp(usec: int | None) -> str:
        if usec is None:
            return "-"
        when = dt.datetime.fromtimestamp(usec / 1e6, dt.UTC)
        return when.strftime("%a %Y-%m-%d %H:%M:%S UTC")

    lines = ["NEXT                        LEFT LAST                        PASSED UNIT ACTIVATES"]
    for r in rows:
        lines.append(
            f"{stamp(r['next'])} {r['left'] // 1_000_000}s {stamp(r['last'])} "
            f"{'-' if r['passed'] is None else str(r['passed'] // 1_000_000) + 's'} "
            f"{r['unit']} {r['activates']}"
        )
    lines += ["", f"{len(rows)} timers listed."]
    return 0, "\n".join(lines) + "\n", ""


def _unit_verb(host: NixosHost, verb: str, units: list[str], ctx: Ctx) -> Result:
    if verb == "reset-failed":
        for unit in units or list(host.all_units()):
            if host.transient_units.get(unit) == "failed":
                del host.transient_units[unit]
            elif host.units.get(unit) == "failed":
                host.units[unit] = "inactive"
        return 0, "", ""
    if not units:
        return 1, "", "Too few arguments.\n"
    rc = 0
    out = ""
    err = ""
    for unit in units:
        base = unit.rsplit(".", 1)[0]
        known = unit in host.all_units() or (unit.endswith(".timer") and base in host.timers)
        if verb == "status":
            if not known:
                err += f"Unit {unit} could not be found.\n"
                rc = max(rc, 4)
                continue
            state = _unit_state(host, unit)
            out += f"● {unit} - {host.description(unit)}\n     Active: {state}\n"
            rc = max(rc, 0 if state == "active" else 3)
            continue
        if verb == "stop":
            if unit.endswith(".timer") and base in host.timers:
                del host.timers[base]
            elif unit in host.units:
                if host.units[unit] == "active":
                    host.units[unit] = "inactive"
            elif unit in host.transient_units:
                pass  # a failed transient unit stays failed until reset-failed
            else:
                err += f"Failed to stop {unit}: Unit {unit} not loaded.\n"
                rc = 5
            continue
        # start / restart
        if unit in host.units:
            broken = host.running.behaviour.failed_units if host.running else ()
            failing = {unit_name(u) for u in broken}
            if unit in failing:
                err += (
                    f"Job for {unit} failed because the control process exited with error code.\n"
                    f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.\n'
                )
                host.units[unit] = "failed"
                rc = 1
            else:
                host.units[unit] = "active"
        else:
            err += f"Failed to {verb} {unit}: Unit {unit} not found.\n"
            rc = 5
    return rc, out, err


def _reboot(host: NixosHost, ctx: Ctx) -> Result:
    host.boot(ctx)
    # the command itself still answers; the connections go a moment later
    host.drop_now = False
    host.drop_at = ctx.mono + 0.2
    return 0, "", ""


def _cmd_reboot(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    for a in argv[1:]:
        if a not in ("-f", "--force", "--no-wall", "-h", "now"):
            return 1, "", f"reboot: unrecognized option '{a}'\n"
    return _reboot(host, ctx)


def _cmd_systemd_run(host: NixosHost, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    unit: str | None = None
    description = ""
    on_active: float | None = None
    collect = False
    quiet = False
    command: list[str] = []
    value_options = (
        "--unit", "-u", "--description", "--on-active", "--timer-property", "--property", "-p",
        "--setenv", "-E", "--uid", "--gid", "--working-directory", "--service-type",
        "--slice", "--nice", "--on-boot", "--on-startup", "--on-unit-active",
        "--on-unit-inactive", "--on-calendar",
    )  # fmt: skip
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            command = args[i + 1 :]
            break
        if not a.startswith("-"):
            command = args[i:]
            break
        name, eq, inline = a.partition("=")
        if name in value_options:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    return 1, "", f"systemd-run: option '{name}' requires an argument\n"
                value = args[i + 1]
                i += 1
            if name in ("--unit", "-u"):
                unit = value
            elif name == "--description":
                description = value
            elif name == "--on-active":
                on_active = _time_span(value)
                if on_active is None:
                    return 1, "", f"Failed to parse timer value: {value}\n"
            elif name in ("--on-boot", "--on-startup", "--on-unit-active", "--on-calendar"):
                return 1, "", f"labsim: systemd-run {name} is not simulated\n"
        elif a in ("--collect", "-G"):
            collect = True
        elif a in ("--quiet", "-q"):
            quiet = True
        elif a in ("--no-block", "--remain-after-exit", "-r", "--no-ask-password", "--system"):
            pass
        elif a == "--user":
            return 1, "", "Failed to connect to bus: No medium found\n"
        else:
            return 1, "", f"systemd-run: unrecognized option '{a}'\n"
        i += 1
    if not command:
        return 1, "", "Command line to execute required.\n"
    if unit is None:
        unit = f"run-r{_hash32(ctx.wall, command)[:32]}"
    for suffix in (".service", ".timer"):
        unit = unit.removesuffix(suffix)
    if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+", unit):
        return 1, "", f"Failed to mangle unit name: Invalid argument\n{unit}\n"
    for taken in (f"{unit}.timer", f"{unit}.service"):
        if unit in host.timers or taken in host.all_units():
            kind = "timer" if on_active is not None else "service"
            return (
                1,
                "",
                (
                    f"Failed to start transient {kind} unit: Unit {taken} was already loaded "
                    "or has a fragment file.\n"
                ),
            )
    if on_active is None:
        rc, _out, _err = run_script(host, command, ctx)
        if rc != 0 and not collect:
            host.transient_units[f"{unit}.service"] = "failed"
        return 0, "", "" if quiet else f"Running as unit: {unit}.service\n"
    seconds = on_active * ctx.time_scale
    host.timers[unit] = Timer(
        unit,
        description,
        list(command),
        ctx.mono + seconds,
        ctx.wall + seconds,
        ctx.wall,
        collect,
    )
    if quiet:
        return 0, "", ""
    return 0, "", f"Running timer as unit: {unit}.timer\nWill run service as unit: {unit}.service\n"


COMMANDS: dict[str, CommandFn] = {
    "nix": _cmd_nix,
    "nixos-rebuild": _cmd_nixos_rebuild,
    "nix-env": _cmd_nix_env,
    "systemctl": _cmd_systemctl,
    "systemd-run": _cmd_systemd_run,
    "reboot": _cmd_reboot,
    "switch-to-configuration": _cmd_switch_to_configuration,
}


# --- topologies -------------------------------------------------------------------------------


def default_specs() -> list[NixosSpec]:
    """``dns`` (guest 100, the canary), ``media`` (101) and ``builder`` (102, whose flake
    has a ``disko`` input with a nixpkgs of its own: its lock calls the system's
    ``nixpkgs_2``)."""
    return [
        NixosSpec(
            "dns",
            vmid=100,
            build_seconds=4.0,
            services={"unbound.service": "Unbound recursive Domain Name Server"},
            canary=True,
        ),
        NixosSpec(
            "media",
            vmid=101,
            build_seconds=8.0,
            services={"jellyfin.service": "Jellyfin Media Server"},
            after=("dns",),
        ),
        NixosSpec(
            "builder",
            vmid=102,
            build_seconds=12.0,
            services={"nix-serve.service": "nix-serve binary cache server"},
            after=("dns",),
            side_input="disko",
        ),
    ]


def generated_specs(count: int) -> list[NixosSpec]:
    """``nixos-01`` ... for benchmarks: machines of their own, builds of 1 to 4 s."""
    return [
        NixosSpec(
            f"nixos-{i:02d}",
            build_seconds=float(1 + (i % 4)),
            services={"nginx.service": "Nginx Web Server"},
            canary=i == 1,
        )
        for i in range(1, count + 1)
    ]
