"""The simulated Proxmox VE API: HTTPS, token auth, schema validation, PVE-shaped answers.

Every request is checked like pveproxy does it (auth, then routing, then parameter
verification against the committed schema subset) and recorded in ``ApiServer.requests``
for the conformance tests. Faults of target ``api`` are applied before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import ssl
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from labsim import schema
from labsim.state import (
    PVE_RELEASE,
    PVE_REPOID,
    PVE_VERSION,
    Guest,
    Lab,
    PveError,
    Task,
)

log = logging.getLogger("labsim.pve")

API_BASE = "/api2/json"
MAX_LOGGED_REQUESTS = 50_000


@dataclass
class Request:
    """One validated API call as handlers see it."""

    lab: Lab
    method: str
    path: str
    template: str
    params: dict[str, schema.ParamValue]
    user: str

    def get_str(self, name: str, default: str | None = None) -> str | None:
        v = self.params.get(name)
        if v is None:
            return default
        return v if isinstance(v, str) else v[0]

    def req_str(self, name: str) -> str:
        v = self.get_str(name)
        assert v is not None  # validation guarantees required parameters
        return v

    def get_int(self, name: str, default: int | None = None) -> int | None:
        v = self.get_str(name)
        return default if v is None else int(v)

    def get_bool(self, name: str, default: bool = False) -> bool:
        v = self.get_str(name)
        return default if v is None else v == "1"

    @property
    def node(self) -> str:
        return self.req_str("node")

    @property
    def vmid(self) -> int:
        v = self.get_int("vmid")
        assert v is not None
        return v

    @property
    def gtype(self) -> str:
        # templates look like /nodes/{node}/qemu/... or /nodes/{node}/lxc/...
        return self.template.split("/")[3]


Handler = Callable[[Request], Any]
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, *templates: str) -> Callable[[Handler], Handler]:
    """Register a handler for a method on one or more schema templates."""

    def deco(fn: Handler) -> Handler:
        for t in templates:
            if schema.endpoint(method, t) is None:
                raise RuntimeError(f"{method} {t} is not in the schema subset")
            ROUTES[(method, t)] = fn
        return fn

    return deco


def served_endpoints() -> list[tuple[str, str]]:
    """Every (method, template) the lab answers."""
    return sorted(ROUTES)


def _both(suffix: str) -> tuple[str, str]:
    return (f"/nodes/{{node}}/qemu{suffix}", f"/nodes/{{node}}/lxc{suffix}")


# --- cluster and nodes ------------------------------------------------------------------------


@route("GET", "/version")
def get_version(req: Request) -> Any:
    return {"version": PVE_VERSION, "release": PVE_RELEASE, "repoid": PVE_REPOID}


@route("GET", "/cluster/status")
def get_cluster_status(req: Request) -> Any:
    lab = req.lab
    online = sum(1 for n in lab.nodes.values() if n.status == "online")
    out: list[dict[str, Any]] = [
        {
            "type": "cluster",
            "id": "cluster",
            "name": lab.cluster,
            "nodes": len(lab.nodes),
            "version": len(lab.nodes) + 1,
            "quorate": 1 if online * 2 > len(lab.nodes) else 0,
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


def _node_resource(lab: Lab, name: str, now: float) -> dict[str, Any]:
    n = lab.nodes[name]
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


def _storage_entries(lab: Lab, node: str) -> list[dict[str, Any]]:
    out = []
    for st in lab.storages.values():
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


@route("GET", "/cluster/resources")
def get_cluster_resources(req: Request) -> Any:
    lab = req.lab
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


@route("GET", "/nodes")
def get_nodes(req: Request) -> Any:
    now = time.time()
    out = []
    for name, n in req.lab.nodes.items():
        item = _node_resource(req.lab, name, now)
        del item["cgroup-mode"]
        item["ssl_fingerprint"] = ":".join(f"{(n.nodeid * 17 + i) % 256:02X}" for i in range(32))
        out.append(item)
    return out


@route("GET", "/nodes/{node}/apt/update")
def apt_pending(req: Request) -> Any:
    return req.lab.require_node(req.node).pending_updates()


@route("GET", "/nodes/{node}/status")
def get_node_status(req: Request) -> Any:
    n = req.lab.require_node(req.node)
    now = time.time()
    return {
        "uptime": n.uptime(now),
        "cpu": 0.05,
        "loadavg": ["0.31", "0.27", "0.25"],
        "kversion": f"Linux {n.kernel_running} #1 SMP PREEMPT_DYNAMIC PMX",
        "pveversion": f"pve-manager/{PVE_VERSION}/{PVE_REPOID}",
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


@route("GET", "/nodes/{node}/storage")
def get_node_storage(req: Request) -> Any:
    req.lab.require_node(req.node)
    items = _storage_entries(req.lab, req.node)
    content = req.get_str("content")
    if content:
        wanted = set(content.split(","))
        items = [s for s in items if wanted & set(s["content"].split(","))]
    storage = req.get_str("storage")
    if storage:
        items = [s for s in items if s["storage"] == storage]
    return items


# --- guests -----------------------------------------------------------------------------------


@route("GET", "/nodes/{node}/qemu", "/nodes/{node}/lxc")
def list_guests(req: Request) -> Any:
    req.lab.require_node(req.node)
    gtype = req.template.rsplit("/", 1)[-1]
    now = time.time()
    out = []
    for g in sorted(req.lab.guests.values(), key=lambda g: g.vmid):
        if g.node != req.node or g.type != gtype:
            continue
        item: dict[str, Any] = {
            "vmid": g.vmid,
            "name": g.name,
            "status": g.status,
            "maxmem": g.maxmem,
            "maxdisk": g.maxdisk,
            "cpus": g.cpus,
            "uptime": g.uptime(now),
        }
        if gtype == "lxc":
            item["type"] = "lxc"
        if g.lock:
            item["lock"] = g.lock
        if g.tags:
            item["tags"] = ";".join(g.tags)
        if g.template:
            item["template"] = 1
        out.append(item)
    return out


def _load(req: Request) -> Guest:
    req.lab.require_node(req.node)
    return req.lab.load_guest(req.node, req.gtype, req.vmid)


@route("GET", *_both("/{vmid}/status/current"))
def get_guest_status(req: Request) -> Any:
    g = _load(req)
    running = g.status == "running"
    out: dict[str, Any] = {
        "vmid": g.vmid,
        "name": g.name,
        "status": g.status,
        "uptime": g.uptime(time.time()),
        "cpus": g.cpus,
        "maxmem": g.maxmem,
        "mem": g.maxmem // 3 if running else 0,
        "maxdisk": g.maxdisk,
        "disk": 0,
        "cpu": 0.02 if running else 0,
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
        "ha": {"managed": 1 if g.hastate else 0},
    }
    if g.type == "qemu":
        out["qmpstatus"] = g.status
        if g.agent:
            out["agent"] = 1
        if running:
            out["pid"] = 10_000 + g.vmid
    else:
        out["type"] = "lxc"
        out["swap"] = 0
        out["maxswap"] = 512 * 1024 * 1024
    if g.lock:
        out["lock"] = g.lock
    if g.tags:
        out["tags"] = ";".join(g.tags)
    if g.template:
        out["template"] = 1
    return out


@route("GET", *_both("/{vmid}/config"))
def get_guest_config(req: Request) -> Any:
    g = _load(req)
    snapname = req.get_str("snapshot")
    if snapname:
        snap = g.snapshots.get(snapname)
        if snap is None:
            raise PveError(500, f"snapshot '{snapname}' does not exist")
        conf = dict(snap.config)
    else:
        conf = _current_config(g)
    conf["digest"] = _config_digest(conf)
    return conf


def _current_config(g: Guest) -> dict[str, Any]:
    """The guest's configuration as its config file holds it now (lock and parent too)."""
    conf = g.render_config()
    if g.lock:
        conf["lock"] = g.lock
    if g.parent:
        conf["parent"] = g.parent
    return conf


