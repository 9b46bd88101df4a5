"""The simulated homelab: the core (``labsim.core``) with the lab's own systems plugged in.

In order: the Proxmox cluster (``labsim.pve``), the offsite host, ZFS on the machine hosts,
NixOS hosts, backups (``labsim.pve.backups``), apt on the nodes (``labsim.pve.apt``) and the guest
agent with the Windows guests (``labsim.pve.agent``);
systems from outside labsim come after.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from labsim.core import LabCore, LabOptions, System
from labsim.hosts.nixos import NixosSpec
from labsim.hosts.nixos.system import NixosSystem
from labsim.hosts.offsite import OffsiteSystem
from labsim.hosts.zfs.system import ZfsSystem
from labsim.pve.agent.system import AgentSystem
from labsim.pve.apt.system import AptSystem
from labsim.pve.backups.system import BackupsSystem
from labsim.pve.model import Guest, Node
from labsim.pve.system import PveSystem

__all__ = ["Lab", "LabOptions", "default_systems"]


def default_systems() -> list[System]:
    """The lab's own systems, in the order they build."""
    return [
        PveSystem(),
        OffsiteSystem(),
        ZfsSystem(),
        NixosSystem(),
        BackupsSystem(),
        AptSystem(),
        AgentSystem(),
    ]


class Lab(LabCore):
    """A lab with the default systems (and ``extra`` ones after them)."""

    def __init__(
        self,
        options: LabOptions | None = None,
        root: Path | None = None,
        extra: Iterable[System] = (),
    ) -> None:
        super().__init__([*default_systems(), *extra], options, root)

    @property
    def nodes(self) -> dict[str, Node]:
        return self.system(PveSystem).nodes

    @property
    def guests(self) -> dict[int, Guest]:
        return self.system(PveSystem).guests

    def nixos_specs(self) -> list[NixosSpec]:
        """The NixOS hosts of this lab (what the inventory lists)."""
        return [h.spec for h in self.system(NixosSystem).hosts.values()]
