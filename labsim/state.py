"""The whole simulated homelab in memory: cluster, nodes, guests, storages, tasks, SSH hosts.

Everything is mutated under ``Lab.lock``. Proxmox tasks finish lazily: ``Lab.tick()`` (called
by every entry point before it reads or writes state) completes each task whose end time has
passed on the monotonic clock and applies its effect, so no task needs a thread of its own.
Durations are ``durations[kind] * time_scale`` seconds; wall-clock time is used only for what
PVE reports (``starttime``, ``snaptime``, ``uptime``).

Backups (``vzdump`` tasks) are driven by ``Lab.advance_backups`` instead: each writes its
archive at a share of its storage's bandwidth (shared with the other backups to that storage,
recomputed whenever one starts or ends), one vzdump at a time per node; archives are real
files (see ``labsim.backups``). The offsite host ``offsite`` has a real folder,
``DIR/hosts/offsite/backups/``.

Room for what comes next is marked ``Later:`` (apt packages and reboots on nodes).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labsim import backups, nixos
from labsim.backups import Archive, BackupJob
from labsim.nixos import HostImage, NixosHost, NixosSpec
from labsim.zfs import ZfsState, default_zfs_state, run_zfs

GuestType = Literal["qemu", "lxc"]

GiB = 1024**3
MiB = 1024**2

CLUSTER_NAME = "labsim"
TOKEN_USER = "root@pam"  # noqa: S105
TOKEN_NAME = "moxflow"  # noqa: S105
TOKEN_ID = f"{TOKEN_USER}!{TOKEN_NAME}"
PVE_VERSION = "9.1.2"
PVE_RELEASE = "9.1"
PVE_REPOID = "d6b9a6f1ac4b8e3a"
KERNEL = "6.14.11-4-pve"
# installed versions of the packages the lab's nodes can have updates for
PACKAGE_VERSIONS = {
    "pve-manager": "9.1.1",
    "proxmox-kernel-6.14": "6.14.11-4",
    "libpve-common-perl": "9.0.9",
    "openssl": "3.5.1-1",
    "tzdata": "2025b-4",
}
DEBIAN_PACKAGES = frozenset({"openssl", "tzdata"})
# what each default node has pending: pve1 is behind, pve2 is up to date
DEFAULT_PENDING = {
    "pve1": {"pve-manager": "9.1.2", "openssl": "3.5.1-1+deb13u1"},
    "pve2": {},
}

# Snapshot names PVE refuses before it starts a task.
RESERVED_SNAPNAMES = ("current", "pending", "vzdump")

DEFAULT_DURATIONS: dict[str, float] = {
    "snapshot": 2.0,  # qmsnapshot / vzsnapshot
    "delsnapshot": 2.0,  # qmdelsnapshot / vzdelsnapshot
    "rollback": 2.0,  # qmrollback / vzrollback
    "start": 1.0,  # qmstart / vzstart
    "stop": 1.0,  # qmstop / vzstop
    "boot": 10.0,  # a NixOS host from power-on (or reboot) until it answers
    "agent": 3.0,  # a started VM's guest agent answers after this
    "restore": 2.0,  # qmrestore / vzrestore: this plus the archive size over the bandwidth
    "destroy": 1.0,  # qmdestroy / vzdestroy
    # Later: "aptupdate", "reboot", ...
}

FAULT_TARGETS = ("api", "command", "connect", "task")
FAULT_ACTIONS = ("error", "hang", "slow", "drop", "drop-after")


class PveError(Exception):
    """An API failure: HTTP ``status`` and PVE's message (sent as the reason phrase)."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


# --- the model --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One guest snapshot as PVE keeps it in the guest config's ``[snapname]`` section."""

    name: str
    description: str = ""
    snaptime: int = 0
    vmstate: bool = False
    parent: str | None = None
    snapstate: str | None = None  # "prepare" while being made, "delete" while being removed
    config: dict[str, Any] = field(default_factory=dict)
    nixos: HostImage | None = None  # the NixOS host living in the guest, as it was

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "description": self.description,
            "snaptime": self.snaptime,
            "vmstate": self.vmstate,
            "parent": self.parent,
            "snapstate": self.snapstate,
            "config": self.config,
        }
        if self.nixos is not None:
            out["nixos"] = self.nixos.summary()
        return out


@dataclass
class Guest:
    """A VM (``qemu``) or container (``lxc``) and its snapshots."""

    vmid: int
    type: GuestType
    name: str
    node: str
    status: str = "running"  # running | stopped
    template: bool = False
    tags: list[str] = field(default_factory=list)
    pool: str | None = None
    lock: str | None = None
    maxdisk: int = 32 * GiB
    maxmem: int = 2 * GiB
    cpus: int = 2
    agent: bool = False
    hastate: str | None = None
    ostype: str = "l26"
    storage: str = "local-zfs"
    parent: str | None = None  # the newest snapshot the current state descends from
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # extra config keys, verbatim
    started_at: float | None = None  # wall clock, for uptime
    agent_ready_at: float = 0.0  # monotonic: the guest agent answers from then on (if running)
    # Later: agent_state (guest agent processes, OS info) for the Windows flows.

    @property
    def kind(self) -> str:
        """``VM`` or ``CT``, as PVE words its messages."""
        return "VM" if self.type == "qemu" else "CT"

    @property
    def config_dir(self) -> str:
        return "qemu-server" if self.type == "qemu" else "lxc"

    @property
    def volume(self) -> str:
        """The root disk's volume name on its storage."""
        if self.type == "qemu":
            return f"vm-{self.vmid}-disk-0"
        return f"subvol-{self.vmid}-disk-0"

    @property
    def volid(self) -> str:
        return f"{self.storage}:{self.volume}"

    def uptime(self, now: float) -> int:
        if self.status != "running" or self.started_at is None:
            return 0
        return max(0, int(now - self.started_at))

    def render_config(self) -> dict[str, Any]:
        """The guest's current configuration as ``GET .../config`` returns it."""
        size = f"{self.maxdisk // GiB}G"
        conf: dict[str, Any]
        if self.type == "qemu":
            conf = {
                "name": self.name,
                "memory": str(self.maxmem // MiB),
                "cores": self.cpus,
                "sockets": 1,
                "ostype": self.ostype,
                "scsihw": "virtio-scsi-single",
                "scsi0": f"{self.volid},iothread=1,size={size}",
                "net0": f"virtio=BC:24:11:00:{self.vmid // 256 % 256:02X}:{self.vmid % 256:02X}"
                ",bridge=vmbr0",
                "boot": "order=scsi0;net0",
                "vmgenid": f"00000000-0000-4000-8000-{self.vmid:012d}",
                "smbios1": f"uuid=00000000-0000-4000-9000-{self.vmid:012d}",
            }
            if self.agent:
                conf["agent"] = "1"
        else:
            conf = {
                "hostname": self.name,
                "memory": self.maxmem // MiB,
                "swap": 512,
                "cores": self.cpus,
                "ostype": self.ostype,
                "arch": "amd64",
                "rootfs": f"{self.volid},size={size}",
                "net0": "name=eth0,bridge=vmbr0,ip=dhcp,type=veth",
                "unprivileged": 1,
            }
        if self.tags:
            conf["tags"] = ";".join(self.tags)
        if self.template:
            conf["template"] = 1
        conf.update(self.config)
        return conf

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "vmid": self.vmid,
            "type": self.type,
            "name": self.name,
            "node": self.node,
            "status": self.status,
            "template": self.template,
            "tags": list(self.tags),
            "pool": self.pool,
            "lock": self.lock,
            "maxdisk": self.maxdisk,
            "maxmem": self.maxmem,
            "cpus": self.cpus,
            "agent": self.agent,
            "hastate": self.hastate,
            "storage": self.storage,
            "parent": self.parent,
            "uptime": self.uptime(now),
            "snapshots": {n: s.to_json() for n, s in self.snapshots.items()},
            "config": self.render_config(),
        }


@dataclass
class Node:
    """A cluster node, with its pending package updates. Later: kernel upgrades, reboots."""

    name: str
    nodeid: int
    ip: str
    status: str = "online"  # online | offline (an offline node answers 595)
    maxcpu: int = 16
    maxmem: int = 64 * GiB
    mem: int = 12 * GiB
    rootfs_total: int = 100 * GiB
    rootfs_used: int = 12 * GiB
    kernel_running: str = KERNEL
    kernel_installed: str = KERNEL
    boot_time: float = 0.0  # wall clock
    # upgradable packages, as ``GET /nodes/{node}/apt/update`` lists them (name -> new version)
    pending: dict[str, str] = field(default_factory=dict)
    # Later: reboot_until: float | None (monotonic)

    def pending_updates(self) -> list[dict[str, Any]]:
        """``GET /nodes/{node}/apt/update``: one entry per upgradable package."""
        out = []
        for package, version in sorted(self.pending.items()):
            old = PACKAGE_VERSIONS.get(package, "0")
            origin = "Debian" if package in DEBIAN_PACKAGES else "Proxmox"
            out.append(
                {
                    "Package": package,
                    "Title": f"{package} (simulated)",
                    "Description": f"{package} (simulated by labsim)",
                    "Version": version,
                    "OldVersion": old,
                    "Origin": origin,
                    "Priority": "optional",
                    "Section": "admin",
                    "Arch": "amd64",
                }
            )
        return out

    def uptime(self, now: float) -> int:
        return 0 if self.status != "online" else max(0, int(now - self.boot_time))

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodeid": self.nodeid,
            "ip": self.ip,
            "status": self.status,
            "maxcpu": self.maxcpu,
            "maxmem": self.maxmem,
            "mem": self.mem,
            "kernel_running": self.kernel_running,
            "kernel_installed": self.kernel_installed,
            "pending": dict(self.pending),
            "uptime": self.uptime(now),
        }


