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

Modules: ``model`` (the data), ``flake`` (the flake files), ``image`` (what a snapshot keeps),
``machine`` and ``host`` (``NixosHost``), the commands in ``nix``, ``rebuild``, ``systemctl`` and
``commands`` (running them, and ``systemd-run``), and ``topology`` (the hosts of a topology).
"""

from labsim.hosts.nixos.commands import COMMANDS, run
from labsim.hosts.nixos.host import NixosHost
from labsim.hosts.nixos.image import HostImage
from labsim.hosts.nixos.machine import old_image
from labsim.hosts.nixos.model import (
    CANONICAL_PROFILE,
    FLAKE_REL,
    PROFILE_REL,
    SHIM_NAMES,
    STATE_REL,
    Behaviour,
    Ctx,
    Deferred,
    NixosSpec,
    Result,
    revision,
    unit_name,
)
from labsim.hosts.nixos.topology import default_specs, generated_specs

__all__ = [
    "CANONICAL_PROFILE",
    "COMMANDS",
    "FLAKE_REL",
    "PROFILE_REL",
    "SHIM_NAMES",
    "STATE_REL",
    "Behaviour",
    "Ctx",
    "Deferred",
    "HostImage",
    "NixosHost",
    "NixosSpec",
    "Result",
    "default_specs",
    "generated_specs",
    "old_image",
    "revision",
    "run",
    "unit_name",
]
