"""API routes of the apt system: apt update and versions, node reboot, HA status and
guest migration (qemu and lxc), shaped as PVE 9.1 answers them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from labsim.pve.api.server import Request, RouteTable
from labsim.pve.apt import ha, packages
from labsim.pve.model import Guest, PveError

if TYPE_CHECKING:
    from labsim.pve.apt.system import AptSystem

ROUTES = RouteTable()
LOCAL_RESOURCES = ("hostpci", "usb", "serial", "parallel", "virtiofs", "ivshmem")


def _apt(req: Request) -> AptSystem:
    from labsim.pve.apt.system import AptSystem

    return req.lab.system(AptSystem)


@ROUTES.route("POST", "/nodes/{node}/apt/update")
def post_apt_update(req: Request) -> Any:
    """An ``aptupdate`` task; its end refreshes the node's cached list (an enterprise repo
    without subscription fails it with exit code 100)."""
    node = req.pve.require_node(req.node)
    enterprise = _apt(req).run[node.name].enterprise_repo
    log = [f"Hit:{i} {m} InRelease" for i, m in enumerate(packages.MIRRORS, start=1)]
    if enterprise:
        log += [
            f"Err:5 {packages.ENTERPRISE} trixie InRelease",
            "  401  Unauthorized [IP: 51.91.38.34 443]",
        ]
    task = req.pve.new_task(
        node.name,
        "aptupdate",
        "",
        req.user,
        kind="aptupdate",
        duration=req.lab.duration("aptupdate"),
        log=log,
    )
    if enterprise and task.status == "running":
        task.fail_with = "command 'apt-get update' failed: exit code 100"
    return task.upid


@ROUTES.route("GET", "/nodes/{node}/apt/versions")
def get_apt_versions(req: Request) -> Any:
    return packages.versions(req.pve.require_node(req.node))


@ROUTES.route("POST", "/nodes/{node}/status")
def post_node_status(req: Request) -> Any:
    node = req.pve.require_node(req.node)
    if req.req_str("command") == "reboot":
        _apt(req).request_reboot(node)
    else:  # shutdown: down for good (the lab has no power button)
        _apt(req).request_reboot(node)
        _apt(req).run[node.name].never_back = True
    return None


@ROUTES.route("GET", "/cluster/ha/status/manager_status")
def get_manager_status(req: Request) -> Any:
    return ha.manager_status(req.pve, _apt(req).ha, req.lab.time_scale)


def _age_word(timestamp: float) -> str:
    """PVE's word for a status written at ``timestamp``: old past 30 s."""
    return "active" if time.time() - timestamp <= 30 else "old timestamp - dead?"


@ROUTES.route("GET", "/cluster/ha/status/current")
def get_ha_current(req: Request) -> Any:
    data = ha.manager_status(req.pve, _apt(req).ha, req.lab.time_scale)
    quorate = 1 if req.pve.quorate() else 0
    out: list[dict[str, Any]] = [
        {
            "id": "quorum",
            "type": "quorum",
            "node": next(iter(req.pve.nodes)),
            "status": "OK" if quorate else "No quorum",
            "quorate": quorate,
        }
    ]
    if not data:
        return out
    ms = data["manager_status"]
    out.append(
        {
            "id": "master",
            "type": "master",
            "node": ms["master_node"],
            "status": f"{ms['master_node']} ({_age_word(ms['timestamp'])}, "
            f"{time.ctime(ms['timestamp'])})",
        }
    )
    for name, lrm in data["lrm_status"].items():
        out.append(
            {
                "id": f"lrm:{name}",
                "type": "lrm",
                "node": name,
                "status": f"{name} ({lrm['mode']}, {time.ctime(lrm['timestamp'])})",
            }
        )
    for sid, st in ms["service_status"].items():
        out.append(
            {
                "id": f"service:{sid}",
                "type": "service",
                "sid": sid,
                "node": st["node"],
                "state": st["state"],
                "status": f"{sid} ({st['node']}, {st['state']})",
            }
        )
    return out


def local_resources(g: Guest) -> list[str]:
    conf = g.render_config()
    return sorted(k for k in conf if k.rstrip("0123456789") in LOCAL_RESOURCES)


def local_disks(req: Request, g: Guest) -> list[dict[str, Any]]:
    st = req.pve.storages.get(g.storage)
    if st is None or st.shared:
        return []
    return [
        {
            "volid": g.volid,
            "size": g.maxdisk,
            "cdrom": 0,
            "is_unused": 0,
            "drivename": "scsi0" if g.type == "qemu" else "rootfs",
        }
    ]


@ROUTES.route("GET", "/cluster/config/qdevice")
def get_qdevice(req: Request) -> Any:
    """The QDevice's status as ``corosync-qdevice-tool -sv`` gives it; ``{}`` without one."""
    if not req.pve.qdevice:
        return {}
    return {
        "Algorithm": "Fifty-Fifty split",
        "Connected clients": str(sum(n.status == "online" for n in req.pve.nodes.values())),
        "QNetd host": "192.168.100.5:5403",
        "State": "Connected",
        "Tie-breaker": "Node with lowest node ID",
    }


def _allowed(req: Request) -> tuple[list[str], list[str]]:
    """The other nodes: online ones (allowed), the rest."""
    allowed = [n for n, node in req.pve.nodes.items() if n != req.node and node.status == "online"]
    others = [n for n in req.pve.nodes if n != req.node and n not in allowed]
    return allowed, others