@dataclass
class Storage:
    """A storage definition with its backup archives.

    ``used`` is what other data takes; archives add to it (per node on a node-local
    storage). ``bandwidth``: write bytes per second (before the time scale), shared by the
    backups running to it (per node on a node-local storage)."""

    name: str
    type: str  # dir | zfspool | nfs | ...
    content: list[str]
    shared: bool = False
    nodes: list[str] | None = None  # None: every node
    total: int = 500 * GiB
    used: int = 50 * GiB
    bandwidth: float = 500 * MiB
    archives: list[Archive] = field(default_factory=list)

    def on_node(self, node: str) -> bool:
        return self.nodes is None or node in self.nodes

    def pool(self, node: str) -> str | None:
        """Which copy of the storage ``node`` sees: None for a shared one."""
        return None if self.shared else node

    def archives_for(self, node: str) -> list[Archive]:
        pool = self.pool(node)
        return [a for a in self.archives if a.node == pool]

    def used_for(self, node: str | None) -> int:
        return self.used + sum(a.size for a in self.archives if a.node == node)

    def to_json(self) -> dict[str, Any]:
        pools: list[str | None] = [None]
        if not self.shared:
            pools = [*sorted({a.node for a in self.archives if a.node})]
        return {
            "name": self.name,
            "type": self.type,
            "content": list(self.content),
            "shared": self.shared,
            "nodes": self.nodes,
            "total": self.total,
            "used": self.used_for(None) if self.shared else self.used,
            "used_by_node": {p: self.used_for(p) for p in pools if p is not None},
            "bandwidth": self.bandwidth,
            "archives": [
                a.to_json() for a in sorted(self.archives, key=lambda a: (a.vmid, a.ctime))
            ],
        }


@dataclass
class Task:
    """A PVE worker task. ``end_at`` is on the monotonic clock (``inf``: never finishes)."""

    upid: str
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str
    started: float
    end_at: float
    kind: str  # the effect applied when it ends (see Lab._effects)
    args: dict[str, Any] = field(default_factory=dict)
    fail_with: str | None = None  # the planned exit status when it is not OK
    status: str = "running"  # running | stopped
    exitstatus: str | None = None
    endtime: int | None = None
    ended: float | None = None  # wall clock, to the microsecond (endtime is whole seconds)
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "upid": self.upid,
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.type,
            "id": self.id,
            "user": self.user,
            "status": self.status,
            "exitstatus": self.exitstatus,
            "endtime": self.endtime,
            "ended": self.ended,
            "log": list(self.log),
        }


@dataclass
class SshHost:
    """A machine reachable over SSH and the state its simulated tools act on."""

    name: str
    port: int = 0
    zfs: ZfsState | None = None
    nixos: NixosHost | None = None
    files: Path | None = None  # a real folder of the host (the offsite host's backups)
    # Later: apt packages for the node hosts.

    def to_json(self, mono: float | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "zfs": self.zfs.to_json() if self.zfs is not None else None,
            "files": str(self.files) if self.files is not None else None,
            "nixos": self.nixos.to_json(time.monotonic() if mono is None else mono)
            if self.nixos is not None
            else None,
        }


@dataclass
class Fault:
    """An injected failure; ``remaining`` counts down (None: until cleared)."""

    fault_id: int
    spec: dict[str, Any]
    remaining: int | None

    def to_json(self) -> dict[str, Any]:
        return {"fault_id": self.fault_id, **self.spec, "remaining": self.remaining}


@dataclass
class LabOptions:
    """How a lab is built: the default topology, or a generated one for benchmarks."""

    nodes: int | None = None  # None: the default topology
    guests_per_node: int = 10
    time_scale: float = 1.0
    snapshot_seconds: float = DEFAULT_DURATIONS["snapshot"]
    nixos_hosts: int = 0  # generated NixOS hosts (nixos-01, ...) besides the topology's own

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "guests_per_node": self.guests_per_node,
            "time_scale": self.time_scale,
            "snapshot_seconds": self.snapshot_seconds,
            "nixos_hosts": self.nixos_hosts,
        }


@dataclass
class Topology:
    cluster: str
    nodes: dict[str, Node]
    guests: dict[int, Guest]
    storages: dict[str, Storage]
    hosts: list[str]


# --- topologies -------------------------------------------------------------------------------


def _storages(node_names: list[str]) -> dict[str, Storage]:
    return {
        "local": Storage(
            "local", "dir", ["iso", "vztmpl", "backup"], total=100 * GiB, bandwidth=400 * MiB
        ),
        "local-zfs": Storage(
            "local-zfs", "zfspool", ["images", "rootdir"], total=900 * GiB, bandwidth=1000 * MiB
        ),
        "nas-backup": Storage(
            "nas-backup",
            "nfs",
            ["backup"],
            shared=True,
            total=4096 * GiB,
            used=800 * GiB,
            bandwidth=200 * MiB,
        ),
    }


OFFSITE_HOST = "offsite"


def backup_size(g: Guest) -> int:
    """The (deterministic) size of a zstd archive of guest ``g``."""
    fraction = 0.15 + (g.vmid % 5) * 0.05
    return int(g.maxdisk * fraction) + g.vmid * 4096


# Backups that exist when the lab starts: (vmid, days ago, protected, notes)
DEFAULT_BACKUPS = (
    (101, 9, True, "media-vm before the Jellyfin upgrade"),
    (101, 2, False, "media-vm"),
    (104, 8, False, "homeassistant"),
    (104, 1, False, "homeassistant"),
)


def default_topology(now: float) -> Topology:
    """The documented lab: ``pve1``, ``pve2``, seven guests, SSH hosts pve1, pve2 and nas."""
    boot = now - 12 * 86400
    nodes = {
        "pve1": Node(
            "pve1", 1, "192.168.100.11", boot_time=boot, pending=dict(DEFAULT_PENDING["pve1"])
        ),
        "pve2": Node(
            "pve2", 2, "192.168.100.12", boot_time=boot, pending=dict(DEFAULT_PENDING["pve2"])
        ),
    }
    up = now - 3 * 86400
    guests = [
        Guest(100, "lxc", "dns", "pve1", tags=["infra", "dns"], maxdisk=8 * GiB,
              maxmem=512 * MiB, cpus=1, ostype="debian", started_at=up),
        Guest(101, "qemu", "media-vm", "pve1", tags=["media"], pool="apps", maxdisk=64 * GiB,
              maxmem=8 * GiB, cpus=4, agent=True, started_at=up),
        Guest(102, "qemu", "nixos-builder", "pve2", tags=["nixos"], maxdisk=128 * GiB,
              maxmem=16 * GiB, cpus=8, agent=True, started_at=up),
        Guest(103, "qemu", "win11-gaming", "pve2", status="stopped",
              tags=["windows", "gaming", "nosnap"], maxdisk=256 * GiB, maxmem=32 * GiB,
              cpus=8, agent=True, ostype="win11"),
        Guest(104, "qemu", "homeassistant", "pve2", pool="apps", maxdisk=32 * GiB,
              maxmem=4 * GiB, cpus=2, agent=True, started_at=up),
        Guest(105, "lxc", "backup-ct", "pve2", status="stopped", maxdisk=16 * GiB,
              maxmem=1 * GiB, cpus=1, ostype="debian"),
        Guest(9000, "qemu", "debian-12-template", "pve1", status="stopped", template=True,
              maxdisk=16 * GiB, maxmem=2 * GiB, cpus=2, agent=True),
    ]  # fmt: skip
    media = guests[1]
    snaptime = int(now - 30 * 86400)
    media.snapshots["before-upgrade"] = Snapshot(
        "before-upgrade",
        description="by hand, before the Jellyfin upgrade",
        snaptime=snaptime,
        config=media.render_config(),
    )
    media.parent = "before-upgrade"
    return Topology(
        CLUSTER_NAME,
        nodes,
        {g.vmid: g for g in guests},
        _storages(list(nodes)),
        ["pve1", "pve2", "nas", OFFSITE_HOST],
    )


def nixos_specs(options: LabOptions) -> list[NixosSpec]:
    """The NixOS hosts of a lab: dns, media and builder in the default topology, plus
    ``options.nixos_hosts`` generated ones (``nixos-01``, ...) in either topology."""
    specs = nixos.default_specs() if options.nodes is None else []
    return specs + nixos.generated_specs(options.nixos_hosts or 0)


_TAG_SETS: tuple[list[str], ...] = (
    ["prod"],
    ["dev"],
    ["nixos"],
    ["infra", "dns"],
    [],
    ["prod", "nosnap"],
    ["media"],
)
_POOLS = ("apps", None, "infra", None)


