"""The ``nix`` command (``--version``, ``flake update``, ``flake metadata``) and how commands find
a flake."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from labsim.hosts.nixos.flake import _locked_url, lock_text, locked_nixpkgs
from labsim.hosts.nixos.machine import NixosMachine
from labsim.hosts.nixos.model import NIX_VERSION, Ctx, Result, _hash32


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


def _update_lock(host: NixosMachine, flake_dir: Path, ctx: Ctx) -> tuple[int, str]:
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


def _cmd_nix(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    if args[:1] == ["--version"]:
        return 0, f"nix (Nix) {NIX_VERSION}\n", ""
    if args[:2] == ["flake", "update"]:
        return _nix_flake_update(host, args[2:], ctx)
    if args[:2] == ["flake", "metadata"]:
        return _nix_flake_metadata(host, args[2:], ctx)
    what = " ".join(args[:2]) or "(nothing)"
    return 1, "", f"error: labsim does not simulate 'nix {what}'\n"


def _nix_flake_update(host: NixosMachine, args: list[str], ctx: Ctx) -> Result:
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


def _nix_flake_metadata(host: NixosMachine, args: list[str], ctx: Ctx) -> Result:
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
