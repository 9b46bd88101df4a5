"""The base of the simulated ``zfs`` command: its stdout and stderr, and what libzfs does for it:
opening datasets by name or path, property values and their sources, iterating datasets
(``zfs_for_each``) and the property lists of ``-o``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cmp_to_key

from labsim.hosts.zfs.args import _strtol, _UsageError
from labsim.hosts.zfs.datasets import ZfsDataset, ZfsSnapshot, ZfsState
from labsim.hosts.zfs.names import _BOOKMARK, _FS, _FSVOL, _SNAP, _VOL, _validate_name
from labsim.hosts.zfs.output import _ctime, nicenum
from labsim.hosts.zfs.properties import (
    _SPACE_PROPS,
    _SRC_DEFAULT,
    _SRC_INHERITED,
    _SRC_LOCAL,
    _SRC_NONE,
    _list_prop,
    _Prop,
)


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
# The command's base: what every subcommand uses


class _Libzfs:
    """What the subcommands share: the state, stdout and stderr, opening and iterating datasets."""

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

    def _remove_snapshot(self, ds: ZfsDataset, snap: ZfsSnapshot) -> None:
        ds.snapshots.remove(snap)
        self._used_memo.clear()