@ROUTES.route("GET", "/nodes/{node}/lxc/{vmid}/migrate")
def get_lxc_migrate_precheck(req: Request) -> Any:
    """A container's pre-check (PVE 9.1): hyphenated keys, no local disk list."""
    req.pve.require_node(req.node)
    g = req.pve.load_guest(req.node, "lxc", req.vmid)
    allowed, others = _allowed(req)
    return {
        "running": g.status == "running",
        "allowed-nodes": allowed,
        "not-allowed-nodes": {n: {"blocking-ha-resources": []} for n in others},
        "dependent-ha-resources": [],
    }


@ROUTES.route("GET", "/nodes/{node}/qemu/{vmid}/migrate")
def get_migrate_precheck(req: Request) -> Any:
    req.pve.require_node(req.node)
    g = req.pve.load_guest(req.node, "qemu", req.vmid)
    allowed: list[str] = []
    not_allowed: dict[str, Any] = {}
    for name, node in req.pve.nodes.items():
        if name == req.node:
            continue
        if node.status != "online":
            not_allowed[name] = {
                "unavailable_storages": [],
                "unavailable-resources": [],
                "blocking-ha-resources": [],
            }
        else:
            allowed.append(name)
    return {
        "running": 1 if g.status == "running" else 0,
        "allowed_nodes": allowed,
        "not_allowed_nodes": not_allowed,
        "local_disks": local_disks(req, g),
        "local_resources": local_resources(g),
        "mapped-resources": [],
        "mapped-resource-info": {},
        "has-dbus-vmstate": 1,
        "dependent-ha-resources": [],
    }


def _check_target(req: Request, g: Guest, target: str) -> None:
    if target == req.node:
        raise PveError(500, "target is local node.")
    if target not in req.pve.nodes:
        raise PveError(500, f"no such cluster node '{target}'")
    if not req.pve.quorate():
        raise PveError(500, "cluster not ready - no quorum?")
    if req.pve.nodes[target].status != "online":
        raise PveError(500, f"target node '{target}' is not online")


@ROUTES.route("POST", "/nodes/{node}/qemu/{vmid}/migrate")
def post_qemu_migrate(req: Request) -> Any:
    req.pve.require_node(req.node)
    g = req.pve.load_guest(req.node, "qemu", req.vmid)
    target = req.req_str("target")
    _check_target(req, g, target)
    online = req.get_bool("online")
    if g.status == "running" and not online:
        raise PveError(500, "can't migrate running VM without --online")
    apt = _apt(req)
    if g.hastate:
        apt.ha.moves[g.vmid] = ha.Move(
            g.vmid, target, time.monotonic() + req.lab.duration("migrate")
        )
        return req.pve.new_task(
            req.node,
            "hamigrate",
            str(g.vmid),
            req.user,
            kind="hamigrate",
            duration=0,
            log=[f"Requesting HA migration for VM {g.vmid} to node {target}"],
        ).upid
    fail = None
    if g.lock:
        fail = f"VM is locked ({g.lock})"
    elif local_resources(g) and (g.status == "running" or not req.get_bool("force")):
        fail = f"can't migrate VM which uses local devices: {', '.join(local_resources(g))}"
    elif g.status == "running" and local_disks(req, g) and not req.get_bool("with-local-disks"):
        fail = "can't live migrate attached local disks without with-local-disks option"
    return _migrate_task(req, g, target, "qmigrate", fail, restart=False)


def _migrate_task(
    req: Request, g: Guest, target: str, ttype: str, fail: str | None, *, restart: bool
) -> str:
    start = (
        f"starting migration of {g.kind} {g.vmid} to node '{target}' ({req.pve.nodes[target].ip})"
    )
    if fail is not None:
        task = req.pve.new_task(
            req.node,
            ttype,
            str(g.vmid),
            req.user,
            kind="fail",
            duration=0,
            log=[start, f"ERROR: migration aborted (duration 00:00:00): {fail}"],
            fail_now="migration aborted",
        )
        return task.upid
    g.lock = "migrate"
    if restart:
        g.status, g.started_at = "stopped", None
    log = [
        start,
        "migration finished successfully (duration 00:00:03)",
    ]
    return req.pve.new_task(
        req.node,
        ttype,
        str(g.vmid),
        req.user,
        kind="migrate",
        duration=req.lab.duration("migrate"),
        args={"vmid": g.vmid, "target": target, "restart": restart},
        log=log,
    ).upid


@ROUTES.route("POST", "/nodes/{node}/lxc/{vmid}/migrate")
def post_lxc_migrate(req: Request) -> Any:
    req.pve.require_node(req.node)
    g = req.pve.load_guest(req.node, "lxc", req.vmid)
    target = req.req_str("target")
    _check_target(req, g, target)
    fail = None
    restart = g.status == "running" and req.get_bool("restart")
    if g.lock:
        fail = f"CT is locked ({g.lock})"
    elif g.status == "running" and req.get_bool("online"):
        fail = "lxc live migration is currently not implemented"
    elif g.status == "running" and not restart:
        fail = (
            "running container can only be migrated in restart mode at "
            "/usr/share/perl5/PVE/LXC/Migrate.pm line 57."
        )
    return _migrate_task(req, g, target, "vzmigrate", fail, restart=restart)
