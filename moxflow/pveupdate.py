"""Proxmox VE host updates, without I/O: parsers of the API's and the node's answers, argv
builders, the pre-flight verdict, the reboot decision, the guest and roll planners, the
verdicts after the reboot and the next steps after a failure.

A node's update is: pre-flight (whole cluster), snapshot of the root dataset, guests leave
(HA node maintenance for HA-managed guests, the others by policy), ``apt-get dist-upgrade``
over SSH, a reboot only when needed (proven by a reset uptime, never by the node
answering), verify, leave maintenance, guests return; then the next node. The API
shapes are the ones of ``shared/reference/proxmox-ve-api-schema.json`` and the facts file
(``guide/facts-proxmox-update.md``); every builder returns an argument list, which the SSH
runner quotes once.

Decisions this module encodes (the flow's docs should repeat them for users):

- A **held** package (``apt-mark showhold``) is a warning, not a refusal: ``dist-upgrade``
  keeps it at its version, which is what a hold asks for. A **broken** dpkg state
  (``dpkg --audit`` prints anything, or a package half installed) refuses the node.
- A guest with **local disks** cannot move: moxflow never copies disks with
  ``with-local-disks``; such a guest, and one with local resources (passthrough), follows its
  fallback (``shutdown`` or ``leave``).
- Nodes roll in inventory order when ``[proxmox_update] nodes`` lists them, else fewest
  running guests first (the least to move while nothing is upgraded yet), then by name.
- The QDevice is read from ``GET /cluster/config/qdevice`` (``{}`` without one): the
  ``/cluster/status`` rows list nodes and the cluster only, never the QDevice.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from functools import cmp_to_key
from typing import Any, Literal

from moxflow.errors import ParseError
from moxflow.guests import Guest, GuestType
from moxflow.inventory.fields import validate_remote_path
from moxflow.inventory.proxmox_update import (
    FallbackPolicy,
    GuestPolicy,
    ProxmoxUpdateSettings,
    RebootPolicy,
    TwoNodePolicy,
)
from moxflow.naming import validate_dataset, validate_host_name, validate_zfs_snapname
from moxflow.zfs import snapshot_argv

__all__ = [
    "BLOCKING_TASK_TYPES",
    "CLUSTER_SERVICES",
    "HA_STALE_AFTER",
    "MIGRATION_PACKAGES",
    "SNAPSHOT_LABEL",
    "ClusterNode",
    "ClusterStatus",
    "DpkgAudit",
    "GuestStep",
    "HaService",
    "HaStatus",
    "InstalledPackages",
    "KernelList",
    "MigratePrecheck",
    "NodeFacts",
    "NodePlan",
    "NodeStatus",
    "PendingPackage",
    "Preflight",
    "RebootDecision",
    "RebootProof",
    "RollJournal",
    "RollPlan",
    "RunningTask",
    "TargetNode",
    "Verdict",
    "autoremove_argv",
    "build_roll_journal",
    "clear_roll_journal_argv",
    "compare_versions",
    "configure_pending_argv",
    "decide_reboot",
    "dist_upgrade_argv",
    "dpkg_audit_argv",
    "dpkg_log_argv",
    "failed_units_argv",
    "failure_next_steps",
    "held_packages_argv",
    "judge_ha_status",
    "judge_root_dataset",
    "kernel_abi",
    "kernel_list_argv",
    "last_upgrade",
    "maintenance_argv",
    "not_active",
    "other_work",
    "parse_apt_updates",
    "parse_apt_versions",
    "parse_cluster_status",
    "parse_dpkg_audit",
    "parse_failed_units",
    "parse_ha_status",
    "parse_held_packages",
    "parse_kernel_list",
    "parse_migrate_precheck",
    "parse_node_status",
    "parse_qdevice",
    "parse_roll_journal",
    "parse_running_tasks",
    "parse_service_states",
    "plan_guests",
    "plan_roll",
    "preflight",
    "prove_reboot",
    "pveversion_argv",
    "read_roll_journal_argv",
    "recovery_returns",
    "return_steps",
    "root_dataset_argv",
    "root_snapshot_argv",
    "services_argv",
    "verify_guests",
    "verify_node",
    "write_roll_journal_argv",
]

SNAPSHOT_LABEL = "pre-update"
"""The label of the root dataset's snapshot taken before a node's upgrade."""

BLOCKING_TASK_TYPES = frozenset(
    {
        "vzdump",
        "qmigrate",
        "vzmigrate",
        "hamigrate",
        "migrateall",
        "qmrestore",
        "vzrestore",
        "qmclone",
        "vzclone",
        "qmsnapshot",
        "vzsnapshot",
        "qmdelsnapshot",
        "vzdelsnapshot",
        "qmrollback",
        "vzrollback",
        "qmmove",
        "move_volume",
        "stopall",
        "startall",
        "aptupdate",
        "imgcopy",
    }
)
"""Task types that refuse a roll while running: backups, migrations, restores, clones,
snapshots, disk moves, bulk start/stop and package list refreshes. Console sessions
(``vncproxy``, ``termproxy``, ...) and guest start/stop run for long or often and do not."""

CLUSTER_SERVICES = ("pve-cluster", "pveproxy", "pvedaemon", "pve-ha-lrm")
"""The services a node back from its reboot must run before the roll goes on: the cluster
file system, the API (proxy and daemon) and the HA local resource manager (maintenance is
only left once it runs again)."""

_KERNEL_PACKAGE_RE = re.compile(r"(?:proxmox|pve)-kernel-(?P<rest>[0-9].*)", re.ASCII)
_KERNEL_ABI_RE = re.compile(r"(?P<abi>[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-pve)(?:-signed)?", re.ASCII)
_BROKEN_STATES = frozenset({"UnPacked", "HalfConfigured", "HalfInstalled"})


# --- versions ------------------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's ``verrevcmp``: non-digit runs by character order (``~`` lowest), digit runs
    as numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        x, y = int(a[start_i:i] or 0), int(b[start_j:j] or 0)
        if x != y:
            return -1 if x < y else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """Compare two Debian package versions (``[epoch:]upstream[-revision]``) or kernel
    releases the way dpkg does: negative, 0 or positive."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, colon, rest = v.strip().partition(":")
        if not colon:
            epoch, rest = "0", v.strip()
        upstream, dash, revision = rest.rpartition("-")
        if not dash:
            upstream, revision = rest, ""
        return (int(epoch) if epoch.isdigit() else 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def _newest(versions: Iterable[str]) -> str | None:
    ordered = sorted(versions, key=cmp_to_key(compare_versions))
    return ordered[-1] if ordered else None


def kernel_abi(package: str) -> str | None:
    """The kernel release a kernel image package installs (``proxmox-kernel-6.8.12-5-pve-
    signed`` → ``6.8.12-5-pve``); ``None`` for a meta package (``proxmox-kernel-6.8``) or
    any other package."""
    m = _KERNEL_PACKAGE_RE.fullmatch(package)
    if not m:
        return None
    abi = _KERNEL_ABI_RE.fullmatch(m["rest"])
    return abi["abi"] if abi else None


# --- parsers of API answers ------------------------------------------------------------------


def _bad(source: str, problem: str, data: Any) -> ParseError:
    return ParseError(f"{source}: {problem}", source=source, text=repr(data)[:2000])


def _list(source: str, data: Any) -> list[Mapping[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(i, Mapping) for i in data):
        raise _bad(source, "expected a list of objects", data)
    return data


def _text(source: str, item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(source, f"{key} should be text, got {value!r}", item)
    return value


def _flag(value: Any) -> bool:
    """A PVE boolean: ``1``/``0``, ``true``/``false`` or missing (false)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


@dataclass(frozen=True, slots=True)
class PendingPackage:
    """One package ``apt-get dist-upgrade`` would install or upgrade (``GET /nodes/{n}/apt/
    update``); ``old_version`` is ``None`` for a new package (a new kernel ABI)."""

    name: str
    old_version: str | None
    new_version: str

    @property
    def kernel(self) -> bool:
        """Whether it is a kernel (``proxmox-kernel-*``/``pve-kernel-*``, image or meta
        package; not ``proxmox-kernel-helper``)."""
        return _KERNEL_PACKAGE_RE.fullmatch(self.name) is not None

    def __str__(self) -> str:
        return f"{self.name} {self.old_version or '(new)'} → {self.new_version}"


def parse_apt_updates(data: Any) -> list[PendingPackage]:
    """The pending packages from ``GET /nodes/{n}/apt/update``, sorted by name."""
    source = "apt/update"
    found: list[PendingPackage] = []
    for item in _list(source, data):
        old = item.get("OldVersion")
        found.append(
            PendingPackage(
                name=_text(source, item, "Package"),
                old_version=str(old) if old else None,
                new_version=_text(source, item, "Version"),
            )
        )
    return sorted(found, key=lambda p: p.name)


@dataclass(frozen=True, slots=True)
class InstalledPackages:
    """``GET /nodes/{n}/apt/versions``: installed versions of Proxmox's packages, the running
    kernel (``uname -r``), the running API server's version, installed kernel releases
    (newest first) and packages dpkg left half done (name → state)."""

    versions: Mapping[str, str]
    running_kernel: str | None
    manager_version: str | None
    kernels: tuple[str, ...] = ()
    broken: Mapping[str, str] = field(default_factory=dict)


def parse_apt_versions(data: Any) -> InstalledPackages:
    """Parse ``GET /nodes/{n}/apt/versions``. An installed package's version is its
    ``OldVersion`` (``Version`` is the candidate), as ``pveversion -v`` prints it."""
    source = "apt/versions"
    versions: dict[str, str] = {}
    broken: dict[str, str] = {}
    kernels: list[str] = []
    running: str | None = None
    manager: str | None = None
    for item in _list(source, data):
        name = _text(source, item, "Package")
        state = str(item.get("CurrentState") or "")
        if item.get("RunningKernel"):
            running = str(item["RunningKernel"])
        if item.get("ManagerVersion"):
            manager = str(item["ManagerVersion"])
        if state in _BROKEN_STATES:
            broken[name] = state
        if state in ("NotInstalled", "ConfigFiles", ""):
            continue
        installed = item.get("OldVersion") or item.get("Version")
        if isinstance(installed, str) and installed:
            versions[name] = installed
        abi = kernel_abi(name)
        if abi is not None and state == "Installed":
            kernels.append(abi)
    ordered = sorted(set(kernels), key=cmp_to_key(compare_versions), reverse=True)
    return InstalledPackages(versions, running, manager, tuple(ordered), broken)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """``GET /nodes/{n}/status``: the running kernel release, seconds since boot and
    ``pve-manager/<ver>/<repoid>``."""

    kernel_release: str
    uptime: int
    pveversion: str

    @property
    def manager_version(self) -> str | None:
        """``8.2.7`` out of ``pve-manager/8.2.7/3e0176e6bb2ade3b``."""
        parts = self.pveversion.split("/")
        return parts[1] if len(parts) >= 2 and parts[1] else None


def parse_node_status(data: Any) -> NodeStatus:
    """Parse ``GET /nodes/{n}/status``; the kernel from ``current-kernel.release``, else
    from the legacy ``kversion`` (``Linux <release> <version>``)."""
    source = "nodes/status"
    if not isinstance(data, Mapping):
        raise _bad(source, "expected an object", data)
    kernel = data.get("current-kernel")
    release = kernel.get("release") if isinstance(kernel, Mapping) else None
    if not release and isinstance(data.get("kversion"), str):
        words = data["kversion"].split()
        release = words[1] if len(words) > 1 else None
    if not isinstance(release, str) or not release:
        raise _bad(source, "no running kernel (current-kernel.release, kversion)", data)
    uptime = data.get("uptime")
    if isinstance(uptime, bool) or not isinstance(uptime, int | float) or uptime < 0:
        raise _bad(source, f"uptime should be seconds, got {uptime!r}", data)
    return NodeStatus(release, int(uptime), str(data.get("pveversion") or ""))


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node row of ``GET /cluster/status``."""

    name: str
    online: bool
    local: bool = False


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """``GET /cluster/status``: the cluster's name (``None`` for a single node, which has no
    cluster row and is always quorate), quorum and nodes sorted by name."""

    name: str | None
    quorate: bool
    nodes: tuple[ClusterNode, ...]

    @property
    def offline(self) -> list[str]:
        """Names of the nodes that are not online."""
        return [n.name for n in self.nodes if not n.online]


def parse_cluster_status(data: Any) -> ClusterStatus:
    """Parse ``GET /cluster/status`` (booleans come as 0/1)."""
    source = "cluster/status"
    name: str | None = None
    quorate = True
    nodes: list[ClusterNode] = []
    for item in _list(source, data):
        kind = item.get("type")
        if kind == "cluster":
            name = _text(source, item, "name")
            quorate = _flag(item.get("quorate"))
        elif kind == "node":
            nodes.append(
                ClusterNode(
                    _text(source, item, "name"),
                    _flag(item.get("online")),
                    _flag(item.get("local")),
                )
            )
    if not nodes:
        raise _bad(source, "no node rows", data)
    return ClusterStatus(name, quorate, tuple(sorted(nodes, key=lambda n: n.name)))


def parse_qdevice(data: Any) -> str | None:
    """The QDevice's state from ``GET /cluster/config/qdevice`` (``Connected``, ...), or
    ``None`` without a QDevice (``{}``: no corosync-qdevice socket on the answering node)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise _bad("cluster/config/qdevice", "expected an object", data)
    if not data:
        return None
    return str(data.get("State") or "configured")


@dataclass(frozen=True, slots=True)
class HaService:
    """One HA resource (``vm:100``, ``ct:101``) and where the CRM has it."""

    sid: str
    node: str
    state: str

    @property
    def vmid(self) -> int | None:
        """The guest id of ``vm:N``/``ct:N``."""
        _, _, tail = self.sid.partition(":")
        return int(tail) if tail.isdigit() else None


HA_STALE_AFTER = 30.0
"""Seconds after which the manager status is old: ``ha-manager status`` then says ``old
timestamp - dead?`` of its master (PVE's API does the same)."""


@dataclass(frozen=True, slots=True)
class HaStatus:
    """``GET /cluster/ha/status/manager_status``: what the CRM master last wrote, and when
    (``timestamp``, epoch seconds). Without a master (no HA resource ever, or ``{}``/null)
    nothing acts on node maintenance: :attr:`active` is false. ``stale`` (set by
    :func:`judge_ha_status`) says why the status is not from a current master: then nothing
    in it is trusted and nothing acts on maintenance either."""

    master: str | None = None
    nodes: Mapping[str, str] = field(default_factory=dict)
    lrm_modes: Mapping[str, str] = field(default_factory=dict)
    services: tuple[HaService, ...] = ()
    timestamp: float | None = None
    stale: str | None = None

    @property
    def active(self) -> bool:
        """Whether a current CRM master exists to act on maintenance requests."""
        return self.master is not None and self.stale is None

    @property
    def managed(self) -> frozenset[int]:
        """VMIDs of the HA-managed guests."""
        return frozenset(s.vmid for s in self.services if s.vmid is not None)

    def services_on(self, node: str) -> list[HaService]:
        """The HA services the CRM still has on ``node``: maintenance is done when none is."""
        return [s for s in self.services if s.node == node]


def parse_ha_status(data: Any) -> HaStatus:
    """Parse ``GET /cluster/ha/status/manager_status``; ``{}``/null give an inactive status."""
    source = "ha/status/manager_status"
    if data is None:
        return HaStatus()
    if not isinstance(data, Mapping):
        raise _bad(source, "expected an object", data)
    manager = data.get("manager_status") or {}
    lrm = data.get("lrm_status") or {}
    if not isinstance(manager, Mapping) or not isinstance(lrm, Mapping):
        raise _bad(source, "manager_status and lrm_status should be objects", data)
    node_status = manager.get("node_status") or {}
    service_status = manager.get("service_status") or {}
    if not all(isinstance(x, Mapping) for x in (node_status, service_status)):
        raise _bad(source, "node_status and service_status should be objects", data)
    services = [
        HaService(str(sid), str(s.get("node") or ""), str(s.get("state") or ""))
        for sid, s in service_status.items()
        if isinstance(s, Mapping)
    ]
    master = manager.get("master_node")
    stamp = manager.get("timestamp")
    return HaStatus(
        timestamp=float(stamp) if isinstance(stamp, int | float) and stamp > 0 else None,
        master=str(master) if master else None,
        nodes={str(k): str(v) for k, v in node_status.items()},
        lrm_modes={
            str(k): str(v.get("mode") or "") for k, v in lrm.items() if isinstance(v, Mapping)
        },
        services=tuple(sorted(services, key=lambda s: s.sid)),
    )


def judge_ha_status(ha: HaStatus, cluster: ClusterStatus, now: float) -> HaStatus:
    """``ha`` with :attr:`HaStatus.stale` set when it is not from a current master: its
    master node is not online in ``cluster``, it has no timestamp, or the timestamp is more
    than :data:`HA_STALE_AFTER` seconds before ``now`` (epoch seconds; the controller's
    clock against the master's, both kept by NTP). A dead master leaves its last status
    behind, maintenance and services as they were then. A status without a master stays as
    it is (inactive)."""
    if ha.master is None:
        return ha
    row = next((n for n in cluster.nodes if n.name == ha.master), None)
    why: str | None = None
    if row is None or not row.online:
        why = f"its master {ha.master} is not online"
    elif ha.timestamp is None:
        why = f"its master {ha.master} wrote no timestamp"
    elif now - ha.timestamp > HA_STALE_AFTER:
        why = (
            f"its master {ha.master} last wrote it {now - ha.timestamp:.0f} s ago "
            "('old timestamp - dead?': is pve-ha-crm running?)"
        )
    if why is None:
        return ha
    return replace(ha, stale=f"the HA manager status is stale: {why}")


@dataclass(frozen=True, slots=True)
class MigratePrecheck:
    """``GET /nodes/{n}/{qemu|lxc}/{id}/migrate``: whether and where a guest can move."""

    running: bool
    allowed_nodes: tuple[str, ...]
    not_allowed: Mapping[str, str] = field(default_factory=dict)
    local_disks: tuple[str, ...] = ()
    local_resources: tuple[str, ...] = ()

    @property
    def blocker(self) -> str | None:
        """Why the guest cannot move at all (moxflow never copies local disks), or None."""
        if self.local_resources:
            return f"local resources: {', '.join(self.local_resources)}"
        if self.local_disks:
            return f"local disks: {', '.join(self.local_disks)}"
        return None


def parse_migrate_precheck(data: Any) -> MigratePrecheck:
    """Parse the migration pre-check of a VM (``allowed_nodes``, ``local_disks``, ...) or a
    container (``allowed-nodes``, ``not-allowed-nodes``)."""
    source = "migrate precheck"
    if not isinstance(data, Mapping):
        raise _bad(source, "expected an object", data)
    allowed = data.get("allowed_nodes", data.get("allowed-nodes")) or []
    refused = data.get("not_allowed_nodes", data.get("not-allowed-nodes")) or {}
    if not isinstance(allowed, list) or not isinstance(refused, Mapping):
        raise _bad(source, "allowed/not allowed nodes are not a list and an object", data)
    not_allowed: dict[str, str] = {}
    for node, why in refused.items():
        parts: list[str] = []
        if isinstance(why, Mapping):
            if why.get("unavailable_storages"):
                parts.append("storages " + ", ".join(map(str, why["unavailable_storages"])))
            if why.get("unavailable-resources"):
                parts.append("resources " + ", ".join(map(str, why["unavailable-resources"])))
            for blocking in why.get("blocking-ha-resources") or []:
                if isinstance(blocking, Mapping):
                    parts.append(f"HA {blocking.get('sid')} ({blocking.get('cause')})")
        not_allowed[str(node)] = "; ".join(parts) or "not allowed"
    disks = [
        str(d.get("volid"))
        for d in data.get("local_disks") or []
        if isinstance(d, Mapping) and d.get("volid")
    ]
    return MigratePrecheck(
        running=_flag(data.get("running")),
        allowed_nodes=tuple(sorted(str(n) for n in allowed)),
        not_allowed=not_allowed,
        local_disks=tuple(disks),
        local_resources=tuple(str(r) for r in data.get("local_resources") or []),
    )


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task still running on a node (no ``endtime`` yet)."""

    node: str
    type: str
    id: str
    upid: str

    def __str__(self) -> str:
        return f"{self.type}{' ' + self.id if self.id else ''} on {self.node}"


def parse_running_tasks(data: Any) -> list[RunningTask]:
    """The running tasks in ``GET /cluster/tasks`` or ``GET /nodes/{n}/tasks?source=active``
    (rows without ``endtime``, or with ``status`` ``running``)."""
    source = "tasks"
    found: list[RunningTask] = []
    for item in _list(source, data):
        status = item.get("status")
        if item.get("endtime") and status not in (None, "running"):
            continue
        if status not in (None, "", "running"):
            continue
        found.append(
            RunningTask(
                node=str(item.get("node") or ""),
                type=str(item.get("type") or ""),
                id=str(item.get("id") or ""),
                upid=str(item.get("upid") or ""),
            )
        )
    return found


# --- parsers of command output -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelList:
    """``proxmox-boot-tool kernel list``: the selected kernels and the pins."""

    manual: tuple[str, ...] = ()
    automatic: tuple[str, ...] = ()
    pinned: str | None = None
    next_boot_pin: str | None = None

    @property
    def next_boot(self) -> str | None:
        """The kernel the next boot starts: a next-boot pin, else the pin, else a manually
        selected kernel (the newest), else the newest automatically selected one."""
        return self.next_boot_pin or self.pinned or _newest(self.manual) or _newest(self.automatic)


def parse_kernel_list(stdout: str) -> KernelList:
    """Parse ``proxmox-boot-tool kernel list``; entries may be indented (``^\\s*[0-9]``),
    ``None.`` marks an empty list."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in stdout.splitlines():
        text = line.strip()
        if text.endswith(":") and not text[:1].isdigit():
            current = text[:-1].lower()
            sections.setdefault(current, [])
        elif current is not None and re.match(r"[0-9]", text):
            sections[current].append(text.split()[0])
    if "automatically selected kernels" not in sections:
        raise ParseError(
            "proxmox-boot-tool kernel list: no 'Automatically selected kernels:' section",
            source="proxmox-boot-tool kernel list",
            text=stdout,
        )
    pinned = sections.get("pinned kernel") or []
    next_boot = sections.get("kernel pinned on next-boot") or []
    return KernelList(
        manual=tuple(sections.get("manually selected kernels", [])),
        automatic=tuple(sections["automatically selected kernels"]),
        pinned=pinned[0] if pinned else None,
        next_boot_pin=next_boot[0] if next_boot else None,
    )


def parse_failed_units(stdout: str) -> frozenset[str]:
    """Unit names from ``systemctl list-units --state=failed --plain --no-legend``."""
    units: set[str] = set()
    for line in stdout.splitlines():
        words = line.replace("●", " ").split()
        if words:
            units.add(words[0])
    return frozenset(units)


@dataclass(frozen=True, slots=True)
class DpkgAudit:
    """``dpkg --audit``: silent when dpkg is sound; else the packages it names, and its text."""

    packages: tuple[str, ...] = ()
    text: str = ""

    @property
    def ok(self) -> bool:
        return not self.text.strip()

    def __str__(self) -> str:
        if self.ok:
            return "dpkg is sound"
        return "dpkg --audit: " + (", ".join(self.packages) or self.text.strip().splitlines()[0])


def parse_dpkg_audit(stdout: str) -> DpkgAudit:
    """Parse ``dpkg --audit``: package lines are indented (`` pve-manager   Description``)."""
    packages = [
        line.split()[0] for line in stdout.splitlines() if line.startswith(" ") and line.strip()
    ]
    return DpkgAudit(tuple(dict.fromkeys(packages)), stdout)


def parse_service_states(units: Sequence[str], stdout: str) -> dict[str, str]:
    """Each unit's state from ``systemctl is-active UNIT...`` (one word a line, in the order
    asked: ``active``, ``activating``, ``inactive``, ``failed``, ...); ``unknown`` for a
    unit it did not answer for."""
    words = [line.strip() for line in stdout.splitlines() if line.strip()]
    return {u: (words[i] if i < len(words) else "unknown") for i, u in enumerate(units)}


def not_active(states: Mapping[str, str]) -> list[str]:
    """``unit state`` of each unit in ``states`` that is not ``active``."""
    return [f"{u} {state}" for u, state in states.items() if state != "active"]


def parse_held_packages(stdout: str) -> tuple[str, ...]:
    """Package names from ``apt-mark showhold``, one a line, sorted."""
    return tuple(sorted({line.strip() for line in stdout.splitlines() if line.strip()}))


_DPKG_LOG_RE = re.compile(
    r"(?P<when>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:upgrade|install) \S+ \S+ \S+", re.ASCII
)


def last_upgrade(log: str, tz: tzinfo) -> datetime | None:
    """When dpkg last upgraded or installed a package, from ``/var/log/dpkg.log`` lines
    (``YYYY-MM-DD HH:MM:SS upgrade pkg:arch old new``, the host's local time ``tz``);
    ``None`` when there is no such line."""
    latest: datetime | None = None
    for line in log.splitlines():
        m = _DPKG_LOG_RE.match(line.strip())
        if m:
            when = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
            latest = when if latest is None or when > latest else latest
    return latest


# --- commands ------------------------------------------------------------------------------

_APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive"]
_KEEP_CONFIGS = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]


def dist_upgrade_argv() -> list[str]:
    """``env DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold dist-upgrade`` (never ``apt upgrade``: it installs no
    new package, so no new kernel); changed config files keep the local version."""
    return [*_APT_ENV, "apt-get", "-y", *_KEEP_CONFIGS, "dist-upgrade"]


def autoremove_argv() -> list[str]:
    """``env DEBIAN_FRONTEND=noninteractive apt-get -y autoremove``."""
    return [*_APT_ENV, "apt-get", "-y", "autoremove"]


def configure_pending_argv() -> list[str]:
    """``env DEBIAN_FRONTEND=noninteractive dpkg --force-confdef --force-confold
    --configure -a``: finish what an interrupted ``apt-get`` left unpacked or half
    configured, non-interactively and keeping changed config files, as the upgrade does."""
    return [*_APT_ENV, "dpkg", "--force-confdef", "--force-confold", "--configure", "-a"]


def maintenance_argv(node: str, enable: bool) -> list[str]:
    """``ha-manager crm-command node-maintenance enable|disable NODE`` (only queues it)."""
    action = "enable" if enable else "disable"
    return ["ha-manager", "crm-command", "node-maintenance", action, validate_host_name(node)]


def root_snapshot_argv(dataset: str, name: str) -> list[str]:
    """``zfs snapshot DATASET@NAME`` of a node's root dataset."""
    return snapshot_argv(dataset, name)


def root_dataset_argv(dataset: str) -> list[str]:
    """``zfs list -H -p -o name DATASET``: the dataset's name when it exists; judge with
    :func:`judge_root_dataset` (run without check)."""
    return ["zfs", "list", "-H", "-p", "-o", "name", validate_dataset(dataset)]


def judge_root_dataset(dataset: str, exit_code: int, stdout: str, stderr: str) -> str | None:
    """Why ``dataset`` cannot be snapshotted on a node, from :func:`root_dataset_argv`'s
    result (``cannot open 'x': dataset does not exist``; ``zfs: command not found`` on a
    node without ZFS); None when it exists."""
    if exit_code == 0 and stdout.strip().splitlines()[:1] == [dataset]:
        return None
    said = (stderr or stdout).strip().splitlines()
    why = said[-1] if said else f"zfs list exited {exit_code}"
    return f"root dataset {dataset} not found ({why})"


def services_argv(units: Sequence[str] = CLUSTER_SERVICES) -> list[str]:
    """``systemctl is-active UNIT...`` (exit 3 unless all are active: run without check);
    parse with :func:`parse_service_states`."""
    return ["systemctl", "is-active", *units]


def kernel_list_argv() -> list[str]:
    """``proxmox-boot-tool kernel list``; parse with :func:`parse_kernel_list`."""
    return ["proxmox-boot-tool", "kernel", "list"]


def pveversion_argv() -> list[str]:
    """``pveversion``: answers only when the node's Proxmox packages are usable."""
    return ["pveversion"]


def failed_units_argv() -> list[str]:
    """The failed units, one a line; parse with :func:`parse_failed_units`."""
    return ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"]


def dpkg_audit_argv() -> list[str]:
    """``dpkg --audit``; parse with :func:`parse_dpkg_audit`."""
    return ["dpkg", "--audit"]


def held_packages_argv() -> list[str]:
    """``apt-mark showhold``; parse with :func:`parse_held_packages`."""
    return ["apt-mark", "showhold"]


def dpkg_log_argv(path: str) -> list[str]:
    """The upgrade and install lines of dpkg's log at ``path`` (exit 1 when none, 2 when it
    cannot be read: run without check); read with :func:`last_upgrade`."""
    return ["grep", "-h", "-E", "^[0-9-]+ [0-9:]+ (upgrade|install) ", "--", path]


# --- pre-flight ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preflight:
    """Whether the roll may start; ``reasons`` refuse it (something is wrong), ``busy`` is
    other work going on now (:func:`other_work`: each node's turn waits for its own, then
    the node is busy), ``warnings`` are only reported."""

    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons

    def __str__(self) -> str:
        head = "pre-flight passed" if self.ok else "refused: " + "; ".join(self.reasons)
        if self.busy:
            head += "; other work now (each node waits for its own): " + "; ".join(self.busy)
        return head + ("; warnings: " + "; ".join(self.warnings) if self.warnings else "")


LOCK_TASKS: Mapping[str, frozenset[str]] = {
    "backup": frozenset({"vzdump"}),
    "migrate": frozenset({"qmigrate", "vzmigrate", "hamigrate", "migrateall"}),
    "snapshot": frozenset({"qmsnapshot", "vzsnapshot"}),
    "snapshot-delete": frozenset({"qmdelsnapshot", "vzdelsnapshot"}),
    "rollback": frozenset({"qmrollback", "vzrollback"}),
    "clone": frozenset({"qmclone", "vzclone"}),
    "create": frozenset({"qmcreate", "vzcreate", "qmrestore", "vzrestore"}),
    "disk": frozenset({"qmmove", "move_volume", "qmresize", "vzresize"}),
    "suspending": frozenset({"qmsuspend"}),
}
"""The tasks that hold each config lock while they run (a lock with none of them running
is left over; ``suspended``, a hibernated VM, is no task's)."""

MIGRATION_TASK_TYPES = frozenset({"qmigrate", "vzmigrate", "hamigrate", "migrateall"})
CONSOLE_TASK_TYPES = frozenset({"vncproxy", "vncshell", "termproxy", "spiceproxy", "spiceshell"})


def lock_holder(guest: Guest, tasks: Iterable[RunningTask]) -> RunningTask | None:
    """The running task that holds ``guest``'s config lock: one on the guest of a type that
    sets that lock (:data:`LOCK_TASKS`; a lock not listed there: any task on the guest but
    a console). None: the lock is left over (or a hibernated VM's ``suspended``)."""
    if not guest.lock or guest.lock == "suspended":
        return None
    types = LOCK_TASKS.get(guest.lock)
    for t in tasks:
        if t.id != str(guest.vmid) or t.type in CONSOLE_TASK_TYPES:
            continue
        if types is None or t.type in types:
            return t
    return None


def other_work(
    tasks: Iterable[RunningTask], guests: Iterable[Guest], nodes: Collection[str]
) -> list[str]:
    """What other work holds back a roll of ``nodes`` (its guests: ``guests``, wherever they
    are) for now: tasks of :data:`BLOCKING_TASK_TYPES` running on those nodes or on one of
    the guests (a backup, a restore, ...), a migration anywhere (it may be coming to one of
    the nodes), and each guest locked by a task still running on it (:func:`lock_holder`).
    ``tasks``: the running tasks of every node. A lock no task holds is no passing work
    (PVE leaves one after a failed task): :func:`preflight` refuses it."""
    tasks = list(tasks)
    guests = sorted(guests, key=lambda g: g.vmid)
    vmids = {str(g.vmid) for g in guests}
    found: list[str] = []
    blocking = [
        t
        for t in tasks
        if t.type in BLOCKING_TASK_TYPES
        and (t.node in nodes or t.id in vmids or t.type in MIGRATION_TASK_TYPES)
    ]
    if blocking:
        found.append("tasks running: " + ", ".join(str(t) for t in blocking))
    for guest in guests:
        holder = lock_holder(guest, tasks) if not guest.template else None
        if holder is not None and holder not in blocking:
            found.append(
                f"guest {guest.label} on {guest.node} is locked ({guest.lock}) by {holder}"
            )
    return found


def preflight(
    cluster: ClusterStatus,
    ha: HaStatus,
    tasks: Iterable[RunningTask],
    *,
    qdevice: str | None,
    two_node: TwoNodePolicy,
    dpkg: Mapping[str, DpkgAudit] | None = None,
    held: Mapping[str, Sequence[str]] | None = None,
    broken: Mapping[str, Mapping[str, str]] | None = None,
    roots: Mapping[str, str | None] | None = None,
    recovering: Collection[str] = (),
    locked: Iterable[Guest] = (),
    nodes: Collection[str] = (),
) -> Preflight:
    """Judge the whole cluster before any change.

    Refuses: a cluster that is not quorate; a node offline; an HA node not ``online``; HA resources
    with a stale manager status (``ha`` judged by :func:`judge_ha_status`: no current
    master would act on maintenance; a stale status without HA resources is an idle CRM); a two-node
    cluster without a connected QDevice (unless ``two_node`` is ``allow``, and never with HA
    resources, whose watchdog fences a node that loses quorum); a node whose dpkg is broken
    (``dpkg``: ``dpkg --audit`` per node; ``broken``: half installed packages from
    :func:`parse_apt_versions`); a node whose root dataset cannot be snapshotted (``roots``:
    node → :func:`judge_root_dataset`; left out with ``--no-snapshot``); a guest of the
    roll (``locked``: on a node it updates, or away from a node it recovers) with a config
    lock that no running task holds, which could neither leave nor come back (found at
    guests-leave instead, it left the node in maintenance, its other guests away). Other
    work going on (:func:`other_work` of ``tasks`` and ``locked``) is ``busy``. Held packages
    (``held`` per node) are warnings. A node ``recovering`` an interrupted update may be in
    HA maintenance (that run left it there; this one ends it).
    """
    reasons: list[str] = []
    warnings: list[str] = []
    if not cluster.quorate:
        reasons.append(f"cluster {cluster.name} is not quorate")
    if cluster.offline:
        reasons.append(f"node offline: {', '.join(cluster.offline)}")
    if ha.stale and ha.services:
        reasons.append(
            f"{ha.stale}; the HA-managed guests leave through HA node maintenance, which "
            "needs a current CRM master"
        )
    for node, state in sorted(ha.nodes.items()) if not ha.stale else ():
        if state == "maintenance" and node in recovering:
            continue
        if state != "online" and node not in cluster.offline:
            reasons.append(f"HA reports node {node} {state}")
    if len(cluster.nodes) == 2 and qdevice != "Connected":
        qd = "no QDevice" if qdevice is None else f"its QDevice is {qdevice}"
        if two_node == "refuse":
            reasons.append(
                f"two-node cluster with {qd}: it loses quorum while a node reboots "
                '(set [proxmox_update] two_node_without_qdevice = "allow" to accept that, '
                "or add a QDevice)"
            )
        elif ha.services:
            reasons.append(
                f"two-node cluster with {qd} and HA resources: a node that loses quorum "
                "during maintenance is fenced; add a QDevice"
            )
        else:
            warnings.append(f"two-node cluster with {qd}: quorum is lost while a node reboots")
    for node, audit in sorted((dpkg or {}).items()):
        if not audit.ok:
            reasons.append(f"{node}: dpkg is broken ({audit}); run dpkg --configure -a")
    for node, states in sorted((broken or {}).items()):
        if states:
            half = ", ".join(f"{p} {s}" for p, s in sorted(states.items()))
            reasons.append(f"{node}: packages half installed: {half}")
    for node, problem in sorted((roots or {}).items()):
        if problem:
            reasons.append(
                f"{node}: {problem}; nothing changes without the pre-update snapshot: "
                "correct [proxmox_update] root_dataset, or, for a node without a ZFS root, "
                "run with --no-snapshot (then there is no snapshot to go back to)"
            )
    tasks, locked = list(tasks), list(locked)
    for guest in sorted(locked, key=lambda g: g.vmid):
        if not guest.lock or guest.template or lock_holder(guest, tasks) is not None:
            continue
        if guest.lock == "suspended":
            reasons.append(
                f"guest {guest.label} on {guest.node} is hibernated (lock suspended): it "
                f"could neither leave its node nor come back; resume it (`qm start "
                f"{guest.vmid}` on {guest.node}) or shut it down first"
            )
            continue
        unlock = "qm" if guest.type == "qemu" else "pct"
        reasons.append(
            f"guest {guest.label} on {guest.node} is locked ({guest.lock}) and no task "
            "holds it: it could neither leave its node nor come back; once you know nothing "
            f"is at work on it, clear it (`{unlock} unlock {guest.vmid}` on {guest.node})"
        )
    for node, names in sorted((held or {}).items()):
        if names:
            warnings.append(f"{node}: held packages stay at their version: {', '.join(names)}")
    return Preflight(tuple(reasons), tuple(warnings), tuple(other_work(tasks, locked, nodes)))


# --- reboot --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebootDecision:
    """Whether the node reboots after its upgrade, the kernel it should run afterwards, and
    why; ``pending``: a reboot would be needed but the policy is ``never``."""

    reboot: bool
    reason: str
    expected_kernel: str
    pending: bool = False


def decide_reboot(
    policy: RebootPolicy,
    running_kernel: str,
    next_boot: str | None,
    pending: Iterable[PendingPackage] = (),
    pinned: bool = False,
) -> RebootDecision:
    """Decide on a reboot. ``next_boot`` is the kernel the node boots next as installed now
    (:attr:`KernelList.next_boot`); a kernel image in ``pending`` newer than it boots instead
    unless a pin holds the boot (``pinned``). ``auto`` reboots iff that kernel differs from
    ``running_kernel``; ``always`` and ``never`` say so."""
    new_abis = [abi for p in pending if (abi := kernel_abi(p.name)) is not None]
    candidates = [k for k in (next_boot, *([] if pinned else new_abis)) if k]
    expected = _newest(candidates) if not pinned else (next_boot or None)
    expected = expected or running_kernel
    if expected != running_kernel:
        newer = [a for a in new_abis if a == expected]
        why = (
            f"new kernel {expected} is being installed (running {running_kernel})"
            if newer
            else f"kernel {expected} is installed and boots next (running {running_kernel})"
        )
        needed = True
    else:
        why = f"the running kernel {running_kernel} is the one that boots next"
        needed = False
    if policy == "always":
        return RebootDecision(True, f"reboot = always; {why}", expected)
    if policy == "never":
        if needed:
            return RebootDecision(False, f"reboot pending (reboot = never): {why}", expected, True)
        return RebootDecision(False, f"no reboot needed: {why}", expected)
    return RebootDecision(needed, why if needed else f"no reboot needed: {why}", expected)


@dataclass(frozen=True, slots=True)
class RebootProof:
    """Whether a node has rebooted since the request, and how that is known."""

    rebooted: bool
    reason: str


def prove_reboot(requested: datetime, observed: datetime, uptime: float | None) -> RebootProof:
    """A reboot is proven by the node's uptime (``GET /nodes/{n}/status``, seen at
    ``observed``) shorter than the time since the request; a node that merely answers proves
    nothing (it keeps answering for tens of seconds after ``reboot`` returns). The API gives
    no boot id, and the uptime needs neither SSH nor synchronised clocks."""
    if uptime is None:
        return RebootProof(False, "no uptime seen yet (node not answering)")
    since = (observed - requested).total_seconds()
    if uptime < since:
        return RebootProof(True, f"uptime {uptime:.0f} s < {since:.0f} s since the request")
    return RebootProof(
        False, f"uptime {uptime:.0f} s ≥ {since:.0f} s since the request: not rebooted yet"
    )


# --- guests --------------------------------------------------------------------------------

GuestAction = Literal["ha", "migrate", "shutdown", "leave", "start"]
MigrationMode = Literal["online", "restart", "offline"]


@dataclass(frozen=True, slots=True)
class GuestStep:
    """What happens to one guest: ``ha`` (HA maintenance moves it), ``migrate`` from
    ``source`` to ``target`` in ``mode``, ``shutdown`` (started again afterwards), ``leave``,
    or, on the way back, ``start``. ``reason`` says why, e.g. why it could not migrate."""

    vmid: int
    name: str
    type: GuestType
    action: GuestAction
    source: str
    target: str | None = None
    mode: MigrationMode | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.vmid} ({self.name})" if self.name else str(self.vmid)

    def __str__(self) -> str:
        kind = "VM" if self.type == "qemu" else "CT"
        if self.action == "migrate":
            text = f"{kind} {self.label}: migrate {self.mode} {self.source} → {self.target}"
        elif self.action == "ha":
            text = f"{kind} {self.label}: moved by HA node maintenance"
        elif self.action == "shutdown":
            text = f"{kind} {self.label}: shut down, started again afterwards"
        elif self.action == "start":
            text = f"{kind} {self.label}: start on {self.source}"
        else:
            text = f"{kind} {self.label}: left as it is"
        return f"{text} ({self.reason})" if self.reason else text


MIGRATION_PACKAGES: Mapping[GuestType, tuple[str, ...]] = {
    "qemu": ("pve-manager", "qemu-server", "pve-qemu-kvm"),
    "lxc": ("pve-manager", "pve-container"),
}
"""The packages a migration target must run in the same or a newer version than the source
(Proxmox supports migrating to the same or a newer version only): the manager, and the VM
tools and QEMU for a VM, the container tools for a container."""


@dataclass(frozen=True, slots=True)
class TargetNode:
    """A node that might receive guests: its package versions (installed, or as this roll
    upgraded them), whether this roll has upgraded it already, and how many guests run on
    it."""

    name: str
    online: bool = True
    versions: Mapping[str, str] = field(default_factory=dict)
    upgraded: bool = False
    running: int = 0
    maintenance: bool = False

    def older(self, kind: GuestType, versions: Mapping[str, str]) -> list[str]:
        """The packages of :data:`MIGRATION_PACKAGES` this node runs older than ``versions``
        (the source's), as ``name mine < theirs``; a package either side does not know is
        not compared."""
        return [
            f"{p} {self.versions[p]} < {versions[p]}"
            for p in MIGRATION_PACKAGES[kind]
            if p in self.versions
            and p in versions
            and compare_versions(self.versions[p], versions[p]) < 0
        ]


def _fallback_step(guest: Guest, node: str, fallback: FallbackPolicy, why: str) -> GuestStep:
    if fallback == "shutdown" and guest.running:
        return GuestStep(guest.vmid, guest.name, guest.type, "shutdown", node, reason=why)
    why = f"{why}; stopped already" if not guest.running else f"{why}; fallback leave"
    return GuestStep(guest.vmid, guest.name, guest.type, "leave", node, reason=why)


def plan_guests(
    node: str,
    guests: Iterable[Guest],
    settings: ProxmoxUpdateSettings,
    *,
    others: Iterable[TargetNode] = (),
    versions: Mapping[str, str] | None = None,
    ha: HaStatus | None = None,
    prechecks: Mapping[int, MigratePrecheck] | None = None,
    policy: GuestPolicy | None = None,
) -> list[GuestStep]:
    """What happens to each guest of ``node`` (sorted by VMID) while it is updated.

    HA-managed guests go with HA node maintenance when a CRM master is there to act. The
    others follow ``policy`` (default ``settings.guests``): ``migrate`` online (running VMs),
    in restart mode (running containers) or offline (stopped guests) to the node of
    ``others`` that is online, not in maintenance, runs the guest's
    :data:`MIGRATION_PACKAGES` in the same or a newer version than ``versions`` (the
    node's own) and is allowed by the guest's pre-check; upgraded nodes first, then the one
    with fewest running guests (counting those planned to arrive), then by name. A guest
    that cannot move (local disks or resources, no node) follows its fallback. Templates
    stay.
    """
    mine = versions or {}
    chosen = policy or settings.guests
    ha_guests = ha.managed if ha is not None and ha.active else frozenset()
    load = {t.name: t.running for t in others}
    targets = [t for t in others if t.name != node and t.online and not t.maintenance]
    steps: list[GuestStep] = []
    for guest in sorted(guests, key=lambda g: g.vmid):
        if guest.node != node:
            continue
        if guest.template:
            steps.append(
                GuestStep(guest.vmid, guest.name, guest.type, "leave", node, reason="template")
            )
            continue
        if guest.vmid in ha_guests:
            steps.append(GuestStep(guest.vmid, guest.name, guest.type, "ha", node))
            continue
        if chosen == "leave":
            steps.append(GuestStep(guest.vmid, guest.name, guest.type, "leave", node))
            continue
        if chosen == "shutdown":
            steps.append(_fallback_step(guest, node, "shutdown", "guests = shutdown"))
            continue
        fallback = settings.fallback_for(guest.vmid, guest.name)
        check = (prechecks or {}).get(guest.vmid)
        if check is not None and check.blocker:
            steps.append(_fallback_step(guest, node, fallback, f"cannot migrate: {check.blocker}"))
            continue
        possible = [
            t
            for t in targets
            if check is None
            or (
                t.name not in check.not_allowed
                and (not check.allowed_nodes or t.name in check.allowed_nodes)
            )
        ]
        too_old = {t.name: old for t in possible if (old := t.older(guest.type, mine))}
        allowed = [t for t in possible if t.name not in too_old]
        if not allowed:
            why = "cannot migrate: no node can take it"
            if too_old:
                olds = "; ".join(f"{n}: {', '.join(o)}" for n, o in sorted(too_old.items()))
                why += f" (older packages: {olds})"
            steps.append(_fallback_step(guest, node, fallback, why))
            continue
        best = min(allowed, key=lambda t: (not t.upgraded, load[t.name], t.name))
        mode: MigrationMode = (
            "offline" if not guest.running else "online" if guest.type == "qemu" else "restart"
        )
        if guest.running:
            load[best.name] += 1
        steps.append(
            GuestStep(guest.vmid, guest.name, guest.type, "migrate", node, best.name, mode)
        )
    return steps


def return_steps(steps: Iterable[GuestStep]) -> list[GuestStep]:
    """The way back once the node is up again: each migrated guest from its target to its
    node, in the same mode; each shut-down guest started. HA guests come back when
    maintenance is disabled; guests left alone need nothing."""
    back: list[GuestStep] = []
    for s in steps:
        if s.action == "migrate" and s.target is not None:
            back.append(
                GuestStep(s.vmid, s.name, s.type, "migrate", s.target, s.source, s.mode, "return")
            )
        elif s.action == "shutdown":
            back.append(GuestStep(s.vmid, s.name, s.type, "start", s.source, reason="return"))
    return back


# --- the journal of a node's roll ----------------------------------------------------------

JournalPhase = Literal["leaving", "upgrading"]
JOURNAL_PHASES: tuple[JournalPhase, ...] = ("leaving", "upgrading")


@dataclass(frozen=True, slots=True)
class RollJournal:
    """What a node's update wrote on the node before its first change (HA maintenance, a
    guest moved): the flow run doing it, the root snapshot taken before, each guest's
    original node and running state, and how far it got (``leaving``: guests on their way
    out; ``upgrading``: packages may be changing). Removed once the guests are back: a
    journal found later is an update that did not finish. ``recovered``: the runs before
    it that were interrupted on this node (their original placement is the one kept)."""

    node: str
    flow_run_id: str
    snapshot: str | None
    guests: tuple[Guest, ...]
    phase: JournalPhase = "leaving"
    started: str = ""
    recovered: tuple[str, ...] = ()

    def advance(self, phase: JournalPhase) -> RollJournal:
        """This journal at ``phase``."""
        return replace(self, phase=phase)

    def to_json(self) -> str:
        """One line of JSON, written with :func:`write_roll_journal_argv`."""
        return json.dumps(
            {
                "node": self.node,
                "flow_run_id": self.flow_run_id,
                "snapshot": self.snapshot,
                "phase": self.phase,
                "started": self.started,
                "recovered": list(self.recovered),
                "guests": [
                    {
                        "vmid": g.vmid,
                        "name": g.name,
                        "type": g.type,
                        "node": g.node,
                        "status": g.status,
                    }
                    for g in self.guests
                ],
            },
            sort_keys=True,
        )


def parse_roll_journal(text: str) -> RollJournal | None:
    """A node's journal as :func:`read_roll_journal_argv` printed it: None when there is
    none (empty output), ``ParseError`` when it is not one (truncated, edited, foreign)."""
    source = "proxmox-update journal"
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParseError(f"{source} is not JSON: {exc}", source=source, text=text) from None
    if not isinstance(data, dict):
        raise ParseError(f"{source} is not a JSON object", source=source, text=text)
    try:
        phase = data["phase"]
        if phase not in JOURNAL_PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        snapshot = data.get("snapshot")
        if snapshot is not None and not isinstance(snapshot, str):
            raise ValueError(f"snapshot {snapshot!r}")
        guests = []
        for g in data["guests"]:
            kind = g["type"]
            if kind not in ("qemu", "lxc") or not isinstance(g["vmid"], int):
                raise ValueError(f"guest {g!r}")
            guests.append(
                Guest(
                    g["vmid"],
                    str(g.get("name") or ""),
                    validate_host_name(g["node"]),
                    kind,
                    str(g["status"]),
                )
            )
        runs = data.get("recovered") or []
        if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            raise ValueError(f"recovered {runs!r}")
        node, run = data["node"], data["flow_run_id"]
        if not isinstance(run, str) or not run:
            raise ValueError(f"flow_run_id {run!r}")
        return RollJournal(
            validate_host_name(node),
            run,
            snapshot,
            tuple(guests),
            phase,
            str(data.get("started") or ""),
            tuple(runs),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"{source}: {exc}", source=source, text=text) from None


def build_roll_journal(
    node: str,
    flow_run_id: str,
    snapshot: str | None,
    guests: Iterable[Guest],
    started: datetime,
    earlier: RollJournal | None = None,
) -> RollJournal:
    """The journal a node's update writes before its first change: ``guests`` (the node's,
    templates left out) where they are now. Recovering an interrupted update (``earlier``):
    its original placement and snapshot are kept, and its run is added to ``recovered``."""
    if earlier is not None:
        return RollJournal(
            node,
            flow_run_id,
            earlier.snapshot or snapshot,
            earlier.guests,
            "leaving",
            started.isoformat(),
            (*earlier.recovered, earlier.flow_run_id),
        )
    mine = tuple(
        sorted((g for g in guests if g.node == node and not g.template), key=lambda g: g.vmid)
    )
    return RollJournal(node, flow_run_id, snapshot, mine, "leaving", started.isoformat())


def write_roll_journal_argv(path: str) -> list[str]:
    """Replace the journal at ``path`` atomically with what arrives on stdin (its folder
    made, a copy written, then renamed over it)."""
    path = validate_remote_path(path)
    folder = path.rsplit("/", 1)[0] or "/"
    tmp = f"{path}.tmp"
    script = (
        f"mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(tmp)} && "
        f"mv {shlex.quote(tmp)} {shlex.quote(path)}"
    )
    return ["/bin/sh", "-c", script]


def read_roll_journal_argv(path: str) -> list[str]:
    """Print the journal at ``path``, nothing when there is none (exit 0 either way)."""
    quoted = shlex.quote(validate_remote_path(path))
    return ["/bin/sh", "-c", f"if [ -e {quoted} ]; then cat {quoted}; fi"]


def clear_roll_journal_argv(path: str) -> list[str]:
    """``rm -f PATH``: the node's update finished, its guests back."""
    return ["rm", "-f", validate_remote_path(path)]


def recovery_returns(
    journal: RollJournal,
    now: Iterable[Guest],
    *,
    handled: Collection[int] = (),
    ha_managed: Collection[int] = (),
) -> list[GuestStep]:
    """The way back to the journal's original placement from where the guests are ``now``:
    each guest away migrated back (online if it runs, a container in restart mode, else
    offline), each that ran and is stopped started; an HA-managed guest away comes back when
    HA maintenance ends (``ha``). ``handled``: the guests this run's own steps take away
    and bring back (a stopped one that ran is then started); a guest gone from the cluster
    is left to verification."""
    current = {g.vmid: g for g in now}
    steps: list[GuestStep] = []
    why = f"recover run {journal.flow_run_id}"
    for g in sorted(journal.guests, key=lambda g: g.vmid):
        seen = current.get(g.vmid)
        if seen is None:
            continue
        if g.vmid in handled:  # this run's steps take it away and back as it is now
            if g.running and not seen.running and g.vmid not in ha_managed:
                steps.append(GuestStep(g.vmid, g.name, g.type, "start", g.node, reason=why))
            continue
        if seen.node != g.node:
            if g.vmid in ha_managed:
                steps.append(GuestStep(g.vmid, g.name, g.type, "ha", g.node, reason=why))
                continue
            mode: MigrationMode = (
                "offline" if not seen.running else "online" if g.type == "qemu" else "restart"
            )
            steps.append(GuestStep(g.vmid, g.name, g.type, "migrate", seen.node, g.node, mode, why))
            if g.running and not seen.running:
                steps.append(GuestStep(g.vmid, g.name, g.type, "start", g.node, reason=why))
        elif g.running and not seen.running:
            steps.append(GuestStep(g.vmid, g.name, g.type, "start", g.node, reason=why))
    return steps


# --- the plan of a roll --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the roll planner needs to know of one node, read before any change."""

    name: str
    running_kernel: str
    pending: tuple[PendingPackage, ...] = ()
    kernels: KernelList | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    guests: tuple[Guest, ...] = ()
    prechecks: Mapping[int, MigratePrecheck] = field(default_factory=dict)
    held: tuple[str, ...] = ()
    journal: RollJournal | None = None
    placement: tuple[Guest, ...] = ()
    """With ``journal`` (an interrupted update of a run that is dead): where the journal's
    guests are now."""

    @property
    def running_guests(self) -> int:
        return sum(1 for g in self.guests if g.node == self.name and g.running)

    @property
    def new_versions(self) -> dict[str, str]:
        """The versions it is expected to run once upgraded: the installed ones with the
        pending upgrades applied (a held package stays behind in fact: after a node's
        upgrade its real versions are read again, see ``actual`` of :func:`plan_roll`)."""
        return {**self.versions, **{p.name: p.new_version for p in self.pending}}


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node's update: packages, reboot, guests out and back, and the snapshot; a node
    with ``skip`` set is left alone for that reason."""

    node: str
    packages: tuple[PendingPackage, ...] = ()
    reboot: RebootDecision | None = None
    guests: tuple[GuestStep, ...] = ()
    returns: tuple[GuestStep, ...] = ()
    maintenance: bool = False
    snapshot: str | None = None
    skip: str | None = None
    no_snapshot: bool = False
    recover: RollJournal | None = None

    @property
    def recovering(self) -> str:
        """What this node's update recovers, for the plan and the report ("" when nothing)."""
        if self.recover is None:
            return ""
        return f"recover the interrupted update of run {self.recover.flow_run_id}"

    def describe(self) -> list[str]:
        """The node's part of the ``--dry-run`` text."""
        if self.skip:
            return [f"{self.node}: skipped ({self.skip})"]
        count = len(self.packages)
        lines = [f"{self.node}: {count} package{'s' if count != 1 else ''} to upgrade"]
        if self.recover is not None:
            lines.append(
                f"  {self.recovering} (phase {self.recover.phase}): finish dpkg and the "
                "upgrade, reboot if a newer kernel boots next, verify, leave HA maintenance, "
                "guests back where they were"
            )
        lines.extend(f"    {p}" for p in self.packages)
        if self.no_snapshot:
            lines.append("  snapshot: NONE (--no-snapshot: nothing to roll back to)")
        elif self.snapshot:
            lines.append(f"  snapshot: {self.snapshot}")
        if self.maintenance:
            lines.append("  HA node maintenance: enabled during the update")
        if self.reboot is not None:
            lines.append(
                f"  reboot: {'yes' if self.reboot.reboot else 'no'} ({self.reboot.reason})"
            )
        lines.extend(f"  guest {s}" for s in self.guests)
        lines.extend(f"  back: {s}" for s in self.returns)
        return lines


@dataclass(frozen=True, slots=True)
class RollPlan:
    """The whole roll: the pre-flight verdict and the nodes in the order they are updated."""

    preflight: Preflight
    nodes: tuple[NodePlan, ...]

    @property
    def to_update(self) -> list[NodePlan]:
        return [n for n in self.nodes if not n.skip]

    def describe(self) -> list[str]:
        """The ``--dry-run`` text: the verdict, then each node."""
        lines = [f"Proxmox update: {len(self.to_update)} of {len(self.nodes)} nodes to update"]
        lines.append(str(self.preflight))
        for number, plan in enumerate(self.nodes, 1):
            first, *rest = plan.describe()
            lines.append(f"{number}. {first}")
            lines.extend(rest)
        return lines


def _versions_of(
    node: NodeFacts, upgraded: bool, actual: Mapping[str, Mapping[str, str]]
) -> Mapping[str, str]:
    if node.name in actual:
        return actual[node.name]
    return node.new_versions if upgraded else node.versions


def plan_roll(
    facts: Sequence[NodeFacts],
    settings: ProxmoxUpdateSettings,
    verdict: Preflight,
    *,
    ha: HaStatus | None = None,
    snapshot: str | None = None,
    policy: GuestPolicy | None = None,
    reboot: RebootPolicy | None = None,
    bystanders: Sequence[NodeFacts] = (),
    no_snapshot: bool = False,
    actual: Mapping[str, Mapping[str, str]] | None = None,
) -> RollPlan:
    """Plan the roll over ``facts`` (the nodes to update); ``bystanders`` are the cluster's
    other nodes, not updated by this roll (``--only``) but migration targets like the rest
    when they run the same or newer versions (:data:`MIGRATION_PACKAGES`).

    Order: a node with an interrupted update to recover (its ``journal``) first, its guests
    parked on the others; then ``settings.nodes`` when it lists them, else fewest running
    guests first, then by name. A node with nothing to upgrade is skipped with the reason
    (an offline node has no facts: pre-flight refuses the roll). Each node's guests go to
    nodes already planned first: upgraded, at their :attr:`NodeFacts.new_versions`, or at
    ``actual`` (node → installed versions read after its upgrade: the plan for the later
    nodes is made again with what it really runs, a held package behind).
    ``snapshot`` is the root snapshot's name (known at run time; the dry run passes one made
    from its own time); ``no_snapshot`` (``--no-snapshot``) plans none.
    """
    if settings.nodes:
        rank = {n: i for i, n in enumerate(settings.nodes)}
        ordered = sorted(
            facts, key=lambda f: (f.journal is None, rank.get(f.name, len(rank)), f.name)
        )
    else:
        ordered = sorted(facts, key=lambda f: (f.journal is None, f.running_guests, f.name))
    dataset = validate_dataset(settings.root_dataset)
    done: set[str] = set()
    plans: list[NodePlan] = []
    for node in ordered:
        if not node.pending and node.journal is None:
            plans.append(NodePlan(node.name, skip="nothing to upgrade"))
            continue
        others = [
            TargetNode(
                o.name,
                versions=_versions_of(o, o.name in done, actual or {}),
                upgraded=o.name in done,
                running=o.running_guests,
                maintenance=ha is not None and ha.nodes.get(o.name) == "maintenance",
            )
            for o in (*facts, *bystanders)
            if o.name != node.name
        ]
        steps = plan_guests(
            node.name,
            node.guests,
            settings,
            others=others,
            versions=node.versions,
            ha=ha,
            prechecks=node.prechecks,
            policy=policy,
        )
        kernels = node.kernels
        decision = decide_reboot(
            reboot or settings.reboot,
            node.running_kernel,
            kernels.next_boot if kernels else None,
            node.pending,
            pinned=bool(kernels and (kernels.pinned or kernels.next_boot_pin)),
        )
        name = None
        if node.journal is not None and node.journal.snapshot:
            name = node.journal.snapshot  # the interrupted run's, from before any change
        elif snapshot is not None and not no_snapshot:
            name = f"{dataset}@{validate_zfs_snapname(snapshot)}"
        returns = return_steps(steps)
        if node.journal is not None:
            returns += recovery_returns(
                node.journal,
                node.placement,
                handled={s.vmid for s in steps if s.action != "leave"},
                ha_managed=ha.managed if ha is not None and ha.active else (),
            )
        plans.append(
            NodePlan(
                node.name,
                packages=node.pending,
                reboot=decision,
                guests=tuple(steps),
                returns=tuple(returns),
                maintenance=ha is not None and ha.active,
                snapshot=name,
                no_snapshot=no_snapshot and name is None,
                recover=node.journal,
            )
        )
        done.add(node.name)
    return RollPlan(verdict, tuple(plans))


# --- verify --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a node (or its guests) passed a check after its update; ``reasons`` say why
    not."""

    ok: bool
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "healthy" if self.ok else "unhealthy: " + "; ".join(self.reasons)


def verify_node(
    node: str,
    cluster: ClusterStatus,
    running_kernel: str,
    expected_kernel: str,
    failed_before: Collection[str],
    failed_now: Collection[str],
) -> Verdict:
    """Judge a node back from its update: online in the cluster, the cluster quorate, the
    expected kernel running, and no systemd unit failed that had not failed before."""
    problems: list[str] = []
    row = next((n for n in cluster.nodes if n.name == node), None)
    if row is None or not row.online:
        problems.append(f"{node} is not online in the cluster")
    if not cluster.quorate:
        problems.append("the cluster is not quorate")
    if running_kernel != expected_kernel:
        problems.append(f"kernel {running_kernel} is running, expected {expected_kernel}")
    fresh = sorted(set(failed_now) - set(failed_before))
    if fresh:
        problems.append(f"units failed since the update: {', '.join(fresh)}")
    return Verdict(not problems, tuple(problems))


def verify_guests(before: Iterable[Guest], now: Iterable[Guest]) -> Verdict:
    """Judge the guests after they returned: each on the node it was on, and running if it
    was running before."""
    current = {g.vmid: g for g in now}
    problems: list[str] = []
    for g in sorted(before, key=lambda g: g.vmid):
        seen = current.get(g.vmid)
        if seen is None:
            problems.append(f"guest {g.label} is gone")
            continue
        if seen.node != g.node:
            problems.append(f"guest {g.label} is on {seen.node}, was on {g.node}")
        if g.running and not seen.running:
            problems.append(f"guest {g.label} is {seen.status}, was running")
    return Verdict(not problems, tuple(problems))


# --- failure -------------------------------------------------------------------------------


def _way_back(s: GuestStep) -> str:
    """How a person brings back a guest a failed roll left away from its node."""
    tool = "qm" if s.type == "qemu" else "pct"
    if s.action == "migrate" and s.target is not None:
        flags = {"online": ["--online"], "restart": ["--restart"]}.get(s.mode or "", [])
        argv = [tool, "migrate", str(s.vmid), validate_host_name(s.source), *flags]
        return (
            f"{s.label} was migrated to {s.target}; to bring it back, on {s.target}: "
            f"`{shlex.join(argv)}`"
        )
    if s.action == "shutdown":
        argv = [tool, "start", str(s.vmid)]
        return f"{s.label} was shut down; to start it again, on {s.source}: `{shlex.join(argv)}`"
    return f"{s.label} was moved by HA node maintenance; it returns when maintenance is disabled"


def failure_next_steps(
    node: str,
    dataset: str,
    snapshot: str | None,
    old_kernel: str | None,
    *,
    upgraded: bool,
    maintenance: bool = True,
    away: Sequence[GuestStep] = (),
) -> list[str]:
    """What a person does after the roll stopped on ``node``: bring back the guests still
    ``away`` (migrated, shut down, or moved by HA maintenance: each with its command); when
    the upgrade ran (``upgraded``), boot the previous kernel (kernels live on the EFI
    partitions, so a root rollback does not bring it back) and, only as a disaster procedure
    from a rescue system, roll the root dataset back; leave HA maintenance once the node is
    healthy. Before the upgrade ran no package changed: no kernel to pin, nothing to roll
    back."""
    steps: list[str] = [f"{node} stopped the roll; the nodes after it were not touched."]
    if upgraded and old_kernel:
        pin = shlex.join(["proxmox-boot-tool", "kernel", "pin", old_kernel, "--next-boot"])
        steps.append(
            f"to boot the previous kernel once: `{pin}` then `proxmox-boot-tool refresh` "
            "and reboot (drop --next-boot to keep it)"
        )
    if not snapshot:
        steps.append("no root snapshot was taken")
    elif upgraded:
        full = f"{validate_dataset(dataset)}@{validate_zfs_snapname(snapshot)}"
        rollback = ["zfs", "rollback", "-r", full]
        steps.append(
            f"the root file system before the update is the snapshot {full}; only as a "
            f"disaster procedure, from a rescue system: `{shlex.join(rollback)}`"
            " (this also rewinds the node's copy of /etc/pve; pin the old kernel as above, "
            "since the EFI partitions keep the new one)"
        )
    else:
        full = f"{validate_dataset(dataset)}@{validate_zfs_snapname(snapshot)}"
        steps.append(f"no package was changed; the root snapshot {full} is kept")
    for s in sorted(away, key=lambda s: s.vmid):
        if s.action != "ha" or maintenance:
            steps.append(f"{'VM' if s.type == 'qemu' else 'CT'} {_way_back(s)}")
    if maintenance:
        steps.append(
            f"{node} stays in HA maintenance; once healthy: "
            f"`{shlex.join(maintenance_argv(node, enable=False))}`"
        )
    return steps
