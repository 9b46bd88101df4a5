"""A simulated OpenZFS ``zfs`` command acting on one host's in-memory datasets and snapshots.

Output formats, messages, exit codes and option parsing follow ``cmd/zfs`` and ``lib/libzfs`` of
OpenZFS 2.2.7 (what Proxmox VE 8 and NixOS 24.11 ship); the only version-dependent message is the
one for destroying a held snapshot, which changed in 2.3.3 and follows ``ZfsState.version``.
Simulated subcommands: list, get, snapshot, destroy, rollback, hold, holds, release, version.
Times are printed in UTC (the simulated hosts run with ``TZ`` unset).
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

# Dataset type bits, as in libzfs (zfs_type_t).
_FS = 1
_SNAP = 2
_VOL = 4
_BOOKMARK = 8
_DATASET = _FS | _SNAP | _VOL

_MAX_NAME_LEN = 256  # ZFS_MAX_DATASET_NAME_LEN: names must be shorter than this
_MAX_TAG_LEN = 256  # MAXNAMELEN for hold tags
_TXG_SECONDS = 5  # the default zfs_txg_timeout: roughly one txg every five seconds

_GIB = 1024**3
_TIB = 1024**4


class _UsageError(Exception):
    """Raised by a subcommand to print its usage text and exit 2, as usage(B_FALSE) does."""


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
    return ZfsState(txg_epoch=now, txg=1)


# --------------------------------------------------------------------------------------------
# Names (module/zcommon/zfs_namecheck.c, zfs_validate_name in libzfs_dataset.c)

_EMPTY_COMPONENT = "empty component or misplaced '@' or '#' delimiter in name"


def _valid_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "-_.: "


def _entity_namecheck(path: str) -> str | None:
    """The reason ``path`` is not a valid dataset/snapshot/bookmark name, or None."""
    if len(path.encode()) >= _MAX_NAME_LEN:
        return "name is too long"
    if path.startswith("/"):
        return "leading slash in name"
    if path == "":
        return _EMPTY_COMPONENT
    start = 0
    found_delim = False
    while True:
        end = start
        while end < len(path) and path[end] not in "/@#":
            end += 1
        at_end = end == len(path)
        if at_end and path[end - 1] == "/":
            return "trailing slash in name"
        for c in path[start:end]:
            if not _valid_char(c) and c != "%":
                return f"invalid character '{c}' in name"
        if at_end or path[end] == "/":
            if path[start:end] == ".":
                return "self reference, '.' is found in name"
            if path[start:end] == "..":
                return "parent reference, '..' is found in name"
        if not at_end and path[end] in "@#":
            if found_delim:
                return "multiple '@' and/or '#' delimiters in name"
            found_delim = True
        if start == end:
            return _EMPTY_COMPONENT
        if at_end:
            return None
        if path[end] == "/" and found_delim:
            return "trailing slash in name"
        start = end + 1


def _validate_name(path: str, types: int, modifying: bool) -> str | None:
    if not types & _SNAP and "@" in path:
        return "snapshot delimiter '@' is not expected here"
    if types == _SNAP and "@" not in path:
        return "missing '@' delimiter in snapshot name"
    if not types & _BOOKMARK and "#" in path:
        return "bookmark delimiter '#' is not expected here"
    if types == _BOOKMARK and "#" not in path:
        return "missing '#' delimiter in bookmark name"
    if modifying and "%" in path:
        return "invalid character % in name"
    return _entity_namecheck(path)


def _user_prop(name: str) -> bool:
    """zfs_prop_user: a user property has a colon and only [a-z0-9_.:-]."""
    ok = all(("a" <= c <= "z") or ("0" <= c <= "9") or c in "-_.:" for c in name)
    return ok and ":" in name


# --------------------------------------------------------------------------------------------
# Option parsing: glibc getopt with argument permutation and opterr = 0, as zfs uses it.


def _getopt(args: list[str], spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Options as (char, argument) or ('?'|':', optopt) for errors, and the operands."""
    colon = spec.startswith(":")
    body = spec.lstrip(":")
    takes: dict[str, bool] = {}
    for i, c in enumerate(body):
        if c != ":":
            takes[c] = i + 1 < len(body) and body[i + 1] == ":"
    opts: list[tuple[str, str]] = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1 :])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            i += 1
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            if c not in takes:
                opts.append(("?", c))
            elif takes[c]:
                if j + 1 < len(arg):
                    opts.append((c, arg[j + 1 :]))
                elif i + 1 < len(args):
                    i += 1
                    opts.append((c, args[i]))
                else:
                    opts.append((":" if colon else "?", c))
                break
            else:
                opts.append((c, ""))
            j += 1
        i += 1
    return opts, operands


def _strtol(text: str) -> int | None:
    """strtol(text, &end, 0) that must consume the whole string; None otherwise."""
    if text == "":
        return 0
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


# --------------------------------------------------------------------------------------------
# Formatting (lib/libzutil/zutil_nicenum.c, zfs_prop_get in libzfs_dataset.c)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _ctime(ts: int, hour_padded: bool = False) -> str:
    """strftime "%a %b %e %k:%M %Y" in UTC (with %H instead of %k if ``hour_padded``)."""
    t = time.gmtime(ts)
    hour = f"{t.tm_hour:02d}" if hour_padded else f"{t.tm_hour:2d}"
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
        f"{hour}:{t.tm_min:02d} {t.tm_year}"
    )


def nicenum(num: int, *, bytes_suffix: bool = False) -> str:
    """zfs_nicenum / zfs_nicebytes: 1024-based, at most five characters where possible."""
    units = ("B" if bytes_suffix else "", "K", "M", "G", "T", "P", "E")
    n = num
    index = 0
    while n >= 1024 and index < 6:
        n //= 1024
        index += 1
    if index == 0 or num % (1024**index) == 0:
        return f"{n}{units[index]}"
    text = ""
    for precision in (2, 1, 0):
        text = f"{num / 1024**index:.{precision}f}{units[index]}"
        if len(text) <= 5:
            break
    return text


# --------------------------------------------------------------------------------------------
# Properties (module/zcommon/zfs_prop.c)


@dataclass(frozen=True)
class _Prop:
    """A column or property: native (simulated or not), user-defined, or a special @ property."""

    name: str
    column: str
    kind: str  # "number" | "string" | "index" | "user" | "special" | "other"
    types: int = _DATASET
    fixed: bool = False  # fixed width unless -p
    right: bool = False  # right-aligned
    index_names: tuple[str, ...] = ()

    def initial_width(self) -> int:
        """zprop_width: the column name, at least 5 for numbers, the longest index value."""
        if self.kind in ("user", "special"):
            return len(self.name)
        width = len(self.column)
        if self.kind == "number":
            width = max(width, 5)
        if self.kind == "index":
            width = max([width, *(len(n) for n in self.index_names)])
        return width


_FSVOL = _FS | _VOL
_ONOFF = ("off", "on")

