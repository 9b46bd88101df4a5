"""Proxmox guests (VMs and containers) as moxflow sees them: parsed from ``/cluster/resources``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from moxflow.errors import ParseError

GuestType = Literal["qemu", "lxc"]

SCRATCH_TAG = "moxflow-scratch"
"""The tag moxflow writes on a restore test's scratch guest: with the name prefix, the mark
that makes it moxflow's own (left out of every job's selection, destroyed by the next restore
test if left behind within the scratch VMIDs)."""
SCRATCH_PREFIX = "moxflow-scratch-"
"""How a scratch guest's name (a container's hostname) starts: the other half of the mark, so
that a tag alone (set by hand, or copied by a clone) does not make a guest moxflow's."""


@dataclass(frozen=True, slots=True)
class Guest:
    """One VM or container of the cluster, as listed by ``GET /cluster/resources?type=vm``."""

    vmid: int
    name: str
    node: str
    type: GuestType
    status: str = "stopped"
    template: bool = False
    tags: tuple[str, ...] = ()
    pool: str | None = None
    lock: str | None = None
    maxdisk: int = 0

    @property
    def label(self) -> str:
        """Human name used in reports: ``101 (media-vm)``."""
        return f"{self.vmid} ({self.name})" if self.name else str(self.vmid)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def scratch(self) -> bool:
        """Whether this is a restore test's scratch guest: it carries moxflow's mark, the tag
        ``moxflow-scratch`` and a name starting ``moxflow-scratch-``."""
        return SCRATCH_TAG in self.tags and self.name.startswith(SCRATCH_PREFIX)

    @classmethod
    def from_resource(cls, item: Mapping[str, Any]) -> Guest:
        """Parse one entry of ``/cluster/resources?type=vm``."""
        try:
            gtype = item["type"]
            if gtype not in ("qemu", "lxc"):
                raise ParseError(f"unexpected guest type {gtype!r}", source="/cluster/resources")
            tags_raw = str(item.get("tags") or "")
            tags = tuple(t for t in tags_raw.replace(",", ";").replace(" ", ";").split(";") if t)
            return cls(
                vmid=int(item["vmid"]),
                name=str(item.get("name") or ""),
                node=str(item["node"]),
                type=gtype,
                status=str(item.get("status") or "unknown"),
                template=bool(int(item.get("template") or 0)),
                tags=tags,
                pool=item.get("pool") or None,
                lock=item.get("lock") or None,
                maxdisk=int(item.get("maxdisk") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ParseError(
                f"cannot parse guest resource: {exc}", source="/cluster/resources", text=str(item)
            ) from exc
