"""Pure planning for restores: scratch VMIDs, which backup, and what a restore will do.

Nothing here does I/O. ``tasks/restore.py`` reads the cluster's guests and the storage's
backup listing and hands them to these functions; the flows carry out what they return.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moxflow.backups import Archive, Volid, parse_volid
from moxflow.errors import ConfigError, ParseError
from moxflow.guests import SCRATCH_PREFIX, SCRATCH_TAG, Guest, GuestType
from moxflow.naming import MOXFLOW_MARKER

__all__ = [
    "MAX_VMID",
    "MIN_VMID",
    "RestorePlan",
    "RestoreTestPlan",
    "backup_storage",
    "backup_volid",
    "check_scratch_vmid",
    "choose_scratch_vmid",
    "leftover_scratch",
    "parse_vmid_range",
    "pick_archive",
    "plan_restore",
    "plan_restore_test",
    "restore_request",
    "scratch_marks",
]

MIN_VMID = 100
MAX_VMID = 999_999_999
_RANGE_RE = re.compile(r"^\s*([0-9]+)\s*(?::\s*([0-9]+)\s*)?$")
_NAME_MAX = 63  # one DNS label: a name PVE accepts as a VM name and as a container's hostname


def parse_vmid_range(text: str, *, setting: str = "restore_test.scratch_vmids") -> range:
    """``"9900:9999"`` (inclusive) or a single ``"9900"`` as a range of VMIDs."""
    m = _RANGE_RE.match(text)
    if m is None:
        raise ConfigError(
            f"scratch VMIDs {text!r} are not FIRST:LAST or one VMID",
            setting=setting,
            hint='e.g. "9900:9999"',
        )
    first = int(m[1])
    last = int(m[2]) if m[2] is not None else first
    if not MIN_VMID <= first <= last <= MAX_VMID:
        raise ConfigError(
            f"scratch VMIDs {text!r}: need {MIN_VMID} <= FIRST <= LAST <= {MAX_VMID}",
            setting=setting,
        )
    return range(first, last + 1)


def _show_range(vmids: range) -> str:
    return f"{vmids.start}:{vmids.stop - 1}" if len(vmids) > 1 else str(vmids.start)


def check_scratch_vmid(vmid: int, in_use: Iterable[Guest]) -> int:
    """``vmid`` when no guest has it; ``ConfigError`` naming the guest that does."""
    if not MIN_VMID <= vmid <= MAX_VMID:
        raise ConfigError(f"scratch VMID {vmid} is not between {MIN_VMID} and {MAX_VMID}")
    for g in in_use:
        if g.vmid == vmid:
            whose = (
                "a scratch guest still there"
                if g.scratch
                else f"which is not a restore test's scratch guest (no tag {SCRATCH_TAG}); a "
                "restore test never touches a guest it did not make"
            )
            raise ConfigError(
                f"scratch VMID {vmid} is in use by {g.label} on {g.node}, {whose}",
                setting="restore_test.scratch_vmids",
                hint="pick a free VMID or a range with free VMIDs",
            )
    return vmid


def choose_scratch_vmid(
    vmids: range, in_use: Iterable[Guest], avoid: Iterable[int] = (), protect: Iterable[int] = ()
) -> int:
    """The lowest VMID of ``vmids`` that no guest uses and that is not in ``avoid``.

    ``protect`` lists VMIDs that must never be chosen whatever happens (the originals).
    ``ConfigError`` when every VMID of the range is taken.
    """
    taken = {g.vmid for g in in_use} | set(avoid) | set(protect)
    for vmid in vmids:
        if vmid not in taken:
            return vmid
    raise ConfigError(
        f"no free scratch VMID in {_show_range(vmids)}: every one is in use",
        setting="restore_test.scratch_vmids",
        hint="widen the range or remove the guests that use it",
    )


def backup_volid(backup: str) -> Volid:
    """``parse_volid`` for a volid given on the command line: ``ConfigError`` when malformed."""
    try:
        return parse_volid(backup)
    except ParseError as exc:
        raise ConfigError(
            f"--backup {backup!r} is neither latest nor a backup volid",
            hint="e.g. nas-backup:backup/vzdump-qemu-100-2026_11_26-02_00_05.vma.zst",
        ) from exc


def backup_storage(backup: str, default: str) -> str:
    """The storage to list for ``--backup``: the volid's, else ``default`` for latest."""
    return default if backup == "latest" else backup_volid(backup).storage


