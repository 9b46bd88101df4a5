"""A simulated NixOS machine: its folder, the generations and the system profile, the builds in
its store, activation, power and boot, units and health, snapshots. Its timers fire in
``labsim.hosts.nixos.host``."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from labsim import shim
from labsim.hosts.nixos.flake import configuration_nix, flake_nix, lock_text, locked_nixpkgs
from labsim.hosts.nixos.image import FileEntry, HostImage, _read_tree, _write_tree
from labsim.hosts.nixos.model import (
    BASE_UNITS,
    CANONICAL_PROFILE,
    FLAKE_REL,
    PROFILE_REL,
    STATE_REL,
    Behaviour,
    Build,
    Ctx,
    Generation,
    NixosSpec,
    Result,
    Timer,
    _hash32,
    revision,
    unit_name,
)


class NixosMachine:
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


def old_image(host: NixosMachine) -> HostImage:
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
