"""API routes of the guest agent, shaped as PVE 9.1 answers them: every call checks the
agent is configured, the VM runs and the agent answers (all HTTP 500) first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from labsim.pve.api.server import Request, RouteTable
from labsim.pve.model import PveError

if TYPE_CHECKING:
    from labsim.pve.agent.system import AgentSystem

ROUTES = RouteTable()
AGENT = "/nodes/{node}/qemu/{vmid}/agent"


def _agent(req: Request) -> AgentSystem:
    from labsim.pve.agent.system import AgentSystem

    return req.lab.system(AgentSystem)


@ROUTES.route("POST", f"{AGENT}/ping")
def agent_ping(req: Request) -> Any:
    _agent(req).ready(req.node, req.vmid, "guest-ping")
    return {"result": {}}


@ROUTES.route("GET", f"{AGENT}/get-osinfo")
def agent_osinfo(req: Request) -> Any:
    agent = _agent(req)
    agent.ready(req.node, req.vmid, "guest-get-osinfo")
    return {"result": agent.osinfo(req.vmid)}


@ROUTES.route("POST", f"{AGENT}/exec")
def agent_exec(req: Request) -> Any:
    agent = _agent(req)
    agent.ready(req.node, req.vmid, "guest-exec")
    raw = req.params.get("command")
    command = [raw] if isinstance(raw, str) else list(raw or [])
    if not command:
        raise PveError(400, "Parameter verification failed.", {"command": "no command given"})
    return {"pid": agent.start(req.vmid, command, req.get_str("input-data"))}


@ROUTES.route("GET", f"{AGENT}/exec-status")
def agent_exec_status(req: Request) -> Any:
    agent = _agent(req)
    agent.ready(req.node, req.vmid, "guest-exec-status")
    return agent.status(req.vmid, int(req.req_str("pid")))


@ROUTES.route("POST", "/nodes/{node}/qemu/{vmid}/status/reboot")
def reboot_vm(req: Request) -> Any:
    return _agent(req).reboot(req.node, req.vmid, req.user).upid


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
