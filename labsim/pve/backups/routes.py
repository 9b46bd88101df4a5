"""API routes of backups: vzdump, the backup content of storages, pruning, restoring."""

from __future__ import annotations

from typing import Any

from labsim import schema
from labsim.pve.api.server import Request, RouteTable
from labsim.pve.model import PveError

ROUTES = RouteTable()


@ROUTES.route("POST", "/nodes/{node}/qemu", "/nodes/{node}/lxc")
def create_guest(req: Request) -> Any:
    """Only restores are simulated: ``archive`` (qemu) or ``ostemplate`` + ``restore=1``; a
    name (a container's ``hostname``), ``tags`` and ``description`` given beside the archive
    replace the backed-up ones, as PVE's restore keeps config options it is given."""
    req.pve.require_node(req.node)
    gtype = req.template.rsplit("/", 1)[-1]
    archive = req.get_str("archive") if gtype == "qemu" else req.get_str("ostemplate")
    if archive is None or (gtype == "lxc" and not req.get_bool("restore")):
        raise PveError(501, "labsim: creating a guest other than by restoring is not simulated")
    return req.backups.restore(
        req.node,
        gtype,
        req.vmid,
        archive,
        storage=req.get_str("storage"),
        force=req.get_bool("force"),
        start=req.get_bool("start"),
        unique=req.get_bool("unique"),
        user=req.user,
        name=req.get_str("name" if gtype == "qemu" else "hostname"),
        tags=req.get_str("tags"),
        description=req.get_str("description"),
    ).upid


def _plain(params: dict[str, schema.ParamValue]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else ",".join(v) for k, v in params.items()}


@ROUTES.route("POST", "/nodes/{node}/vzdump")
def vzdump(req: Request) -> Any:
    req.pve.require_node(req.node)
    return req.backups.vzdump(req.node, _plain(req.params), user=req.user)


@ROUTES.route("GET", "/nodes/{node}/storage/{storage}/content")
def storage_content(req: Request) -> Any:
    req.pve.require_node(req.node)
    st = req.backups.require_storage(req.node, req.req_str("storage"))
    content = req.get_str("content")
    if content is not None and "backup" not in content.split(","):
        return []
    vmid = req.get_int("vmid")
    items = sorted(st.archives_for(req.node), key=lambda a: a.volid)
    return [a.content_entry() for a in items if vmid is None or a.vmid == vmid]


@ROUTES.route("GET", "/nodes/{node}/storage/{storage}/content/{volume}")
def storage_volume(req: Request) -> Any:
    req.pve.require_node(req.node)
    st = req.backups.require_storage(req.node, req.req_str("storage"))
    a = req.backups.find_archive(req.node, req.req_str("volume"), st)
    out: dict[str, Any] = {"path": str(a.path), "size": a.size, "used": a.size, "format": a.format}
    if a.notes:
        out["notes"] = a.notes
    if a.protected:
        out["protected"] = 1
    return out


@ROUTES.route("PUT", "/nodes/{node}/storage/{storage}/content/{volume}")
def update_volume(req: Request) -> Any:
    req.pve.require_node(req.node)
    st = req.backups.require_storage(req.node, req.req_str("storage"))
    a = req.backups.find_archive(req.node, req.req_str("volume"), st)
    notes = req.get_str("notes")
    if notes is not None:
        a.notes = notes.rstrip("\n")
    if "protected" in req.params:
        a.protected = req.get_bool("protected")
    a.write_sidecars()
    return None


@ROUTES.route("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}")
def delete_volume(req: Request) -> Any:
    req.pve.require_node(req.node)
    task = req.backups.delete_archive(
        req.node, req.req_str("storage"), req.req_str("volume"), user=req.user
    )
    return task.upid


@ROUTES.route("GET", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_dry_run(req: Request) -> Any:
    req.pve.require_node(req.node)
    marks = req.backups.prune(
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


@ROUTES.route("DELETE", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_backups(req: Request) -> Any:
    req.pve.require_node(req.node)
    task = req.backups.prune_apply(
        req.node,
        req.req_str("storage"),
        req.get_str("prune-backups"),
        req.get_str("type"),
        req.get_int("vmid"),
        user=req.user,
    )
    return task.upid
