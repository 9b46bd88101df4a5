"""The vzdump engine: backups write their archives at a share of their storage's bandwidth.

Each vzdump task writes its guests' archives one after another, at a share of its storage's
bandwidth (shared with the other backups to that storage, recomputed whenever one starts or
ends), one vzdump at a time per node (the others wait for the node's lock, up to
``lockwait``). Events are processed in time order by ``advance``, called at every tick.
"""

from __future__ import annotations

import math
import re
import shlex
import time
from typing import TYPE_CHECKING

from labsim.core import Task
from labsim.core.lab import wall as wall_clock
from labsim.pve.backups import archive
from labsim.pve.backups.archive import BackupJob
from labsim.pve.model import GiB, MiB, PveError
from labsim.pve.topology import backup_size

if TYPE_CHECKING:
    from labsim.pve.backups.system import BackupsSystem


class VzdumpEngine:
    """The running and waiting vzdump jobs, and which job holds each node's lock."""

    def __init__(self, backups: BackupsSystem) -> None:
        self.backups = backups
        self.lab = backups.lab
        self.pve = backups.pve
        self.jobs: dict[str, BackupJob] = {}
        self.locks: dict[str, str] = {}  # node -> upid of the vzdump holding its lock

    def vzdump(self, node: str, params: dict[str, str], *, user: str) -> str:
        """``POST /nodes/{node}/vzdump``: a UPID, or ``OK`` when no listed guest is local."""
        vmids: list[int] = []
        if params.get("all") == "1":
            vmids = sorted(v for v, g in self.pve.guests.items() if g.node == node)
        else:
            for part in re.split(r"[,;\s]+", params.get("vmid", "")):
                if part:
                    vmids.append(int(part))
            vmids = [v for v in vmids if v in self.pve.guests and self.pve.guests[v].node == node]
        if not vmids:
            return "OK"
        storage = params.get("storage", "local")
        st = self.backups.require_storage(node, storage)
        if "backup" not in st.content:
            raise PveError(500, f"storage '{storage}' does not support backups")
        prune: dict[str, int] | None = None
        if params.get("prune-backups") is not None:
            try:
                prune = archive.parse_prune(params["prune-backups"])
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
        task = self.pve.new_task(
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
        self.jobs[task.upid] = job
        now = time.monotonic()
        self.progress_to(now)
        if node in self.locks:
            task.log.append("INFO: trying to get global lock - waiting...")
            job.deadline = now + lockwait * 60 * self.lab.time_scale
        else:
            self._acquire(job, now)
        self.rebalance(now)
        return task.upid

    def advance(self, now: float) -> None:
        """Process every backup event up to ``now``, in time order."""
        while self.jobs:
            job = min(self.jobs.values(), key=lambda j: j.next_event())
            t = job.next_event()
            if t > now:
                break
            self.progress_to(t)
            if job.state == "waiting":
                self._end_job(
                    job, t, "can't acquire lock '/var/run/vzdump.lock' - got timeout", log=True
                )
            else:
                self._finish_guest(job, t)
            self.rebalance(t)

    def progress_to(self, t: float) -> None:
        for job in self.jobs.values():
            if job.state == "running" and t > job.last:
                job.done = min(job.target, job.done + job.rate * (t - job.last))
                job.last = t

    def rebalance(self, t: float) -> None:
        """Share each storage's bandwidth among the backups writing to it."""
        pools: dict[tuple[str, str | None], list[BackupJob]] = {}
        for job in self.jobs.values():
            if job.state == "running":
                pools.setdefault((job.storage, job.pool), []).append(job)
        for (storage, _), jobs in pools.items():
            st = self.pve.storages[storage]
            shares = archive.fair_shares(st.bandwidth, [j.bwlimit for j in jobs])
            for job, share in zip(jobs, shares, strict=True):
                job.rate = share / self.lab.time_scale
                job.last = max(job.last, t)

    def _acquire(self, job: BackupJob, t: float) -> None:
        task = self.lab.tasks[job.upid]
        if job.deadline != math.inf:
            task.log.append("INFO: got global lock")
        self.locks[job.node] = job.upid
        job.deadline = math.inf
        self._start_guest(job, t)

    def _start_guest(self, job: BackupJob, t: float) -> None:
        task = self.lab.tasks[job.upid]
        while job.queue:
            vmid = job.queue.pop(0)
            g = self.pve.guests.get(vmid)
            kind = "VM" if g is None or g.type == "qemu" else "CT"
            if g is None or g.node != job.node:
                task.log.append(f"ERROR: Backup of VM {vmid} failed - unable to find VM {vmid}")
                job.errors += 1
                continue
            wall = wall_clock(t)
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
            st = self.pve.storages[job.storage]
            ctime = int(wall)
            taken = {a.filename for a in st.archives if a.node == job.pool}
            while archive.archive_name(g.type, vmid, ctime) in taken:
                ctime += 1
            job.filename = archive.archive_name(g.type, vmid, ctime)
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
                for j in self.jobs.values()
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
            where = self.backups.dump_dir(st, job.pool)
            task.log.append(f"INFO: creating vzdump archive '{where}/{job.filename}'")
            job.state = "running"
            fault = self.lab.take_fault("task", type="vzdump", id=str(vmid), node=job.node)
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
        task = self.lab.tasks[job.upid]
        vmid = job.vmid
        assert vmid is not None
        g = self.pve.guests.get(vmid)
        if g is not None and g.lock == "backup":
            g.lock = None
        st = self.pve.storages[job.storage]
        seconds = max(0.0, (t - job.phase_start) / self.lab.time_scale)
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
            failed_at = time.localtime(wall_clock(t))
            task.log.append(f"INFO: Failed at {time.strftime('%Y-%m-%d %H:%M:%S', failed_at)}")
            job.errors += 1
        else:
            log_start = len(task.log)
            rate = job.size / seconds / MiB if seconds > 0 else 0.0
            task.log.append(
                f"INFO: transferred {g.maxdisk / GiB:.2f} GiB in {int(seconds)} seconds "
                f"({rate:.1f} MiB/s)"
            )
            task.log.append(f"INFO: archive file size: {archive.format_size(job.size)}")
            notes = ""
            if job.notes_template:
                notes = (
                    job.notes_template.replace("{{guestname}}", g.name)
                    .replace("{{vmid}}", str(g.vmid))
                    .replace("{{node}}", job.node)
                    .replace("{{cluster}}", self.pve.cluster)
                    .replace("\\n", "\n")
                )
                task.log.append("INFO: adding notes to backup")
            if job.protected:
                task.log.append("INFO: marking backup as protected")
            ctime = job.ctime
            self.backups.add_archive(
                st, job.pool, g, ctime, job.size, notes, job.protected, log=task.log[log_start:]
            )
            if job.prune is not None:
                marks = archive.prune_marks(
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
                + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_clock(t)))
            )
        job.vmid = None
        job.state = "running"
        job.target = job.done = 0.0
        job.rate = 0.0
        self._start_guest(job, t)

    def _end_job(self, job: BackupJob, t: float, fail: str | None, log: bool = False) -> None:
        """The vzdump task ends at ``t``: release the node's lock to the next job waiting."""
        task = self.lab.tasks[job.upid]
        job.state = "done"
        self.jobs.pop(job.upid, None)
        if job.vmid is not None:
            g = self.pve.guests.get(job.vmid)
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
        task.ended = wall_clock(t)
        task.endtime = max(task.starttime, int(task.ended))
        task.log.append("TASK OK" if fail is None else f"TASK ERROR: {fail}")
        if self.locks.get(job.node) == job.upid:
            del self.locks[job.node]
            waiting = [j for j in self.jobs.values() if j.node == job.node and j.state == "waiting"]
            if waiting:
                self._acquire(waiting[0], t)

    def stop(self, task: Task, now: float) -> bool:
        """``DELETE /nodes/{node}/tasks/{upid}`` of a vzdump task: True when it was one."""
        self.progress_to(now)
        job = self.jobs.get(task.upid)
        if job is None:
            return False
        if job.vmid is not None:
            task.log.append(f"ERROR: Backup of VM {job.vmid} failed - interrupted by signal")
        self._end_job(job, now, "interrupted by signal", log=False)
        self.rebalance(now)
        return True
