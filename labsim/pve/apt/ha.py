"""The HA manager as ``GET /cluster/ha/status/manager_status`` shows it, and migrations.

Maintenance requests (``ha-manager crm-command node-maintenance``) are queued and applied by
the CRM master after the ``maintenance`` duration, only for an online node and only while
the cluster is quorate and has HA resources. The LRM reports ``maintenance`` at once; its
services then move off one by one (each after the ``migrate`` duration) to online nodes not
in maintenance. Maintenance survives reboots; disabling it moves the services back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labsim.pve.model import Guest
    from labsim.pve.system import PveSystem


@dataclass
class Move:
    """A guest on its way to ``target`` (an HA relocation or a migration task)."""

    vmid: int
    target: str
    at: float  # monotonic


@dataclass
class HaState:
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (at, node, action)
    maintenance: set[str] = field(default_factory=set)
    moves: dict[int, Move] = field(default_factory=dict)
    origin: dict[int, str] = field(default_factory=dict)  # where maintenance moved it from
    frozen: set[int] = field(default_factory=set)  # HA services of a rebooting node


def services(pve: PveSystem) -> list[Guest]:
    return [g for _, g in sorted(pve.guests.items()) if g.hastate]


def master(pve: PveSystem) -> str | None:
    """The CRM master: only when HA resources exist, on the first online node."""
    if not services(pve) or not pve.quorate():
        return None
    return next((n for n, node in pve.nodes.items() if node.status == "online"), None)


def tick(pve: PveSystem, ha: HaState, mono: float, migrate_s: float) -> None:
    """Apply due requests, plan evacuations and finish due moves."""
    crm = master(pve)
    due = [r for r in ha.requests if r[0] <= mono]
    if crm is not None:
        for req in due:
            _, node, action = req
            ha.requests.remove(req)
            if action == "enable" and pve.nodes[node].status == "online":
                ha.maintenance.add(node)
            elif action == "disable" and node in ha.maintenance:
                ha.maintenance.discard(node)
                for g in services(pve):
                    if ha.origin.get(g.vmid) == node and g.vmid not in ha.moves:
                        ha.moves[g.vmid] = Move(g.vmid, node, mono + migrate_s)
                        del ha.origin[g.vmid]
        for node in sorted(ha.maintenance):
            for g in services(pve):
                if g.node != node or g.vmid in ha.moves:
                    continue
                target = _target(pve, ha, node)
                if target is not None:
                    ha.moves[g.vmid] = Move(g.vmid, target, mono + migrate_s)
                    ha.origin.setdefault(g.vmid, node)
    for vmid, move in list(ha.moves.items()):
        moving = pve.guests.get(vmid)
        if moving is None:
            del ha.moves[vmid]
            continue
        g = moving
        if move.at > mono:
            continue
        if pve.nodes[move.target].status != "online" or pve.nodes[g.node].status != "online":
            continue  # waits for both ends
        del ha.moves[vmid]
        g.node = move.target
        if g.lock == "migrate":
            g.lock = None


def _target(pve: PveSystem, ha: HaState, source: str) -> str | None:
    for name, node in pve.nodes.items():
        if name != source and node.status == "online" and name not in ha.maintenance:
            return name
    return None


def manager_status(pve: PveSystem, ha: HaState) -> dict[str, Any]:
    """``GET /cluster/ha/status/manager_status`` (``{}`` while no CRM was ever master)."""
    crm = master(pve)
    if crm is None and not services(pve):
        return {}
    now = int(time.time())
    node_status: dict[str, str] = {}
    lrm: dict[str, Any] = {}
    for name, node in pve.nodes.items():
        online = node.status == "online"
        if name in ha.maintenance and online:
            node_status[name] = "maintenance"
        else:
            node_status[name] = "online" if online else "unknown"
        mine = any(g.node == name for g in services(pve))
        lrm[name] = {
            "mode": "maintenance" if name in ha.maintenance else "active",
            "state": ("active" if mine else "wait_for_agent_lock") if online else "lost_agent_lock",
            "timestamp": now if online else int(node.boot_time),
        }
    service_status: dict[str, Any] = {}
    for g in services(pve):
        sid = f"{'vm' if g.type == 'qemu' else 'ct'}:{g.vmid}"
        state = g.hastate or "started"
        if g.vmid in ha.moves:
            state = "migrate"
        elif g.vmid in ha.frozen:
            state = "freeze"
        entry: dict[str, Any] = {"node": g.node, "state": state, "uid": f"labsim{g.vmid}"}
        if g.vmid in ha.moves:
            entry["target"] = ha.moves[g.vmid].target
        service_status[sid] = entry
    manager: dict[str, Any] = {
        "master_node": crm or next(iter(pve.nodes)),
        "node_status": node_status,
        "service_status": service_status,
        "node_request": {n: {"maintenance": 1} for n in sorted(ha.maintenance)},
        "timestamp": now,
    }
    return {
        "manager_status": manager,
        "quorum": {"node": manager["master_node"], "quorate": "1" if pve.quorate() else "0"},
        "lrm_status": lrm,
    }


def status_text(pve: PveSystem, ha: HaState) -> str:
    """``ha-manager status``."""
    data = manager_status(pve, ha)
    if not data:
        return "quorum OK\n" if pve.quorate() else "quorum No quorum\n"
    when = time.strftime("%a %b %d %H:%M:%S %Y")
    ms = data["manager_status"]
    lines = [
        f"quorum {'OK' if pve.quorate() else 'No quorum'}",
        f"master {ms['master_node']} (active, {when})",
    ]
    for name, lrm in data["lrm_status"].items():
        mode = "maintenance mode" if lrm["mode"] == "maintenance" else lrm["state"]
        if lrm["state"] == "lost_agent_lock":
            mode = "old timestamp - dead?"
        lines.append(f"lrm {name} ({mode}, {when})")
    for sid, st in ms["service_status"].items():
        lines.append(f"service {sid} ({st['node']}, {st['state']})")
    return "\n".join(lines) + "\n"