def generated_topology(now: float, nodes: int, guests_per_node: int) -> Topology:
    """``nodes`` nodes × ``guests_per_node`` guests (mixed qemu/lxc, varied tags and pools,
    every seventh stopped) plus one template per node, for benchmarks."""
    boot = now - 12 * 86400
    up = now - 86400
    node_map = {
        f"pve{i}": Node(f"pve{i}", i, f"192.168.100.{10 + i}", boot_time=boot)
        for i in range(1, nodes + 1)
    }
    guests: dict[int, Guest] = {}
    vmid = 100
    for i, name in enumerate(node_map, start=1):
        for j in range(guests_per_node):
            gtype: GuestType = "lxc" if j % 3 == 2 else "qemu"
            stopped = (vmid % 7) == 3
            guests[vmid] = Guest(
                vmid,
                gtype,
                f"{'ct' if gtype == 'lxc' else 'vm'}-{vmid}",
                name,
                status="stopped" if stopped else "running",
                tags=list(_TAG_SETS[vmid % len(_TAG_SETS)]),
                pool=_POOLS[vmid % len(_POOLS)],
                maxdisk=(8 + (vmid % 4) * 8) * GiB,
                maxmem=(1 + vmid % 4) * GiB,
                cpus=1 + vmid % 4,
                agent=gtype == "qemu",
                ostype="l26" if gtype == "qemu" else "debian",
                started_at=None if stopped else up,
            )
            vmid += 1
        tid = 9000 + i - 1
        guests[tid] = Guest(
            tid, "qemu", f"template-{name}", name, status="stopped", template=True,
            maxdisk=16 * GiB, agent=True,
        )  # fmt: skip
    return Topology(
        CLUSTER_NAME, node_map, guests, _storages(list(node_map)), [*node_map, "nas", OFFSITE_HOST]
    )


# --- the lab ----------------------------------------------------------------------------------

Effect = Callable[[Task, bool], None]
CommandImpl = Callable[[SshHost, list[str], str | None, float], tuple[int, str, str]]


def _run_zfs(host: SshHost, argv: list[str], stdin: str | None, now: float) -> tuple[int, str, str]:
    if host.zfs is None:
        return 127, "", "sh: 1: zfs: not found\n"
    return run_zfs(host.zfs, argv, now)


# Simulated commands by argv[0] (NixOS hosts also have ``nixos.COMMANDS``).
# Later: apt-get, ha-manager.
COMMANDS: dict[str, CommandImpl] = {"zfs": _run_zfs}

# What the next build of a NixOS host does, set by the control op ``nixos``.
NIXOS_FIELDS = (
    "upstream", "build_fails", "failed_units", "health_broken", "cut_network",
    "deadman_broken", "build_seconds", "healthy",
)  # fmt: skip


