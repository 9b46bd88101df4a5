"""API routes of the cluster and its nodes: version, status, resources, node status, storages."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from labsim.pve.api.server import Request, RouteTable
from labsim.pve.model import PVE_RELEASE, PVE_REPOID, PVE_VERSION, Guest

if TYPE_CHECKING:
    from labsim.pve.system import PveSystem

ROUTES = RouteTable()


@ROUTES.route("GET", "/version")
def get_version(req: Request) -> Any:
    return {"version": PVE_VERSION, "release": PVE_RELEASE, "repoid": PVE_REPOID}


@ROUTES.route("GET", "/cluster/status")
def get_cluster_status(req: Request) -> Any:
    lab = req.pve
    out: list[dict[str, Any]] = [
        {
            "type": "cluster",
            "id": "cluster",
            "name": lab.cluster,
            "nodes": len(lab.nodes),
            "version": len(lab.nodes) + 1,
            "quorate": 1 if lab.quorate() else 0,
        }
    ]
    first = next(iter(lab.nodes), None)
    for n in lab.nodes.values():
        out.append(
            {
                "type": "node",
                "id": f"node/{n.name}",
                "name": n.name,
                "nodeid": n.nodeid,
                "ip": n.ip,
                "online": 1 if n.status == "online" else 0,
                "local": 1 if n.name == first else 0,
                "level": "",
            }
        )
    return out


def _guest_resource(g: Guest, now: float) -> dict[str, Any]:
    running = g.status == "running"
    item: dict[str, Any] = {
        "id": f"{g.type}/{g.vmid}",
        "type": g.type,
        "vmid": g.vmid,
        "name": g.name,
        "node": g.node,
        "status": g.status,
        "template": 1 if g.template else 0,
        "maxdisk": g.maxdisk,
        "disk": g.maxdisk // 4 if g.type == "lxc" and running else 0,
        "maxmem": g.maxmem,
        "mem": g.maxmem // 3 if running else 0,
        "maxcpu": g.cpus,
        "cpu": 0.02 if running else 0,
        "uptime": g.uptime(now),
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
    }
    if g.lock:
        item["lock"] = g.lock
    if g.tags:
        item["tags"] = ";".join(g.tags)
    if g.pool:
        item["pool"] = g.pool
    if g.hastate:
        item["hastate"] = g.hastate
    return item


def _node_resource(pve: PveSystem, name: str, now: float) -> dict[str, Any]:
    n = pve.nodes[name]
    online = n.status == "online"
    return {
        "id": f"node/{n.name}",
        "type": "node",
        "node": n.name,
        "status": n.status,
        "maxcpu": n.maxcpu,
        "cpu": 0.05 if online else 0,
        "maxmem": n.maxmem,
        "mem": n.mem if online else 0,
        "maxdisk": n.rootfs_total,
        "disk": n.rootfs_used,
        "uptime": n.uptime(now),
        "level": "",
        "cgroup-mode": 2,
    }


def _storage_entries(pve: PveSystem, node: str) -> list[dict[str, Any]]:
    out = []
    for st in pve.storages.values():
        if not st.on_node(node):
            continue
        out.append(
            {
                "storage": st.name,
                "type": st.type,
                "content": ",".join(sorted(st.content)),
                "shared": 1 if st.shared else 0,
                "active": 1,
                "enabled": 1,
                "total": st.total,
                "used": st.used_for(st.pool(node)),
                "avail": max(0, st.total - st.used_for(st.pool(node))),
                "used_fraction": st.used_for(st.pool(node)) / st.total if st.total else 0,
            }
        )
    return out


@ROUTES.route("GET", "/cluster/resources")
def get_cluster_resources(req: Request) -> Any:
    lab = req.pve
    now = time.time()
    rtype = req.get_str("type")
    out: list[dict[str, Any]] = []
    if rtype in (None, "vm"):
        out += [_guest_resource(g, now) for _, g in sorted(lab.guests.items())]
    if rtype in (None, "node"):
        out += [_node_resource(lab, n, now) for n in lab.nodes]
    if rtype in (None, "storage"):
        for n in lab.nodes:
            for st in _storage_entries(lab, n):
                out.append(
                    {
                        "id": f"storage/{n}/{st['storage']}",
                        "type": "storage",
                        "storage": st["storage"],
                        "node": n,
                        "status": "available",
                        "plugintype": st["type"],
                        "content": st["content"],
                        "shared": st["shared"],
                        "maxdisk": st["total"],
                        "disk": st["used"],
                    }
                )
    if rtype is None:
        pools = sorted({g.pool for g in lab.guests.values() if g.pool})
        out += [{"id": f"/pool/{p}", "type": "pool", "pool": p} for p in pools]
    return out


@ROUTES.route("GET", "/nodes")
def get_nodes(req: Request) -> Any:
    now = time.time()
    out = []
    for name, n in req.pve.nodes.items():
        item = _node_resource(req.pve, name, now)
        del item["cgroup-mode"]
        item["ssl_fingerprint"] = ":".join(f"{(n.nodeid * 17 + i) % 256:02X}" for i in range(32))
        out.append(item)
    return out


@ROUTES.route("GET", "/nodes/{node}/apt/update")
def apt_pending(req: Request) -> Any:
    return req.pve.require_node(req.node).pending_updates()


@ROUTES.route("GET", "/nodes/{node}/status")
def get_node_status(req: Request) -> Any:
    n = req.pve.require_node(req.node)
    now = time.time()
    return {
        "uptime": n.uptime(now),
        "cpu": 0.05,
        "loadavg": ["0.31", "0.27", "0.25"],
        "kversion": f"Linux {n.kernel_running} #1 SMP PREEMPT_DYNAMIC PMX",
        "pveversion": f"pve-manager/{n.installed.get('pve-manager', PVE_VERSION)}/{PVE_REPOID}",
        "current-kernel": {
            "sysname": "Linux",
            "release": n.kernel_running,
            "version": "#1 SMP PREEMPT_DYNAMIC PMX",
            "machine": "x86_64",
        },
        "boot-info": {"mode": "efi", "secureboot": 0},
        "cpuinfo": {"cpus": n.maxcpu, "cores": n.maxcpu // 2, "sockets": 1, "model": "labsim"},
        "memory": {"total": n.maxmem, "used": n.mem, "free": n.maxmem - n.mem},
        "swap": {"total": 0, "used": 0, "free": 0},
        "rootfs": {
            "total": n.rootfs_total,
            "used": n.rootfs_used,
            "avail": n.rootfs_total - n.rootfs_used,
            "free": n.rootfs_total - n.rootfs_used,
        },
    }


@ROUTES.route("GET", "/nodes/{node}/storage")
def get_node_storage(req: Request) -> Any:
    req.pve.require_node(req.node)
    items = _storage_entries(req.pve, req.node)
    content = req.get_str("content")
    if content:
        wanted = set(content.split(","))
        items = [s for s in items if wanted & set(s["content"].split(","))]
    storage = req.get_str("storage")
    if storage:
        items = [s for s in items if s["storage"] == storage]
    return items
