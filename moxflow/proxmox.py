"""The Proxmox VE API client moxflow uses: proxmoxer underneath, typed errors and results on top.

``ProxmoxClient`` translates every failure into the error tree of ``moxflow.errors``, retries
GETs on transient errors (POST/PUT/DELETE never: the caller checks whether the change happened),
and ``wait_task`` is the one place that waits on a Proxmox task (style rule 8).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from moxflow.errors import (
    ConfigError,
    GuestLockedError,
    MoxflowError,
    ParseError,
    ProxmoxAuthError,
    ProxmoxError,
    ProxmoxPermissionError,
    ProxmoxTaskError,
    ProxmoxTaskTimeout,
    ProxmoxUnavailableError,
    is_transient,
)
from moxflow.guests import Guest, GuestType
from moxflow.naming import validate_guest_snapname
from moxflow.pacing import POLL_CAP, POLL_FLOOR, poll_delay

__all__ = [
    "GuestSnapshot",
    "ProxmoxClient",
    "TaskResult",
    "Upid",
    "parse_upid",
    "task_succeeded",
]

log = logging.getLogger(__name__)

Method = Literal["GET", "POST", "PUT", "DELETE"]

# PVE::Tools::upid_decode; pstart may have a ninth hex digit on long-running hosts.
_UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-Fa-f]{8}):"
    r"(?P<pstart>[0-9A-Fa-f]{8,9}):(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:\s]+):"
    r"(?P<id>[^:\s]*):(?P<user>[^:\s]+):$"
)
_WARNINGS_RE = re.compile(r"^WARNINGS: \d+$")
_TOKEN_ID_RE = re.compile(r"^(?P<user>[^@!\s]+@[^@!\s]+)!(?P<token>[A-Za-z][A-Za-z0-9._-]*)$")
_LOCKED_MARKERS = ("is locked", "can't lock file")
# PVE answers 500 for plain semantic errors too; those are not worth a retry.
_PERMANENT_500_MARKERS = ("does not exist", "already exists", "not allowed", "invalid")

AUTH_HINT = "check proxmox.token_id and proxmox.token_secret in the inventory"
UNKNOWN_CA_HINT = (
    "the API's certificate is not signed by proxmox.ca_file; "
    "copy /etc/pve/pve-root-ca.pem from a node"
)
SYSTEM_CA_HINT = (
    "the API's certificate is not signed by a CA this machine trusts; copy "
    "/etc/pve/pve-root-ca.pem from a node and set proxmox.ca_file to it"
)
HOSTNAME_HINT = (
    "the API's certificate does not name proxmox.host; use the node name or address the "
    "certificate was issued for"
)

TASK_LOG_TAIL = 10


# --- UPIDs and results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upid:
    """A decoded task id: ``UPID:node:pid:pstart:starttime:type:id:user:``."""

    node: str
    pid: int
    pstart: int
    starttime: datetime
    type: str
    id: str
    user: str
    text: str

    def __str__(self) -> str:
        return self.text


def parse_upid(text: str) -> Upid:
    """Decode a UPID; anything else (``OK``, ``None``, garbage) raises ``ParseError``."""
    if not isinstance(text, str):
        raise ParseError(f"expected a UPID, got {type(text).__name__}", text=repr(text))
    m = _UPID_RE.match(text.strip())
    if not m:
        raise ParseError(f"not a Proxmox task id (UPID): {text!r}", source="UPID", text=text)
    return Upid(
        node=m["node"],
        pid=int(m["pid"], 16),
        pstart=int(m["pstart"], 16),
        starttime=datetime.fromtimestamp(int(m["starttime"], 16), tz=UTC),
        type=m["type"],
        id=m["id"],
        user=m["user"],
        text=text.strip(),
    )


def running_task_of(rows: Iterable[Any], *, task_type: str, vmid: int, user: str) -> Upid | None:
    """The oldest task of ``task_type`` on guest ``vmid`` that ``user`` (a token,
    ``USER@REALM!TOKENID``) started and that still runs, among the rows of
    ``GET /nodes/{node}/tasks?source=active``: a task an earlier moxflow run left running."""
    found: list[Upid] = []
    for item in rows:
        if not isinstance(item, Mapping) or item.get("endtime"):
            continue
        if item.get("status") not in (None, "", "running"):
            continue
        try:
            upid = parse_upid(str(item.get("upid", "")))
        except ParseError:
            continue
        if upid.type == task_type and upid.id == str(vmid) and upid.user == user:
            found.append(upid)
    return min(found, key=lambda u: (u.starttime, u.text)) if found else None


def task_succeeded(exitstatus: str | None) -> bool:
    """Whether a stopped task's exit status means success: ``OK`` or ``WARNINGS: n``."""
    return exitstatus is not None and (
        exitstatus == "OK" or _WARNINGS_RE.match(exitstatus) is not None
    )


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A task that finished successfully; ``duration`` is how long the waiter waited (s)."""

    upid: str
    node: str
    type: str
    id: str
    status: str
    exitstatus: str
    duration: float

    @property
    def warnings(self) -> int:
        """Number of warnings the task logged (``WARNINGS: n``), 0 for ``OK``."""
        m = re.match(r"^WARNINGS: (\d+)$", self.exitstatus)
        return int(m.group(1)) if m else 0


@dataclass(frozen=True, slots=True)
class GuestSnapshot:
    """One snapshot of a guest, as listed by ``GET /nodes/{node}/{type}/{vmid}/snapshot``."""

    name: str
    description: str = ""
    snaptime: datetime | None = None
    vmstate: bool = False
    parent: str | None = None
    snapstate: str | None = None  # "prepare" while being made, "delete" while being removed

    @property
    def complete(self) -> bool:
        """Whether the snapshot is whole: not half made or half deleted (no ``snapstate``;
        one stays behind when its task died). Only a complete snapshot counts as kept."""
        return self.snapstate is None

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> GuestSnapshot:
        """Parse one entry of the snapshot list (not the ``current`` pseudo entry)."""
        try:
            snaptime = item.get("snaptime")
            return cls(
                name=str(item["name"]),
                description=str(item.get("description") or "").rstrip("\n"),
                snaptime=(
                    datetime.fromtimestamp(int(snaptime), tz=UTC) if snaptime is not None else None
                ),
                vmstate=bool(int(item.get("vmstate") or 0)),
                parent=str(item["parent"]) if item.get("parent") else None,
                snapstate=str(item["snapstate"]) if item.get("snapstate") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ParseError(
                f"cannot parse snapshot entry: {exc}", source="snapshot list", text=str(item)
            ) from exc


# --- the client ----------------------------------------------------------------------------


class ProxmoxClient:
    """A Proxmox VE API client authenticated with an API token.

    ``get``/``post``/``put``/``delete`` take a path like ``/nodes/pve1/qemu/101/snapshot``
    and keyword parameters (booleans are sent as 0/1, lists as repeated keys, ``None``
    dropped); they return the ``data`` of the answer or raise a ``ProxmoxError``.
    The underlying proxmoxer session is built on first use; the secret is unwrapped then.

    TLS: with ``ca_file`` the certificate is verified against that CA (``verify_tls`` is then
    ignored); without it against the system's CAs, or not at all with ``verify_tls=False``
    (logged as a warning). GETs make up to ``get_retries`` attempts on transient errors,
    waiting ``retry_backoff`` s, doubling, at most ``retry_backoff_max`` s.
    """

    def __init__(
        self,
        host: str,
        port: int = 8006,
        *,
        token_id: str,
        token_secret: SecretStr,
        ca_file: Path | str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
        get_retries: int = 4,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 8.0,
        max_connections: int = 10,
    ) -> None:
        m = _TOKEN_ID_RE.match(token_id)
        if not m:
            raise ConfigError(
                f"token id {token_id!r} is not USER@REALM!TOKENID",
                setting="proxmox.token_id",
                hint="e.g. root@pam!moxflow, as shown by `pveum user token list root@pam`",
            )
        if not isinstance(token_secret, SecretStr):
            raise TypeError("token_secret must be a pydantic SecretStr")
        if get_retries < 1:
            raise ValueError("get_retries counts attempts and must be at least 1")
        self.host = host
        self.port = int(port)
        self.token_id = token_id
        self._user = m["user"]
        self._token_name = m["token"]
        self._token_secret = token_secret
        self.ca_file = Path(ca_file) if ca_file is not None else None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ConfigError(
                f"CA file {self.ca_file} does not exist",
                setting="proxmox.ca_file",
                hint="copy /etc/pve/pve-root-ca.pem from a node",
            )
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.get_retries = get_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.max_connections = max(1, max_connections)
        self._api: Any = None
        self._lock = threading.Lock()
        if self.ca_file is None and not verify_tls:
            log.warning(
                "TLS verification of the Proxmox API at %s:%s is OFF (proxmox.verify_tls = "
                "false): anyone on the path can read the API token; set proxmox.ca_file instead",
                host,
                self.port,
            )

    def __repr__(self) -> str:
        return f"ProxmoxClient(host={self.host!r}, port={self.port}, token_id={self.token_id!r})"

    def _proxmox(self) -> Any:
        with self._lock:
            if self._api is None:
                verify: str | bool = str(self.ca_file) if self.ca_file else self.verify_tls
                self._api = ProxmoxAPI(
                    self.host,
                    port=self.port,
                    user=self._user,
                    token_name=self._token_name,
                    token_value=self._token_secret.get_secret_value(),
                    verify_ssl=verify,
                    timeout=self.timeout,
                    service="PVE",
                )
                # one client is shared by the threads of a run: keep a kept-alive TLS
                # connection per thread instead of a new handshake per request
                adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.max_connections)
                self._api._store["session"].mount("https://", adapter)
            return self._api

    def close(self) -> None:
        """Close the HTTP session; the next call opens a new one."""
        with self._lock:
            if self._api is not None:
                self._api._store["session"].close()
                self._api = None

    def __enter__(self) -> ProxmoxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw calls -----------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path``; transient failures are retried with capped exponential backoff."""
        return self._retrying_get(path, params)

    def post(self, path: str, **params: Any) -> Any:
        """POST ``path`` once (not retried: the caller decides after checking the outcome)."""
        return self._call("POST", path, params)

    def put(self, path: str, **params: Any) -> Any:
        """PUT ``path`` once."""
        return self._call("PUT", path, params)

    def delete(self, path: str, **params: Any) -> Any:
        """DELETE ``path`` once."""
        return self._call("DELETE", path, params)

    def _retrying_get(self, path: str, params: Mapping[str, Any]) -> Any:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "GET %s failed (attempt %d of %d), retrying in %.2fs: %s",
                path,
                state.attempt_number,
                self.get_retries,
                state.upcoming_sleep,
                exc,
            )

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.get_retries),
            wait=wait_exponential(multiplier=self.retry_backoff, max=self.retry_backoff_max),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(self._call, "GET", path, params)

    def _call(self, method: Method, path: str, params: Mapping[str, Any]) -> Any:
        endpoint, segments = _split_path(path)
        resource = self._proxmox()(segments)
        args = _encode_params(params)
        try:
            if method == "GET":
                return resource.get(**args)
            if method == "POST":
                return resource.post(**args)
            if method == "PUT":
                return resource.put(**args)
            return resource.delete(**args)
        except ResourceException as exc:
            raise self._from_resource_exception(exc, method, endpoint) from exc
        except requests.RequestException as exc:
            raise self._from_requests_exception(exc, method, endpoint) from exc

    def _from_resource_exception(
        self, exc: ResourceException, method: str, endpoint: str
    ) -> ProxmoxError:
        status = int(exc.status_code)
        message = str(exc.content or exc.status_message or f"HTTP {status}").strip()
        errors = _normalize_errors(exc.errors)
        kwargs: dict[str, Any] = {
            "endpoint": endpoint,
            "method": method,
            "status": status,
            "errors": errors,
        }
        lowered = message.lower()
        if status == 401:
            return ProxmoxAuthError(message, hint=AUTH_HINT, **kwargs)
        if status == 403:
            return ProxmoxPermissionError(
                message,
                hint=(
                    f"the API token {self.token_id} lacks the privilege named in the message; "
                    f"grant it, e.g. `pveum acl modify / --tokens '{self.token_id}' "
                    f"--roles PVEVMAdmin`"
                ),
                **kwargs,
            )
        if any(marker in lowered for marker in _LOCKED_MARKERS):
            return GuestLockedError(message, hint="another operation holds the lock", **kwargs)
        if status in (595, 596):
            return ProxmoxUnavailableError(
                message, hint="the node that owns the resource is unreachable", **kwargs
            )
        if status >= 500 and not (
            status == 500 and any(marker in lowered for marker in _PERMANENT_500_MARKERS)
        ):
            return ProxmoxUnavailableError(message, **kwargs)
        return ProxmoxError(message, **kwargs)

    def _from_requests_exception(
        self, exc: requests.RequestException, method: str, endpoint: str
    ) -> ProxmoxError:
        reason = _short_reason(exc)
        kwargs: dict[str, Any] = {"endpoint": endpoint, "method": method}
        where = f"{self.host}:{self.port}"
        if isinstance(exc, requests.exceptions.SSLError):
            if "match" in reason.lower() and "hostname" in reason.lower():
                hint = HOSTNAME_HINT
            elif self.ca_file is not None:
                hint = UNKNOWN_CA_HINT
            else:
                hint = SYSTEM_CA_HINT
            return ProxmoxError(
                f"TLS verification of {where} failed: {reason}", hint=hint, **kwargs
            )
        if isinstance(exc, requests.Timeout):
            hint = "raise proxmox.timeout if the API is just slow"
            if method != "GET" and not isinstance(exc, requests.ConnectTimeout):
                hint += "; the request may still have been carried out, check before repeating it"
            return ProxmoxUnavailableError(
                f"no answer from the Proxmox API at {where} within {self.timeout:g}s: {reason}",
                hint=hint,
                **kwargs,
            )
        if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return ProxmoxUnavailableError(
                f"cannot reach the Proxmox API at {where}: {reason}", **kwargs
            )
        return ProxmoxError(f"request to the Proxmox API at {where} failed: {reason}", **kwargs)

    # --- typed helpers -------------------------------------------------------------------

    def resources(self) -> list[Guest]:
        """Every VM and container of the cluster, sorted by VMID."""
        items = self.get("/cluster/resources", type="vm")
        if not isinstance(items, list):
            raise ParseError("expected a list", source="/cluster/resources", text=repr(items))
        guests = [
            Guest.from_resource(item)
            for item in items
            if isinstance(item, Mapping) and item.get("type") in ("qemu", "lxc")
        ]
        return sorted(guests, key=lambda g: g.vmid)

    def guest(self, vmid: int) -> Guest:
        """The guest with this VMID; ``ConfigError`` when the cluster has none."""
        for g in self.resources():
            if g.vmid == int(vmid):
                return g
        raise ConfigError(
            f"no guest with VMID {vmid} in the cluster at {self.host}",
            hint="check the VMID or selection; `pvesh get /cluster/resources --type vm` lists them",
        )

    def guest_config(self, node: str, gtype: GuestType, vmid: int) -> dict[str, Any]:
        """``GET .../{type}/{vmid}/config``: the guest's current configuration, raw (``agent``,
        ``hostpci0``, ...)."""
        path = f"{_guest_path(node, gtype, vmid)}/config"
        return self._expect_dict(path, self.get(path))

    def guest_description(self, guest: Guest) -> str:
        """The guest's description (its config's ``description``; "" without one)."""
        config = self.get(f"{_guest_path(guest.node, guest.type, guest.vmid)}/config")
        value = config.get("description") if isinstance(config, dict) else None
        return str(value) if value is not None else ""

    def list_snapshots(self, guest: Guest) -> list[GuestSnapshot]:
        """The guest's snapshots, oldest first, without the ``current`` pseudo entry."""
        path = _snapshot_path(guest)
        items = self.get(path)
        if not isinstance(items, list):
            raise ParseError("expected a list", source=path, text=repr(items))
        snaps = [
            GuestSnapshot.from_api(item)
            for item in items
            if isinstance(item, Mapping) and item.get("name") != "current"
        ]
        epoch = datetime.fromtimestamp(0, tz=UTC)
        return sorted(snaps, key=lambda s: (s.snaptime or epoch, s.name))

    def create_snapshot(
        self, guest: Guest, name: str, description: str = "", vmstate: bool = False
    ) -> str:
        """Start a snapshot; returns its UPID. ``vmstate`` (RAM) is sent for VMs only."""
        params: dict[str, Any] = {"snapname": validate_guest_snapname(name)}
        if description:
            params["description"] = description
        if guest.type == "qemu" and vmstate:
            params["vmstate"] = True
        return self._expect_upid(
            "POST", _snapshot_path(guest), self.post(_snapshot_path(guest), **params)
        )

    def delete_snapshot(self, guest: Guest, name: str, *, force: bool = False) -> str:
        """Start deleting a snapshot; returns its UPID. ``force``: remove it from the config
        even when removing the disk snapshots fails (PVE allows it on a guest locked
        ``snapshot-delete`` by an earlier delete that failed)."""
        path = f"{_snapshot_path(guest)}/{validate_guest_snapname(name)}"
        params = {"force": 1} if force else {}
        return self._expect_upid("DELETE", path, self.delete(path, **params))

    def set_snapshot_description(self, guest: Guest, name: str, description: str) -> None:
        """``PUT .../snapshot/{name}/config``: replace a snapshot's description (no task)."""
        path = f"{_snapshot_path(guest)}/{validate_guest_snapname(name)}/config"
        self.put(path, description=description)

    def rollback_snapshot(self, guest: Guest, name: str, start: bool = False) -> str:
        """Start rolling the guest back to a snapshot; returns its UPID."""
        path = f"{_snapshot_path(guest)}/{validate_guest_snapname(name)}/rollback"
        params: dict[str, Any] = {"start": True} if start else {}
        return self._expect_upid("POST", path, self.post(path, **params))

    # --- backups: storage content, vzdump, prune ------------------------------------------

    def backup_content(self, node: str, storage: str, vmid: int | None = None) -> list[Any]:
        """``GET /nodes/{node}/storage/{storage}/content?content=backup[&vmid=]``, raw entries
        (``moxflow.backups.split_content`` reads them)."""
        path = f"/nodes/{node}/storage/{storage}/content"
        params: dict[str, Any] = {"content": "backup"}
        if vmid is not None:
            params["vmid"] = vmid
        return self._expect_list(path, self.get(path, **params))

    def volume_attributes(self, node: str, storage: str, volid: str) -> dict[str, Any]:
        """``GET .../content/{volume}``: a volume's attributes (``notes`` among them)."""
        data = self.get(_volume_path(node, storage, volid))
        return dict(data) if isinstance(data, Mapping) else {}

    def set_volume_notes(self, node: str, storage: str, volid: str, notes: str) -> None:
        """``PUT .../content/{volume}`` with ``notes``."""
        self.put(_volume_path(node, storage, volid), notes=notes)

    def vzdump(self, node: str, vmid: int, **options: Any) -> str:
        """Start a backup of guest ``vmid`` on ``node``, its owner; its UPID.

        A node that does not hold the guest answers ``OK`` instead of a task (it has nothing
        to back up): that is an error here, naming the likely cause.
        """
        path = f"/nodes/{node}/vzdump"
        answer = self.post(path, vmid=vmid, **options)
        if answer == "OK":
            raise ProxmoxError(
                f"{node} answered 'OK' instead of a task: guest {vmid} is not on {node} "
                "(migrated during the run?)",
                endpoint=path,
                method="POST",
            )
        return self._expect_upid("POST", path, answer)

    def prune_marks(
        self, node: str, storage: str, vmid: int, gtype: GuestType, policy: str
    ) -> list[Any]:
        """Proxmox's prune dry run (``GET .../prunebackups``), raw marks; changes nothing."""
        path = f"/nodes/{node}/storage/{storage}/prunebackups"
        params = {"prune-backups": policy, "type": gtype, "vmid": vmid}
        return self._expect_list(path, self.get(path, **params))

    def prune(
        self, node: str, storage: str, vmid: int, gtype: GuestType, policy: str
    ) -> str | None:
        """Prune one guest's backups (``DELETE .../prunebackups``); the task's UPID, or None
        when Proxmox had nothing to remove and started no task."""
        path = f"/nodes/{node}/storage/{storage}/prunebackups"
        answer = self.delete(path, **{"prune-backups": policy, "type": gtype, "vmid": vmid})
        return None if answer is None else self._expect_upid("DELETE", path, answer)

    def stop_task(self, node: str, upid: str) -> None:
        """``DELETE /nodes/{node}/tasks/{upid}``: stop a running task."""
        self.delete(f"/nodes/{node}/tasks/{upid}")

    # --- guests: restore, power, status, agent, destroy ------------------------------------

    def restore(self, node: str, gtype: GuestType, **params: Any) -> str:
        """``POST /nodes/{node}/qemu`` (``archive``) or ``.../lxc`` (``ostemplate``,
        ``restore``): create a guest from a backup; its UPID."""
        path = f"/nodes/{node}/{gtype}"
        return self._expect_upid("POST", path, self.post(path, **params))

    def power(
        self, node: str, gtype: GuestType, vmid: int, action: Literal["start", "stop"]
    ) -> str:
        """Start or stop a guest; the task's UPID."""
        path = f"{_guest_path(node, gtype, vmid)}/status/{action}"
        return self._expect_upid("POST", path, self.post(path))

    def guest_status(self, node: str, gtype: GuestType, vmid: int) -> str:
        """``running``, ``stopped``, ... (``GET .../status/current``); ``unknown`` if unsaid."""
        data = self.get(f"{_guest_path(node, gtype, vmid)}/status/current")
        return str(data.get("status", "unknown")) if isinstance(data, Mapping) else "unknown"

    def agent_ping(self, node: str, vmid: int) -> None:
        """Ping a VM's QEMU guest agent; raises ``ProxmoxError`` when it does not answer (``No
        QEMU guest agent configured``, ``VM 100 is not running``, ...)."""
        self.post(f"{_guest_path(node, 'qemu', vmid)}/agent/ping")

    def agent_get_osinfo(self, node: str, vmid: int) -> dict[str, Any]:
        """``GET .../agent/get-osinfo``: ``{"result": {"id": "mswindows", ...}}``, raw."""
        path = f"{_guest_path(node, 'qemu', vmid)}/agent/get-osinfo"
        data = self.get(path)
        return dict(data) if isinstance(data, Mapping) else {}

    def agent_exec(
        self, node: str, vmid: int, command: Sequence[str], input_data: str | None = None
    ) -> int:
        """``POST .../agent/exec``: start ``command`` (one argument per element, no shell) with
        ``input_data`` on its stdin (none: no stdin); the guest's pid. Not retried: a retry
        starts it twice."""
        path = f"{_guest_path(node, 'qemu', vmid)}/agent/exec"
        data = self.post(path, command=list(command), **{"input-data": input_data})
        pid = data.get("pid") if isinstance(data, Mapping) else None
        if not isinstance(pid, int):
            raise ParseError(f"POST {path} answered no pid", source=path, text=repr(data)[:200])
        return pid

    def agent_exec_status(self, node: str, vmid: int, pid: int) -> dict[str, Any]:
        """``GET .../agent/exec-status``, raw. The agent forgets a process once it has
        reported its exit: keep the first answer with ``exited`` set."""
        path = f"{_guest_path(node, 'qemu', vmid)}/agent/exec-status"
        data = self.get(path, pid=pid)
        return dict(data) if isinstance(data, Mapping) else {}

    def reboot_vm(self, node: str, vmid: int) -> str:
        """``POST .../qemu/{vmid}/status/reboot``: a clean restart (``qmreboot``); its UPID."""
        path = f"{_guest_path(node, 'qemu', vmid)}/status/reboot"
        return self._expect_upid("POST", path, self.post(path))

    def destroy(self, node: str, gtype: GuestType, vmid: int) -> str:
        """``DELETE /nodes/{node}/{type}/{vmid}``: destroy a (stopped) guest; its UPID."""
        path = _guest_path(node, gtype, vmid)
        return self._expect_upid("DELETE", path, self.delete(path))

    # --- nodes ------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes (``GET /nodes``: ``node``, ``status`` online|offline, ...),
        sorted by name."""
        items = self._expect_list("/nodes", self.get("/nodes"))
        found = [dict(i) for i in items if isinstance(i, Mapping) and i.get("node")]
        return sorted(found, key=lambda n: str(n["node"]))

    def pending_updates(self, node: str) -> list[Any]:
        """``GET /nodes/{node}/apt/update``: the packages with an upgrade pending, raw."""
        path = f"/nodes/{node}/apt/update"
        return self._expect_list(path, self.get(path))

    def node_status(self, node: str) -> dict[str, Any]:
        """``GET /nodes/{node}/status``: uptime, running kernel, pve-manager version, ...
        (``moxflow.pveupdate.parse_node_status`` reads it)."""
        path = f"/nodes/{node}/status"
        return self._expect_dict(path, self.get(path))

    def reboot_node(self, node: str) -> None:
        """``POST /nodes/{node}/status command=reboot``: answers null, not a task; the node
        goes on answering for a while (prove the reboot by its uptime)."""
        self.post(f"/nodes/{node}/status", command="reboot")

    def apt_update(self, node: str) -> str:
        """``POST /nodes/{node}/apt/update``: start refreshing the package lists (an
        ``aptupdate`` task); its UPID."""
        path = f"/nodes/{node}/apt/update"
        return self._expect_upid("POST", path, self.post(path))

    def apt_versions(self, node: str) -> list[Any]:
        """``GET /nodes/{node}/apt/versions``: installed versions of Proxmox's packages, raw."""
        path = f"/nodes/{node}/apt/versions"
        return self._expect_list(path, self.get(path))

    def cluster_status(self) -> list[Any]:
        """``GET /cluster/status``: the cluster row (quorum) and one row per node, raw."""
        return self._expect_list("/cluster/status", self.get("/cluster/status"))

    def qdevice(self) -> dict[str, Any]:
        """``GET /cluster/config/qdevice``: the QDevice's status, ``{}`` without one."""
        path = "/cluster/config/qdevice"
        return self._expect_dict(path, self.get(path))

    def ha_manager_status(self) -> Any:
        """``GET /cluster/ha/status/manager_status``, raw (``{}`` while no CRM is master)."""
        return self.get("/cluster/ha/status/manager_status")

    def running_task(self, node: str, task_type: str, vmid: int) -> Upid | None:
        """A task of ``task_type`` on guest ``vmid`` that this token started and that still
        runs on ``node`` (an earlier run's, when looked up before starting one)."""
        path = f"/nodes/{node}/tasks"
        rows = self._expect_list(
            path, self.get(path, source="active", typefilter=task_type, vmid=vmid)
        )
        return running_task_of(rows, task_type=task_type, vmid=vmid, user=self.token_id)

    def active_tasks(self, node: str) -> list[Any]:
        """``GET /nodes/{node}/tasks?source=active``: the node's running tasks, raw."""
        path = f"/nodes/{node}/tasks"
        return self._expect_list(path, self.get(path, source="active"))

    def migrate_precheck(self, node: str, gtype: GuestType, vmid: int) -> dict[str, Any]:
        """``GET .../{type}/{vmid}/migrate``: whether and where a guest can migrate, raw."""
        path = f"{_guest_path(node, gtype, vmid)}/migrate"
        return self._expect_dict(path, self.get(path))

    def migrate(self, node: str, gtype: GuestType, vmid: int, target: str, **params: Any) -> str:
        """``POST .../{type}/{vmid}/migrate`` to ``target`` (``online`` for a VM, ``restart``
        for a container, ...): its UPID (``qmigrate``, ``vzmigrate``, or ``hamigrate``, which
        only queues the move for an HA-managed guest)."""
        path = f"{_guest_path(node, gtype, vmid)}/migrate"
        return self._expect_upid("POST", path, self.post(path, target=target, **params))

    def shutdown(self, node: str, gtype: GuestType, vmid: int, timeout: int) -> str:
        """``POST .../status/shutdown`` (clean, ``forceStop`` after ``timeout`` s): its UPID."""
        path = f"{_guest_path(node, gtype, vmid)}/status/shutdown"
        return self._expect_upid("POST", path, self.post(path, timeout=timeout, forceStop=1))

    def version(self) -> dict[str, Any]:
        """``GET /version``: needs a valid token, so it checks the credentials too."""
        data = self.get("/version")
        return dict(data) if isinstance(data, Mapping) else {}

    # --- tasks ------------------------------------------------------------------------------

    def task_log(self, node: str, upid: str, limit: int = 50, start: int = 0) -> list[str]:
        """Lines of a task's log, from line ``start`` (0-based), at most ``limit``."""
        path = f"/nodes/{node}/tasks/{upid}/log"
        items = self.get(path, start=start, limit=limit)
        if not isinstance(items, list):
            raise ParseError("expected a list", source=path, text=repr(items))
        return [str(item.get("t", "")) for item in items if isinstance(item, Mapping)]

    def wait_task(
        self,
        upid: str,
        legacy_upid: str | None = None,
        *,
        timeout: float,
        node: str | None = None,
        expect: float | None = None,
    ) -> TaskResult:
        """Wait for a task to stop; the one waiter every Proxmox task goes through.

        Polls the task status at about a tenth of the time already waited (20 ms to 2 s), or,
        given ``expect`` (the expected duration in seconds), on the schedule of
        ``moxflow.pacing.poll_delay``: sparse early, every 5 % around the expected end,
        tolerating transient API errors until ``timeout`` seconds have passed. Returns a
        ``TaskResult`` for ``OK``/``WARNINGS: n``; raises ``GuestLockedError`` when the task
        failed on a lock, ``ProxmoxTaskError`` (with the tail of the task log) for any other
        exit status, ``ProxmoxTaskTimeout`` when the task is still running at the deadline.
        The deadline can be overshot by at most one HTTP timeout (``self.timeout``).
        ``wait_task(node, upid, timeout=...)`` is accepted too.
        """
        if legacy_upid is not None:
            node, upid = upid, legacy_upid
        parsed = parse_upid(upid)
        node = node or parsed.node
        path = f"/nodes/{node}/tasks/{upid}/status"
        started = time.monotonic()
        deadline = started + timeout

        def still_running(status: dict[str, Any]) -> bool:
            return status.get("status") != "stopped"

        def poll_wait(state: RetryCallState) -> float:
            now = time.monotonic()
            interval = poll_delay(now - started, expect, floor=POLL_FLOOR, cap=POLL_CAP)
            return max(0.0, min(interval, deadline - now))

        def past_deadline(state: RetryCallState) -> bool:
            return time.monotonic() >= deadline

        def poll() -> dict[str, Any]:
            return self._status_dict(self._call("GET", path, {}), upid)

        retrying = Retrying(
            retry=retry_if_exception(is_transient) | retry_if_result(still_running),
            wait=poll_wait,
            stop=past_deadline,
        )
        if expect is not None:  # with a hint the first poll waits too (none at 0 s)
            time.sleep(max(0.0, min(poll_delay(0.0, expect), deadline - time.monotonic())))
        try:
            status = retrying(poll)
        except RetryError as exc:
            last = exc.last_attempt
            waited = time.monotonic() - started
            if last.failed:
                cause = last.exception()
                raise ProxmoxTaskTimeout(
                    f"task {parsed.type} {parsed.id} on {node}: status unknown after "
                    f"{waited:.1f}s, the API kept failing: {cause}",
                    endpoint=path,
                    method="GET",
                    upid=upid,
                ) from cause
            raise ProxmoxTaskTimeout(
                f"task {parsed.type} {parsed.id} on {node} still running after {waited:.1f}s "
                f"(limit {timeout:g}s); it may still finish",
                endpoint=path,
                method="GET",
                upid=upid,
            ) from None
        duration = time.monotonic() - started
        exitstatus = str(status.get("exitstatus") or "")
        if task_succeeded(exitstatus):
            return TaskResult(
                upid=upid,
                node=node,
                type=str(status.get("type") or parsed.type),
                id=str(status.get("id") or parsed.id),
                status="stopped",
                exitstatus=exitstatus,
                duration=duration,
            )
        what = f"task {parsed.type} {parsed.id} on {node}".replace("  ", " ")
        if any(marker in exitstatus.lower() for marker in _LOCKED_MARKERS):
            raise GuestLockedError(f"{what} failed: {exitstatus}", endpoint=path, upid=upid)
        tail = self._log_tail(node, upid)
        message = f"{what} failed: {exitstatus or 'no exit status'}"
        if tail:
            message += "; log ends: " + " | ".join(tail)
        # vzdump ends a locked guest's backup with "job errors" and says why only in its log
        # ("ERROR: Backup of VM 101 failed - VM is locked (snapshot)"): a lock all the same
        if any(marker in line.lower() for line in tail for marker in _LOCKED_MARKERS):
            raise GuestLockedError(message, endpoint=path, upid=upid)
        raise ProxmoxTaskError(message, exitstatus=exitstatus, endpoint=path, upid=upid)

    # --- internals -----------------------------------------------------------------------

    def _log_tail(self, node: str, upid: str) -> list[str]:
        try:
            lines = self.task_log(node, upid, limit=1000)
        except MoxflowError as exc:
            log.warning("cannot read the log of %s: %s", upid, exc)
            return []
        return [line for line in lines if line.strip()][-TASK_LOG_TAIL:]

    @staticmethod
    def _status_dict(data: Any, upid: str) -> dict[str, Any]:
        if not isinstance(data, Mapping) or "status" not in data:
            raise ParseError("unexpected task status", source=upid, text=repr(data))
        return dict(data)

    @staticmethod
    def _expect_list(path: str, data: Any) -> list[Any]:
        if data is None:
            return []
        if not isinstance(data, list):
            raise ParseError("expected a list", source=path, text=repr(data))
        return data

    @staticmethod
    def _expect_dict(path: str, data: Any) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise ParseError("expected an object", source=path, text=repr(data))
        return dict(data)

    @staticmethod
    def _expect_upid(method: str, path: str, data: Any) -> str:
        try:
            return parse_upid(data).text
        except ParseError as exc:
            raise ParseError(
                f"{method} {path} answered {data!r} instead of a task id",
                source=path,
                text=repr(data),
            ) from exc


