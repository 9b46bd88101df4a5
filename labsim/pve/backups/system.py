"""Backups on the cluster's storages: archives, pruning, vzdump (``engine``) and restores.

Archives are real files (see ``archive``) in ``DIR/storage/<storage>/dump/`` (a shared
storage) or ``DIR/storage/<storage>/<node>/dump/`` (a node-local one).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

from labsim.core import ApiRoute, Arg, ControlOp, System, Task
from labsim.core.system import Effect
from labsim.pve.backups import archive
from labsim.pve.backups.archive import Archive
from labsim.pve.backups.engine import VzdumpEngine
from labsim.pve.model import GiB, Guest, PveError, Storage
from labsim.pve.system import PveSystem
from labsim.pve.topology import DEFAULT_BACKUPS, backup_size


class BackupsSystem(System):
    """Backup archives, the vzdump engine and restores; needs the ``pve`` system before it."""

    name = "backups"
    pve: PveSystem
    engine: VzdumpEngine

    def durations(self) -> dict[str, float]:
        # qmrestore / vzrestore: this plus the archive size over the storage's bandwidth
        return {"restore": 2.0}

    def routes(self) -> list[ApiRoute]:
        from labsim.pve.backups import routes

        return list(routes.ROUTES)

    def task_effects(self) -> dict[str, Effect]:
        return {
            "vzdump": lambda task, ok: None,  # the engine does the work
            "restore": self._finish_restore,
        }

    def controls(self) -> list[ControlOp]:
        def set_storage(msg: dict[str, Any]) -> dict[str, Any]:
            fields = msg.get("fields") or {}
            if not isinstance(fields, dict):
                raise ValueError("set_storage needs fields, an object")
            with self.lab.lock:
                return self.set_storage(str(msg.get("storage", "")), dict(fields)).to_json()

        return [ControlOp("set_storage", set_storage, (Arg("storage", "the storage"),))]

    def to_json(self) -> dict[str, Any]:
        return {
            "vzdump_locks": dict(self.engine.locks),
            "backup_jobs": [j.to_json() for j in self.engine.jobs.values()],
        }

    def before_tasks(self, mono: float) -> None:
        self.engine.advance(mono)

    def time_scale_changing(self, mono: float) -> None:
        self.engine.progress_to(mono)

    def time_scale_changed(self, mono: float) -> None:
        self.engine.rebalance(mono)

    def stop_task(self, task: Task, mono: float) -> bool:
        return self.engine.stop(task, mono)

    def vzdump(self, node: str, params: dict[str, str], *, user: str) -> str:
        """``POST /nodes/{node}/vzdump``: a UPID, or ``OK`` when no listed guest is local."""
        return self.engine.vzdump(node, params, user=user)

    def storage_dir(self) -> Path | None:
        return self.lab.root / "storage" if self.lab.root is not None else None

    def dump_dir(self, st: Storage, pool: str | None) -> Path | None:
        """The real folder of a storage's archives (per node on a node-local storage)."""
        base = self.storage_dir()
        if base is None:
            return None
        return base / st.name / "dump" if pool is None else base / st.name / pool / "dump"

    def build(self, now: float) -> None:
        """Recreate the storage folders, with the initial archives."""
        self.pve = self.lab.system(PveSystem)
        self.engine = VzdumpEngine(self)
        base = self.storage_dir()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
            for st in self.pve.storages.values():
                if "backup" not in st.content:
                    continue
                pools: list[str | None] = [None] if st.shared else list(self.pve.nodes)
                for pool in pools:
                    d = self.dump_dir(st, pool)
                    assert d is not None
                    d.mkdir(parents=True, exist_ok=True)
        nas = self.pve.storages.get("nas-backup")
        if nas is None or self.lab.options.nodes is not None:
            return
        for vmid, days, protected, notes in DEFAULT_BACKUPS:
            g = self.pve.guests.get(vmid)
            if g is None:
                continue
            ctime = int(now - days * 86400) // 3600 * 3600
            self.add_archive(nas, None, g, ctime, backup_size(g), notes, protected)

    def add_archive(
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
        name = archive.archive_name(g.type, g.vmid, ctime)
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
        with self.lab.lock:
            self.lab.tick()
            st = self.pve.storages.get(name)
            if st is None:
                raise ValueError(f"no storage {name}")
            now = time.monotonic()
            self.engine.progress_to(now)
            for key, value in fields.items():
                number = float(value)
                if not (number >= 0 and math.isfinite(number)):
                    raise ValueError(f"{key} must be a number >= 0")
                if key == "bandwidth" and number <= 0:
                    raise ValueError("bandwidth must be positive")
                setattr(st, key, number if key == "bandwidth" else int(number))
            self.engine.rebalance(now)
            return st

    def require_storage(self, node: str, name: str) -> Storage:
        st = self.pve.storages.get(name)
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
            return self.pve.new_task(
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
        return self.pve.new_task(
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
            opts = archive.parse_prune(options or "")
        except ValueError as exc:
            raise PveError(
                400, "Parameter verification failed.", {"prune-backups": str(exc)}
            ) from exc
        items = [
            a
            for a in st.archives_for(node)
            if (gtype is None or a.subtype == gtype) and (vmid is None or a.vmid == vmid)
        ]
        return archive.prune_marks(items, opts)

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
        st = self.pve.storages[storage]
        log = []
        for a, mark in marks:
            if mark == "remove":
                a.remove()
                st.archives.remove(a)
                log.append(f"removed '{a.volid}'")
        return self.pve.new_task(
            node, "prunebackups", storage, user, kind="fail", duration=0, log=log
        )

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
        name: str | None = None,
        tags: str | None = None,
        description: str | None = None,
    ) -> Task:
        """``POST /nodes/{node}/qemu`` with ``archive`` (lxc: ``ostemplate`` + ``restore``);
        ``name``, ``tags`` and ``description``, when given, replace the backed-up ones."""
        kind = "VM" if gtype == "qemu" else "CT"
        emsg = f"unable to restore {kind} {vmid} -"
        existing = self.pve.guests.get(vmid)
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
            name or str(info.get("name") or f"restored-{vmid}"),
            node,
            status="stopped",
            lock="create",
            tags=(
                [t for t in re.split(r"[;, ]", tags) if t]
                if tags is not None
                else list(info.get("tags") or [])
            ),
            maxdisk=int(info.get("maxdisk") or 8 * GiB),
            maxmem=int(info.get("maxmem") or 2 * GiB),
            cpus=int(info.get("cpus") or 1),
            agent=bool(info.get("agent")),
            ostype=str(info.get("ostype") or "l26"),
            storage=target,
        )
        if description is not None:
            g.config["description"] = description
        self.pve.guests[vmid] = g
        st = self.pve.storages[a.storage]
        prefix = "qm" if gtype == "qemu" else "vz"
        duration = self.lab.duration("restore") + a.size / st.bandwidth * self.lab.time_scale
        log = [
            f"restore vma archive: zstd -q -d -c {a.path} | vma extract -v -r "
            "/var/tmp/vzdumptmp.fifo - /var/tmp/vzdumptmp"
            if gtype == "qemu"
            else f"recovering backed-up configuration from '{a.volid}'",
            f"new volume ID is '{g.volid}'",
        ]
        return self.pve.new_task(
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
        g = self.pve.guests.get(task.args["vmid"])
        if g is None:
            return
        if not ok:  # PVE removes what it created
            del self.pve.guests[g.vmid]
            return
        g.lock = None
        if task.args.get("start"):
            g.status = "running"
            g.started_at = time.time()
            g.agent_ready_at = time.monotonic() + self.lab.duration("agent")
        self.lab.settle()
