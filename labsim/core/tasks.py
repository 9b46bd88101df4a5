"""A Proxmox-style worker task as the lab keeps it (the core runs every system's tasks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """A PVE worker task. ``end_at`` is on the monotonic clock (``inf``: never finishes)."""

    upid: str
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str
    started: float
    end_at: float
    kind: str  # the effect applied when it ends (see System.task_effects)
    args: dict[str, Any] = field(default_factory=dict)
    fail_with: str | None = None  # the planned exit status when it is not OK
    status: str = "running"  # running | stopped
    exitstatus: str | None = None
    endtime: int | None = None
    ended: float | None = None  # wall clock, to the microsecond (endtime is whole seconds)
    begun: float = 0.0  # wall clock at the start, to the microsecond (starttime is whole seconds)
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "upid": self.upid,
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.type,
            "id": self.id,
            "user": self.user,
            "status": self.status,
            "exitstatus": self.exitstatus,
            "endtime": self.endtime,
            "ended": self.ended,
            "begun": self.begun,
            "log": list(self.log),
        }
