"""The offsite host ``offsite`` as a system of the lab: its real folder for backup copies.

moxflow copies archives there over SSH with ordinary commands; the folder is
``DIR/hosts/offsite/backups/``, emptied at every reset.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from labsim.core import System

OFFSITE_HOST = "offsite"


class OffsiteSystem(System):
    """The host ``offsite`` and its folder (state JSON: the host's ``files``)."""

    name = "offsite"

    def folder(self) -> Path | None:
        root = self.lab.root
        return root / "hosts" / OFFSITE_HOST / "backups" if root is not None else None

    def build(self, now: float) -> None:
        self.lab.add_host(OFFSITE_HOST)
        off = self.folder()
        if off is not None:
            shutil.rmtree(off, ignore_errors=True)
            off.mkdir(parents=True, exist_ok=True)

    def host_fields(self) -> tuple[str, ...]:
        return ("files",)

    def host_json(self, host: str, mono: float) -> dict[str, Any]:
        off = self.folder()
        return {"files": str(off) if off is not None else None} if host == OFFSITE_HOST else {}