def _config_digest(conf: dict[str, Any]) -> str:
    """PVE's ``digest``: the SHA-1 of the config file, here of its contents as JSON."""
    text = json.dumps(conf, sort_keys=True).encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()


@route("GET", *_both("/{vmid}/snapshot"))
def list_snapshots(req: Request) -> Any:
    g = _load(req)
    out: list[dict[str, Any]] = []
    for snap in g.snapshots.values():
        item: dict[str, Any] = {
            "name": snap.name,
            "snaptime": snap.snaptime,
            "description": snap.description,
        }
        if g.type == "qemu":
            item["vmstate"] = 1 if snap.vmstate else 0
        if snap.parent:
            item["parent"] = snap.parent
        if snap.snapstate:
            item["snapstate"] = snap.snapstate
        out.append(item)
    # as qemu-server's and pve-container's snapshot_list write it, for VMs and containers
    current: dict[str, Any] = {
        "name": "current",
        "digest": _config_digest(_current_config(g)),
        "running": 1 if g.status == "running" else 0,
        "description": "You are here!",
    }
    if g.parent:
        current["parent"] = g.parent
    out.append(current)
    return out


@route("POST", *_both("/{vmid}/snapshot"))
def create_snapshot(req: Request) -> Any:
    req.lab.require_node(req.node)
    task = req.lab.snapshot_create(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        description=req.get_str("description"),
        vmstate=req.get_bool("vmstate"),
        user=req.user,
    )
    return task.upid