def pick_archive(archives: Sequence[Archive], backup: str, vmid: int) -> Archive:
    """The archive to restore: the newest of ``archives`` for ``latest``, else the volid.

    ``ConfigError`` when there is none, the volid is not listed, or it belongs to another
    guest (restoring guest 101's backup as 100 by a typo would be a disaster).
    """
    mine = sorted((a for a in archives if a.vmid == vmid), key=lambda a: (a.created, a.volid))
    if backup == "latest":
        if not mine:
            raise ConfigError(f"no backup of guest {vmid} found", hint="list them with pvesm list")
        return mine[-1]
    vol = backup_volid(backup)
    if vol.vmid is not None and vol.vmid != vmid:
        raise ConfigError(
            f"backup {backup} is of guest {vol.vmid}, not {vmid}",
            hint="pass the volid of a backup of this guest, or --backup latest",
        )
    for a in archives:
        if a.volid == backup:
            if a.vmid != vmid:
                raise ConfigError(f"backup {backup} is of guest {a.vmid}, not {vmid}")
            return a
    raise ConfigError(
        f"backup {backup} is not on storage {vol.storage}",
        hint="copy the volid from `pvesm list STORAGE --content backup`",
    )


def scratch_marks(guest: Guest, archive: Archive, run: str = "") -> dict[str, str]:
    """What marks a restore test's scratch copy of ``guest`` as moxflow's own, as parameters
    of the restore (``POST /nodes/{node}/{type}`` takes config options beside the archive and
    keeps them): the tag ``moxflow-scratch`` (instead of the original's tags, so nothing that
    selects by tag picks it up), the name ``moxflow-scratch-<original>`` (a container's
    hostname) and a description saying whose copy it is and that it may go."""
    base = guest.name or str(guest.vmid)
    name = (SCRATCH_PREFIX + base)[:_NAME_MAX].rstrip("-.")
    by = f" by run {run}" if run else ""
    description = (
        f"{MOXFLOW_MARKER} restore test's scratch copy of {guest.label} from {archive.volid}"
        f"{by}; destroyed by the test, or by the next restore test if left behind"
    )
    return {
        "tags": SCRATCH_TAG,
        "name" if guest.type == "qemu" else "hostname": name,
        "description": description,
    }


def leftover_scratch(guests: Iterable[Guest], vmids: Iterable[int]) -> list[Guest]:
    """The scratch guests an earlier restore test left behind: the guests on the scratch
    VMIDs ``vmids`` carrying moxflow's mark (the tag ``moxflow-scratch`` and the name
    prefix), by VMID. A guest there without the mark is someone else's, and never destroyed;
    one with the mark elsewhere is left alone too."""
    allowed = set(vmids)
    return sorted((g for g in guests if g.scratch and g.vmid in allowed), key=lambda g: g.vmid)


