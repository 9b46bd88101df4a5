"""The HA manager as ``GET /cluster/ha/status/manager_status`` shows it, and migrations.

Maintenance requests (``ha-manager crm-command node-maintenance``) are queued and applied by
the CRM master after the ``maintenance`` duration, only for an online node and only while
the cluster is quorate and has HA resources. The LRM reports ``maintenance`` at once; its
services then move off one by one (each after the ``migrate`` duration) to online nodes not
in maintenance. Maintenance survives reboots; disabling it moves the services back.

The manager status is what the CRM master last wrote: while a master runs it is current;
when its node goes down (or every ``pve-ha-crm`` stops, a fault) it stays as it was, with
its old ``master_node`` and ``timestamp``, until another node's CRM takes over once the dead
master's lock expired (the ``crm_failover`` duration). Its age is told in lab seconds (the
wall-clock age over the time scale), so a status a few real tenths of a second old in a
fast lab reads as ``old timestamp - dead?`` (over 30 s) as it would on PVE.
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
    master: str | None = None  # the node whose CRM last wrote the manager status
    written: float | None = None  # monotonic: when it last did
    status: dict[str, Any] = field(default_factory=dict)  # what it wrote (node, services)
    crm_stopped: bool = False  # a fault: pve-ha-crm runs on no node


def services(pve: PveSystem) -> list[Guest]:
    return [g for _, g in sorted(pve.guests.items()) if g.hastate]


def elect(pve: PveSystem, ha: HaState, mono: float, failover_s: float) -> str | None:
    """The CRM master now (None: none acts): only with HA resources, quorum and a running
    ``pve-ha-crm``. The master stays while its node is online; a dead master's lock expires
    ``failover_s`` after its last write, then the first online node's CRM takes over (at
    once when there never was one)."""
    if not services(pve) or not pve.quorate() or ha.crm_stopped:
        return None
    if ha.master is not None and pve.nodes[ha.master].status == "online":
        return ha.master
    if ha.master is not None and ha.written is not None and mono < ha.written + failover_s:
        return None
    ha.master = next((n for n, node in pve.nodes.items() if node.status == "online"), None)
    return ha.master


def tick(pve: PveSystem, ha: HaState, mono: float, migrate_s: float, failover_s: float) -> None:
    """Apply due requests, plan evacuations, finish due moves; the master writes its status."""
    crm = elect(pve, ha, mono, failover_s)
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
    if crm is not None:
        ha.written = mono
        ha.status = _written(pve, ha)


def _target(pve: PveSystem, ha: HaState, source: str) -> str | None:
    for name, node in pve.nodes.items():
        if name != source and node.status == "online" and name not in ha.maintenance:
            return name
    return None


def _written(pve: PveSystem, ha: HaState) -> dict[str, Any]:
    """What the CRM master writes: the nodes' and the services' states, the requests."""
    node_status: dict[str, str] = {}
    for name, node in pve.nodes.items():
        online = node.status == "online"
        if name in ha.maintenance and online:
            node_status[name] = "maintenance"
        else:
            node_status[name] = "online" if online else "unknown"
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
    return {
        "node_status": node_status,
        "service_status": service_status,
        "node_request": {n: {"maintenance": 1} for n in sorted(ha.maintenance)},
    }


def manager_status(pve: PveSystem, ha: HaState, scale: float = 1.0) -> dict[str, Any]:
    """``GET /cluster/ha/status/manager_status``: ``{}`` without HA resources or while no
    CRM was ever master; else what the master last wrote, its ``timestamp`` that many lab
    seconds ago (``scale``: the lab's time scale), with each node's LRM status (live: each
    LRM writes its own)."""
    if not services(pve) or ha.master is None or ha.written is None:
        return {}
    wall = time.time()
    age = max(0.0, time.monotonic() - ha.written) / (scale or 1.0)
    lrm: dict[str, Any] = {}
    for name, node in pve.nodes.items():
        online = node.status == "online"
        mine = any(g.node == name for g in services(pve))
        lrm[name] = {
            "mode": "maintenance" if name in ha.maintenance else "active",
            "state": ("active" if mine else "wait_for_agent_lock") if online else "lost_agent_lock",
            "timestamp": int(wall) if online else int(node.boot_time),
        }
    manager: dict[str, Any] = {
        "master_node": ha.master,
        **ha.status,
        "timestamp": int(wall - age),
    }
    return {
        "manager_status": manager,
        "quorum": {"node": manager["master_node"], "quorate": "1" if pve.quorate() else "0"},
        "lrm_status": lrm,
    }


def status_text(pve: PveSystem, ha: HaState, scale: float = 1.0) -> str:
    """``ha-manager status``."""
    data = manager_status(pve, ha, scale)
    if not data:
        return "quorum OK\n" if pve.quorate() else "quorum No quorum\n"
    when = time.strftime("%a %b %d %H:%M:%S %Y")
    ms = data["manager_status"]
    written = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(ms["timestamp"]))
    master_state = "active" if time.time() - ms["timestamp"] <= 30 else "old timestamp - dead?"
    lines = [
        f"quorum {'OK' if pve.quorate() else 'No quorum'}",
        f"master {ms['master_node']} ({master_state}, {written})",
    ]
    for name, lrm in data["lrm_status"].items():
        mode = "maintenance mode" if lrm["mode"] == "maintenance" else lrm["state"]
        if lrm["state"] == "lost_agent_lock":
            mode = "old timestamp - dead?"
        lines.append(f"lrm {name} ({mode}, {when})")
    for sid, st in ms["service_status"].items():
        lines.append(f"service {sid} ({st['node']}, {st['state']})")
    return "\n".join(lines) + "\n"
