"""A host's flake as labsim writes it and nix reads it: ``flake.nix``, ``configuration.nix`` and
``flake.lock`` (with the nar hashes of the locked inputs)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from labsim.hosts.nixos.model import NIXOS_RELEASE, NIXPKGS_BRANCH, revision


def nar_hash(rev: str) -> str:
    digest = hashlib.sha256(f"nar:{rev}".encode()).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


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
