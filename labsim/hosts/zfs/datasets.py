"""One host's simulated pools, datasets and snapshots, and the default topology of the lab."""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_TXG_SECONDS = 5  # the default zfs_txg_timeout: roughly one txg every five seconds

_GIB = 1024**3
_TIB = 1024**4


# --------------------------------------------------------------------------------------------
# State


@dataclass
class ZfsSnapshot:
    """One snapshot; ``name`` is the part after ``@``."""

    name: str
    guid: int
    createtxg: int
    creation: int
    referenced: int
    used: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # tag -> epoch seconds of the hold
    defer_destroy: bool = False
    properties: dict[str, str] = field(default_factory=dict)  # user properties set locally

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "guid": self.guid,
            "createtxg": self.createtxg,
            "creation": self.creation,
            "referenced": self.referenced,
            "used": self.used,
            "holds": dict(self.holds),
            "defer_destroy": self.defer_destroy,
            "properties": dict(self.properties),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ZfsSnapshot:
        return cls(
            name=str(d["name"]),
            guid=int(d["guid"]),
            createtxg=int(d["createtxg"]),
            creation=int(d["creation"]),
            referenced=int(d.get("referenced", 0)),
            used=int(d.get("used", 0)),
            holds={str(k): int(v) for k, v in d.get("holds", {}).items()},
            defer_destroy=bool(d.get("defer_destroy", False)),
            properties={str(k): str(v) for k, v in d.get("properties", {}).items()},
        )


@dataclass
class ZfsDataset:
    """A filesystem or volume with its snapshots (kept in createtxg order)."""

    name: str
    type: str  # "filesystem" | "volume"
    guid: int
    createtxg: int
    creation: int
    referenced: int
    volsize: int = 0
    compressratio: int = 100  # hundredths: 100 is 1.00x
    properties: dict[str, str] = field(default_factory=dict)  # set locally: mountpoint, user props
    snapshots: list[ZfsSnapshot] = field(default_factory=list)

    def snapshot(self, name: str) -> ZfsSnapshot | None:
        for snap in self.snapshots:
            if snap.name == name:
                return snap
        return None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "guid": self.guid,
            "createtxg": self.createtxg,
            "creation": self.creation,
            "referenced": self.referenced,
        }
        if self.type == "volume":
            d["volsize"] = self.volsize
        d["compressratio"] = self.compressratio
        d["properties"] = dict(self.properties)
        d["snapshots"] = [s.to_json() for s in self.snapshots]
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> ZfsDataset:
        snaps = [ZfsSnapshot.from_json(s) for s in d.get("snapshots", [])]
        snaps.sort(key=lambda s: s.createtxg)
        return cls(
            name=name,
            type=str(d.get("type", "filesystem")),
            guid=int(d["guid"]),
            createtxg=int(d["createtxg"]),
            creation=int(d["creation"]),
            referenced=int(d.get("referenced", 0)),
            volsize=int(d.get("volsize", 0)),
            compressratio=int(d.get("compressratio", 100)),
            properties={str(k): str(v) for k, v in d.get("properties", {}).items()},
            snapshots=snaps,
        )