def restore_request(
    subtype: str | None,
    vmid: int,
    volid: str,
    *,
    storage: str | None,
    unique: bool,
    force: bool,
    marks: Mapping[str, str] | None = None,
) -> tuple[GuestType, dict[str, Any]]:
    """The guest type (the path tail ``qemu``/``lxc``) and the parameters of
    ``POST /nodes/{node}/{type}``; ``marks``: config options the restored guest gets instead
    of the backed-up ones (``scratch_marks``)."""
    if subtype not in ("qemu", "lxc"):
        raise ConfigError(f"cannot restore an archive of type {subtype!r}")
    gtype: GuestType = "qemu" if subtype == "qemu" else "lxc"
    params: dict[str, Any] = {"vmid": vmid, "storage": storage}
    if subtype == "qemu":
        params["archive"] = volid
    else:
        params["ostemplate"] = volid
        params["restore"] = True
    if unique:
        params["unique"] = True
    if force:
        params["force"] = True
    params.update(marks or {})
    return gtype, params


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What ``flows.restore`` will do, decided before anything changes."""

    vmid: int  # the guest whose backup is restored
    archive: Archive
    target: int  # the VMID restored to
    node: str
    storage: str | None  # None: the storages of the backed-up config
    existing: Guest | None  # the guest the restore overwrites (needs force)
    unique: bool  # new MAC addresses (when the original may still be around)
    snapshot: bool  # take a pre-restore snapshot of ``existing`` first

    @property
    def overwrite(self) -> bool:
        return self.existing is not None

    def steps(self) -> list[str]:
        """The plan in words, one step a line."""
        out: list[str] = []
        ex = self.existing
        if ex is not None:
            if self.snapshot:
                out.append(f"snapshot {ex.label} as moxflow-pre-restore-…")
            if ex.running:
                out.append(f"stop {ex.label}")
        where = f" on {self.storage}" if self.storage else ""
        how = " over the existing guest (force)" if ex is not None else ""
        macs = ", new MAC addresses" if self.unique else ""
        out.append(
            f"restore {self.archive.filename} to {self.target} on {self.node}{where}{how}{macs}"
        )
        if ex is not None and ex.running:
            out.append(f"start {self.target} again")
        return out


def plan_restore(
    guests: Sequence[Guest],
    archive: Archive,
    vmid: int,
    *,
    node: str,
    target: int | None = None,
    storage: str | None = None,
    force: bool = False,
) -> RestorePlan:
    """Plan restoring ``archive`` (a backup of ``vmid``) to ``target`` (default: ``vmid``).

    An existing guest at the target is overwritten only with ``force``; without it a
    ``ConfigError`` says how. The restore goes to the node of the guest it overwrites, else
    ``node``. A restore next to a guest that still exists gets new MAC addresses.
    """
    dest = vmid if target is None else target
    if not MIN_VMID <= dest <= MAX_VMID:
        raise ConfigError(f"target VMID {dest} is not between {MIN_VMID} and {MAX_VMID}")
    by_id = {g.vmid: g for g in guests}
    existing = by_id.get(dest)
    if existing is not None:
        if existing.template:
            raise ConfigError(f"{existing.label} is a template; moxflow does not restore over it")
        if existing.type != archive.subtype:
            raise ConfigError(
                f"{existing.label} is a {existing.type} guest but {archive.filename} is a "
                f"{archive.subtype} backup",
                hint="restore to a free VMID with --target-vmid N",
            )
        if not force:
            raise ConfigError(
                f"guest {existing.label} exists on {existing.node}: restoring over it replaces "
                "its disks and configuration",
                hint=(
                    "add --force to overwrite it (a pre-restore snapshot is taken first where "
                    "possible), or restore beside it with --target-vmid N"
                ),
            )
    original = by_id.get(vmid)
    return RestorePlan(
        vmid=vmid,
        archive=archive,
        target=dest,
        node=existing.node if existing is not None else node,
        storage=storage,
        existing=existing,
        unique=dest != vmid and original is not None,
        snapshot=existing is not None,
    )


@dataclass(frozen=True, slots=True)
class RestoreTestPlan:
    """One guest's restore test, decided before anything changes: restore ``archive`` (its
    newest backup) to the scratch VMID ``scratch`` on the guest's node, disks on ``storage``,
    new MAC addresses; start it, wait for it, destroy it. ``scratch_vmids`` is where another
    scratch VMID may come from when ``scratch`` is taken by the time of the restore; none
    may when the run named its scratch VMID (``fixed``)."""

    guest: Guest
    archive: Archive
    scratch: int
    storage: str
    scratch_vmids: range
    fixed: bool = False
    run: str = ""  # the flow run's id, written in the scratch guest's description

    @property
    def target(self) -> str:
        return self.guest.label

    @property
    def marks(self) -> dict[str, str]:
        """The restore's parameters that mark the scratch guest as moxflow's own."""
        return scratch_marks(self.guest, self.archive, self.run)

    def describe(self) -> str:
        """The plan in words, for a dry run's report."""
        wait = "the guest agent" if self.guest.type == "qemu" else "running"
        return (
            f"would restore to scratch {self.scratch} on {self.guest.node}/{self.storage}, "
            f"start, wait for {wait}, destroy"
        )

    def scratch_now(self, in_use: Iterable[Guest]) -> int:
        """The scratch VMID to restore to, given the guests there are right before the
        restore: the planned one while it is free, else the lowest free one of the range;
        ``ConfigError`` when there is none (or the run named one, and it is taken)."""
        guests = list(in_use)
        if self.fixed:
            vmid = check_scratch_vmid(self.scratch, guests)
        elif all(g.vmid != self.scratch for g in guests):
            vmid = self.scratch
        else:
            vmid = choose_scratch_vmid(self.scratch_vmids, guests, protect={self.guest.vmid})
        if vmid == self.guest.vmid:  # never, by construction; the one thing that must not happen
            raise ConfigError(f"scratch VMID {vmid} is the original guest's")
        return vmid


def plan_restore_test(
    guest: Guest,
    archives: Sequence[Archive],
    in_use: Sequence[Guest],
    *,
    backup_storage: str,
    scratch_storage: str,
    scratch_vmids: range,
    scratch_vmid: int | None = None,
    run: str = "",
) -> RestoreTestPlan:
    """Plan restore-testing ``guest`` from its backups on ``backup_storage`` (``archives``)
    and the guests of the cluster (``in_use``): its newest backup, and ``scratch_vmid`` (when
    the run names one, refused when in use) or the lowest free VMID of ``scratch_vmids``.
    Scratch guests left behind (``leftover_scratch``) count as free: the run destroys them
    before its first restore. ``run`` (the flow run's id) goes into the scratch guest's mark.

    Guests are tested one after the other, each scratch guest gone before the next is made,
    so every guest of a run plans the same scratch VMID. ``ConfigError`` when the guest has no
    backup there or no scratch VMID is free.
    """
    mine = sorted((a for a in archives if a.vmid == guest.vmid), key=lambda a: (a.created, a.volid))
    if not mine:
        raise ConfigError(f"no backup on {backup_storage} to restore")
    in_use = [g for g in in_use if not g.scratch]
    if scratch_vmid is not None:
        scratch = check_scratch_vmid(scratch_vmid, in_use)
    else:
        scratch = choose_scratch_vmid(scratch_vmids, in_use, protect={guest.vmid})
    return RestoreTestPlan(
        guest=guest,
        archive=mine[-1],
        scratch=scratch,
        storage=scratch_storage,
        scratch_vmids=scratch_vmids,
        fixed=scratch_vmid is not None,
        run=run,
    )