@route("GET", *_both("/{vmid}/snapshot/{snapname}"))
def snapshot_index(req: Request) -> Any:
    req.lab.require_node(req.node)
    return [{"cmd": "rollback"}, {"cmd": "config"}]


@route("DELETE", *_both("/{vmid}/snapshot/{snapname}"))
def delete_snapshot(req: Request) -> Any:
    req.lab.require_node(req.node)
    task = req.lab.snapshot_delete(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        force=req.get_bool("force"),
        user=req.user,
    )
    return task.upid


@route("GET", *_both("/{vmid}/snapshot/{snapname}/config"))
def get_snapshot_config(req: Request) -> Any:
    g = _load(req)
    name = req.req_str("snapname")
    snap = g.snapshots.get(name)
    if snap is None:
        raise PveError(500, f"snapshot '{name}' does not exist")
    conf = dict(snap.config)
    conf["snaptime"] = snap.snaptime
    if snap.description:
        conf["description"] = snap.description
    if snap.parent:
        conf["parent"] = snap.parent
    if snap.snapstate:
        conf["snapstate"] = snap.snapstate
    if snap.vmstate:
        conf["vmstate"] = f"local-zfs:vm-{g.vmid}-state-{snap.name}"
    return conf


@route("POST", *_both("/{vmid}/snapshot/{snapname}/rollback"))
def rollback_snapshot(req: Request) -> Any:
    req.lab.require_node(req.node)
    task = req.lab.snapshot_rollback(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        start=req.get_bool("start"),
        user=req.user,
    )
    return task.upid


@route("POST", *_both("/{vmid}/status/start"))
def start_guest(req: Request) -> Any:
    req.lab.require_node(req.node)
    return req.lab.guest_power(req.node, req.gtype, req.vmid, "start", user=req.user).upid


@route("POST", *_both("/{vmid}/status/stop"))
def stop_guest(req: Request) -> Any:
    req.lab.require_node(req.node)
    return req.lab.guest_power(req.node, req.gtype, req.vmid, "stop", user=req.user).upid


@route("POST", "/nodes/{node}/qemu", "/nodes/{node}/lxc")
def create_guest(req: Request) -> Any:
    """Only restores are simulated: ``archive`` (qemu) or ``ostemplate`` + ``restore=1``."""
    req.lab.require_node(req.node)
    gtype = req.template.rsplit("/", 1)[-1]
    archive = req.get_str("archive") if gtype == "qemu" else req.get_str("ostemplate")
    if archive is None or (gtype == "lxc" and not req.get_bool("restore")):
        raise PveError(501, "labsim: creating a guest other than by restoring is not simulated")
    return req.lab.restore(
        req.node,
        gtype,
        req.vmid,
        archive,
        storage=req.get_str("storage"),
        force=req.get_bool("force"),
        start=req.get_bool("start"),
        unique=req.get_bool("unique"),
        user=req.user,
    ).upid


@route("DELETE", *_both("/{vmid}"))
def destroy_guest(req: Request) -> Any:
    req.lab.require_node(req.node)
    return req.lab.destroy(req.node, req.gtype, req.vmid, user=req.user).upid


@route("POST", "/nodes/{node}/qemu/{vmid}/agent/ping")
def agent_ping(req: Request) -> Any:
    req.lab.require_node(req.node)
    return req.lab.agent_ping(req.node, req.vmid)


# --- backups ----------------------------------------------------------------------------------


def _plain(params: dict[str, schema.ParamValue]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else ",".join(v) for k, v in params.items()}


