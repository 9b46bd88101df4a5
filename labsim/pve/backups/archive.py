"""Backup archives on storages: names, real files, the content listing, PVE's prune marks.

An archive is a real file in a real folder (``DIR/storage/<storage>/dump/`` on a shared
storage, ``DIR/storage/<storage>/<node>/dump/`` on a node-local one) with small deterministic
content: one byte per MiB of the simulated archive size (1 KiB per GiB, at least 1 KiB), so
that copies and checksums are real. The API reports the simulated ``size``; the file's own
size is ``file_size``. Notes live beside it in ``<archive>.notes``, protection in
``<archive>.protected`` (as PVE keeps them), the task log in ``<stem>.log``.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024**2
GiB = 1024**3

FILE_SCALE = MiB  # simulated bytes per real byte
MIN_FILE = KiB

ARCHIVE_RE = re.compile(
    r"^vzdump-(qemu|lxc)-(\d+)-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2})"
    r"\.(vma\.zst|tar\.zst|vma|tar|vma\.gz|tar\.gz|vma\.lzo|tar\.lzo)$"
)

PRUNE_KEYS = (
    "keep-all",
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
)


def archive_name(subtype: str, vmid: int, ctime: float) -> str:
    """PVE's name for a zstd archive made at ``ctime`` (local time)."""
    stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.localtime(ctime))
    ext = "vma.zst" if subtype == "qemu" else "tar.zst"
    return f"vzdump-{subtype}-{vmid}-{stamp}.{ext}"


def archive_format(filename: str) -> str:
    m = ARCHIVE_RE.match(filename)
    return m.group(9) if m else filename.split(".", 1)[-1]


def file_size_for(size: int) -> int:
    return max(MIN_FILE, size // FILE_SCALE)


def archive_bytes(filename: str, size: int) -> bytes:
    """The deterministic content of an archive of simulated ``size`` bytes."""
    n = file_size_for(size)
    header = f"labsim vzdump archive {filename} size={size}\n".encode()
    body = random.Random(f"{filename}:{size}").randbytes(max(0, n - len(header)))
    return (header + body)[:n]


def format_size(size: float) -> str:
    """PVE's ``format_size`` as vzdump logs the archive size."""
    kb = size / KiB
    if kb < 1024:
        return f"{int(kb)}KB"
    mb = size / MiB
    if mb < 1024:
        return f"{int(mb)}MB"
    gb = mb / 1024
    if gb < 1024:
        return f"{gb:.2f}GB"
    return f"{gb / 1024:.2f}TB"


@dataclass
class Archive:
    """One backup archive on a storage (``node`` set on a node-local storage)."""

    storage: str
    node: str | None
    filename: str
    vmid: int
    subtype: str  # qemu | lxc
    ctime: int
    size: int
    path: Path | None = None  # the real file (None in a lab without a folder)
    notes: str = ""
    protected: bool = False
    sha256: str = ""
    guest: dict[str, Any] = field(default_factory=dict)  # what a restore recreates

    @property
    def volid(self) -> str:
        return f"{self.storage}:backup/{self.filename}"

    @property
    def format(self) -> str:
        return archive_format(self.filename)

    @property
    def file_size(self) -> int:
        return file_size_for(self.size)

    def write(self) -> None:
        """Write the archive file and its sidecars (``.notes``, ``.protected``)."""
        data = archive_bytes(self.filename, self.size)
        self.sha256 = hashlib.sha256(data).hexdigest()
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(data)
        self.write_sidecars()

    def write_sidecars(self) -> None:
        if self.path is None:
            return
        notes = self.path.with_name(self.filename + ".notes")
        if self.notes:
            notes.write_text(self.notes + "\n", encoding="utf-8")
        else:
            notes.unlink(missing_ok=True)
        prot = self.path.with_name(self.filename + ".protected")
        if self.protected:
            prot.write_text("", encoding="utf-8")
        else:
            prot.unlink(missing_ok=True)

    def log_path(self) -> Path | None:
        if self.path is None:
            return None
        stem = self.filename.split(".", 1)[0]
        return self.path.with_name(stem + ".log")

    def remove(self) -> None:
        if self.path is None:
            return
        for p in (
            self.path,
            self.path.with_name(self.filename + ".notes"),
            self.path.with_name(self.filename + ".protected"),
            self.log_path(),
        ):
            if p is not None:
                p.unlink(missing_ok=True)

    def content_entry(self) -> dict[str, Any]:
        """One item of ``GET .../storage/{storage}/content``."""
        out: dict[str, Any] = {
            "volid": self.volid,
            "content": "backup",
            "format": self.format,
            "size": self.size,
            "ctime": self.ctime,
            "vmid": self.vmid,
            "subtype": self.subtype,
        }
        if self.notes:
            out["notes"] = self.notes
        if self.protected:
            out["protected"] = 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "volid": self.volid,
            "storage": self.storage,
            "node": self.node,
            "filename": self.filename,
            "path": str(self.path) if self.path is not None else None,
            "size": self.size,
            "file_size": self.file_size,
            "ctime": self.ctime,
            "vmid": self.vmid,
            "subtype": self.subtype,
            "notes": self.notes,
            "protected": self.protected,
            "sha256": self.sha256,
            "guest": dict(self.guest),
        }


