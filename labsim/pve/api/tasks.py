"""API routes of worker tasks: status, log, listing, stopping."""

from __future__ import annotations

from typing import Any

from labsim.core import Task
from labsim.pve.api.server import Request, RouteTable
from labsim.pve.model import PveError

ROUTES = RouteTable()


def _find_task(req: Request) -> Task:
    req.pve.require_node(req.node)
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


@ROUTES.route("GET", "/nodes/{node}/tasks/{upid}/status")
def get_task_status(req: Request) -> Any:
    return _task_status(_find_task(req))


@ROUTES.route("DELETE", "/nodes/{node}/tasks/{upid}")
def stop_task(req: Request) -> Any:
    task = _find_task(req)
    req.lab.stop_task(req.node, task.upid)
    return None


@ROUTES.route("GET", "/nodes/{node}/tasks/{upid}")
def task_index(req: Request) -> Any:
    _find_task(req)
    return [{"name": "log"}, {"name": "status"}]


@ROUTES.route("GET", "/nodes/{node}/tasks/{upid}/log")
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


@ROUTES.route("GET", "/nodes/{node}/tasks")
def list_tasks(req: Request) -> Any:
    req.pve.require_node(req.node)
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
