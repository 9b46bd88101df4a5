"""The ``inventory.toml`` a lab writes: moxflow's inventory of this lab, working as it is."""

from __future__ import annotations

import json
from pathlib import Path

from labsim.hosts import nixos
from labsim.hosts.nixos import NixosSpec
from labsim.hosts.offsite import OFFSITE_HOST
from labsim.pve.model import TOKEN_ID


def _q(value: str) -> str:
    return json.dumps(value)


def render_inventory(
    api_port: int,
    hosts: dict[str, int],
    nixos_hosts: list[tuple[NixosSpec, Path]] | None = None,
    health_port: int = 0,
    storage_paths: dict[str, str] | None = None,
    offsite_path: str | None = None,
) -> str:
    """A working ``inventory.toml`` for this lab (the shape of docs/internals.md and, for
    the NixOS hosts, docs/internals-nixos.md). ``nixos_hosts``: (spec, host folder);
    ``storage_paths``: each backup storage's real folder ({node} for a node-local one);
    ``offsite_path``: the offsite host's real folder."""
    lines = [
        "# Written by labsim for this lab; paths are relative to this file.",
        'timezone = "UTC"',
        "",
        "[proxmox]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        f"token_id = {_q(TOKEN_ID)}",
        'token_secret = "file:pve-token"',
        'ca_file = "pve-root-ca.pem"',
        "verify_tls = true",
        "timeout = 30.0",
        "",
        "[ssh]",
        'user = "root"',
        'key_file = "id_ed25519"',
        'known_hosts = "known_hosts"',
        "strict_host_keys = true",
        "connect_timeout = 10.0",
        "command_timeout = 300.0",
        "",
    ]
    for name, port in hosts.items():
        lines += [f"[hosts.{name}]", 'address = "127.0.0.1"', f"port = {port}", ""]
    lines += [
        "[zfs.policies]",
        'hourly = "keep-hourly=24"',
        'daily = "keep-daily=7,keep-weekly=4"',
        "",
    ]
    datasets = [
        ("pve1", "rpool/data", True),
        ("pve1", "tank/media", False),
        ("pve2", "rpool/data", True),
        ("nas", "tank/backups", False),
    ]
    for host, name, recursive in datasets:
        if host not in hosts:
            continue
        lines += [
            "[[zfs.datasets]]",
            f"host = {_q(host)}",
            f"name = {_q(name)}",
            f"recursive = {'true' if recursive else 'false'}",
            "",
        ]
    lines += [
        "[guest_snapshots]",
        'select = "@all,-@tag-nosnap"',
        "running_only = false",
        "vmstate = false",
        "concurrency = 8",
        "",
        "[guest_snapshots.policies]",
        'hourly = "keep-last=3,keep-hourly=24"',
        'daily = "keep-daily=7"',
    ]
    if storage_paths is not None:
        lines += [
            "",
            "[backups]",
            'select = "@all"',
            'storage = "nas-backup"',
            'mode = "snapshot"',
            'compress = "zstd"',
            'policy = "keep-last=3,keep-daily=7"',
            "max_age_hours = 26.0",
            "size_drop_ratio = 0.5",
            "",
            "[backups.storage_paths]",
            *(f"{_q(name)} = {_q(path)}" for name, path in sorted(storage_paths.items())),
        ]
    if offsite_path is not None and OFFSITE_HOST in hosts:
        lines += [
            "",
            "[offsite]",
            f"host = {_q(OFFSITE_HOST)}",
            f"path = {_q(offsite_path)}",
            'policy = "keep-last=2,keep-daily=7"',
        ]
    if nixos_hosts:
        lines += ["", *_render_nixos(nixos_hosts, health_port)]
    return "\n".join(lines) + "\n"


def _render_nixos(nixos_hosts: list[tuple[NixosSpec, Path]], health_port: int) -> list[str]:
    # confirm_timeout and health_grace are real numbers: the lab runs a dead-man timer for
    # on-active × time_scale seconds, so 120 s take 3 s at the tests' time scale of 0.025.
    lines = [
        "[nixos]",
        "confirm_timeout = 120.0",
        "health_grace = 30.0",
        "max_parallel = 2",
        "lock_wait = 0.0",
        f"profile = {_q(nixos.CANONICAL_PROFILE)}",
        'state_dir = "/var/lib/moxflow"',
    ]
    for spec, root in nixos_hosts:
        snapshot = (
            f'{{ method = "proxmox", vmid = {spec.vmid} }}'
            if spec.vmid is not None
            else '{ method = "none" }'
        )
        lines += [
            "",
            f"[nixos.hosts.{spec.name}]",
            f"flake = {_q(str(root / nixos.FLAKE_REL))}",
            f"attr = {_q(spec.name)}",
            f"canary = {'true' if spec.canary else 'false'}",
            f"after = [{', '.join(_q(a) for a in spec.after)}]",
            "commit_lock_file = false",
            f"profile = {_q(str(root / nixos.PROFILE_REL))}",
            f"state_dir = {_q(str(root / nixos.STATE_REL))}",
            f"snapshot = {snapshot}",
            "",
            f"[[nixos.hosts.{spec.name}.health]]",
            f"http = {_q(f'http://127.0.0.1:{health_port}/health/{spec.name}')}",
            "expect_status = 200",
            'expect_text = "ok"',
        ]
    return lines
