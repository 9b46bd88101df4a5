"""API routes of guests: listing, status, config, snapshots, power, destroy (the guest
agent is ``labsim.pve.agent``)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from labsim.pve.api.server import Request, RouteTable, both
from labsim.pve.model import Guest, PveError

ROUTES = RouteTable()


@ROUTES.route("GET", "/nodes/{node}/qemu", "/nodes/{node}/lxc")
def list_guests(req: Request) -> Any:
    req.pve.require_node(req.node)
    gtype = req.template.rsplit("/", 1)[-1]
    now = time.time()
    out = []
    for g in sorted(req.pve.guests.values(), key=lambda g: g.vmid):
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
    req.pve.require_node(req.node)
    return req.pve.load_guest(req.node, req.gtype, req.vmid)


@ROUTES.route("GET", *both("/{vmid}/status/current"))
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


@ROUTES.route("GET", *both("/{vmid}/config"))
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


@ROUTES.route("GET", *both("/{vmid}/snapshot"))
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


@ROUTES.route("POST", *both("/{vmid}/snapshot"))
def create_snapshot(req: Request) -> Any:
    req.pve.require_node(req.node)
    task = req.pve.snapshot_create(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        description=req.get_str("description"),
        vmstate=req.get_bool("vmstate"),
        user=req.user,
    )
    return task.upid


@ROUTES.route("GET", *both("/{vmid}/snapshot/{snapname}"))
def snapshot_index(req: Request) -> Any:
    req.pve.require_node(req.node)
    return [{"cmd": "rollback"}, {"cmd": "config"}]


@ROUTES.route("DELETE", *both("/{vmid}/snapshot/{snapname}"))
def delete_snapshot(req: Request) -> Any:
    req.pve.require_node(req.node)
    task = req.pve.snapshot_delete(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        force=req.get_bool("force"),
        user=req.user,
    )
    return task.upid


@ROUTES.route("GET", *both("/{vmid}/snapshot/{snapname}/config"))
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


@ROUTES.route("PUT", *both("/{vmid}/snapshot/{snapname}/config"))
def update_snapshot_config(req: Request) -> Any:
    """``Update snapshot metadata``: its description (synchronous, no task). Refused while
    the guest is locked (a snapshot, rollback, backup under way), as qemu-server's
    ``update_snapshot_config`` does (``check_lock`` inside ``lock_config``, before it looks
    for the snapshot)."""
    g = _load(req)
    if g.lock:
        raise PveError(500, f"{g.kind} is locked ({g.lock})")
    name = req.req_str("snapname")
    snap = g.snapshots.get(name)
    if snap is None:
        raise PveError(500, f"snapshot '{name}' does not exist")
    description = req.get_str("description")
    if description is not None:
        snap.description = description
    return None


@ROUTES.route("POST", *both("/{vmid}/snapshot/{snapname}/rollback"))
def rollback_snapshot(req: Request) -> Any:
    req.pve.require_node(req.node)
    task = req.pve.snapshot_rollback(
        req.node,
        req.gtype,
        req.vmid,
        req.req_str("snapname"),
        start=req.get_bool("start"),
        user=req.user,
    )
    return task.upid


@ROUTES.route("POST", *both("/{vmid}/status/start"))
def start_guest(req: Request) -> Any:
    req.pve.require_node(req.node)
    return req.pve.guest_power(req.node, req.gtype, req.vmid, "start", user=req.user).upid


@ROUTES.route("POST", *both("/{vmid}/status/stop"))
def stop_guest(req: Request) -> Any:
    req.pve.require_node(req.node)
    return req.pve.guest_power(req.node, req.gtype, req.vmid, "stop", user=req.user).upid


@ROUTES.route("POST", *both("/{vmid}/status/shutdown"))
def shutdown_guest(req: Request) -> Any:
    req.pve.require_node(req.node)
    return req.pve.guest_power(req.node, req.gtype, req.vmid, "shutdown", user=req.user).upid


@ROUTES.route("DELETE", *both("/{vmid}"))
def destroy_guest(req: Request) -> Any:
    req.pve.require_node(req.node)
    return req.pve.destroy(req.node, req.gtype, req.vmid, user=req.user).upid
