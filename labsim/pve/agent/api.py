"""API routes of the guest agent, shaped as PVE 9.1 answers them: every call checks the
agent is configured, the VM runs and the agent answers (all HTTP 500) first."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from labsim.pve.api.server import Request, RouteTable
from labsim.pve.model import PveError

if TYPE_CHECKING:
    from labsim.pve.agent.system import AgentSystem

ROUTES = RouteTable()
AGENT = "/nodes/{node}/qemu/{vmid}/agent"
FILE_READ_MAX = 16 * 2**20
"""file-read's ``count``: its default and its cap (16 MiB)."""


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


@ROUTES.route("GET", f"{AGENT}/file-read")
def agent_file_read(req: Request) -> Any:
    agent = _agent(req)
    agent.ready(req.node, req.vmid, "guest-file-open")
    count = req.get_int("count", FILE_READ_MAX) or FILE_READ_MAX
    offset = req.get_int("offset", 0) or 0
    data = agent.read_file(req.vmid, req.req_str("file"))
    chunk = data[offset : offset + count]
    decode = req.get_bool("decode", True)
    content = chunk.decode("utf-8", "replace") if decode else base64.b64encode(chunk).decode()
    answer: dict[str, Any] = {"content": content, "bytes-read": len(chunk)}
    if offset + count < len(data):
        answer["truncated"] = True
    return answer


@ROUTES.route("POST", f"{AGENT}/file-write")
def agent_file_write(req: Request) -> None:
    """The file is opened ``wb``: each write replaces it (no append). ``encode=0`` means the
    content is base64 already (the schema caps ``content`` at 61440 characters)."""
    agent = _agent(req)
    agent.ready(req.node, req.vmid, "guest-file-open")
    content = req.req_str("content")
    if req.get_bool("encode", True):
        data = content.encode("utf-8")
    else:
        try:
            data = base64.b64decode(content, validate=True)
        except ValueError as exc:
            raise PveError(
                500,
                f"VM {req.vmid} qga command 'guest-file-write' failed - "
                "Invalid parameter type for 'buf-b64', expected: base64",
            ) from exc
    agent.write_file(req.vmid, req.req_str("file"), data)
    return None


@ROUTES.route("POST", "/nodes/{node}/qemu/{vmid}/status/reboot")
def reboot_vm(req: Request) -> Any:
    return _agent(req).reboot(req.node, req.vmid, req.user).upid


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
