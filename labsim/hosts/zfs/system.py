"""The ``zfs`` tool as a system of the lab: each machine host's pools, datasets and snapshots.

Every host in the lab when this system builds (the topology's machines: nodes, ``nas``,
``offsite``) gets a ZFS state; hosts added after it (NixOS hosts) have no ``zfs``. Observers
(``ZfsObserver``) follow what a successful ``zfs`` command changed (NixOS hosts whose guest
disks are datasets on a node).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from labsim.core import Command, Result, System
from labsim.hosts.zfs import ZfsState, default_zfs_state, run_zfs


class ZfsObserver(Protocol):
    """Something that follows ``zfs`` commands on a host's datasets."""

    def before_zfs(self, host: str, zfs: ZfsState) -> Any:
        """Called before a ``zfs`` command; what it returns goes to ``after_zfs``."""

    def after_zfs(self, host: str, zfs: ZfsState, argv: list[str], before: Any) -> None:
        """Called after a ``zfs`` command that exited 0."""


class ZfsSystem(System):
    """The ZFS state of each machine host (``states``, by host name)."""

    name = "zfs"

    def __init__(self) -> None:
        self.states: dict[str, ZfsState] = {}
        self.observers: list[ZfsObserver] = []

    def build(self, now: float) -> None:
        self.states = {name: default_zfs_state(name, now) for name in self.lab.hosts}

    def commands(self) -> list[Command]:
        return [Command("zfs", self._run)]

    def _run(self, host: str, argv: list[str], stdin: str | None, cwd: str | None) -> Result | None:
        zfs = self.states.get(host)
        if zfs is None:
            return None
        before = [(o, o.before_zfs(host, zfs)) for o in self.observers]
        rc, out, err = run_zfs(zfs, ["zfs", *argv[1:]], time.time())
        if rc == 0:
            for observer, token in before:
                observer.after_zfs(host, zfs, argv, token)
        return rc, out, err

    def host_fields(self) -> tuple[str, ...]:
        return ("zfs",)

    def host_json(self, host: str, mono: float) -> dict[str, Any]:
        zfs = self.states.get(host)
        return {"zfs": zfs.to_json()} if zfs is not None else {}