@dataclass
class ZfsState:
    """One host's pools, datasets (filesystems/volumes) and snapshots with holds."""

    pools: dict[str, int] = field(default_factory=dict)  # pool name -> usable bytes
    datasets: dict[str, ZfsDataset] = field(default_factory=dict)
    txg: int = 1  # the last transaction group used
    txg_epoch: float = 0.0  # when txg 0 happened; txgs advance about every five seconds
    version: str = "2.2.7-1"

    def snapshot(self, full_name: str) -> ZfsSnapshot | None:
        """The snapshot named ``dataset@snap``, or None."""
        ds_name, _, snap_name = full_name.partition("@")
        ds = self.datasets.get(ds_name)
        return ds.snapshot(snap_name) if ds is not None else None

    def next_txg(self, now: float) -> int:
        """A new txg, later than every one used before and roughly in step with the clock."""
        by_clock = int((now - self.txg_epoch) // _TXG_SECONDS)
        self.txg = max(self.txg + 1, by_clock)
        return self.txg

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "txg": self.txg,
            "txg_epoch": self.txg_epoch,
            "pools": dict(self.pools),
            "datasets": {name: self.datasets[name].to_json() for name in sorted(self.datasets)},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ZfsState:
        return cls(
            pools={str(k): int(v) for k, v in d.get("pools", {}).items()},
            datasets={
                str(name): ZfsDataset.from_json(str(name), ds)
                for name, ds in d.get("datasets", {}).items()
            },
            txg=int(d.get("txg", 1)),
            txg_epoch=float(d.get("txg_epoch", 0.0)),
            version=str(d.get("version", "2.2.7-1")),
        )


def _guid(*parts: object) -> int:
    """A stable 64-bit guid derived from ``parts`` (deterministic states make stable tests)."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


class _Builder:
    """Builds a default state: txgs follow creation times, as on a real pool."""

    def __init__(self, host: str, epoch: int, now: float) -> None:
        self.host = host
        self.state = ZfsState(txg_epoch=float(epoch))
        self.state.txg = max(1, int((now - epoch) // _TXG_SECONDS))

    def _txg(self, created: int) -> int:
        txg = max(1, (created - int(self.state.txg_epoch)) // _TXG_SECONDS)
        taken = {ds.createtxg for ds in self.state.datasets.values()} | {
            s.createtxg for ds in self.state.datasets.values() for s in ds.snapshots
        }
        while txg in taken:
            txg += 1
        self.state.txg = max(self.state.txg, txg)
        return txg

    def pool(self, name: str, size: int, created: str) -> None:
        self.state.pools[name] = size
        self.dataset(name, created, 104 * 1024)

    def dataset(
        self,
        name: str,
        created: str,
        referenced: int,
        *,
        volsize: int = 0,
        ratio: int = 100,
        mountpoint: str | None = None,
    ) -> None:
        when = _utc(created)
        txg = self._txg(when)
        props = {"mountpoint": mountpoint} if mountpoint else {}
        self.state.datasets[name] = ZfsDataset(
            name=name,
            type="volume" if volsize else "filesystem",
            guid=_guid(self.host, name, txg),
            createtxg=txg,
            creation=when,
            referenced=referenced,
            volsize=volsize,
            compressratio=ratio,
            properties=props,
        )

    def snapshot(self, full_name: str, created: str, used: int, holds: Iterable[str] = ()) -> None:
        ds_name, snap_name = full_name.split("@", 1)
        ds = self.state.datasets[ds_name]
        when = _utc(created)
        txg = self._txg(when)
        ds.snapshots.append(
            ZfsSnapshot(
                name=snap_name,
                guid=_guid(self.host, full_name, txg),
                createtxg=txg,
                creation=when,
                referenced=ds.referenced - used // 2,
                used=used,
                holds={tag: when for tag in holds},
            )
        )
        ds.snapshots.sort(key=lambda s: s.createtxg)


def default_zfs_state(host: str, now: float) -> ZfsState:
    """The default topology of docs/internals.md for ``pve1``, ``pve2`` and ``nas``; else empty."""
    if host == "pve1":
        b = _Builder(host, _utc("2025-03-14T09:12:40"), now)
        b.pool("rpool", 430 * _GIB, "2025-03-14T09:12:40")
        b.dataset("rpool/ROOT", "2025-03-14T09:12:41", 96 * 1024)
        b.dataset("rpool/ROOT/pve-1", "2025-03-14T09:12:41", 5_841_616_896, mountpoint="/")
        b.dataset("rpool/data", "2025-03-14T09:12:41", 96 * 1024)
        b.dataset("rpool/data/subvol-100-disk-0", "2025-03-20T17:03:12", 1_203_372_032, ratio=171)
        b.dataset(
            "rpool/data/vm-101-disk-0",
            "2025-04-02T11:45:09",
            15_246_893_056,
            volsize=32 * _GIB,
            ratio=123,
        )
        b.pool("tank", 3584 * _GIB, "2025-05-01T14:30:00")
        b.dataset("tank/media", "2025-05-01T14:31:27", 1_781_212_332_032, ratio=101)
        b.snapshot("rpool/data@manual-keep", "2026-10-20T08:15:00", 0, holds=["keep"])
        b.snapshot(
            "tank/media@autosnap_2026-11-01_00:00:00_daily", "2026-11-01T00:00:00", 2_576_980_378
        )
        b.snapshot("tank/media@moxflow-daily-20261101-000000", "2026-11-01T00:00:00", 1_181_116_006)
        return b.state
    if host == "pve2":
        b = _Builder(host, _utc("2025-03-15T10:02:11"), now)
        b.pool("rpool", 224 * _GIB, "2025-03-15T10:02:11")
        b.dataset("rpool/ROOT", "2025-03-15T10:02:12", 96 * 1024)
        b.dataset("rpool/ROOT/pve-1", "2025-03-15T10:02:12", 5_512_441_856, mountpoint="/")
        b.dataset("rpool/data", "2025-03-15T10:02:12", 96 * 1024)
        b.dataset(
            "rpool/data/vm-102-disk-0",
            "2025-03-22T19:40:55",
            23_300_403_200,
            volsize=64 * _GIB,
            ratio=118,
        )
        return b.state
    if host == "nas":
        b = _Builder(host, _utc("2024-11-02T16:20:00"), now)
        b.pool("tank", 7 * _TIB, "2024-11-02T16:20:00")
        b.dataset("tank/backups", "2024-11-02T16:25:31", 2_528_876_743_475)
        return b.state
    if re.fullmatch(r"pve\d+", host):  # a node of a generated topology: its root dataset
        b = _Builder(host, _utc("2025-03-16T08:00:00"), now)
        b.pool("rpool", 224 * _GIB, "2025-03-16T08:00:00")
        b.dataset("rpool/ROOT", "2025-03-16T08:00:01", 96 * 1024)
        b.dataset("rpool/ROOT/pve-1", "2025-03-16T08:00:01", 5_368_709_120, mountpoint="/")
        b.dataset("rpool/data", "2025-03-16T08:00:01", 96 * 1024)
        return b.state
    return ZfsState(txg_epoch=now, txg=1)
