"""The Proxmox VE cluster: nodes, guests, their snapshots and power, destroying them.

The API routes are ``labsim.pve.api``; backups, storages' content and restores are
``labsim.pve.backups``. Systems whose state lives inside guests (NixOS hosts) join
``PveSystem.images``: a snapshot keeps their state and a rollback restores it.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable
from typing import Any

from labsim.core import ApiRoute, Arg, ControlOp, System, Task
from labsim.core.system import Effect
from labsim.pve.api import cluster, guests, tasks
from labsim.pve.model import (
    DURATIONS,
    RESERVED_SNAPNAMES,
    Guest,
    GuestImages,
    Node,
    PveError,
    Snapshot,
    Storage,
)
from labsim.pve.topology import default_topology, generated_topology


class PveSystem(System):
    """The cluster as the Proxmox API shows it; every task runs on one of its nodes."""

    name = "pve"

    def __init__(self) -> None:
        self.images: list[GuestImages] = []
        self.cluster = ""
        self.qdevice = False
        self.nodes: dict[str, Node] = {}
        self.guests: dict[int, Guest] = {}
        self.storages: dict[str, Storage] = {}

    def build(self, now: float) -> None:
        opts = self.lab.options
        if opts.nodes is None:
            topo = default_topology(now)
        else:
            topo = generated_topology(now, opts.nodes, opts.guests_per_node)
        self.cluster = topo.cluster
        self.qdevice = topo.qdevice
        self.nodes = topo.nodes
        self.guests = topo.guests
        self.storages = topo.storages
        for name in topo.hosts:
            self.lab.add_host(name)

    def durations(self) -> dict[str, float]:
        seconds = self.lab.options.snapshot_seconds
        return {**DURATIONS, "snapshot": seconds, "delsnapshot": seconds, "rollback": seconds}

    def routes(self) -> list[ApiRoute]:
        return [*cluster.ROUTES, *guests.ROUTES, *tasks.ROUTES]

    def task_effects(self) -> dict[str, Effect]:
        return {
            "snapshot": self._finish_snapshot,
            "delsnapshot": self._finish_delsnapshot,
            "rollback": self._finish_rollback,
            "start": self._finish_power,
            "stop": self._finish_power,
            "destroy": self._finish_destroy,
        }

    def controls(self) -> list[ControlOp]:
        def set_guest(msg: dict[str, Any]) -> dict[str, Any]:
            fields = msg.get("fields") or {}
            with self.lab.lock:
                return self.set_guest(int(msg["vmid"]), dict(fields)).to_json(time.time())

        return [ControlOp("set_guest", set_guest, (Arg("vmid", "the guest", type="int"),))]

    def quorate(self) -> bool:
        """Whether the online nodes (and the QDevice's vote) are more than half the votes."""
        votes = sum(1 for n in self.nodes.values() if n.status == "online") + self.qdevice
        return votes * 2 > len(self.nodes) + self.qdevice

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "cluster": self.cluster,
            "qdevice": self.qdevice,
            "quorate": self.quorate(),
            "nodes": {n: node.to_json(now) for n, node in self.nodes.items()},
            "guests": {str(v): g.to_json(now) for v, g in sorted(self.guests.items())},
            "storages": {s: st.to_json() for s, st in self.storages.items()},
        }

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
        """Start a worker task on ``node`` (see ``LabCore.new_task``)."""
        return self.lab.new_task(
            node,
            self.nodes[node].boot_time,
            ttype,
            tid,
            user,
            kind=kind,
            duration=duration,
            args=args,
            log=log,
            fail_now=fail_now,
            faults=faults,
        )

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
        """Change guest fields directly (tests): lock, status, node, tags, pool, ...;
        ``description`` and ``onboot`` (0/1: started when its node boots) are the config's."""
        allowed = {
            "name", "node", "status", "lock", "tags", "pool", "template", "agent",
            "hastate", "maxdisk", "maxmem", "cpus", "description", "onboot",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a guest")
        with self.lab.lock:
            self.lab.tick()
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
                        g.agent_ready_at = time.monotonic() + self.lab.duration("agent")
                if key == "lock" and value == "":
                    value = None
                if key in ("description", "onboot"):
                    g.config[key] = str(int(value)) if key == "onboot" else str(value)
                    continue
                setattr(g, key, value)
            self.lab.settle()
            return g

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
        keep_ram = bool(vmstate and gtype == "qemu" and g.status == "running")
        vfio = sorted(k for k in g.config if k.startswith("hostpci"))
        if keep_ram and vfio:  # no pre-check in PVE: QEMU refuses to save VFIO state
            return self.new_task(node, ttype, str(vmid), user, kind="fail", duration=0,
                                 fail_now=f"VFIO migration is not supported ({vfio[0]}): "
                                 "snapshot with RAM failed")  # fmt: skip
        g.lock = "snapshot"
        g.snapshots[snapname] = Snapshot(
            snapname,
            description=description or "",
            snaptime=int(time.time()),
            vmstate=keep_ram,
            parent=g.parent,
            snapstate="prepare",
            config=copy.deepcopy(g.render_config()),
        )
        for images in self.images:
            image = images.capture(vmid)
            if image is not None:
                g.snapshots[snapname].images[images.name] = image
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
            duration=self.lab.duration("snapshot"),
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
            duration=self.lab.duration("delsnapshot"),
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
            elif self.zfs_backed(g) and any(
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
        self.lab.settle()
        return self.new_task(
            node,
            ttype,
            str(vmid),
            user,
            kind="rollback",
            duration=self.lab.duration("rollback"),
            args={"vmid": vmid, "snapname": snapname, "start": start},
        )

    def zfs_backed(self, g: Guest) -> bool:
        """Whether the guest's disk is on a ZFS pool storage."""
        st = self.storages.get(g.storage)
        return st is not None and st.type == "zfspool"

    def _finish_rollback(self, task: Task, ok: bool) -> None:
        g = self.guests.get(task.args["vmid"])
        if g is None or not ok:
            return  # like PVE: a failed rollback leaves the guest locked ('rollback')
        snap = g.snapshots.get(task.args["snapname"])
        if snap is not None:
            g.parent = snap.name
            for images in self.images:
                image = snap.images.get(images.name)
                if image is not None:
                    images.restore(g.vmid, image, with_ram=snap.vmstate)
            if task.args.get("start") or snap.vmstate:
                g.status = "running"
                g.started_at = time.time()
        if g.lock == "rollback":
            g.lock = None
        self.lab.settle()

    # -- guest power ---------------------------------------------------------------------------

    def guest_power(self, node: str, gtype: str, vmid: int, action: str, *, user: str) -> Task:
        """``POST .../status/start``, ``.../status/stop`` or ``.../status/shutdown``: a
        qmstart/qmstop/qmshutdown (vz...) task (a clean shutdown ends as a stop does). A
        running VM's start fails its task ("VM 101 already running"); a running container's
        is refused at once (HTTP 500 "CT 102 already running"), as PVE does."""
        prefix = "qm" if gtype == "qemu" else "vz"
        ttype = f"{prefix}{action}"
        action = "stop" if action == "shutdown" else action
        g = self.guest_on(node, gtype, vmid)
        if g is None:
            raise PveError(500, self.missing_config(node, gtype, vmid))
        if action == "start" and gtype == "lxc" and g.status == "running" and not g.template:
            raise PveError(500, f"CT {vmid} already running")  # refused before any task
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
            duration=self.lab.duration(action),
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
            g.agent_ready_at = time.monotonic() + self.lab.duration("agent")
        else:
            g.status = "stopped"
            g.started_at = None
        self.lab.settle()

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
            duration=self.lab.duration("destroy"),
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
