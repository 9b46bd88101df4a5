"""The ``zfs rollback``, ``zfs hold``, ``zfs release`` and ``zfs holds`` subcommands."""

from __future__ import annotations

from labsim.hosts.zfs.args import _getopt, _UsageError
from labsim.hosts.zfs.datasets import ZfsDataset, ZfsSnapshot
from labsim.hosts.zfs.libzfs import _Libzfs
from labsim.hosts.zfs.names import _DATASET, _FSVOL, _MAX_TAG_LEN, _SNAP
from labsim.hosts.zfs.output import _ctime


class _RollbackHold(_Libzfs):
    """``zfs rollback``, ``zfs hold``, ``zfs release`` and ``zfs holds``."""

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