# --- prune ------------------------------------------------------------------------------------


def parse_prune(text: str) -> dict[str, int]:
    """``keep-last=3,keep-daily=7`` → {"keep-last": 3, ...}; ValueError for anything else."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in PRUNE_KEYS:
            raise ValueError(f"invalid prune option '{part}'")
        if not re.fullmatch(r"\d+", value.strip()):
            raise ValueError(f"invalid prune value '{part}'")
        out[key] = int(value)
    if out.get("keep-all") and len(out) > 1:
        raise ValueError("keep-all cannot be set together with other options.")
    return out


def _period_id(key: str, ctime: int) -> str:
    t = time.localtime(ctime)
    if key == "keep-last":
        return str(ctime)
    if key == "keep-hourly":
        return time.strftime("%Y/%m/%d/%H", t)
    if key == "keep-daily":
        return time.strftime("%Y/%m/%d", t)
    if key == "keep-weekly":
        return time.strftime("%G/%V", t)
    if key == "keep-monthly":
        return time.strftime("%Y/%m", t)
    return time.strftime("%Y", t)


def prune_marks(archives: list[Archive], options: dict[str, int]) -> list[tuple[Archive, str]]:
    """PVE's ``prune_mark_backup_group`` per guest: newest first; protected archives and ones
    without a standard name are never removed; each keep-* option keeps the newest archive of
    up to N periods not already covered by a kept one; all other archives are removed."""
    groups: dict[tuple[str, int], list[Archive]] = {}
    for a in archives:
        groups.setdefault((a.subtype, a.vmid), []).append(a)
    out: list[tuple[Archive, str]] = []
    keep_all = bool(options.get("keep-all")) or not any(options.get(k) for k in PRUNE_KEYS)
    for key in sorted(groups):
        items = sorted(groups[key], key=lambda a: a.ctime, reverse=True)
        marks: dict[int, str] = {}
        for i, a in enumerate(items):
            if a.protected:
                marks[i] = "protected"
            elif not ARCHIVE_RE.match(a.filename):
                marks[i] = "renamed"
            elif keep_all:
                marks[i] = "keep"
        for opt in PRUNE_KEYS[1:]:
            count = options.get(opt, 0)
            if not count:
                continue
            already = {
                _period_id(opt, a.ctime) for i, a in enumerate(items) if marks.get(i) == "keep"
            }
            newly: set[str] = set()
            for i, a in enumerate(items):
                pid = _period_id(opt, a.ctime)
                if i in marks or pid in already:
                    continue
                if pid not in newly:
                    if len(newly) >= count:
                        break
                    newly.add(pid)
                    marks[i] = "keep"
                else:
                    marks[i] = "remove"
        out += [(a, marks.get(i, "remove")) for i, a in enumerate(items)]
    return out


# --- bandwidth --------------------------------------------------------------------------------


def fair_shares(total: float, caps: list[float | None]) -> list[float]:
    """Max-min fair shares of ``total`` among flows capped at ``caps`` (None: no cap)."""
    shares = [0.0] * len(caps)
    open_ = list(range(len(caps)))
    left = total
    while open_ and left > 1e-9:
        each = left / len(open_)
        capped = [i for i in open_ if caps[i] is not None and (caps[i] or 0.0) <= each]
        if not capped:
            for i in open_:
                shares[i] = each
            return shares
        for i in capped:
            shares[i] = float(caps[i] or 0.0)
            left -= shares[i]
            open_.remove(i)
    return shares


# --- vzdump jobs ------------------------------------------------------------------------------


@dataclass
class BackupJob:
    """One ``vzdump`` task: its guests one after the other, under the node's vzdump lock.

    While a guest's archive is written, ``done`` grows at ``rate`` bytes per (real) second
    from ``last`` (monotonic) on, up to ``target`` (the archive size, or the free space when
    the storage runs full: then ``nospace``)."""

    upid: str
    node: str
    storage: str
    pool: str | None  # the storage copy written (None: shared)
    queue: list[int]
    command: str  # "vzdump 101 --storage ..." as logged
    mode: str = "snapshot"
    notes_template: str | None = None
    protected: bool = False
    prune: dict[str, int] | None = None
    bwlimit: float | None = None  # bytes per simulated second
    state: str = "waiting"  # waiting | running | hung | done
    deadline: float = math.inf  # monotonic: give up waiting for the lock
    vmid: int | None = None
    size: int = 0
    target: float = 0.0
    done: float = 0.0
    rate: float = 0.0
    last: float = 0.0
    phase_start: float = 0.0
    filename: str = ""
    ctime: int = 0
    fail: str | None = None  # the current guest's backup fails with this at its end
    nospace: bool = False
    errors: int = 0
    exitstatus: str | None = None  # a fault's exit status for the whole task

    def next_event(self) -> float:
        if self.state == "waiting":
            return self.deadline
        if self.state == "running":
            if self.target - self.done <= 0:
                return self.last
            if self.rate <= 0:
                return math.inf
            return self.last + (self.target - self.done) / self.rate
        return math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "upid": self.upid,
            "node": self.node,
            "storage": self.storage,
            "state": self.state,
            "vmid": self.vmid,
            "queue": list(self.queue),
            "size": self.size,
            "done": int(self.done),
            "rate": self.rate,
            "errors": self.errors,
        }
