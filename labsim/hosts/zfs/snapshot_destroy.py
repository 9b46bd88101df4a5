"""The ``zfs snapshot`` and ``zfs destroy`` subcommands."""

from __future__ import annotations

import re
from dataclasses import dataclass

from labsim.hosts.zfs.args import _getopt, _UsageError
from labsim.hosts.zfs.datasets import ZfsDataset, ZfsSnapshot, _guid
from labsim.hosts.zfs.libzfs import _Libzfs, _Obj
from labsim.hosts.zfs.names import (
    _DATASET,
    _FS,
    _FSVOL,
    _MAX_NAME_LEN,
    _SNAP,
    _VOL,
    _user_prop,
    _validate_name,
)
from labsim.hosts.zfs.output import nicenum


class _SnapshotDestroy(_Libzfs):
    """``zfs snapshot`` and ``zfs destroy``."""

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
