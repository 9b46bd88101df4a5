"""The Proxmox model: cluster constants, nodes, guests with their snapshots, storages.

``PveError`` is how the API answers a failure (HTTP status and PVE's message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from labsim.pve.backups.archive import Archive

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
    "proxmox-ve": "9.1.0",
    "pve-manager": "9.1.1",
    "proxmox-kernel-6.14": "6.14.11-4",
    f"proxmox-kernel-{KERNEL}-signed": "6.14.11-4",
    "libpve-common-perl": "9.0.9",
    "pve-ha-manager": "5.0.5",
    "qemu-server": "9.0.30",
    "pve-qemu-kvm": "10.1.2-4",
    "pve-container": "6.0.18",
    "openssl": "3.5.1-1",
    "tzdata": "2025b-4",
}
DEBIAN_PACKAGES = frozenset({"openssl", "tzdata"})
# what each default node has pending: pve1 is behind, pve2 is up to date
DEFAULT_PENDING = {
    "pve1": {"pve-manager": "9.1.2", "openssl": "3.5.1-1+deb13u1"},
    "pve2": {},
}
# what the package mirror offers beyond that; pve1's cached list (``pending``) predates the
# new kernel, so an ``apt-get update`` (or ``POST /nodes/{node}/apt/update``) shows it
NEW_KERNEL = "6.14.11-5-pve"
DEFAULT_MIRROR = {
    "pve-manager": "9.1.2",
    "openssl": "3.5.1-1+deb13u1",
    "proxmox-kernel-6.14": "6.14.11-5",
    f"proxmox-kernel-{NEW_KERNEL}-signed": "6.14.11-5",
}

# Snapshot names PVE refuses before it starts a task.
RESERVED_SNAPNAMES = ("current", "pending", "vzdump")

# the durations of this system's tasks, before the time scale
DURATIONS: dict[str, float] = {
    "snapshot": 2.0,  # qmsnapshot / vzsnapshot
    "delsnapshot": 2.0,  # qmdelsnapshot / vzdelsnapshot
    "rollback": 2.0,  # qmrollback / vzrollback
    "start": 1.0,  # qmstart / vzstart
    "stop": 1.0,  # qmstop / vzstop
    "agent": 3.0,  # a started VM's guest agent answers after this
    "destroy": 1.0,  # qmdestroy / vzdestroy
}


class Image(Protocol):
    """The state of something living in a guest, kept by a snapshot."""

    def summary(self) -> dict[str, Any]: ...


class GuestImages(Protocol):
    """A system whose state lives inside guests: snapshots keep it, rollbacks restore it."""

    name: str

    def capture(self, vmid: int) -> Image | None:
        """The state inside guest ``vmid`` now (None: nothing of this system lives there)."""

    def restore(self, vmid: int, image: Image, *, with_ram: bool) -> None:
        """Put guest ``vmid`` back to ``image`` (``with_ram``: a snapshot with its RAM)."""


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
    # what lives in the guest, as it was, by system (the NixOS host: "nixos"); see GuestImages
    images: dict[str, Image] = field(default_factory=dict)

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
        for key, image in self.images.items():
            out[key] = image.summary()
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

    @property
    def kind(self) -> str:
        """``VM`` or ``CT``, as PVE words its messages."""
        return "VM" if self.type == "qemu" else "CT"

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
    """A cluster node, with its packages (``labsim.pve.apt`` installs them) and kernels."""

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
    # upgradable packages, as ``GET /nodes/{node}/apt/update`` lists them (name -> new version):
    # the node's cached list, refreshed by ``apt-get update`` and after an upgrade
    pending: dict[str, str] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=lambda: dict(PACKAGE_VERSIONS))
    mirror: dict[str, str] = field(default_factory=dict)  # what the package mirror offers
    held: list[str] = field(default_factory=list)  # apt-mark hold
    half_configured: list[str] = field(default_factory=list)  # an upgrade that broke off
    kernels: list[str] = field(default_factory=lambda: [KERNEL])  # installed kernel ABIs
    kernel_pin: str | None = None  # proxmox-boot-tool kernel pin
    kernel_next_boot: str | None = None  # proxmox-boot-tool kernel pin --next-boot
    boot_id: str = ""
    reboots: int = 0

    def pending_updates(self) -> list[dict[str, Any]]:
        """``GET /nodes/{node}/apt/update``: one entry per upgradable package (a package
        the upgrade pulls in new, such as a new kernel ABI, has no ``OldVersion``)."""
        out = []
        for package, version in sorted(self.pending.items()):
            old = self.installed.get(package)
            origin = "Debian" if package in DEBIAN_PACKAGES else "Proxmox"
            out.append(
                {
                    "Package": package,
                    "Title": f"{package} (simulated)",
                    "Description": f"{package} (simulated by labsim)",
                    "Version": version,
                    "Origin": origin,
                    "Priority": "optional",
                    "Section": "admin",
                    "Arch": "amd64",
                }
            )
            if old is not None:
                out[-1]["OldVersion"] = old
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