class Lab:
    """All lab state plus the operations the API, the SSH hosts and the control socket use.

    ``root`` is the lab folder: NixOS hosts get their files in ``root/hosts/<name>/``.
    """

    def __init__(self, options: LabOptions | None = None, root: Path | None = None) -> None:
        self.options = options or LabOptions()
        self.root = root
        self.lock = threading.RLock()
        self.release = threading.Event()  # set to let hanging requests go (reset, shutdown)
        self.interrupt = threading.Event()  # set to end sleeping commands (reset, shutdown)
        self.epoch = 0  # counts resets: a command that slept across one is void
        # Called (under the lock) with a host name when its SSH connections must go.
        self.on_unreachable: Callable[[str], None] | None = None
        self._fault_ids = itertools.count(1)
        self._order = itertools.count()
        self._pids = itertools.count(2_000_000 + int(time.time()) % 1_000_000)
        self.hosts: dict[str, SshHost] = {}
        self._effects: dict[str, Effect] = {
            "snapshot": self._finish_snapshot,
            "delsnapshot": self._finish_delsnapshot,
            "rollback": self._finish_rollback,
            "start": self._finish_power,
            "stop": self._finish_power,
            "fail": lambda task, ok: None,
            "vzdump": lambda task, ok: None,  # the backup engine does the work
            "restore": self._finish_restore,
            "destroy": self._finish_destroy,
        }
        self._build()

    # -- building and resetting ---------------------------------------------------------------

    def _build(self) -> None:
        now = time.time()
        opts = self.options
        if opts.nodes is None:
            topo = default_topology(now)
        else:
            topo = generated_topology(now, opts.nodes, opts.guests_per_node)
        self.cluster = topo.cluster
        self.nodes = topo.nodes
        self.guests = topo.guests
        self.storages = topo.storages
        self.tasks: dict[str, Task] = {}
        self._due: list[tuple[float, int, str]] = []  # (end_at, order, upid) of running tasks
        self.faults: list[Fault] = []
        self.commands: list[dict[str, Any]] = []  # every command the SSH hosts were asked to run
        # NixOS disk states kept by `zfs snapshot` of a guest disk: (ssh host, ds@snap) -> image
        self.zfs_images: dict[tuple[str, str], HostImage] = {}
        self.time_scale = opts.time_scale
        self.durations = dict(DEFAULT_DURATIONS)
        self.durations["snapshot"] = opts.snapshot_seconds
        self.durations["delsnapshot"] = opts.snapshot_seconds
        self.durations["rollback"] = opts.snapshot_seconds
        ports = {name: h.port for name, h in self.hosts.items()}
        self.hosts = {
            name: SshHost(name, ports.get(name, 0), default_zfs_state(name, now))
            for name in topo.hosts
        }
        mono = time.monotonic()
        for spec in nixos_specs(opts):
            root = self.root / "hosts" / spec.name if self.root is not None else None
            host = NixosHost(spec, root, now, mono)
            host.write_all()
            self.hosts[spec.name] = SshHost(spec.name, ports.get(spec.name, 0), None, host)
            g = self.guests.get(spec.vmid) if spec.vmid is not None else None
            if g is not None:
                for snap in g.snapshots.values():  # snapshots made before the lab started
                    snap.nixos = nixos.old_image(host)
                if g.status != "running":
                    host.power_off()
        self.backup_jobs: dict[str, BackupJob] = {}
        self.vzdump_locks: dict[str, str] = {}  # node -> upid of the vzdump holding its lock
        self._build_backups(now)

    def nixos_hosts(self) -> dict[str, NixosHost]:
        """The NixOS hosts by name."""
        return {n: h.nixos for n, h in self.hosts.items() if h.nixos is not None}

    def nixos_specs(self) -> list[NixosSpec]:
        """The NixOS hosts of this lab (what the inventory lists)."""
        return [h.spec for h in self.nixos_hosts().values()]

    def record_command(self, host: str, command: str) -> None:
        """Remember a command an SSH host was asked to run (for tests: what ran, in order)."""
        with self.lock:
            self.commands.append({"host": host, "command": command, "time": time.time()})

    def reset(self) -> None:
        """Back to the initial state (same ports and keys); faults and tasks cleared."""
        with self.lock:
            self.release_waiters()
            self.interrupt_waits()
            self.epoch += 1
            self._build()
            self._settle()

    def interrupt_waits(self) -> None:
        """End every command sleeping outside the lock (a build): reset, shutdown."""
        with self.lock:
            self.interrupt.set()
            self.interrupt = threading.Event()

    def release_waiters(self) -> None:
        """Wake every request held by a ``hang`` or ``slow`` fault."""
        with self.lock:
            self.release.set()
            self.release = threading.Event()

    def set_time_scale(self, scale: float) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"time scale must be a positive number, not {scale!r}")
        with self.lock:
            self.tick()
            now = time.monotonic()
            self._progress_to(now)
            self.time_scale = scale
            self._rebalance(now)

    def duration(self, kind: str) -> float:
        return self.durations.get(kind, 1.0) * self.time_scale

    # -- faults --------------------------------------------------------------------------------

    def add_fault(self, spec: dict[str, Any]) -> int:
        """Validate and register a fault spec; returns its id."""
        spec = {k: v for k, v in spec.items() if v is not None}
        target = spec.get("target")
        action = spec.get("action")
        if target not in FAULT_TARGETS:
            raise ValueError(f"fault target must be one of {', '.join(FAULT_TARGETS)}")
        if action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {', '.join(FAULT_ACTIONS)}")
        for key in ("path", "command", "type", "id"):
            if key in spec:
                spec[key] = str(spec[key])
                try:
                    re.compile(spec[key])
                except re.error as exc:
                    raise ValueError(f"fault {key} is not a valid regex: {exc}") from exc
        times = spec.pop("times", None)
        if times is not None:
            times = int(times)
            if times < 1:
                raise ValueError("fault times must be at least 1")
        if "delay" in spec:
            spec["delay"] = float(spec["delay"])
        if action == "slow" and "delay" not in spec:
            raise ValueError("a slow fault needs a delay (seconds)")
        if action == "drop-after" and target != "command":
            raise ValueError(
                "drop-after is a command fault: the command runs, then the "
                "connection drops before its result is sent"
            )
        with self.lock:
            fault = Fault(next(self._fault_ids), spec, times)
            self.faults.append(fault)
            return fault.fault_id

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.release_waiters()

    def take_fault(self, target: str, **attrs: str | None) -> dict[str, Any] | None:
        """The first fault matching an event (counted down), or None.

        api: ``method``, ``path``; command: ``host``, ``command``; connect: ``host``;
        task: ``type``, ``id``, ``node``.
        """
        with self.lock:
            for fault in self.faults:
                if fault.spec["target"] != target or not _fault_matches(fault.spec, attrs):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                return dict(fault.spec, fault_id=fault.fault_id)
            return None

    # -- tasks ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Finish every task whose time has come, earliest end first; fire NixOS timers."""
        now = time.monotonic()
        with self.lock:
            heap = self._due
            self.advance_backups(now)
            while heap and heap[0][0] <= now:
                _, _, upid = heapq.heappop(heap)
                task = self.tasks.get(upid)
                if task is not None and task.status == "running" and task.end_at <= now:
                    self._complete(task)
            ctx = self.nixos_ctx()
            for host in self.nixos_hosts().values():
                host.tick(ctx)
            self._settle()

    def nixos_ctx(self, cwd: str | None = None) -> nixos.Ctx:
        return nixos.Ctx(
            time.time(), time.monotonic(), self.time_scale, self.durations["boot"], cwd
        )

    def _settle(self) -> None:
        """Power NixOS hosts on or off as their guests are, and drop the SSH connections of
        hosts that went away (network cut, powered off, rebooting)."""
        ctx: nixos.Ctx | None = None
        for name, host in self.nixos_hosts().items():
            g = self.guests.get(host.vmid) if host.vmid is not None else None
            if g is not None:
                running = g.status == "running"
                if running and not host.powered:
                    ctx = ctx or self.nixos_ctx()
                    host.boot(ctx)
                elif not running and host.powered:
                    host.power_off()
            if host.drop_now:
                host.drop_now = False
                if self.on_unreachable is not None:
                    self.on_unreachable(name)

    def _complete(self, task: Task) -> None:
        ok = task.fail_with is None
        task.status = "stopped"
        task.exitstatus = "OK" if ok else task.fail_with
        now = time.time()
        task.ended = min(now, self._wall(task.end_at)) if math.isfinite(task.end_at) else now
        task.endtime = max(task.starttime, int(task.ended))
        if not ok and task.fail_with and (not task.log or task.log[-1] != task.fail_with):
            task.log.append(str(task.fail_with))
        task.log.append("TASK OK" if ok else f"TASK ERROR: {task.fail_with}")
        self._effects[task.kind](task, ok)

    def new_task(
        self,
        node: str,
        ttype: str,
        tid: str,
        user: str,
        *,
        kind: str,
        duration: float,
        args: dict[str, Any] | None = None,
        log: Iterable[str] = (),
        fail_now: str | None = None,
        faults: bool = True,
    ) -> Task:
        """Start a worker task; ``fail_now`` makes it fail at once with that exit status."""
        mono = time.monotonic()
        wall = time.time()
        n = self.nodes[node]
        pid = next(self._pids) % 0x400000 + 1000
        pstart = int((wall - n.boot_time) * 100) & 0xFFFFFFFF
        starttime = int(wall)
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, pid, pstart, starttime, ttype, tid, user, mono, mono, kind)
        task.args = dict(args or {})
        task.log.extend(log)
        if fail_now is not None:
            task.kind = "fail"
            task.fail_with = fail_now
            task.log.append(fail_now)
        else:
            task.end_at = mono + duration
            fault = self.take_fault("task", type=ttype, id=tid, node=node) if faults else None
            if fault is not None:
                self._apply_task_fault(task, fault)
        self.tasks[upid] = task
        if task.end_at <= mono:
            self._complete(task)
        elif math.isfinite(task.end_at):
            heapq.heappush(self._due, (task.end_at, next(self._order), upid))
        return task

    def _apply_task_fault(self, task: Task, fault: dict[str, Any]) -> None:
        action = fault["action"]
        if action == "error":
            task.fail_with = str(fault.get("exitstatus") or fault.get("message") or "failed")
        elif action == "hang":
            task.end_at = math.inf
        elif action == "slow":
            task.end_at += float(fault.get("delay", 0.0))
        elif action == "drop":  # the worker dies without a proper status
            task.fail_with = "unexpected status"

    def task(self, upid: str) -> Task | None:
        return self.tasks.get(upid)

    # -- guests --------------------------------------------------------------------------------

    def require_node(self, node: str) -> Node:
        """The node, or the error pveproxy gives when it cannot proxy to it."""
        n = self.nodes.get(node)
        if n is None:
            raise PveError(
                500,
                f"hostname lookup '{node}' failed - failed to get address info for: "
                f"{node}: Name or service not known",
            )
        if n.status != "online":
            raise PveError(595, "No route to host")
        return n

    def guest_on(self, node: str, gtype: str, vmid: int) -> Guest | None:
        g = self.guests.get(vmid)
        if g is None or g.node != node or g.type != gtype:
            return None
        return g

    @staticmethod
    def missing_config(node: str, gtype: str, vmid: int) -> str:
        conf_dir = "qemu-server" if gtype == "qemu" else "lxc"
        return f"Configuration file 'nodes/{node}/{conf_dir}/{vmid}.conf' does not exist"

    def load_guest(self, node: str, gtype: str, vmid: int) -> Guest:
        """The guest owned by ``node``, or PVE's 500 for a config file it does not have."""
        g = self.guest_on(node, gtype, vmid)
        if g is None:
            raise PveError(500, self.missing_config(node, gtype, vmid))
        return g

    def set_guest(self, vmid: int, fields: dict[str, Any]) -> Guest:
        """Change guest fields directly (tests): lock, status, node, tags, pool, ..."""
        allowed = {
            "name", "node", "status", "lock", "tags", "pool", "template", "agent",
            "hastate", "maxdisk", "maxmem", "cpus",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a guest")
        with self.lock:
            self.tick()
            g = self.guests.get(int(vmid))
            if g is None:
                raise ValueError(f"no guest {vmid}")
            for key, value in fields.items():
                if key == "tags" and isinstance(value, str):
                    value = [t for t in re.split(r"[;,\s]+", value) if t]
                if key == "node" and value not in self.nodes:
                    raise ValueError(f"no node {value}")
                if key == "status":
                    if value not in ("running", "stopped"):
                        raise ValueError("status must be running or stopped")
                    if value == "running" and g.status != "running":
                        g.started_at = time.time()
                        g.agent_ready_at = time.monotonic() + self.duration("agent")
                if key == "lock" and value == "":
                    value = None
                setattr(g, key, value)
            self._settle()
            return g

    def _guest_word(self, gtype: str) -> str:
        return "VM" if gtype == "qemu" else "CT"

    def _snap_task_type(self, gtype: str, op: str) -> str:
        prefix = "qm" if gtype == "qemu" else "vz"
        return f"{prefix}{op}"

    def snapshot_create(
        self,
        node: str,
        gtype: str,
        vmid: int,
        snapname: str,
        *,
        description: str | None,
        vmstate: bool,
        user: str,
    ) -> Task:
        """``POST .../snapshot``: reserved names fail at once, the rest inside the task."""
        if snapname in RESERVED_SNAPNAMES or snapname.lower() == "pending":
            raise PveError(500, f"unable to use snapshot name '{snapname}' (reserved name)")
        ttype = self._snap_task_type(gtype, "snapshot")
        g = self.guest_on(node, gtype, vmid)
        fail = self._snapshot_precondition(g, node, gtype, vmid, snapname)
        if g is None or fail is not None:
            return self.new_task(
                node, ttype, str(vmid), user, kind="fail", duration=0, fail_now=fail
            )
        g.lock = "snapshot"
        keep_ram = bool(vmstate and gtype == "qemu" and g.status == "running")
        g.snapshots[snapname] = Snapshot(
            snapname,
            description=description or "",
            snaptime=int(time.time()),
            vmstate=keep_ram,
            parent=g.parent,
            snapstate="prepare",
            config=copy.deepcopy(g.render_config()),
        )
        host = self._nixos_in(vmid)
        if host is not None:
            g.snapshots[snapname].nixos = host.capture()
        if gtype == "qemu":
            log = [f"snapshotting 'drive-scsi0' ({g.volid})"]
            if keep_ram:
                log.insert(0, "saving VM state and RAM using storage 'local-zfs'")
        else:
            log = [f"create storage snapshot '{snapname}'"]
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind="snapshot",
            duration=self.duration("snapshot"),
            args={"vmid": vmid, "snapname": snapname},
            log=log,
        )

    def _snapshot_precondition(
        self, g: Guest | None, node: str, gtype: str, vmid: int, snapname: str
    ) -> str | None:
        if g is None:
            return self.missing_config(node, gtype, vmid)
        if g.template:
            return "you can't take a snapshot if it's a template"
        if g.lock:
            return f"{g.kind} is locked ({g.lock})"
        if snapname in g.snapshots:
            return f"snapshot name '{snapname}' already used"
        return None

    def _finish_snapshot(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None:
            return
        name = task.args["snapname"]
        snap = g.snapshots.get(name)
        if ok and snap is not None:
            snap.snapstate = None
            g.parent = name
        elif snap is not None:  # PVE cleans up a failed snapshot
            del g.snapshots[name]
        if g.lock == "snapshot":
            g.lock = None

    def snapshot_delete(
        self, node: str, gtype: str, vmid: int, snapname: str, *, force: bool, user: str
    ) -> Task:
        """``DELETE .../snapshot/{snapname}``: every check happens inside the task."""
        ttype = self._snap_task_type(gtype, "delsnapshot")
        g = self.guest_on(node, gtype, vmid)
        fail: str | None = None
        if g is None:
            fail = self.missing_config(node, gtype, vmid)
        elif snapname not in g.snapshots:
            fail = f"snapshot '{snapname}' does not exist"
        elif g.template:
            fail = "you can't delete a snapshot if vm is a template"
        elif g.lock and not (force and g.lock == "snapshot-delete"):
            fail = f"{g.kind} is locked ({g.lock})"
        if g is None or fail is not None:
            return self.new_task(
                node, ttype, str(vmid), user, kind="fail", duration=0, fail_now=fail
            )
        g.lock = "snapshot-delete"
        g.snapshots[snapname].snapstate = "delete"
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind="delsnapshot",
            duration=self.duration("delsnapshot"),
            args={"vmid": vmid, "snapname": snapname, "force": force},
        )

    def _finish_delsnapshot(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None:
            return
        name = task.args["snapname"]
        snap = g.snapshots.get(name)
        if not ok and not task.args.get("force"):
            return  # like PVE: the snapshot stays in state 'delete', the guest stays locked
        if snap is not None:
            for other in g.snapshots.values():
                if other.parent == name:
                    other.parent = snap.parent
            if g.parent == name:
                g.parent = snap.parent
            del g.snapshots[name]
        if g.lock == "snapshot-delete":
            g.lock = None

    def snapshot_rollback(
        self, node: str, gtype: str, vmid: int, snapname: str, *, start: bool, user: str
    ) -> Task:
        """``POST .../snapshot/{snapname}/rollback``; on ZFS only to the newest snapshot."""
        ttype = self._snap_task_type(gtype, "rollback")
        g = self.guest_on(node, gtype, vmid)
        fail: str | None = None
        if g is None:
            fail = self.missing_config(node, gtype, vmid)
        else:
            snap = g.snapshots.get(snapname)
            if snap is None:
                fail = f"snapshot '{snapname}' does not exist"
            elif self._zfs_backed(g) and any(
                s.snaptime > snap.snaptime for s in g.snapshots.values() if s is not snap
            ):
                fail = f"can't rollback, '{snapname}' is not most recent snapshot on '{g.volid}'"
            elif snap.snapstate:
                fail = f"unable to rollback to incomplete snapshot (snapstate = {snap.snapstate})"
            elif g.lock:
                fail = f"{g.kind} is locked ({g.lock})"
        if g is None or fail is not None:
            return self.new_task(
                node, ttype, str(vmid), user, kind="fail", duration=0, fail_now=fail
            )
        g.lock = "rollback"
        g.status = "stopped"
        g.started_at = None
        self._settle()
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind="rollback",
            duration=self.duration("rollback"),
            args={"vmid": vmid, "snapname": snapname, "start": start},
        )

    def _zfs_backed(self, g: Guest) -> bool:
        st = self.storages.get(g.storage)
        return st is not None and st.type == "zfspool"

    def _finish_rollback(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None or not ok:
            return  # like PVE: a failed rollback leaves the guest locked ('rollback')
        snap = g.snapshots.get(task.args["snapname"])
        if snap is not None:
            g.parent = snap.name
            host = self._nixos_in(g.vmid)
            if host is not None and snap.nixos is not None:
                host.restore(snap.nixos, with_ram=snap.vmstate)
            if task.args.get("start") or snap.vmstate:
                g.status = "running"
                g.started_at = time.time()
        if g.lock == "rollback":
            g.lock = None
        self._settle()

    # -- ZFS snapshots of the disks NixOS hosts live on ------------------------------------------

    def _nixos_disks(self, ssh_host: str) -> dict[str, NixosHost]:
        """The ZFS datasets on ``ssh_host`` (a node) that hold a NixOS host's guest disk."""
        out: dict[str, NixosHost] = {}
        for host in self.nixos_hosts().values():
            g = self.guests.get(host.vmid) if host.vmid is not None else None
            if g is not None and g.node == ssh_host and self._zfs_backed(g):
                out[f"rpool/data/{g.volume}"] = host
        return out

    def _disk_snapshots(self, h: SshHost, disks: dict[str, NixosHost]) -> set[str]:
        if h.zfs is None:
            return set()
        found: set[str] = set()
        for name in disks:
            ds = h.zfs.datasets.get(name)
            if ds is not None:
                found |= {f"{name}@{snap.name}" for snap in ds.snapshots}
        return found

    def _follow_zfs(
        self, h: SshHost, disks: dict[str, NixosHost], before: set[str], argv: list[str]
    ) -> None:
        """``zfs snapshot`` of a NixOS guest's disk keeps the host's disk state;
        ``zfs rollback`` to it restores that state and reboots the host (its disk changed
        under it)."""
        for full in self._disk_snapshots(h, disks) - before:
            self.zfs_images[(h.name, full)] = disks[full.split("@", 1)[0]].capture()
        if len(argv) >= 3 and argv[1] == "rollback":
            target = argv[-1]
            image = self.zfs_images.get((h.name, target))
            host = disks.get(target.split("@", 1)[0])
            if image is not None and host is not None:
                powered = host.powered
                host.restore(image, with_ram=False)
                if powered:
                    host.boot(self.nixos_ctx())
                self._settle()

    def _nixos_in(self, vmid: int) -> NixosHost | None:
        """The NixOS host living in guest ``vmid``, if any."""
        for host in self.nixos_hosts().values():
            if host.vmid == vmid:
                return host
        return None

    # -- guest power ---------------------------------------------------------------------------

    def guest_power(self, node: str, gtype: str, vmid: int, action: str, *, user: str) -> Task:
        """``POST .../status/start`` or ``.../status/stop``: a qmstart/qmstop (vz...) task."""
        prefix = "qm" if gtype == "qemu" else "vz"
        ttype = f"{prefix}{action}"
        g = self.guest_on(node, gtype, vmid)
        if g is None:
            raise PveError(500, self.missing_config(node, gtype, vmid))
        fail: str | None = None
        if g.template:
            fail = f"you can't {action} a {'vm' if gtype == 'qemu' else 'ct'} if it's a template"
        elif g.lock:
            fail = f"{g.kind} is locked ({g.lock})"
        elif action == "start" and g.status == "running":
            fail = f"{g.kind} {vmid} already running"
        if fail is not None:
            return self.new_task(
                node, ttype, str(vmid), user, kind="fail", duration=0, fail_now=fail
            )
        log = [] if action == "start" or g.status == "running" else [f"{g.kind} {vmid} not running"]
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind=action,
            duration=self.duration(action),
            args={"vmid": vmid},
            log=log,
        )

    def _finish_power(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None or not ok:
            return
        if task.kind == "start":
            g.status = "running"
            g.started_at = time.time()
            g.agent_ready_at = time.monotonic() + self.duration("agent")
        else:
            g.status = "stopped"
            g.started_at = None
        self._settle()

    # -- NixOS hosts ---------------------------------------------------------------------------

    def nixos_configure(self, host: str, fields: dict[str, Any]) -> Any:
        """Control op ``nixos``: set a host's upstream revision, build time and what its next
        generation does. ``host`` ``*`` means every NixOS host. Fields: ``upstream`` (a
        revision; not 40 hex digits: one is derived from it), ``build_fails``,
        ``failed_units`` (list or comma-separated), ``health_broken``, ``cut_network``,
        ``deadman_broken``, ``build_seconds``, ``healthy`` (first reset the behaviour).
        Returns the host's ``nixos`` state (a dict by host name for ``*``)."""
        unknown = set(fields) - set(NIXOS_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown nixos field(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(NIXOS_FIELDS)
            )
        with self.lock:
            self.tick()
            hosts = self.nixos_hosts()
            names = list(hosts) if host == "*" else [host]
            for name in names:
                if name not in hosts:
                    raise ValueError(f"no NixOS host {name!r}; known: {', '.join(hosts) or 'none'}")
            for name in names:
                self._configure_one(hosts[name], fields)
            mono = time.monotonic()
            if host == "*":
                return {n: hosts[n].to_json(mono) for n in names}
            return hosts[host].to_json(mono)

    def _configure_one(self, h: NixosHost, fields: dict[str, Any]) -> None:
        behaviour = nixos.Behaviour() if fields.get("healthy") else h.next
        changes: dict[str, Any] = {}
        for key in ("build_fails", "health_broken", "cut_network", "deadman_broken"):
            if fields.get(key) is not None:
                changes[key] = bool(fields[key])
        units = fields.get("failed_units")
        if units is not None:
            if isinstance(units, str):
                units = [u for u in re.split(r"[,\s]+", units) if u]
            changes["failed_units"] = tuple(nixos.unit_name(str(u)) for u in units)
        if changes:
            behaviour = nixos.Behaviour(**{**behaviour.__dict__, **changes})
        h.next = behaviour
        if fields.get("build_seconds") is not None:
            seconds = float(fields["build_seconds"])
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise ValueError("build_seconds must be a number >= 0")
            h.build_seconds = seconds
        upstream = fields.get("upstream")
        if upstream:
            rev = nixos.revision(str(upstream))
            if rev != h.upstream_rev:
                h.upstream_rev = rev
                h.upstream_modified = max(int(time.time()), h.upstream_modified + 1)

    def health(self, host: str) -> tuple[int, str] | None:
        """The lab's health endpoint for a host: (status, body), or None to answer nothing."""
        with self.lock:
            self.tick()
            h = self.nixos_hosts().get(host)
            if h is None:
                return 404, f"no NixOS host {host!r}\n"
            return h.health(time.monotonic())

    def ssh_refused(self, host: str) -> bool:
        """A NixOS host that is off, booting or has its network cut drops SSH connections."""
        with self.lock:
            h = self.hosts.get(host)
            if h is None or h.nixos is None:
                return False
            self.tick()
            return not h.nixos.reachable(time.monotonic())

    # -- SSH hosts -----------------------------------------------------------------------------

    def exec(
        self, host: str, argv: list[str], stdin: str | None = None, cwd: str | None = None
    ) -> tuple[int, str, str]:
        """Run one simulated command on a host; (exit code, stdout, stderr).

        A NixOS command that takes time (a build) sleeps here without the lab's lock, so
        that commands on other hosts (and other builds) go on meanwhile."""
        if not argv:
            return 2, "", "labsim: empty command\n"
        with self.lock:
            self.tick()
            h = self.hosts.get(host)
            if h is None:
                return 255, "", f"labsim: no such host {host!r}\n"
            prog = argv[0].rsplit("/", 1)[-1]
            if h.nixos is not None and prog in nixos.COMMANDS:
                if not h.nixos.up(time.monotonic()):
                    return 255, "", f"Connection to {host} closed by remote host.\n"
                result = nixos.run(h.nixos, argv, self.nixos_ctx(cwd))
                self._settle()
                epoch, interrupt = self.epoch, self.interrupt
            else:
                impl = COMMANDS.get(prog)
                if impl is None:
                    return 127, "", f"sh: 1: {prog}: not found\n"
                disks = self._nixos_disks(host) if prog == "zfs" and h.zfs is not None else {}
                before = self._disk_snapshots(h, disks)
                rc, out, err = impl(h, [prog, *argv[1:]], stdin, time.time())
                if disks and rc == 0:
                    self._follow_zfs(h, disks, before, argv)
                return rc, out, err
        while isinstance(result, nixos.Deferred):
            interrupted = interrupt.wait(result.delay)
            with self.lock:
                self.tick()
                if interrupted or epoch != self.epoch:
                    return 130, "", "error: interrupted by the user\n"
                if h.nixos is None or not h.nixos.up(time.monotonic()):
                    return 255, "", f"Connection to {host} closed by remote host.\n"
                result = result.finish()
                self._settle()
        return result

    # -- storages and backup archives ----------------------------------------------------------

    def storage_dir(self) -> Path | None:
        return self.root / "storage" if self.root is not None else None

    def dump_dir(self, st: Storage, pool: str | None) -> Path | None:
        """The real folder of a storage's archives (per node on a node-local storage)."""
        base = self.storage_dir()
        if base is None:
            return None
        return base / st.name / "dump" if pool is None else base / st.name / pool / "dump"

    def offsite_dir(self) -> Path | None:
        return self.root / "hosts" / OFFSITE_HOST / "backups" if self.root is not None else None

    def _build_backups(self, now: float) -> None:
        """Recreate the storage folders and the offsite folder, with the initial archives."""
        base = self.storage_dir()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
            for st in self.storages.values():
                if "backup" not in st.content:
                    continue
                pools: list[str | None] = [None] if st.shared else list(self.nodes)
                for pool in pools:
                    d = self.dump_dir(st, pool)
                    assert d is not None
                    d.mkdir(parents=True, exist_ok=True)
        off = self.offsite_dir()
        if off is not None:
            shutil.rmtree(off, ignore_errors=True)
            off.mkdir(parents=True, exist_ok=True)
        h = self.hosts.get(OFFSITE_HOST)
        if h is not None:
            h.files = off
        nas = self.storages.get("nas-backup")
        if nas is None or self.options.nodes is not None:
            return
        for vmid, days, protected, notes in DEFAULT_BACKUPS:
            g = self.guests.get(vmid)
            if g is None:
                continue
            ctime = int(now - days * 86400) // 3600 * 3600
            self._add_archive(nas, None, g, ctime, backup_size(g), notes, protected)

    def _add_archive(
        self,
        st: Storage,
        pool: str | None,
        g: Guest,
        ctime: int,
        size: int,
        notes: str,
        protected: bool,
        log: list[str] | None = None,
    ) -> Archive:
        name = backups.archive_name(g.type, g.vmid, ctime)
        d = self.dump_dir(st, pool)
        a = Archive(
            st.name,
            pool,
            name,
            g.vmid,
            g.type,
            ctime,
            size,
            path=d / name if d is not None else None,
            notes=notes,
            protected=protected,
            guest={
                "name": g.name,
                "maxdisk": g.maxdisk,
                "maxmem": g.maxmem,
                "cpus": g.cpus,
                "tags": list(g.tags),
                "agent": g.agent,
                "ostype": g.ostype,
            },
        )
        a.write()
        lp = a.log_path()
        if log is not None and lp is not None:
            lp.write_text("".join(line + "\n" for line in log), encoding="utf-8")
        st.archives.append(a)
        return a

    def set_storage(self, name: str, fields: dict[str, Any]) -> Storage:
        """Change a storage directly (tests): ``total``, ``used`` (other data), ``bandwidth``."""
        allowed = {"total", "used", "bandwidth"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a storage")
        with self.lock:
            self.tick()
            st = self.storages.get(name)
            if st is None:
                raise ValueError(f"no storage {name}")
            now = time.monotonic()
            self._progress_to(now)
            for key, value in fields.items():
                number = float(value)
                if not (number >= 0 and math.isfinite(number)):
                    raise ValueError(f"{key} must be a number >= 0")
                if key == "bandwidth" and number <= 0:
                    raise ValueError("bandwidth must be positive")
                setattr(st, key, number if key == "bandwidth" else int(number))
            self._rebalance(now)
            return st

    def require_storage(self, node: str, name: str) -> Storage:
        st = self.storages.get(name)
        if st is None or not st.on_node(node):
            raise PveError(500, f"storage '{name}' does not exist")
        return st

    def find_archive(self, node: str, volid: str, st: Storage | None = None) -> Archive:
        """The archive ``volid`` (``storage:backup/name``; or ``backup/name`` on ``st``)."""
        storage_name, sep, rest = volid.partition(":")
        if not sep:
            if st is None:
                raise PveError(500, f"unable to parse volume ID '{volid}'")
            storage_name, rest = st.name, volid
        st = self.require_storage(node, storage_name)
        filename = rest.removeprefix("backup/")
        for a in st.archives_for(node):
            if a.filename == filename:
                return a
        raise PveError(500, f"volume '{storage_name}:{rest}' does not exist")

    def delete_archive(self, node: str, storage: str, volume: str, *, user: str) -> Task:
        """``DELETE .../storage/{storage}/content/{volume}``: an ``imgdel`` task (its UPID
        id is the volume ID with ``:`` and ``/`` escaped as ``\\x3a`` and ``\\x2f``)."""
        st = self.require_storage(node, storage)
        a = self.find_archive(node, volume, st)
        tid = a.volid.replace(":", "\\x3a").replace("/", "\\x2f")
        if a.protected:
            where = a.path or f"/mnt/pve/{st.name}/dump/{a.filename}"
            return self.new_task(
                node,
                "imgdel",
                tid,
                user,
                kind="fail",
                duration=0,
                fail_now=f"cannot remove protected archive '{where}'",
            )
        a.remove()
        st.archives.remove(a)
        return self.new_task(
            node,
            "imgdel",
            tid,
            user,
            kind="fail",
            duration=0,
            log=[f"Removed volume '{a.volid}'"],
        )

    def prune(
        self,
        node: str,
        storage: str,
        options: str | None,
        gtype: str | None,
        vmid: int | None,
    ) -> list[tuple[Archive, str]]:
        """The marks of ``prunebackups`` on the archives a node sees on a storage."""
        st = self.require_storage(node, storage)
        try:
            opts = backups.parse_prune(options or "")
        except ValueError as exc:
            raise PveError(
                400, "Parameter verification failed.", {"prune-backups": str(exc)}
            ) from exc
        items = [
            a
            for a in st.archives_for(node)
            if (gtype is None or a.subtype == gtype) and (vmid is None or a.vmid == vmid)
        ]
        return backups.prune_marks(items, opts)

    def prune_apply(
        self,
        node: str,
        storage: str,
        options: str | None,
        gtype: str | None,
        vmid: int | None,
        *,
        user: str,
    ) -> Task:
        marks = self.prune(node, storage, options, gtype, vmid)
        st = self.storages[storage]
        log = []
        for a, mark in marks:
            if mark == "remove":
                a.remove()
                st.archives.remove(a)
                log.append(f"removed '{a.volid}'")
        return self.new_task(node, "prunebackups", storage, user, kind="fail", duration=0, log=log)

    # -- vzdump ----------------------------------------------------------------------------------

    def vzdump(self, node: str, params: dict[str, str], *, user: str) -> str:
        """``POST /nodes/{node}/vzdump``: a UPID, or ``OK`` when no listed guest is local."""
        vmids: list[int] = []
        if params.get("all") == "1":
            vmids = sorted(v for v, g in self.guests.items() if g.node == node)
        else:
            for part in re.split(r"[,;\s]+", params.get("vmid", "")):
                if part:
                    vmids.append(int(part))
            vmids = [v for v in vmids if v in self.guests and self.guests[v].node == node]
        if not vmids:
            return "OK"
        storage = params.get("storage", "local")
        st = self.require_storage(node, storage)
        if "backup" not in st.content:
            raise PveError(500, f"storage '{storage}' does not support backups")
        prune: dict[str, int] | None = None
        if params.get("prune-backups") is not None:
            try:
                prune = backups.parse_prune(params["prune-backups"])
            except ValueError as exc:
                raise PveError(
                    400, "Parameter verification failed.", {"prune-backups": str(exc)}
                ) from exc
        if params.get("remove") == "0":
            prune = None
        bwlimit = int(params.get("bwlimit") or 0) * 1024
        lockwait = int(params.get("lockwait") or 180)
        shown = [f"vzdump {' '.join(str(v) for v in vmids)}"]
        for key in ("all", "storage", "mode", "compress", "notes-template", "protected",
                    "prune-backups", "bwlimit", "lockwait", "remove"):  # fmt: skip
            if key in params and key != "all":
                value = params[key]
                shown.append(f"--{key} {shlex.quote(value)}")
        shown.append(f"--node {node}")
        tid = str(vmids[0]) if len(vmids) == 1 else ""
        task = self.new_task(
            node, "vzdump", tid, user, kind="vzdump", duration=math.inf, faults=False
        )
        task.log.append(f"INFO: starting new backup job: {' '.join(shown)}")
        job = BackupJob(
            task.upid,
            node,
            st.name,
            st.pool(node),
            vmids,
            " ".join(shown),
            mode=params.get("mode", "snapshot"),
            notes_template=params.get("notes-template"),
            protected=params.get("protected") == "1",
            prune=prune,
            bwlimit=float(bwlimit) if bwlimit > 0 else None,
        )
        self.backup_jobs[task.upid] = job
        now = time.monotonic()
        self._progress_to(now)
        if node in self.vzdump_locks:
            task.log.append("INFO: trying to get global lock - waiting...")
            job.deadline = now + lockwait * 60 * self.time_scale
        else:
            self._acquire(job, now)
        self._rebalance(now)
        return task.upid

    @staticmethod
    def _wall(t: float) -> float:
        return time.time() - (time.monotonic() - t)

    def advance_backups(self, now: float) -> None:
        """Process every backup event up to ``now``, in time order."""
        while self.backup_jobs:
            job = min(self.backup_jobs.values(), key=lambda j: j.next_event())
            t = job.next_event()
            if t > now:
                break
            self._progress_to(t)
            if job.state == "waiting":
                self._end_job(
                    job, t, "can't acquire lock '/var/run/vzdump.lock' - got timeout", log=True
                )
            else:
                self._finish_guest(job, t)
            self._rebalance(t)

    def _progress_to(self, t: float) -> None:
        for job in self.backup_jobs.values():
            if job.state == "running" and t > job.last:
                job.done = min(job.target, job.done + job.rate * (t - job.last))
                job.last = t

    def _rebalance(self, t: float) -> None:
        """Share each storage's bandwidth among the backups writing to it."""
        pools: dict[tuple[str, str | None], list[BackupJob]] = {}
        for job in self.backup_jobs.values():
            if job.state == "running":
                pools.setdefault((job.storage, job.pool), []).append(job)
        for (storage, _), jobs in pools.items():
            st = self.storages[storage]
            shares = backups.fair_shares(st.bandwidth, [j.bwlimit for j in jobs])
            for job, share in zip(jobs, shares, strict=True):
                job.rate = share / self.time_scale
                job.last = max(job.last, t)

    def _acquire(self, job: BackupJob, t: float) -> None:
        task = self.tasks[job.upid]
        if job.deadline != math.inf:
            task.log.append("INFO: got global lock")
        self.vzdump_locks[job.node] = job.upid
        job.deadline = math.inf
        self._start_guest(job, t)

    def _start_guest(self, job: BackupJob, t: float) -> None:
        task = self.tasks[job.upid]
        while job.queue:
            vmid = job.queue.pop(0)
            g = self.guests.get(vmid)
            kind = "VM" if g is None or g.type == "qemu" else "CT"
            if g is None or g.node != job.node:
                task.log.append(f"ERROR: Backup of VM {vmid} failed - unable to find VM {vmid}")
                job.errors += 1
                continue
            wall = self._wall(t)
            task.log.append(f"INFO: Starting Backup of VM {vmid} ({g.type})")
            task.log.append(
                "INFO: Backup started at "
                + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
            )
            task.log.append(f"INFO: status = {g.status}")
            if g.lock:
                task.log.append(f"ERROR: Backup of VM {vmid} failed - {kind} is locked ({g.lock})")
                job.errors += 1
                continue
            st = self.storages[job.storage]
            ctime = int(wall)
            taken = {a.filename for a in st.archives if a.node == job.pool}
            while backups.archive_name(g.type, vmid, ctime) in taken:
                ctime += 1
            job.filename = backups.archive_name(g.type, vmid, ctime)
            job.ctime = ctime
            job.vmid = vmid
            job.size = backup_size(g)
            job.done = 0.0
            job.last = t
            job.phase_start = t
            job.fail = None
            job.nospace = False
            reserved = sum(
                j.target - j.done
                for j in self.backup_jobs.values()
                if j is not job
                and j.state in ("running", "hung")
                and (j.storage, j.pool) == (st.name, job.pool)
            )
            free = max(0.0, st.total - st.used_for(job.pool) - reserved)
            job.target = float(job.size)
            if job.size > free:
                job.target = free
                job.nospace = True
            g.lock = "backup"
            if g.type == "qemu":
                task.log.append(f"INFO: VM Name: {g.name}")
                task.log.append(f"INFO: include disk 'scsi0' '{g.volid}' {g.maxdisk // GiB}G")
            else:
                task.log.append(f"INFO: CT Name: {g.name}")
                task.log.append("INFO: including mount point rootfs ('/') in backup")
            task.log.append(f"INFO: backup mode: {job.mode}")
            task.log.append("INFO: ionice priority: 7")
            where = self.dump_dir(st, job.pool)
            task.log.append(f"INFO: creating vzdump archive '{where}/{job.filename}'")
            job.state = "running"
            fault = self.take_fault("task", type="vzdump", id=str(vmid), node=job.node)
            if fault is not None:
                action = fault["action"]
                if action == "hang":
                    job.state = "hung"
                elif action in ("error", "drop"):
                    msg = str(fault.get("message") or fault.get("exitstatus") or "job failed")
                    job.fail = msg
                    if fault.get("exitstatus"):
                        job.exitstatus = str(fault["exitstatus"])
                    job.target = job.target / 2  # it fails half way
                elif action == "slow":
                    job.last = t + float(fault.get("delay", 0.0))
            return
        self._end_job(job, t, None)

    def _finish_guest(self, job: BackupJob, t: float) -> None:
        task = self.tasks[job.upid]
        vmid = job.vmid
        assert vmid is not None
        g = self.guests.get(vmid)
        if g is not None and g.lock == "backup":
            g.lock = None
        st = self.storages[job.storage]
        seconds = max(0.0, (t - job.phase_start) / self.time_scale)
        elapsed = time.strftime("%H:%M:%S", time.gmtime(seconds))
        if job.nospace or job.fail is not None or g is None:
            if job.nospace:
                task.log.append(
                    "INFO: zstd: error 70 : Write error : cannot write block : "
                    "No space left on device"
                )
                msg = "vma_queue_write: write error - No space left on device"
                if g is not None and g.type == "lxc":
                    msg = "command 'tar ... | zstd' failed: No space left on device"
            else:
                msg = job.fail or f"unable to find VM {vmid}"
            task.log.append(f"ERROR: Backup of VM {vmid} failed - {msg}")
            failed_at = time.localtime(self._wall(t))
            task.log.append(f"INFO: Failed at {time.strftime('%Y-%m-%d %H:%M:%S', failed_at)}")
            job.errors += 1
        else:
            log_start = len(task.log)
            rate = job.size / seconds / MiB if seconds > 0 else 0.0
            task.log.append(
                f"INFO: transferred {g.maxdisk / GiB:.2f} GiB in {int(seconds)} seconds "
                f"({rate:.1f} MiB/s)"
            )
            task.log.append(f"INFO: archive file size: {backups.format_size(job.size)}")
            notes = ""
            if job.notes_template:
                notes = (
                    job.notes_template.replace("{{guestname}}", g.name)
                    .replace("{{vmid}}", str(g.vmid))
                    .replace("{{node}}", job.node)
                    .replace("{{cluster}}", self.cluster)
                    .replace("\\n", "\n")
                )
                task.log.append("INFO: adding notes to backup")
            if job.protected:
                task.log.append("INFO: marking backup as protected")
            ctime = job.ctime
            self._add_archive(
                st, job.pool, g, ctime, job.size, notes, job.protected, log=task.log[log_start:]
            )
            if job.prune is not None:
                marks = backups.prune_marks(
                    [
                        a
                        for a in st.archives
                        if a.node == job.pool and a.vmid == vmid and a.subtype == g.type
                    ],
                    job.prune,
                )
                opts = ",".join(f"{k}={v}" for k, v in job.prune.items())
                task.log.append(f"INFO: prune older backups with retention: {opts}")
                removed = 0
                for a, mark in marks:
                    if mark == "remove":
                        task.log.append(f"INFO: removing backup '{a.volid}'")
                        a.remove()
                        st.archives.remove(a)
                        removed += 1
                task.log.append(f"INFO: pruned {removed} backup(s)")
            task.log.append(f"INFO: Finished Backup of VM {vmid} ({elapsed})")
            task.log.append(
                "INFO: Backup finished at "
                + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._wall(t)))
            )
        job.vmid = None
        job.state = "running"
        job.target = job.done = 0.0
        job.rate = 0.0
        self._start_guest(job, t)

    def _end_job(self, job: BackupJob, t: float, fail: str | None, log: bool = False) -> None:
        """The vzdump task ends at ``t``: release the node's lock to the next job waiting."""
        task = self.tasks[job.upid]
        job.state = "done"
        self.backup_jobs.pop(job.upid, None)
        if job.vmid is not None:
            g = self.guests.get(job.vmid)
            if g is not None and g.lock == "backup":
                g.lock = None
        if fail is None and job.errors:
            fail = job.exitstatus or "job errors"
            task.log.append("INFO: Backup job finished with errors")
        elif fail is None:
            task.log.append("INFO: Backup job finished successfully")
        elif log:
            task.log.append(f"ERROR: {fail}")
        task.fail_with = fail
        task.status = "stopped"
        task.exitstatus = fail or "OK"
        task.ended = self._wall(t)
        task.endtime = max(task.starttime, int(task.ended))
        task.log.append("TASK OK" if fail is None else f"TASK ERROR: {fail}")
        if self.vzdump_locks.get(job.node) == job.upid:
            del self.vzdump_locks[job.node]
            waiting = [
                j for j in self.backup_jobs.values() if j.node == job.node and j.state == "waiting"
            ]
            if waiting:
                self._acquire(waiting[0], t)

    def stop_task(self, node: str, upid: str) -> None:
        """``DELETE /nodes/{node}/tasks/{upid}``: a running task ends 'interrupted by signal'."""
        task = self.tasks.get(upid)
        if task is None or task.node != node or task.status != "running":
            return
        now = time.monotonic()
        self._progress_to(now)
        job = self.backup_jobs.get(upid)
        if job is not None:
            if job.vmid is not None:
                task.log.append(f"ERROR: Backup of VM {job.vmid} failed - interrupted by signal")
            self._end_job(job, now, "interrupted by signal", log=False)
            self._rebalance(now)
            return
        task.fail_with = "interrupted by signal"
        self._complete(task)

    # -- restore, destroy, guest agent -----------------------------------------------------------

    def restore(
        self,
        node: str,
        gtype: str,
        vmid: int,
        archive: str,
        *,
        storage: str | None,
        force: bool,
        start: bool,
        unique: bool,
        user: str,
    ) -> Task:
        """``POST /nodes/{node}/qemu`` with ``archive`` (lxc: ``ostemplate`` + ``restore``)."""
        kind = "VM" if gtype == "qemu" else "CT"
        emsg = f"unable to restore {kind} {vmid} -"
        existing = self.guests.get(vmid)
        if existing is not None:
            if not force or existing.node != node or existing.type != gtype:
                raise PveError(
                    500, f"{emsg} {kind} {vmid} already exists on node '{existing.node}'"
                )
            if existing.status == "running":
                raise PveError(500, f"{emsg} {kind} is running")
            if existing.lock:
                raise PveError(500, f"{emsg} {kind} is locked ({existing.lock})")
        a = self.find_archive(node, archive)
        if a.subtype != gtype:
            raise PveError(500, f"{emsg} archive '{a.volid}' is not a {gtype} backup")
        target = storage or "local-zfs"
        tst = self.require_storage(node, target)
        if not {"images", "rootdir"} & set(tst.content):
            raise PveError(500, f"storage '{target}' does not support vm images")
        info = a.guest
        g = Guest(
            vmid,
            "qemu" if gtype == "qemu" else "lxc",
            str(info.get("name") or f"restored-{vmid}"),
            node,
            status="stopped",
            lock="create",
            tags=list(info.get("tags") or []),
            maxdisk=int(info.get("maxdisk") or 8 * GiB),
            maxmem=int(info.get("maxmem") or 2 * GiB),
            cpus=int(info.get("cpus") or 1),
            agent=bool(info.get("agent")),
            ostype=str(info.get("ostype") or "l26"),
            storage=target,
        )
        self.guests[vmid] = g
        st = self.storages[a.storage]
        prefix = "qm" if gtype == "qemu" else "vz"
        duration = self.duration("restore") + a.size / st.bandwidth * self.time_scale
        log = [
            f"restore vma archive: zstd -q -d -c {a.path} | vma extract -v -r "
            "/var/tmp/vzdumptmp.fifo - /var/tmp/vzdumptmp"
            if gtype == "qemu"
            else f"recovering backed-up configuration from '{a.volid}'",
            f"new volume ID is '{g.volid}'",
        ]
        return self.new_task(
            node,
            f"{prefix}restore",
            str(vmid),
            user,
            kind="restore",
            duration=duration,
            args={"vmid": vmid, "start": start, "unique": unique, "volid": a.volid},
            log=log,
        )

    def _finish_restore(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None:
            return
        if not ok:  # PVE removes what it created
            del self.guests[g.vmid]
            return
        g.lock = None
        if task.args.get("start"):
            g.status = "running"
            g.started_at = time.time()
            g.agent_ready_at = time.monotonic() + self.duration("agent")
        self._settle()

    def destroy(self, node: str, gtype: str, vmid: int, *, user: str) -> Task:
        """``DELETE /nodes/{node}/{qemu|lxc}/{vmid}``: a running guest must be stopped first."""
        g = self.load_guest(node, gtype, vmid)
        if g.status == "running":
            if gtype == "qemu":
                raise PveError(500, f"VM {vmid} is running - destroy failed")
            raise PveError(500, f"unable to destroy CT {vmid} - container is running")
        prefix = "qm" if gtype == "qemu" else "vz"
        ttype = f"{prefix}destroy"
        if g.lock:
            return self.new_task(
                node, ttype, str(vmid), user, kind="fail", duration=0,
                fail_now=f"{g.kind} is locked ({g.lock})",
            )  # fmt: skip
        g.lock = "destroyed"
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind="destroy",
            duration=self.duration("destroy"),
            args={"vmid": vmid},
            log=[
                "Removing image: 100% complete...done.",
                f"purging {g.kind} {vmid} configuration",
            ],
        )

    def _finish_destroy(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None:
            return
        if ok:
            del self.guests[g.vmid]
        elif g.lock == "destroyed":
            g.lock = None

    def agent_ping(self, node: str, vmid: int) -> dict[str, Any]:
        g = self.load_guest(node, "qemu", vmid)
        if g.status != "running":
            raise PveError(500, f"VM {vmid} is not running")
        if not g.agent:
            raise PveError(500, "No QEMU guest agent configured")
        if time.monotonic() < g.agent_ready_at:
            raise PveError(500, "QEMU guest agent is not running")
        return {"result": {}}

    # -- views ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state, for ``python -m labsim state`` and ``LabClient.state()``."""
        with self.lock:
            self.tick()
            now = time.time()
            mono = time.monotonic()
            return {
                "cluster": self.cluster,
                "options": self.options.to_json(),
                "time_scale": self.time_scale,
                "durations": dict(self.durations),
                "nodes": {n: node.to_json(now) for n, node in self.nodes.items()},
                "guests": {str(v): g.to_json(now) for v, g in sorted(self.guests.items())},
                "storages": {s: st.to_json() for s, st in self.storages.items()},
                "vzdump_locks": dict(self.vzdump_locks),
                "backup_jobs": [j.to_json() for j in self.backup_jobs.values()],
                "tasks": [t.to_json() for t in self.tasks.values()],
                "hosts": {h: host.to_json(mono) for h, host in self.hosts.items()},
                "faults": [f.to_json() for f in self.faults],
            }


def _fault_matches(spec: dict[str, Any], attrs: dict[str, str | None]) -> bool:
    target = spec["target"]
    if target == "api":
        if "method" in spec and str(spec["method"]).upper() != (attrs.get("method") or ""):
            return False
        return "path" not in spec or re.search(spec["path"], attrs.get("path") or "") is not None
    if target in ("command", "connect"):
        if "host" in spec and spec["host"] != attrs.get("host"):
            return False
        if target == "command" and "command" in spec:
            return re.search(spec["command"], attrs.get("command") or "") is not None
        return True
    # task
    for key in ("type", "id"):
        if key in spec and re.fullmatch(spec[key], attrs.get(key) or "") is None:
            return False
    return "node" not in spec or spec["node"] == attrs.get("node")