@route("POST", "/nodes/{node}/vzdump")
def vzdump(req: Request) -> Any:
    req.lab.require_node(req.node)
    return req.lab.vzdump(req.node, _plain(req.params), user=req.user)


@route("GET", "/nodes/{node}/storage/{storage}/content")
def storage_content(req: Request) -> Any:
    req.lab.require_node(req.node)
    st = req.lab.require_storage(req.node, req.req_str("storage"))
    content = req.get_str("content")
    if content is not None and "backup" not in content.split(","):
        return []
    vmid = req.get_int("vmid")
    items = sorted(st.archives_for(req.node), key=lambda a: a.volid)
    return [a.content_entry() for a in items if vmid is None or a.vmid == vmid]


@route("GET", "/nodes/{node}/storage/{storage}/content/{volume}")
def storage_volume(req: Request) -> Any:
    req.lab.require_node(req.node)
    st = req.lab.require_storage(req.node, req.req_str("storage"))
    a = req.lab.find_archive(req.node, req.req_str("volume"), st)
    out: dict[str, Any] = {"path": str(a.path), "size": a.size, "used": a.size, "format": a.format}
    if a.notes:
        out["notes"] = a.notes
    if a.protected:
        out["protected"] = 1
    return out


@route("PUT", "/nodes/{node}/storage/{storage}/content/{volume}")
def update_volume(req: Request) -> Any:
    req.lab.require_node(req.node)
    st = req.lab.require_storage(req.node, req.req_str("storage"))
    a = req.lab.find_archive(req.node, req.req_str("volume"), st)
    notes = req.get_str("notes")
    if notes is not None:
        a.notes = notes.rstrip("\n")
    if "protected" in req.params:
        a.protected = req.get_bool("protected")
    a.write_sidecars()
    return None


@route("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}")
def delete_volume(req: Request) -> Any:
    req.lab.require_node(req.node)
    task = req.lab.delete_archive(
        req.node, req.req_str("storage"), req.req_str("volume"), user=req.user
    )
    return task.upid


