"""The lab's topologies: the documented default one, and generated ones for benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from labsim.pve.model import (
    CLUSTER_NAME,
    DEFAULT_MIRROR,
    DEFAULT_PENDING,
    NEW_KERNEL,
    PACKAGE_VERSIONS,
    GiB,
    Guest,
    GuestType,
    MiB,
    Node,
    Snapshot,
    Storage,
)


@dataclass
class Topology:
    cluster: str
    nodes: dict[str, Node]
    guests: dict[int, Guest]
    storages: dict[str, Storage]
    hosts: list[str]
    qdevice: bool = False  # a corosync QDevice adds a vote (a 2-node cluster needs one)


def behind(node: Node) -> Node:
    """``node`` with updates waiting on the mirror (a new kernel among them); its cached
    list knows all but the kernel."""
    node.mirror = dict(DEFAULT_MIRROR)
    node.pending = dict(DEFAULT_PENDING["pve1"])
    return node


def up_to_date(node: Node) -> Node:
    """``node`` already upgraded to what the mirror offers, running the new kernel."""
    node.installed = {**PACKAGE_VERSIONS, **DEFAULT_MIRROR}
    node.mirror = dict(node.installed)
    node.kernels = sorted({*node.kernels, NEW_KERNEL})
    node.kernel_running = node.kernel_installed = NEW_KERNEL
    node.pending = {}
    return node


# --- topologies -------------------------------------------------------------------------------


def _storages() -> dict[str, Storage]:
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
    """The documented lab: ``pve1``, ``pve2``, seven guests, SSH hosts pve1, pve2 and nas
    (the offsite host is the offsite system's)."""
    boot = now - 12 * 86400
    nodes = {
        "pve1": behind(Node("pve1", 1, "192.168.100.11", boot_time=boot)),
        "pve2": up_to_date(Node("pve2", 2, "192.168.100.12", boot_time=boot)),
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
              cpus=8, agent=True, ostype="win11",
              config={"hostpci0": "0000:01:00.0,pcie=1,x-vga=1"}),
        Guest(104, "qemu", "homeassistant", "pve2", pool="apps", maxdisk=32 * GiB,
              maxmem=4 * GiB, cpus=2, agent=True, started_at=up, hastate="started"),
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
        _storages(),
        ["pve1", "pve2", "nas"],
        qdevice=True,
    )


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
    every seventh stopped, every fifth running VM HA-managed, every eleventh VM with a PCI
    device, all on the shared ``ceph-vm`` storage but every fourth on ``local-zfs``) plus
    one template per node, for benchmarks. Every node has updates waiting (a new kernel
    among them); a 2-node cluster has a QDevice."""
    boot = now - 12 * 86400
    up = now - 86400
    node_map = {
        f"pve{i}": behind(Node(f"pve{i}", i, f"192.168.100.{10 + i}", boot_time=boot))
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
                storage="local-zfs" if vmid % 4 == 3 else "ceph-vm",
            )
            if gtype == "qemu" and not stopped and vmid % 5 == 0:
                guests[vmid].hastate = "started"
            elif gtype == "qemu" and vmid % 11 == 0:
                guests[vmid].config["hostpci0"] = "0000:01:00.0,pcie=1"
            vmid += 1
        tid = 9000 + i - 1
        guests[tid] = Guest(
            tid, "qemu", f"template-{name}", name, status="stopped", template=True,
            maxdisk=16 * GiB, agent=True,
        )  # fmt: skip
    storages = _storages()
    # shared, so its guests can migrate (those of every fourth VMID stay on local-zfs)
    storages["ceph-vm"] = Storage(
        "ceph-vm", "rbd", ["images", "rootdir"], shared=True, total=8192 * GiB,
        bandwidth=800 * MiB,
    )  # fmt: skip
    return Topology(
        CLUSTER_NAME, node_map, guests, storages, [*node_map, "nas"], qdevice=nodes == 2
    )