# --- helpers -------------------------------------------------------------------------------


def _guest_path(node: str, gtype: GuestType, vmid: int) -> str:
    return f"/nodes/{node}/{gtype}/{vmid}"


def _volume_path(node: str, storage: str, volid: str) -> str:
    # the volume ID holds a "/": escaped, it stays one path segment
    return f"/nodes/{node}/storage/{storage}/content/{quote(volid, safe='')}"


def _snapshot_path(guest: Guest) -> str:
    gtype: GuestType = guest.type
    return f"/nodes/{guest.node}/{gtype}/{guest.vmid}/snapshot"


def _split_path(path: str) -> tuple[str, list[str]]:
    """``/nodes/pve1/qemu`` -> (normalized path, proxmoxer segments)."""
    segments = path.strip().strip("/").split("/")
    if not path.strip().strip("/") or any(not s for s in segments):
        raise ValueError(f"bad API path {path!r}: expected /segment/segment/...")
    if any(ch in path for ch in "?#"):
        raise ValueError(f"bad API path {path!r}: pass query parameters as keyword arguments")
    return "/" + "/".join(segments), segments


def _encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Booleans as 0/1 (the API's form encoding), ``None`` dropped, lists kept."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, list | tuple):
            out[key] = [int(v) if isinstance(v, bool) else v for v in value]
        else:
            out[key] = value
    return out


def _normalize_errors(errors: Any) -> dict[str, Any]:
    if not errors:
        return {}
    if isinstance(errors, Mapping):
        out: dict[str, Any] = {}
        for key, value in errors.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            text = str(value).strip()
            out[str(key)] = text[:300] + ("…" if len(text) > 300 else "")
        return out
    return {"errors": str(errors)[:300]}


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _short_reason(exc: BaseException) -> str:
    """The useful tail of a requests/urllib3 error (they nest three deep)."""
    text = str(exc)
    m = _ERRNO_RE.search(text)
    if m:
        return m.group(0).strip()
    for marker in ("CERTIFICATE_VERIFY_FAILED", "Hostname mismatch", "timed out"):
        idx = text.find(marker)
        if idx >= 0:
            tail = text[idx:]
            return re.split(r"['\")]", tail, maxsplit=1)[0].strip()
    return text[:300]