# The simulated native properties, in the order of zfs_prop_t (the order of `zfs get all`).
_SIM_PROPS: tuple[_Prop, ...] = (
    _Prop("type", "TYPE", "string"),
    _Prop("creation", "CREATION", "number"),
    _Prop("used", "USED", "number", fixed=True, right=True),
    _Prop("available", "AVAIL", "number", _FSVOL, fixed=True, right=True),
    _Prop("referenced", "REFER", "number", fixed=True, right=True),
    _Prop("compressratio", "RATIO", "number", fixed=True, right=True),
    _Prop("mounted", "MOUNTED", "index", _FS, index_names=_ONOFF),
    _Prop("origin", "ORIGIN", "string", _FSVOL),
    _Prop("volsize", "VOLSIZE", "number", _SNAP | _VOL, fixed=True, right=True),
    _Prop("mountpoint", "MOUNTPOINT", "string", _FS),
    _Prop("createtxg", "CREATETXG", "number", right=True),
    _Prop("name", "NAME", "string"),
    _Prop("guid", "GUID", "number", right=True),
    _Prop("usedbysnapshots", "USEDSNAP", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbydataset", "USEDDS", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbychildren", "USEDCHILD", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbyrefreservation", "USEDREFRESERV", "number", _FSVOL, fixed=True, right=True),
    _Prop("defer_destroy", "DEFER_DESTROY", "index", _SNAP, index_names=_ONOFF),
    _Prop("userrefs", "USERREFS", "number", _SNAP, fixed=True, right=True),
)
_SIM_BY_NAME = {p.name: p for p in _SIM_PROPS}
_SPECIAL_PREFIXES = (
    *(
        f"{who}{what}@"
        for who in ("user", "group", "project")
        for what in ("used", "quota", "objused", "objquota")
    ),
    "written@",
    "written#",
)

# Source kinds (zprop_source_t).
_SRC_NONE = 0x1
_SRC_DEFAULT = 0x2
_SRC_TEMPORARY = 0x4
_SRC_LOCAL = 0x8
_SRC_INHERITED = 0x10
_SRC_RECEIVED = 0x20
_SRC_ALL = 0x3F


def _find_prop(name: str) -> _Prop | None:
    """zfs_name_to_prop for native properties: the name, or the column name in lower case."""
    sim = _SIM_BY_NAME.get(name)
    if sim is not None:
        return sim
    for prop in _SIM_PROPS:
        if prop.column.lower() == name:
            return prop
    for native, column, _edit, _inherit, _values in _NATIVE_PROPS:
        if name in (native, column.lower()):
            return _Prop(native, column, "other")
    return None


def _list_prop(name: str) -> _Prop | None:
    """A property usable in -o (addlist): native, user-defined, or userquota/written."""
    prop = _find_prop(name)
    if prop is not None:
        return prop
    if _user_prop(name):
        return _Prop(name, name.upper(), "user")
    if name.startswith(_SPECIAL_PREFIXES):
        return _Prop(name, name.upper(), "special", right=True)
    return None


@dataclass(frozen=True)
class _Obj:
    """A dataset or snapshot being listed or acted on (a zfs_handle_t)."""

    ds: ZfsDataset
    snap: ZfsSnapshot | None = None

    @property
    def name(self) -> str:
        return f"{self.ds.name}@{self.snap.name}" if self.snap else self.ds.name

    @property
    def type(self) -> int:
        if self.snap is not None:
            return _SNAP
        return _VOL if self.ds.type == "volume" else _FS

    @property
    def createtxg(self) -> int:
        return self.snap.createtxg if self.snap else self.ds.createtxg


# --------------------------------------------------------------------------------------------
# The command


class _Zfs:
    """One invocation of `zfs`: parses argv, acts on the state, collects stdout and stderr."""

    def __init__(self, state: ZfsState, now: float) -> None:
        self.state = state
        self.now = now
        self.out: list[str] = []
        self.err: list[str] = []
        self.command: str | None = None
        self._used_memo: dict[str, int] = {}

    # ---- output helpers

    def print(self, line: str) -> None:
        self.out.append(line + "\n")

    def error(self, line: str) -> None:
        self.err.append(line + "\n")

    def usage_text(self) -> str:
        if self.command is None:
            text = "usage: zfs command args ...\nwhere 'command' is one of the following:\n\n"
            text += "".join("\n" if entry is None else entry[1] for entry in _COMMANDS)
            text += "\nEach dataset is of the form: pool/[dataset/]*dataset[@name]\n"
        else:
            text = "usage:\n" + _USAGE[self.command]
        if self.command in ("set", "get", "inherit", "list"):
            text += "\nThe following properties are supported:\n"
            text += "\n\t{:<14} {}  {}   {}\n\n".format("PROPERTY", "EDIT", "INHERIT", "VALUES")
            for name, _column, edit, inherit, values in _NATIVE_PROPS:
                text += "\t{:<15} {}{}{}\n".format(
                    name,
                    "YES    " if edit else " NO    ",
                    "  YES   " if inherit else "   NO   ",
                    values,
                )
            text += _USAGE_PROPERTY_TRAILER
        else:
            text += (
                "\nFor the property list, run: zfs set|get\n"
                "\nFor the delegated permission list, run: zfs allow|unallow\n"
                "\nFor further help on a command or topic, run: zfs help [<topic>]\n"
            )
        return text

    # ---- datasets

    def _children(self, ds: ZfsDataset) -> list[ZfsDataset]:
        prefix = ds.name + "/"
        kids = [
            d
            for name, d in self.state.datasets.items()
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        ]
        return sorted(kids, key=lambda d: d.name)

    def _roots(self) -> list[ZfsDataset]:
        return sorted(
            (d for name, d in self.state.datasets.items() if "/" not in name),
            key=lambda d: d.name,
        )

    def _used(self, ds: ZfsDataset) -> int:
        used = self._used_memo.get(ds.name)
        if used is None:
            used = ds.referenced + sum(s.used for s in ds.snapshots)
            used += sum(self._used(child) for child in self._children(ds))
            self._used_memo[ds.name] = used
        return used

    def _available(self, ds: ZfsDataset) -> int:
        pool = ds.name.split("/", 1)[0]
        size = self.state.pools.get(pool, 0)
        root = self.state.datasets.get(pool)
        return max(0, size - (self._used(root) if root else 0))

    def _lookup(self, name: str) -> _Obj | None:
        if "#" in name:
            return None  # bookmarks are not simulated: none exist
        ds_name, at, snap_name = name.partition("@")
        ds = self.state.datasets.get(ds_name)
        if ds is None:
            return None
        if not at:
            return _Obj(ds)
        snap = ds.snapshot(snap_name)
        return _Obj(ds, snap) if snap else None

    def _open(self, name: str, types: int) -> _Obj | None:
        """zfs_open: the object, or None after printing "cannot open ..." as libzfs does."""
        reason = _validate_name(name, types, modifying=False)
        if reason is not None:
            self.error(f"cannot open '{name}': {reason}")
            return None
        obj = self._lookup(name)
        if obj is None:
            self.error(f"cannot open '{name}': dataset does not exist")
            return None
        if not obj.type & types:
            self.error(f"cannot open '{name}': operation not applicable to datasets of this type")
            return None
        return obj

    def _open_path(self, arg: str, types: int) -> _Obj | None:
        """zfs_path_to_zhandle: an absolute path names the filesystem mounted there."""
        if not arg.startswith(("/", "./")):
            return self._open(arg, types)
        best: ZfsDataset | None = None
        for ds in self.state.datasets.values():
            mp = self._mountpoint(ds)[0] if ds.type == "filesystem" else None
            if mp is None or not mp.startswith("/"):
                continue
            if (arg == mp or arg.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(self._mountpoint(best)[0])
            ):
                best = ds
        if best is None:
            self.error(f"cannot open '{arg}': No such file or directory")
            return None
        return self._open(best.name, _FS)

    def _mountpoint(self, ds: ZfsDataset) -> tuple[str, int, str]:
        """The mountpoint value, its source kind and where it is inherited from."""
        cur = ds.name
        while True:
            setting = self.state.datasets[cur].properties.get("mountpoint")
            if setting is not None:
                source = cur
                break
            if "/" not in cur:
                setting, source = "/", ""
                break
            cur = cur.rsplit("/", 1)[0]
        if source == ds.name:
            kind = _SRC_LOCAL
        elif source == "":
            kind = _SRC_DEFAULT
        else:
            kind = _SRC_INHERITED
        if not setting.startswith("/"):
            return setting, kind, source
        relpath = ds.name[len(source) :].lstrip("/")
        if relpath and setting == "/":
            setting = ""
        return (f"{setting}/{relpath}" if relpath else setting), kind, source

    # ---- property values

    def _number(self, obj: _Obj, name: str) -> int | None:
        ds, snap = obj.ds, obj.snap
        values: dict[str, Callable[[], int]] = {
            "creation": lambda: snap.creation if snap else ds.creation,
            "used": lambda: snap.used if snap else self._used(ds),
            "available": lambda: self._available(ds),
            "referenced": lambda: snap.referenced if snap else ds.referenced,
            "compressratio": lambda: ds.compressratio,
            "createtxg": lambda: obj.createtxg,
            "guid": lambda: snap.guid if snap else ds.guid,
            "usedbysnapshots": lambda: sum(s.used for s in ds.snapshots),
            "usedbydataset": lambda: ds.referenced,
            "usedbychildren": lambda: sum(self._used(c) for c in self._children(ds)),
            "usedbyrefreservation": lambda: 0,
            "userrefs": lambda: len(snap.holds) if snap else 0,
            "volsize": lambda: ds.volsize,
        }
        getter = values.get(name)
        return getter() if getter else None

    def _value(self, obj: _Obj, prop: _Prop, literal: bool) -> str | None:
        """zfs_prop_get: the printed value, or None where it does not apply (printed "-")."""
        if prop.kind == "user":
            found = self._user_value(obj, prop.name)
            return found[0] if found else None
        if prop.kind in ("special", "other"):
            return None
        if not obj.type & prop.types:
            return None
        if prop.name == "volsize" and obj.ds.type != "volume":
            return None
        name = prop.name
        if name == "name":
            return obj.name
        if name == "type":
            return {_FS: "filesystem", _VOL: "volume", _SNAP: "snapshot"}[obj.type]
        if name == "mountpoint":
            return self._mountpoint(obj.ds)[0]
        if name == "mounted":
            return "yes" if self._mountpoint(obj.ds)[0].startswith("/") else "no"
        if name == "origin":
            return None
        if name == "defer_destroy":
            return "on" if obj.snap is not None and obj.snap.defer_destroy else "off"
        number = self._number(obj, name)
        assert number is not None
        if name == "creation":
            return str(number) if literal else _ctime(number)
        if name == "compressratio":
            return f"{number // 100}.{number % 100:02d}" + ("" if literal else "x")
        if name in ("guid", "createtxg") or literal:
            return str(number)
        if name in ("volsize", "userrefs"):
            return nicenum(number)
        return nicenum(number, bytes_suffix=True)

    def _user_value(self, obj: _Obj, name: str) -> tuple[str, int, str] | None:
        """A user property's value, source kind and the dataset it is inherited from."""
        if obj.snap is not None and name in obj.snap.properties:
            return obj.snap.properties[name], _SRC_LOCAL, ""
        cur = obj.ds.name
        while True:
            value = self.state.datasets[cur].properties.get(name)
            if value is not None:
                local = cur == obj.ds.name and obj.snap is None
                return value, (_SRC_LOCAL if local else _SRC_INHERITED), cur
            if "/" not in cur:
                return None
            cur = cur.rsplit("/", 1)[0]

    def _source(self, obj: _Obj, prop: _Prop) -> tuple[int, str]:
        if prop.kind == "user":
            found = self._user_value(obj, prop.name)
            return (found[1], found[2]) if found else (_SRC_NONE, "")
        if prop.name == "mountpoint" and obj.type == _FS:
            _value, kind, source = self._mountpoint(obj.ds)
            return kind, source
        return _SRC_NONE, ""

    def _sort_key(self, obj: _Obj, prop: _Prop) -> tuple[bool, int | str]:
        """(valid, value) for zfs_sort: strings compare as text, numbers as numbers."""
        if prop.name == "name":
            return True, obj.name
        if prop.kind in ("user", "string", "index"):
            value = self._value(obj, prop, literal=True)
            return value is not None, value or ""
        if prop.kind == "number" and obj.type & prop.types:
            return True, self._number(obj, prop.name) or 0
        return prop.kind == "other", 0

    def _compare(self, a: _Obj, b: _Obj, sortcols: list[tuple[_Prop, bool]]) -> int:
        """zfs_sort: the -s/-S columns, then by name with snapshots after their dataset."""
        for prop, reverse in sortcols:
            lvalid, lval = self._sort_key(a, prop)
            rvalid, rval = self._sort_key(b, prop)
            if not lvalid and not rvalid:
                continue
            if not lvalid:
                return 1
            if not rvalid:
                return -1
            ret = (lval > rval) - (lval < rval)  # type: ignore[operator]
            if ret:
                return -ret if reverse else ret
        if a.ds.name != b.ds.name:
            return -1 if a.ds.name < b.ds.name else 1
        if a.snap is None or b.snap is None:
            return (a.snap is not None) - (b.snap is not None)
        return (a.createtxg > b.createtxg) - (a.createtxg < b.createtxg)

    def _for_each(
        self,
        operands: list[str],
        *,
        types: int,
        recurse: bool = False,
        limit: int | None = None,
        listsnaps: bool = False,
        paths: bool = False,
        sortcols: list[tuple[_Prop, bool]] | None = None,
    ) -> tuple[list[_Obj], int]:
        """zfs_for_each: gather the objects named (and their descendants), sorted; ret != 0 if
        any operand could not be opened. ``limit`` is the -d depth (None: unlimited)."""
        found: dict[str, _Obj] = {}
        # Without -t, `zfs list` shows snapshots only where the pool has listsnapshots=on,
        # which the simulated pools never do.
        include_snaps = False if listsnaps else bool(types & _SNAP)

        def visit(obj: _Obj, depth: int, recursing: bool) -> None:
            if obj.type & types or (obj.type == _SNAP and include_snaps):
                found.setdefault(obj.name, obj)
            if not recursing or (limit is not None and depth >= limit):
                return
            depth += 1
            if (limit is None or depth < limit or types & _FSVOL) and obj.type == _FS:
                for child in self._children(obj.ds):
                    visit(_Obj(child), depth, recursing)
            if obj.type != _SNAP and include_snaps:
                for snap in obj.ds.snapshots:
                    visit(_Obj(obj.ds, snap), depth, recursing)

        ret = 0
        if not operands:
            for root in self._roots():
                visit(_Obj(root), 0, True)
        else:
            argtype = types
            if recurse:
                argtype |= _FS
                if types & (_SNAP | _BOOKMARK):
                    argtype |= _VOL
            for arg in operands:
                obj = self._open_path(arg, argtype) if paths else self._open(arg, argtype)
                if obj is None:
                    ret = 1
                else:
                    visit(obj, 0, recurse)
        cols = sortcols or []

        def compare(a: _Obj, b: _Obj) -> int:
            return self._compare(a, b, cols)

        return sorted(found.values(), key=cmp_to_key(compare)), ret

    def _prop_list(self, fields: str) -> list[_Prop] | None:
        """zprop_get_list; None means "all". Raises _UsageError for a bad list."""
        if fields == "all":
            return None
        if fields == "":
            self.error("bad property list: no properties specified")
            raise _UsageError
        props: list[_Prop] = []
        for word in fields.split(","):
            names = _SPACE_PROPS if word == "space" else (word,)
            for name in names:
                prop = _list_prop(name)
                if prop is None:
                    self.error(f"bad property list: invalid property '{name}'")
                    raise _UsageError
                props.append(prop)
        return props

    def _parse_depth(self, arg: str) -> int:
        depth = _strtol(arg)
        if depth is None:
            self.error(f"{arg} is not an integer")
            raise _UsageError
        if depth < 0:
            self.error("Depth can not be negative.")
            raise _UsageError
        return depth

    def _invalid_option(self, c: str) -> None:
        self.error(f"invalid option '{c}'")
        raise _UsageError

    # ---- zfs list

    def do_list(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "HS:d:o:prs:t:")
        fields = "name,used,available,referenced,mountpoint"
        types = _DATASET
        types_specified = False
        listsnaps = True
        literal = scripted = recurse = False
        limit: int | None = None
        sortcols: list[tuple[_Prop, bool]] = []
        for c, arg in opts:
            if c == "o":
                fields = arg
            elif c == "p":
                literal = True
            elif c == "d":
                limit = self._parse_depth(arg)
                recurse = True
            elif c == "r":
                recurse = True
            elif c == "H":
                scripted = True
            elif c in "sS":
                prop = _find_prop(arg) or (
                    _Prop(arg, arg.upper(), "user") if _user_prop(arg) else None
                )
                if prop is None:
                    self.error(f"invalid property '{arg}'")
                    raise _UsageError
                sortcols.append((prop, c == "S"))
            elif c == "t":
                types = 0
                types_specified = True
                listsnaps = False
                for word in arg.split(","):
                    bits = _TYPE_WORDS.get(word)
                    if bits is None:
                        self.error(f"invalid type '{word}'")
                        raise _UsageError
                    types |= bits
            else:
                self._invalid_option(arg)
        if fields == "space" and not types_specified:
            types &= ~_SNAP
        if types in (_SNAP, _BOOKMARK) and operands and not recurse:
            recurse, limit = True, 1
        props = self._prop_list(fields)
        objs, ret = self._for_each(
            operands,
            types=types,
            recurse=recurse,
            limit=limit,
            listsnaps=listsnaps,
            paths=True,
            sortcols=sortcols,
        )
        if not objs:
            if ret == 0 and not scripted:
                self.error("no datasets available")
            return ret
        columns = props if props is not None else self._all_props(objs)
        widths = [self._width(col, objs, literal) for col in columns]
        if not scripted:
            cells = []
            for i, col in enumerate(columns):
                right = col.right and col.kind not in ("user", "special")
                last = i == len(columns) - 1
                cells.append(_align(col.column, widths[i], right, last))
            self.print("  ".join(cells))
        for obj in objs:
            cells = []
            for i, col in enumerate(columns):
                value = self._value(obj, col, literal)
                text = "-" if value is None else value
                last = i == len(columns) - 1
                cells.append(text if scripted else _align(text, widths[i], col.right, last))
            self.print(("\t" if scripted else "  ").join(cells))
        return ret

    def _all_props(self, objs: list[_Obj]) -> list[_Prop]:
        """The columns of `-o all`: name, the simulated native properties, user properties."""
        cols = [_SIM_BY_NAME["name"], *(p for p in _SIM_PROPS if p.name != "name")]
        seen: set[str] = set()
        for obj in objs:
            for source in (obj.snap.properties if obj.snap else {}, obj.ds.properties):
                for name in source:
                    if _user_prop(name) and name not in seen:
                        seen.add(name)
                        cols.append(_Prop(name, name.upper(), "user"))
        return cols

    def _width(self, col: _Prop, objs: list[_Obj], literal: bool) -> int:
        width = col.initial_width()
        if col.fixed and not literal:
            return width
        for obj in objs:
            value = self._value(obj, col, literal)
            if value is not None:
                width = max(width, len(value))
        return width

    # ---- zfs get

    def do_get(self, args: list[str]) -> int:
        opts, operands = _getopt(args, ":d:o:s:rt:Hp")
        literal = scripted = recurse = False
        limit: int | None = None
        columns = ["name", "property", "value", "source"]
        sources = _SRC_ALL
        types = _DATASET | _BOOKMARK
        for c, arg in opts:
            if c == "p":
                literal = True
            elif c == "d":
                limit = self._parse_depth(arg)
                recurse = True
            elif c == "r":
                recurse = True
            elif c == "H":
                scripted = True
            elif c == ":":
                self.error(f"missing argument for '{arg}' option")
                raise _UsageError
            elif c == "o":
                columns = []
                for word in arg.split(","):
                    if len(columns) == 5:
                        self.error("too many fields given to -o option")
                        raise _UsageError
                    if word == "all":
                        if columns:
                            self.error('"all" conflicts with specific fields given to -o option')
                            raise _UsageError
                        columns = ["name", "property", "value", "received", "source"]
                    elif word in ("name", "property", "value", "received", "source"):
                        columns.append(word)
                    else:
                        self.error(f"invalid column name '{word}'")
                        raise _UsageError
            elif c == "s":
                sources = 0
                for word in arg.split(","):
                    bit = _SOURCE_WORDS.get(word)
                    if bit is None:
                        self.error(f"invalid source '{word}'")
                        raise _UsageError
                    sources |= bit
            elif c == "t":
                types = 0
                for word in arg.split(","):
                    bits = _GET_TYPE_WORDS.get(word)
                    if bits is None:
                        self.error(f"invalid type '{word}'")
                        raise _UsageError
                    types |= bits
            else:
                self._invalid_option(arg)
        if not operands:
            self.error("missing property argument")
            raise _UsageError
        fields, targets = operands[0], operands[1:]
        if types in (_SNAP, _BOOKMARK) and targets and not recurse:
            recurse, limit = True, 1
        props = self._prop_list(fields)
        objs, ret = self._for_each(targets, types=types, recurse=recurse, limit=limit, paths=True)
        rows: list[tuple[str, str, str, str]] = []  # name, property, value, source
        value_width = 5
        prop_width = 8
        name_width = max([4, *(len(obj.name) for obj in objs)])
        plist = props if props is not None else self._all_props(objs)[1:]
        for prop in plist:
            prop_width = max(prop_width, len(prop.name))
            value_width = max(value_width, self._width(prop, objs, literal))
        for obj in objs:
            for prop in plist:
                value = self._value(obj, prop, literal)
                if value is None and props is None:
                    continue  # `get all` skips what does not apply
                kind, source = self._source(obj, prop) if value is not None else (_SRC_NONE, "")
                if not kind & sources:
                    continue
                rows.append(
                    (obj.name, prop.name, "-" if value is None else value, _SOURCE_TEXT[kind])
                )
                if kind == _SRC_INHERITED:
                    rows[-1] = (*rows[-1][:3], f"inherited from {source}")
        widths = {
            "name": name_width,
            "property": prop_width,
            "value": value_width,
            "received": 8,
            "source": name_width + len("inherited from") if name_width > 4 else 6,
        }
        if rows and not scripted:
            head = [c.upper() for c in columns]
            self.print(_get_line(head, columns, widths, scripted))
        for name, prop_name, value, source in rows:
            fields_by_col = {
                "name": name,
                "property": prop_name,
                "value": value,
                "received": "-",
                "source": source,
            }
            cells = [fields_by_col[c] for c in columns]
            self.print(_get_line(cells, columns, widths, scripted))
        return ret

    # ---- zfs snapshot

    def do_snapshot(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "ro:")
        props: dict[str, str] = {}
        recursive = multiple = False
        for c, arg in opts:
            if c == "o":
                if "=" not in arg:
                    self.error("missing '=' for property=value argument")
                    return 1
                key, value = arg.split("=", 1)
                if key in props:
                    self.error(f"property '{key}' specified multiple times")
                    return 1
                props[key] = value
            elif c == "r":
                recursive = multiple = True
            else:
                self._invalid_option(arg)
        if not operands:
            self.error("missing snapshot argument")
            raise _UsageError
        if len(operands) > 1:
            multiple = True
        names: dict[str, ZfsDataset] = {}
        for arg in operands:
            if "@" not in arg:
                raise _UsageError
            fs_name, snap_name = arg.split("@", 1)
            obj = self._open(fs_name, _FSVOL)
            if obj is None:
                raise _UsageError
            self._snapshot_targets(obj.ds, snap_name, recursive, names)
        ret = self._snapshot_nvl(names, props)
        if ret and multiple:
            self.error("no snapshots were created")
        return 1 if ret else 0

    def _snapshot_targets(
        self, ds: ZfsDataset, snap_name: str, recursive: bool, out: dict[str, ZfsDataset]
    ) -> None:
        out[f"{ds.name}@{snap_name}"] = ds
        if recursive:
            for child in self._children(ds):
                self._snapshot_targets(child, snap_name, recursive, out)

    def _snapshot_nvl(self, names: dict[str, ZfsDataset], props: dict[str, str]) -> int:
        """zfs_snapshot_nvl + lzc_snapshot: all snapshots are created in one txg, or none."""
        for name in names:
            reason = _validate_name(name, _SNAP, modifying=True)
            if reason is not None:
                self.error(f"cannot create snapshot '{name}': {reason}")
                return 1
        for key in props:
            if not _user_prop(key):
                self.error(
                    "cannot create snapshots : this property can not be modified for snapshots"
                )
                return 1
            if len(key) >= _MAX_NAME_LEN:
                self.error(f"cannot create snapshots : property name '{key}' is too long")
                return 1
        listed = list(names)
        pool = listed[0].split("/", 1)[0].split("@", 1)[0]
        for i, name in enumerate(listed):
            fs_part = name.split("@", 1)[0]
            other_pool = fs_part.split("/", 1)[0] != pool
            same_fs = any(other.split("@", 1)[0] == fs_part for other in listed[i + 1 :])
            if other_pool or same_fs:
                self.error("cannot create snapshots : multiple snapshots of same fs not allowed")
                return 1
        exists = [name for name, ds in names.items() if ds.snapshot(name.split("@", 1)[1])]
        for name in exists:
            self.error(f"cannot create snapshot '{name}': dataset already exists")
        if exists:
            return 1
        txg = self.state.next_txg(self.now)
        for name, ds in names.items():
            snap_name = name.split("@", 1)[1]
            ds.snapshots.append(
                ZfsSnapshot(
                    name=snap_name,
                    guid=_guid(name, txg, self.now),
                    createtxg=txg,
                    creation=int(self.now),
                    referenced=ds.referenced,
                    properties=dict(props),
                )
            )
        return 0

    # ---- zfs destroy

    def do_destroy(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "vpndfrR")
        verbose = parsable = dryrun = defer = recurse = False
        types = _DATASET
        for c, arg in opts:
            if c == "v":
                verbose = True
            elif c == "p":
                verbose = parsable = True
            elif c == "n":
                dryrun = True
            elif c == "d":
                defer = True
                types = _SNAP
            elif c in "rR":
                recurse = True
            elif c != "f":
                self._invalid_option(arg)
        if not operands:
            self.error("missing dataset argument")
            raise _UsageError
        if len(operands) > 1:
            self.error("too many arguments")
            raise _UsageError
        target = operands[0]
        flags = _DestroyFlags(verbose, parsable, dryrun, defer, recurse)
        if "@" in target:
            return self._destroy_snapshots(target, flags)
        if "#" in target:
            for enabled, what in (
                (dryrun, "dryrun"),
                (defer, "defer destroy"),
                (recurse, "recursive"),
            ):
                if enabled:
                    self.error(f"{what} is not supported with bookmark")
                    return 255
            self.error(f"bookmark '{target}' does not exist.")
            return 1
        return self._destroy_dataset(target, types, flags)

    def _verbose_destroy(self, name: str, flags: _DestroyFlags) -> None:
        if flags.parsable:
            self.print(f"destroy\t{name}")
        elif flags.dryrun:
            self.print(f"would destroy {name}")
        else:
            self.print(f"will destroy {name}")

    def _destroy_snapshots(self, target: str, flags: _DestroyFlags) -> int:
        fs_name, spec = target.split("@", 1)
        obj = self._open(fs_name, _FSVOL)
        if obj is None:
            return 1
        chosen: dict[str, tuple[ZfsDataset, ZfsSnapshot]] = {}
        reclaim = 0

        def gather(ds: ZfsDataset) -> None:
            nonlocal reclaim
            for part in spec.split(","):
                for snap in _snapspec(ds, part):
                    chosen[f"{ds.name}@{snap.name}"] = (ds, snap)
            if flags.verbose:
                for snap in ds.snapshots:
                    if f"{ds.name}@{snap.name}" in chosen:
                        self._verbose_destroy(f"{ds.name}@{snap.name}", flags)
                        reclaim += snap.used
            if flags.recurse:
                for child in self._children(ds):
                    gather(child)

        gather(obj.ds)
        if not chosen:
            self.error("could not find any snapshots to destroy; check snapshot names.")
            return 1
        if flags.verbose:
            if flags.parsable:
                self.print(f"reclaim\t{reclaim}")
            else:
                verb = "would" if flags.dryrun else "will"
                self.print(f"{verb} reclaim {nicenum(reclaim, bytes_suffix=True)}")
        if flags.dryrun:
            return 0
        return 1 if self._destroy_snaps_nvl(list(chosen.items()), flags.defer) else 0

    def _destroy_snaps_nvl(
        self, snaps: list[tuple[str, tuple[ZfsDataset, ZfsSnapshot]]], defer: bool
    ) -> int:
        """lzc_destroy_snaps: held snapshots make the whole batch fail unless deferred."""
        if not defer:
            held = [name for name, (_ds, snap) in snaps if snap.holds]
            for name in held:
                self.error(f"cannot destroy snapshot {name}: {self._busy_reason(name)}")
            if held:
                return 1
        for _name, (ds, snap) in snaps:
            if snap.holds:
                snap.defer_destroy = True
            else:
                self._remove_snapshot(ds, snap)
        return 0

    def _busy_reason(self, name: str) -> str:
        release = tuple(int(p) for p in re.findall(r"\d+", self.state.version)[:3])
        if release >= (2, 3, 3):
            return f"it's being held. Run 'zfs holds -r {name}' to see holders."
        return "dataset is busy"

    def _remove_snapshot(self, ds: ZfsDataset, snap: ZfsSnapshot) -> None:
        ds.snapshots.remove(snap)
        self._used_memo.clear()

    def _dependents(self, ds: ZfsDataset) -> list[_Obj]:
        """zfs_iter_dependents: descendants in post-order, snapshots after child datasets."""
        deps: list[_Obj] = []
        for child in self._children(ds):
            deps.extend(self._dependents(child))
            deps.append(_Obj(child))
        deps.extend(_Obj(ds, snap) for snap in ds.snapshots)
        return deps

    def _destroy_dataset(self, target: str, types: int, flags: _DestroyFlags) -> int:
        obj = self._open(target, types)
        if obj is None:
            return 1
        name = obj.name
        is_pool = "/" not in name and obj.type == _FS
        if not flags.recurse and is_pool:
            self.error(f"cannot destroy '{name}': operation does not apply to pools")
            self.error(f"use 'zfs destroy -r {name}' to destroy all datasets in the pool")
            self.error(f"use 'zpool destroy {name}' to destroy the pool itself")
            return 1
        deps = self._dependents(obj.ds)
        if deps and not flags.recurse:
            kind = "volume" if obj.type == _VOL else "filesystem"
            self.error(f"cannot destroy '{name}': {kind} has children")
            self.error("use '-r' to destroy the following datasets:")
            for dep in deps:
                self.error(dep.name)
            return 1
        failed = False
        batch: list[tuple[str, tuple[ZfsDataset, ZfsSnapshot]]] = []
        for item in [*deps, obj]:
            if flags.verbose:
                self._verbose_destroy(item.name, flags)
            if ("/" not in item.name and item.type == _FS) or flags.dryrun:
                continue
            if item.snap is not None:
                batch.append((item.name, (item.ds, item.snap)))
                continue
            error = self._destroy_snaps_nvl(batch, False)
            batch = []
            if error:
                failed = True
                continue
            if item.ds.snapshots:
                self.error(f"cannot destroy '{item.name}': dataset is busy")
                failed = True
            elif self._children(item.ds):
                self.error(f"cannot destroy '{item.name}': dataset already exists")
                failed = True
            else:
                del self.state.datasets[item.name]
                self._used_memo.clear()
        if batch and self._destroy_snaps_nvl(batch, False):
            failed = True
        return 1 if failed else 0

    # ---- zfs rollback

    def do_rollback(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "rRf")
        recurse = False
        for c, arg in opts:
            if c in "rR":
                recurse = True
            elif c != "f":
                self._invalid_option(arg)
        if not operands:
            self.error("missing dataset argument")
            raise _UsageError
        if len(operands) > 1:
            self.error("too many arguments")
            raise _UsageError
        target = operands[0]
        snap_obj = self._open(target, _SNAP)
        if snap_obj is None:
            return 1
        if self._open(target.rsplit("@", 1)[0], _DATASET) is None:
            return 1
        ds, snap = snap_obj.ds, snap_obj.snap
        assert snap is not None
        later = [s for s in ds.snapshots if s.createtxg > snap.createtxg]
        if later and not recurse:
            self.error(f"cannot rollback to '{target}': more recent snapshots or bookmarks exist")
            self.error("use '-r' to force deletion of the following snapshots and bookmarks:")
            for printed, newer in enumerate(later, start=1):
                self.error(f"{ds.name}@{newer.name}")
                if printed == 32:
                    self.error("Output limited to 32 snapshots/bookmarks")
                    break
            return 1
        failed = False
        for newer in later:  # zfs_rollback destroys them one by one, not atomically
            if newer.holds:
                self.error(f"cannot destroy '{ds.name}@{newer.name}': dataset is busy")
                failed = True
            else:
                self._remove_snapshot(ds, newer)
        if failed:
            return 1
        ds.referenced = snap.referenced
        self._used_memo.clear()
        return 0

    # ---- zfs hold / release / holds

    def do_hold(self, args: list[str]) -> int:
        return self._hold_release(args, holding=True)

    def do_release(self, args: list[str]) -> int:
        return self._hold_release(args, holding=False)

    def _hold_release(self, args: list[str], holding: bool) -> int:
        opts, operands = _getopt(args, "rt" if holding else "r")
        recursive = False
        for c, arg in opts:
            if c == "r":
                recursive = True
            elif c == "?":
                self._invalid_option(arg)
        if len(operands) < 2:
            raise _UsageError
        tag, paths = operands[0], operands[1:]
        if holding and tag.startswith("."):
            self.error("tag may not start with '.'")
            raise _UsageError
        errors = 0
        for path in paths:
            if "@" not in path:
                self.error(f"'{path}' is not a snapshot")
                errors += 1
                continue
            parent, snap_name = path.split("@", 1)
            obj = self._open(parent, _FSVOL)
            if obj is None:
                errors += 1
                continue
            if holding:
                errors += self._hold(obj.ds, snap_name, tag, recursive)
            else:
                errors += self._release(obj.ds, snap_name, tag, recursive)
        return 1 if errors else 0

    def _snapshots_named(
        self, ds: ZfsDataset, snap_name: str, recursive: bool
    ) -> list[tuple[ZfsDataset, ZfsSnapshot | None]]:
        found: list[tuple[ZfsDataset, ZfsSnapshot | None]] = [(ds, ds.snapshot(snap_name))]
        if recursive:
            for child in self._children(ds):
                found.extend(self._snapshots_named(child, snap_name, recursive))
        return found

    def _hold(self, ds: ZfsDataset, snap_name: str, tag: str, recursive: bool) -> int:
        """zfs_hold + lzc_hold: all holds are placed, or none."""
        targets = [(d, s) for d, s in self._snapshots_named(ds, snap_name, recursive) if s]
        if not targets:
            self.error(f"cannot hold snapshot '{ds.name}@{snap_name}': dataset does not exist")
            return 1
        failed = False
        for d, snap in targets:
            assert snap is not None
            if len(tag) > _MAX_TAG_LEN:
                self.error(f"cannot hold snapshot '{d.name}@{snap.name}': tag too long")
                failed = True
            elif tag in snap.holds:
                reason = "tag already exists on this dataset"
                self.error(f"cannot hold snapshot '{d.name}@{snap.name}': {reason}")
                failed = True
        if failed:
            return 1
        for _d, snap in targets:
            assert snap is not None
            snap.holds[tag] = int(self.now)
        return 0

    def _release(self, ds: ZfsDataset, snap_name: str, tag: str, recursive: bool) -> int:
        """zfs_release: releases the tag where it exists; a deferred destroy then happens."""
        missing = ""
        targets: list[tuple[ZfsDataset, ZfsSnapshot]] = []
        for d, snap in self._snapshots_named(ds, snap_name, recursive):
            if snap is None:
                missing = "dataset does not exist"
            elif tag not in snap.holds:
                missing = "no such tag on this dataset"
            else:
                targets.append((d, snap))
        if not targets:
            self.error(f"cannot release hold from snapshot '{ds.name}@{snap_name}': {missing}")
            return 1
        for d, snap in targets:
            del snap.holds[tag]
            if snap.defer_destroy and not snap.holds:
                self._remove_snapshot(d, snap)
        return 0

    def do_holds(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "rHp")
        recursive = scripted = parsable = False
        for c, arg in opts:
            if c == "r":
                recursive = True
            elif c == "H":
                scripted = True
            elif c == "p":
                parsable = True
            else:
                self._invalid_option(arg)
        if not operands:
            raise _UsageError
        types = _SNAP | (_FSVOL if recursive else 0)
        holds: dict[str, dict[str, int]] = {}
        errors = False
        for arg in operands:
            if "@" not in arg:
                self.error(f"'{arg}' is not a snapshot")
                errors = True
                continue
            target, snap_name = arg.split("@", 1)
            objs, ret = self._for_each(
                [target if recursive else arg], types=types, recurse=recursive
            )
            for obj in objs:
                if obj.snap is None or (recursive and obj.snap.name != snap_name):
                    continue
                holds.pop(obj.name, None)
                holds[obj.name] = dict(obj.snap.holds)
            if ret:
                errors = True
        name_width = max([0, *(len(n) for n in holds)])
        tag_width = max([0, *(len(t) for tags in holds.values() for t in tags)])
        if not scripted:
            self.print(f"{'NAME':<{name_width}}  {'TAG':<{tag_width}}  TIMESTAMP")
        for name, tags in holds.items():
            for tag, when in tags.items():
                stamp = str(when) if parsable else _ctime(when, hour_padded=True)
                if scripted:
                    self.print(f"{name}\t{tag}\t{stamp}")
                else:
                    self.print(f"{name:<{name_width}}  {tag:<{tag_width}}  {stamp}")
        if not holds:
            self.error("no datasets available")
        return 1 if errors else 0

    # ---- zfs version

    def do_version(self, args: list[str]) -> int:
        self.print(f"zfs-{self.state.version}")
        self.print(f"zfs-kmod-{self.state.version}")
        return 0

    # ---- dispatch

    def run(self, argv: list[str]) -> int:
        try:
            return self._run(argv)
        except _UsageError:
            self.err.append(self.usage_text())
            return 2

    def _run(self, argv: list[str]) -> int:
        if len(argv) < 2:
            self.error("missing command")
            raise _UsageError
        name = _ALIASES.get(argv[1], argv[1])
        if name in ("-?", "--help"):
            self.out.append(self.usage_text())
            return 0
        if name in ("-V", "--version"):
            return self.do_version([])
        if name == "help":
            self.err.append("couldn't run man program: No such file or directory")
            return 255
        if name not in _USAGE:
            if "=" in name:
                name = "set"
            else:
                self.error(f"unrecognized command '{name}'")
                raise _UsageError
        self.command = name
        handler: Callable[[list[str]], int] | None = getattr(
            self, "do_" + name.replace("-", "_"), None
        )
        if handler is None:
            self.error(f"zfs {name}: not simulated by labsim")
            return 1
        return handler(argv[2:])


@dataclass(frozen=True)
class _DestroyFlags:
    verbose: bool
    parsable: bool
    dryrun: bool
    defer: bool
    recurse: bool


def _snapspec(ds: ZfsDataset, spec: str) -> list[ZfsSnapshot]:
    """zfs_iter_snapspec for one comma-separated part: a name or a ``first%last`` range."""
    if "%" not in spec:
        snap = ds.snapshot(spec)
        return [snap] if snap else []
    first, last = spec.split("%", 1)
    if last and ds.snapshot(last) is None:
        return []
    chosen: list[ZfsSnapshot] = []
    seen_first = first == ""
    for snap in ds.snapshots:
        if not seen_first and snap.name == first:
            seen_first = True
        if seen_first:
            chosen.append(snap)
        if snap.name == last:
            break
    return chosen


def _align(text: str, width: int, right: bool, last: bool) -> str:
    if last and not right:
        return text
    return text.rjust(width) if right else text.ljust(width)


def _get_line(cells: list[str], columns: list[str], widths: dict[str, int], scripted: bool) -> str:
    parts = []
    for i, (cell, column) in enumerate(zip(cells, columns, strict=True)):
        if i == len(columns) - 1:
            parts.append(cell)
        elif scripted:
            parts.append(cell + "\t")
        else:
            parts.append(cell.ljust(widths[column]) + "  ")
    return "".join(parts)


def run_zfs(state: ZfsState, argv: list[str], now: float) -> tuple[int, str, str]:
    """Run ``zfs`` with ``argv`` (``argv[0] == "zfs"``) against ``state`` at epoch ``now``.

    Returns (exit code, stdout, stderr). Mutating subcommands change ``state`` in place.
    """
    cmd = _Zfs(state, now)
    rc = cmd.run(list(argv))
    return rc, "".join(cmd.out), "".join(cmd.err)


_SPACE_PROPS = (
    "name",
    "avail",
    "used",
    "usedbysnapshots",
    "usedbydataset",
    "usedbyrefreservation",
    "usedbychildren",
)
_ALIASES = {"umount": "unmount", "recv": "receive", "snap": "snapshot"}
_TYPE_WORDS = {
    "filesystem": _FS,
    "fs": _FS,
    "volume": _VOL,
    "vol": _VOL,
    "snapshot": _SNAP,
    "snap": _SNAP,
    "bookmark": _BOOKMARK,
    "all": _DATASET | _BOOKMARK,
}
_GET_TYPE_WORDS = {
    "filesystem": _FS,
    "volume": _VOL,
    "snapshot": _SNAP,
    "snap": _SNAP,
    "bookmark": _BOOKMARK,
    "all": _DATASET | _BOOKMARK,
}
_SOURCE_WORDS = {
    "local": _SRC_LOCAL,
    "default": _SRC_DEFAULT,
    "inherited": _SRC_INHERITED,
    "received": _SRC_RECEIVED,
    "temporary": _SRC_TEMPORARY,
    "none": _SRC_NONE,
}
_SOURCE_TEXT = {
    _SRC_NONE: "-",
    _SRC_DEFAULT: "default",
    _SRC_LOCAL: "local",
    _SRC_TEMPORARY: "temporary",
    _SRC_INHERITED: "inherited",
    _SRC_RECEIVED: "received",
}

_USAGE_PROPERTY_TRAILER = (
    "".join(
        f"\t{name:<15} {flags}\n"
        for name, flags in (
            *((f"{w}used@...", " NO       NO   <size>") for w in ("user", "group", "project")),
            *((f"{w}objused@...", " NO       NO   <size>") for w in ("user", "group", "project")),
            *(
                (f"{w}quota@...", "YES       NO   <size> | none")
                for w in ("user", "group", "project")
            ),
            *(
                (f"{w}objquota@...", "YES       NO   <size> | none")
                for w in ("user", "group", "project")
            ),
            ("written@<snap>", " NO       NO   <size>"),
            ("written#<bookmark>", " NO       NO   <size>"),
        )
    )
    + "\nSizes are specified in bytes with standard units such as K, M, G, etc.\n"
    + "\nUser-defined properties can be specified by using a name containing a colon (:).\n"
    + "\nThe {user|group|project}[obj]{used|quota}@ properties must be appended with\n"
    + "a user|group|project specifier of one of these forms:\n"
    + '    POSIX name      (eg: "matt")\n'
    + '    POSIX id        (eg: "126829")\n'
    + '    SMB name@domain (eg: "matt@sun")\n'
    + '    SMB SID         (eg: "S-1-234-567-89")\n'
)

# (command, usage) in the order `zfs` prints them; None is a blank line.
_COMMANDS: tuple[tuple[str, str] | None, ...] = (
    ("version", "\tversion\n"),
    None,
    (
        "create",
        (
            "\tcreate [-Pnpuv] [-o property=value] ... <filesystem>\n"
            "\tcreate [-Pnpsv] [-b blocksize] [-o property=value] ... -V <size> <volume>\n"
        ),
    ),
    (
        "destroy",
        (
            "\tdestroy [-fnpRrv] <filesystem|volume>\n"
            "\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]\n"
            "\tdestroy <filesystem|volume>#<bookmark>\n"
        ),
    ),
    None,
    ("snapshot", "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...\n"),
    ("rollback", "\trollback [-rRf] <snapshot>\n"),
    ("clone", "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>\n"),
    ("promote", "\tpromote <clone-filesystem>\n"),
    (
        "rename",
        (
            "\trename [-f] <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n"
            "\trename -p [-f] <filesystem|volume> <filesystem|volume>\n"
            "\trename -u [-f] <filesystem> <filesystem>\n"
            "\trename -r <snapshot> <snapshot>\n"
        ),
    ),
    ("bookmark", "\tbookmark <snapshot|bookmark> <newbookmark>\n"),
    (
        "program",
        (
            "\tprogram [-jn] [-t <instruction limit>] [-m <memory limit (b)>]\n"
            "\t    <pool> <program file> [lua args...]\n"
        ),
    ),
    None,
    (
        "list",
        (
            "\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n"
            "\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...\n"
        ),
    ),
    None,
    ("set", "\tset [-u] <property=value> ... <filesystem|volume|snapshot> ...\n"),
    (
        "get",
        (
            '\tget [-rHp] [-d max] [-o "all" | field[,...]]\n'
            "\t    [-t type[,...]] [-s source[,...]]\n"
            '\t    <"all" | property[,...]> [filesystem|volume|snapshot|bookmark] ...\n'
        ),
    ),
    ("inherit", "\tinherit [-rS] <property> <filesystem|volume|snapshot> ...\n"),
    (
        "upgrade",
        ("\tupgrade [-v]\n\tupgrade [-r] [-V version] <-a | filesystem ...>\n"),
    ),
    None,
    (
        "userspace",
        (
            "\tuserspace [-Hinp] [-o field[,...]] [-s field] ...\n"
            "\t    [-S field] ... [-t type[,...]] <filesystem|snapshot|path>\n"
        ),
    ),
    (
        "groupspace",
        (
            "\tgroupspace [-Hinp] [-o field[,...]] [-s field] ...\n"
            "\t    [-S field] ... [-t type[,...]] <filesystem|snapshot|path>\n"
        ),
    ),
    (
        "projectspace",
        (
            "\tprojectspace [-Hp] [-o field[,...]] [-s field] ... \n"
            "\t    [-S field] ... <filesystem|snapshot|path>\n"
        ),
    ),
    None,
    (
        "project",
        (
            "\tproject [-d|-r] <directory|file ...>\n"
            "\tproject -c [-0] [-d|-r] [-p id] <directory|file ...>\n"
            "\tproject -C [-k] [-r] <directory ...>\n"
            "\tproject [-p id] [-r] [-s] <directory ...>\n"
        ),
    ),
    None,
    (
        "mount",
        ("\tmount\n\tmount [-flvO] [-o opts] <-a|-R filesystem|filesystem>\n"),
    ),
    ("unmount", "\tunmount [-fu] <-a | filesystem|mountpoint>\n"),
    ("share", "\tshare [-l] <-a [nfs|smb] | filesystem>\n"),
    ("unshare", "\tunshare <-a [nfs|smb] | filesystem|mountpoint>\n"),
    None,
    (
        "send",
        (
            "\tsend [-DLPbcehnpsVvw] [-i|-I snapshot]\n"
            "\t     [-R [-X dataset[,dataset]...]]     <snapshot>\n"
            "\tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n"
            "\tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>\n"
            "\tsend [-nVvPe] -t <receive_resume_token>\n"
            "\tsend [-PnVv] --saved filesystem\n"
        ),
    ),
    (
        "receive",
        (
            "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
            "\t    <filesystem|volume|snapshot>\n"
            "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... \n"
            "\t    [-d | -e] <filesystem>\n"
            "\treceive -A <filesystem|volume>\n"
        ),
    ),
    None,
    (
        "allow",
        (
            "\tallow <filesystem|volume>\n"
            '\tallow [-ldug] <"everyone"|user|group>[,...] <perm|@setname>[,...]\n'
            "\t    <filesystem|volume>\n"
            "\tallow [-ld] -e <perm|@setname>[,...] <filesystem|volume>\n"
            "\tallow -c <perm|@setname>[,...] <filesystem|volume>\n"
            "\tallow -s @setname <perm|@setname>[,...] <filesystem|volume>\n"
        ),
    ),
    None,
    (
        "unallow",
        (
            '\tunallow [-rldug] <"everyone"|user|group>[,...]\n'
            "\t    [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-rld] -e [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-r] -c [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-r] -s @setname [<perm|@setname>[,...]] <filesystem|volume>\n"
        ),
    ),
    None,
    ("hold", "\thold [-r] <tag> <snapshot> ...\n"),
    ("holds", "\tholds [-rHp] <snapshot> ...\n"),
    ("release", "\trelease [-r] <tag> <snapshot> ...\n"),
    ("diff", "\tdiff [-FHth] <snapshot> [snapshot|filesystem]\n"),
    ("load-key", "\tload-key [-rn] [-L <keylocation>] <-a | filesystem|volume>\n"),
    ("unload-key", "\tunload-key [-r] <-a | filesystem|volume>\n"),
    (
        "change-key",
        (
            "\tchange-key [-l] [-o keyformat=<value>]\n"
            "\t    [-o keylocation=<value>] [-o pbkdf2iters=<value>]\n"
            "\t    <filesystem|volume>\n"
            "\tchange-key -i [-l] <filesystem|volume>\n"
        ),
    ),
    ("redact", "\tredact <snapshot> <bookmark> <redaction_snapshot> ...\n"),
    ("wait", "\twait [-t <activity>] <filesystem>\n"),
    ("zone", "\tzone <nsfile> <filesystem>\n"),
    ("unzone", "\tunzone <nsfile> <filesystem>\n"),
)
_USAGE = {entry[0]: entry[1] for entry in _COMMANDS if entry is not None}

# Every visible native property of OpenZFS 2.2.7 as (name, column, editable, inheritable, values),
# sorted by name: the table `zfs list|get` usage prints, and the names -o accepts.
_NATIVE_PROPS: tuple[tuple[str, str, bool, bool, str], ...] = (
    (
        "aclinherit",
        "ACLINHERIT",
        True,
        True,
        ("discard | noallow | restricted | passthrough | passthrough-x"),
    ),
    ("aclmode", "ACLMODE", True, True, "discard | groupmask | passthrough | restricted"),
    ("acltype", "ACLTYPE", True, True, "off | nfsv4 | posix"),
    ("atime", "ATIME", True, True, "on | off"),
    ("available", "AVAIL", False, False, "<size>"),
    ("canmount", "CANMOUNT", True, False, "on | off | noauto"),
    ("casesensitivity", "CASE", False, True, "sensitive | insensitive | mixed"),
    (
        "checksum",
        "CHECKSUM",
        True,
        True,
        ("on | off | fletcher2 | fletcher4 | sha256 | sha512 | skein | edonr | blake3"),
    ),
    ("clones", "CLONES", False, False, "<dataset>[,...]"),
    (
        "compression",
        "COMPRESS",
        True,
        True,
        (
            "on | off | lzjb | gzip | gzip-[1-9] | zle | lz4 | zstd"
            " | zstd-[1-19] | zstd-fast"
            " | zstd-fast-[1-10,20,30,40,50,60,70,80,90,100,500,1000]"
        ),
    ),
    ("compressratio", "RATIO", False, False, "<1.00x or higher if compressed>"),
    ("context", "CONTEXT", True, False, "<selinux context>"),
    ("copies", "COPIES", True, True, "1 | 2 | 3"),
    ("createtxg", "CREATETXG", False, False, "<uint64>"),
    ("creation", "CREATION", False, False, "<date>"),
    (
        "dedup",
        "DEDUP",
        True,
        True,
        (
            "on | off | verify | sha256[,verify] | sha512[,verify]"
            " | skein[,verify] | edonr,verify | blake3[,verify]"
        ),
    ),
    ("defcontext", "DEFCONTEXT", True, False, "<selinux defcontext>"),
    ("defer_destroy", "DEFER_DESTROY", False, False, "yes | no"),
    ("devices", "DEVICES", True, True, "on | off"),
    ("dnodesize", "DNSIZE", True, True, "legacy | auto | 1k | 2k | 4k | 8k | 16k"),
    (
        "encryption",
        "ENCRYPTION",
        False,
        True,
        (
            "on | off | aes-128-ccm | aes-192-ccm | aes-256-ccm"
            " | aes-128-gcm | aes-192-gcm | aes-256-gcm"
        ),
    ),
    ("encryptionroot", "ENCROOT", False, False, "<filesystem | volume>"),
    ("exec", "EXEC", True, True, "on | off"),
    ("filesystem_count", "FSCOUNT", False, False, "<count>"),
    ("filesystem_limit", "FSLIMIT", True, False, "<count> | none"),
    ("fscontext", "FSCONTEXT", True, False, "<selinux fscontext>"),
    ("guid", "GUID", False, False, "<uint64>"),
    ("keyformat", "KEYFORMAT", False, False, "none | raw | hex | passphrase"),
    ("keylocation", "KEYLOCATION", True, False, "prompt | <file URI> | <https URL> | <http URL>"),
    ("keystatus", "KEYSTATUS", False, False, "none | unavailable | available"),
    ("logbias", "LOGBIAS", True, True, "latency | throughput"),
    ("logicalreferenced", "LREFER", False, False, "<size>"),
    ("logicalused", "LUSED", False, False, "<size>"),
    ("mlslabel", "MLSLABEL", True, True, "<sensitivity label>"),
    ("mounted", "MOUNTED", False, False, "yes | no"),
    ("mountpoint", "MOUNTPOINT", True, True, "<path> | legacy | none"),
    ("nbmand", "NBMAND", True, True, "on | off"),
    ("normalization", "NORMALIZATION", False, True, "none | formC | formD | formKC | formKD"),
    ("objsetid", "OBJSETID", False, False, "<uint64>"),
    ("origin", "ORIGIN", False, False, "<snapshot>"),
    ("overlay", "OVERLAY", True, True, "on | off"),
    ("pbkdf2iters", "PBKDF2ITERS", False, False, "<iters>"),
    ("prefetch", "PREFETCH", True, True, "none | metadata | all"),
    ("primarycache", "PRIMARYCACHE", True, True, "all | none | metadata"),
    ("quota", "QUOTA", True, False, "<size> | none"),
    ("readonly", "RDONLY", True, True, "on | off"),
    ("receive_resume_token", "RESUMETOK", False, False, "<string token>"),
    ("recordsize", "RECSIZE", True, True, "512 to 1M, power of 2"),
    ("redact_snaps", "RSNAPS", False, False, "<snapshot>[,...]"),
    ("redundant_metadata", "REDUND_MD", True, True, "all | most | some | none"),
    ("refcompressratio", "REFRATIO", False, False, "<1.00x or higher if compressed>"),
    ("referenced", "REFER", False, False, "<size>"),
    ("refquota", "REFQUOTA", True, False, "<size> | none"),
    ("refreservation", "REFRESERV", True, False, "<size> | none"),
    ("relatime", "RELATIME", True, True, "on | off"),
    ("reservation", "RESERV", True, False, "<size> | none"),
    ("rootcontext", "ROOTCONTEXT", True, False, "<selinux rootcontext>"),
    ("secondarycache", "SECONDARYCACHE", True, True, "all | none | metadata"),
    ("setuid", "SETUID", True, True, "on | off"),
    ("sharenfs", "SHARENFS", True, True, "on | off | NFS share options"),
    ("sharesmb", "SHARESMB", True, True, "on | off | SMB share options"),
    ("snapdev", "SNAPDEV", True, True, "hidden | visible"),
    ("snapdir", "SNAPDIR", True, True, "hidden | visible"),
    ("snapshot_count", "SSCOUNT", False, False, "<count>"),
    ("snapshot_limit", "SSLIMIT", True, False, "<count> | none"),
    ("snapshots_changed", "SNAPSHOTS_CHANGED", False, False, "<date>"),
    ("special_small_blocks", "SPECIAL_SMALL_BLOCKS", True, True, "zero or 512 to 1M, power of 2"),
    ("sync", "SYNC", True, True, "standard | always | disabled"),
    ("type", "TYPE", False, False, "filesystem | volume | snapshot | bookmark"),
    ("used", "USED", False, False, "<size>"),
    ("usedbychildren", "USEDCHILD", False, False, "<size>"),
    ("usedbydataset", "USEDDS", False, False, "<size>"),
    ("usedbyrefreservation", "USEDREFRESERV", False, False, "<size>"),
    ("usedbysnapshots", "USEDSNAP", False, False, "<size>"),
    ("userrefs", "USERREFS", False, False, "<count>"),
    ("utf8only", "UTF8ONLY", False, True, "on | off"),
    ("version", "VERSION", True, False, "1 | 2 | 3 | 4 | 5 | current"),
    ("volblocksize", "VOLBLOCK", False, True, "512 to 128k, power of 2"),
    ("volmode", "VOLMODE", True, True, "default | full | geom | dev | none"),
    ("volsize", "VOLSIZE", True, False, "<size>"),
    ("vscan", "VSCAN", True, True, "on | off"),
    ("written", "WRITTEN", False, False, "<size>"),
    ("xattr", "XATTR", True, True, "on | off | dir | sa"),
    ("zoned", "ZONED", True, True, "on | off"),
)
