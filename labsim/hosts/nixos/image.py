"""What a guest snapshot keeps of a NixOS host: the files of its folder and what ran."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labsim.hosts.nixos.flake import locked_nixpkgs
from labsim.hosts.nixos.model import FLAKE_REL, Build, Generation


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