@route("GET", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_dry_run(req: Request) -> Any:
    req.lab.require_node(req.node)
    marks = req.lab.prune(
        req.node,
        req.req_str("storage"),
        req.get_str("prune-backups"),
        req.get_str("type"),
        req.get_int("vmid"),
    )
    return [
        {"volid": a.volid, "ctime": a.ctime, "mark": mark, "type": a.subtype, "vmid": a.vmid}
        for a, mark in marks
    ]


@route("DELETE", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_backups(req: Request) -> Any:
    req.lab.require_node(req.node)
    task = req.lab.prune_apply(
        req.node,
        req.req_str("storage"),
        req.get_str("prune-backups"),
        req.get_str("type"),
        req.get_int("vmid"),
        user=req.user,
    )
    return task.upid


# --- tasks ------------------------------------------------------------------------------------


def _find_task(req: Request) -> Task:
    req.lab.require_node(req.node)
    upid = req.req_str("upid")
    parts = upid.split(":")
    if len(parts) != 9 or parts[0] != "UPID" or parts[8] != "":
        raise PveError(
            400, "Parameter verification failed.", {"upid": "unable to parse worker upid"}
        )
    task = req.lab.task(upid)
    if task is None or task.node != req.node:
        raise PveError(400, "Parameter verification failed.", {"upid": "no such task"})
    return task


def _split_user(user: str) -> dict[str, str]:
    """PVE reports a token's tasks as ``user`` plus ``tokenid``."""
    name, _, tokenid = user.partition("!")
    return {"user": name, "tokenid": tokenid} if tokenid else {"user": name}


def _task_status(task: Task) -> dict[str, Any]:
    out: dict[str, Any] = {
        "upid": task.upid,
        "node": task.node,
        "pid": task.pid,
        "pstart": task.pstart,
        "starttime": task.starttime,
        "type": task.type,
        "id": task.id,
        **_split_user(task.user),
        "status": task.status,
    }
    if task.status == "stopped":
        out["exitstatus"] = task.exitstatus
    return out


@route("GET", "/nodes/{node}/tasks/{upid}/status")
def get_task_status(req: Request) -> Any:
    return _task_status(_find_task(req))


@route("DELETE", "/nodes/{node}/tasks/{upid}")
def stop_task(req: Request) -> Any:
    task = _find_task(req)
    req.lab.stop_task(req.node, task.upid)
    return None


@route("GET", "/nodes/{node}/tasks/{upid}")
def task_index(req: Request) -> Any:
    _find_task(req)
    return [{"name": "log"}, {"name": "status"}]


@route("GET", "/nodes/{node}/tasks/{upid}/log")
def get_task_log(req: Request) -> Any:
    task = _find_task(req)
    start = req.get_int("start", 0) or 0
    limit = req.get_int("limit", 50)
    limit = 50 if limit is None else limit
    lines = task.log[start : start + limit] if limit else []
    if not task.log and start == 0:
        return [{"n": 1, "t": "no content"}]
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(lines)]


def _status_class(task: Task) -> str:
    if task.exitstatus == "OK":
        return "ok"
    if task.exitstatus and task.exitstatus.startswith("WARNINGS"):
        return "warning"
    return "error"


@route("GET", "/nodes/{node}/tasks")
def list_tasks(req: Request) -> Any:
    req.lab.require_node(req.node)
    source = req.get_str("source", "archive")
    tasks = [t for t in req.lab.tasks.values() if t.node == req.node]
    if source == "archive":
        tasks = [t for t in tasks if t.status == "stopped"]
    elif source == "active":
        tasks = [t for t in tasks if t.status == "running"]
    if req.get_bool("errors"):
        tasks = [t for t in tasks if t.status == "stopped" and _status_class(t) != "ok"]
    typefilter = req.get_str("typefilter")
    if typefilter:
        tasks = [t for t in tasks if typefilter in t.type]
    userfilter = req.get_str("userfilter")
    if userfilter:
        tasks = [t for t in tasks if userfilter in t.user]
    vmid = req.get_int("vmid")
    if vmid is not None:
        tasks = [t for t in tasks if t.id == str(vmid)]
    since, until = req.get_int("since"), req.get_int("until")
    if since is not None:
        tasks = [t for t in tasks if t.starttime >= since]
    if until is not None:
        tasks = [t for t in tasks if t.starttime <= until]
    statusfilter = req.get_str("statusfilter")
    if statusfilter:
        wanted = set(statusfilter.split(","))
        tasks = [
            t for t in tasks if ("running" if t.status == "running" else _status_class(t)) in wanted
        ]
    tasks.sort(key=lambda t: (t.starttime, t.pid), reverse=True)
    start = req.get_int("start", 0) or 0
    limit = req.get_int("limit", 50)
    limit = 50 if limit is None else limit
    out = []
    for t in tasks[start : start + limit]:
        item: dict[str, Any] = {
            "upid": t.upid,
            "node": t.node,
            "pid": t.pid,
            "pstart": t.pstart,
            "starttime": t.starttime,
            "type": t.type,
            "id": t.id,
        }
        item |= _split_user(t.user)
        if t.status == "stopped":
            item["status"] = t.exitstatus
            item["endtime"] = t.endtime
        out.append(item)
    return out


# --- the HTTP server --------------------------------------------------------------------------


class ApiServer(ThreadingHTTPServer):
    """The HTTPS API; TLS handshakes happen in the request threads, not the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        lab: Lab,
        ssl_context: ssl.SSLContext,
        token_id: str,
        token_secret: str,
    ) -> None:
        super().__init__(address, ApiHandler)
        self.lab = lab
        self.ssl_context = ssl_context
        self.token_id = token_id
        self.auth_value = f"PVEAPIToken={token_id}={token_secret}"
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._seq = 0
        self._log_lock = threading.Lock()

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)

    def record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.requests.append(entry)

    def request_log(self, since: int = 0) -> list[dict[str, Any]]:
        with self._log_lock:
            return [dict(e) for e in self.requests if e["seq"] > since]

    def clear_request_log(self) -> None:
        with self._log_lock:
            self.requests.clear()


class _DroppedError(Exception):
    """The connection is to be closed without an answer."""


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections give their thread back after this
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request noise; the request log is kept in memory

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection closed: %s", exc)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # -- plumbing ------------------------------------------------------------------------------

    def _read_params(self, method: str, query: str) -> dict[str, schema.ParamValue]:
        pairs = parse_qsl(query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if body:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                data = json.loads(body.decode("utf-8") or "{}")
                for k, v in (data or {}).items():
                    for item in v if isinstance(v, list) else [v]:
                        if isinstance(item, bool):
                            item = int(item)
                        pairs.append((k, str(item)))
            else:
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        grouped: dict[str, list[str]] = {}
        for k, v in pairs:
            grouped.setdefault(k, []).append(v)
        return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}

    def _send(
        self, status: int, reason: str, data: Any = None, errors: dict[str, str] | None = None
    ) -> None:
        body_obj: dict[str, Any] = {"data": data}
        if errors:
            body_obj["errors"] = errors
        body = json.dumps(body_obj).encode("utf-8")
        reason = " ".join(reason.split())[:500].encode("latin-1", "replace").decode("latin-1")
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _DroppedError

    def _apply_fault(self, fault: dict[str, Any]) -> None:
        lab = self.server.lab
        action = fault["action"]
        delay = fault.get("delay")
        if action == "drop":
            self._drop()
        if action == "hang":
            lab.release.wait(None if delay is None else float(delay))
            self._drop()
        if action == "slow":
            lab.release.wait(float(delay or 0))
            return
        if action == "error":
            raise PveError(
                int(fault.get("status", 500)), str(fault.get("message", "internal error"))
            )

    def _serve(self, method: str) -> None:
        t0 = time.monotonic()
        url = urlsplit(self.path)
        full_path = unquote(url.path)
        rel = full_path[len(API_BASE) :] if full_path.startswith(API_BASE) else full_path
        rel = rel or "/"
        # the log keeps an escaped "/" inside a segment (a volume ID) escaped, so that the
        # logged path still splits into the segments the client sent
        logged = unquote(url.path.replace("%2F", "%252F").replace("%2f", "%252F"))
        logged = logged[len(API_BASE) :] if logged.startswith(API_BASE) else logged
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": method,
            "path": logged or "/",
            "template": None,
            "params": {},
            "status": None,
        }
        try:
            params = self._read_params(method, url.query)
            entry["params"] = params
            status, reason, data, errors = self._dispatch(method, full_path, rel, params, entry)
            entry.update(status=status, reason=reason)
            if errors:
                entry["errors"] = errors
            self._send(status, reason, data, errors)
        except _DroppedError:
            entry.update(status=None, reason="dropped")
        except (ValueError, UnicodeDecodeError) as exc:
            entry.update(status=400, reason=f"bad request: {exc}")
            self._send(400, f"bad request: {exc}")
        finally:
            entry["duration"] = round(time.monotonic() - t0, 6)
            self.server.record(entry)

    def _dispatch(
        self,
        method: str,
        full_path: str,
        rel: str,
        params: dict[str, schema.ParamValue],
        entry: dict[str, Any],
    ) -> tuple[int, str, Any, dict[str, str] | None]:
        lab = self.server.lab
        try:
            fault = lab.take_fault("api", method=method, path=rel)
            if fault is not None:
                entry["fault_id"] = fault["fault_id"]
                self._apply_fault(fault)
            auth = self.headers.get("Authorization")
            if not auth:
                raise PveError(401, "No ticket")
            if auth.strip() != self.server.auth_value:
                raise PveError(401, "authentication failure")
            found = None
            if full_path.startswith(API_BASE):
                found = schema.match_path(rel)
                if found is None and "%2f" in self.path.lower():  # a volume ID in the path
                    raw = urlsplit(self.path).path[len(API_BASE) :]
                    found = schema.match_path(raw)
                    if found is not None:
                        found = schema.Route(
                            found.template, {k: unquote(v) for k, v in found.path_params.items()}
                        )
            handler = ROUTES.get((method, found.template)) if found else None
            if found is None or handler is None:
                raise PveError(501, f"Method '{method} {rel}' not implemented")
            entry["template"] = found.template
            all_params: dict[str, schema.ParamValue] = {**params, **found.path_params}
            errors = schema.validate(method, found.template, all_params)
            if errors:
                raise PveError(400, "Parameter verification failed.", errors)
            req = Request(lab, method, rel, found.template, all_params, self.server.token_id)
            with lab.lock:
                lab.tick()
                data = handler(req)
            return 200, "OK", data, None
        except PveError as exc:
            return exc.status, exc.message, None, exc.errors
        except _DroppedError:
            raise
        except Exception as exc:
            log.error("internal error on %s %s:\n%s", method, rel, traceback.format_exc())
            return 500, f"internal error: {exc}", None, None
