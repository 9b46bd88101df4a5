"""ZFS facts and plans, without I/O: argv builders, parsers of ``zfs ... -H -p`` output, and
the prune planner for moxflow's own snapshots of one dataset and label.

Every builder validates its names (:mod:`moxflow.naming`) and returns an argument list; the
SSH runner quotes it once with ``shlex.join``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from types import MappingProxyType

from moxflow.errors import ParseError
from moxflow.naming import (
    owned_by_moxflow,
    parse_snapshot_name,
    validate_dataset,
    validate_label,
    validate_zfs_snapname,
)
from moxflow.retention import KeepPolicy, RetentionItem, plan_prune

SNAPSHOT_COLUMNS = ("name", "creation", "used", "userrefs")
"""The columns :func:`list_snapshots_argv` asks for, in order."""


@dataclass(frozen=True, slots=True)
class ZfsSnapshot:
    """One snapshot from ``zfs list -t snapshot``: ``dataset@name``."""

    dataset: str
    name: str
    created: datetime
    used: int = 0
    userrefs: int = 0

    @property
    def full_name(self) -> str:
        """``dataset@name``, as ``zfs`` commands take it."""
        return f"{self.dataset}@{self.name}"

    @property
    def held(self) -> bool:
        """Whether a ``zfs hold`` keeps this snapshot from being destroyed."""
        return self.userrefs > 0


# --- commands ------------------------------------------------------------------------------


def _full(dataset: str, snapname: str) -> str:
    return f"{validate_dataset(dataset)}@{validate_zfs_snapname(snapname)}"


def snapshot_argv(dataset: str, snapname: str, recursive: bool = False) -> list[str]:
    """``zfs snapshot [-r] dataset@snapname``."""
    return ["zfs", "snapshot", *(["-r"] if recursive else []), _full(dataset, snapname)]


def list_snapshots_argv(dataset: str, recursive: bool = False) -> list[str]:
    """List snapshots oldest first; without ``recursive`` only the dataset's own (``-d 1``)."""
    depth = ["-r"] if recursive else ["-d", "1"]
    return [
        "zfs",
        "list",
        "-H",
        "-p",
        "-t",
        "snapshot",
        "-o",
        ",".join(SNAPSHOT_COLUMNS),
        "-s",
        "creation",
        *depth,
        validate_dataset(dataset),
    ]


def destroy_argv(dataset: str, snapname: str, recursive: bool = False) -> list[str]:
    """``zfs destroy [-r] dataset@snapname`` (``-r``: the same-named snapshots of children too)."""
    return ["zfs", "destroy", *(["-r"] if recursive else []), _full(dataset, snapname)]


# --- parsers -------------------------------------------------------------------------------


def _bad(problem: str, line: str, source: str) -> ParseError:
    return ParseError(f"{source}: {problem} in line {line!r}", source=source, text=line)


def _split_full_name(full: str, line: str, source: str) -> tuple[str, str]:
    dataset, at, name = full.partition("@")
    if not at or not dataset or not name:
        raise _bad(f"expected DATASET@SNAPSHOT, got {full!r}", line, source)
    return dataset, name


def _count(value: str, column: str, line: str, source: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise _bad(f"{column} is not a whole number (was -p given?)", line, source)
    return int(value)


def _epoch(value: str, column: str, line: str, source: str) -> datetime:
    seconds = _count(value, column, line, source)
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _bad(f"{column} {seconds} is out of range", line, source) from None


def parse_snapshot_list(stdout: str) -> list[ZfsSnapshot]:
    """Parse ``zfs list -H -p -t snapshot -o name,creation,used,userrefs``, in output order."""
    source = "zfs list -t snapshot"
    snapshots: list[ZfsSnapshot] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(SNAPSHOT_COLUMNS):
            raise _bad(
                f"expected {len(SNAPSHOT_COLUMNS)} tab-separated columns "
                f"({','.join(SNAPSHOT_COLUMNS)}), got {len(fields)}",
                line,
                source,
            )
        full, creation, used, userrefs = fields
        dataset, name = _split_full_name(full, line, source)
        snapshots.append(
            ZfsSnapshot(
                dataset=dataset,
                name=name,
                created=_epoch(creation, "creation", line, source),
                used=_count(used, "used", line, source),
                userrefs=_count(userrefs, "userrefs", line, source),
            )
        )
    return snapshots


# --- prune planning ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZfsPrunePlan:
    """What pruning one dataset's snapshots of one label does, as snapshot names newest first.

    ``keep`` stays by the policy, ``remove`` is destroyed, ``protected`` stays whatever the
    policy says (held, or just taken), ``ignored`` is not moxflow's or not of this label.
    ``reasons`` maps every name in the four lists to why it is there. Names are the part after
    ``@``, like :class:`~moxflow.retention.PrunePlan`'s; ``snapshots`` maps them to the facts.
    """

    dataset: str
    label: str
    policy: str
    recursive: bool
    keep: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    snapshots: Mapping[str, ZfsSnapshot] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False
    )

    @property
    def empty(self) -> bool:
        """Whether nothing is to be destroyed."""
        return not self.remove

    def summary(self) -> str:
        """One line for logs and dry runs."""
        return (
            f"{self.dataset} [{self.label}: {self.policy}]: keep {len(self.keep)}, "
            f"remove {len(self.remove)}, protected {len(self.protected)}, "
            f"ignored {len(self.ignored)}"
        )


def _held_names(snapshots: Iterable[ZfsSnapshot], dataset: str, recursive: bool) -> dict[str, str]:
    """Snapshot names held on the dataset (or, when recursive, on any descendant) and where."""
    held: dict[str, str] = {}
    for snap in snapshots:
        mine = snap.dataset == dataset
        child = recursive and snap.dataset.startswith(dataset + "/")
        if snap.held and (mine or child) and snap.name not in held:
            held[snap.name] = snap.full_name
    return held


def plan_dataset_prune(
    snapshots: Iterable[ZfsSnapshot],
    dataset: str,
    label: str,
    policy: KeepPolicy,
    tz: tzinfo,
    just_taken: str | None = None,
    *,
    recursive: bool = False,
) -> ZfsPrunePlan:
    """Plan pruning moxflow's ``label`` snapshots of exactly ``dataset`` by ``policy``.

    Held snapshots are protected. ``just_taken`` counts under the policy like any other
    snapshot but is never removed. Snapshots that are not moxflow's of this
    label are ignored; other datasets' snapshots are left out. With ``recursive`` the plan
    destroys with ``-r``, so a snapshot whose same-named child snapshot is held is protected.
    """
    validate_dataset(dataset)
    validate_label(label)
    every = list(snapshots)
    held = _held_names(every, dataset, recursive)
    own = sorted(
        (s for s in every if s.dataset == dataset),
        key=lambda s: (s.created, s.name),
        reverse=True,
    )

    candidates: dict[str, ZfsSnapshot] = {}
    ignored: list[ZfsSnapshot] = []
    reasons: dict[str, str] = {}
    items: list[RetentionItem] = []
    for snap in own:
        parsed = parse_snapshot_name(snap.name)
        if not owned_by_moxflow(snap.name, label):
            ignored.append(snap)
            reasons[snap.name] = (
                "not made by moxflow" if parsed is None else f"label {parsed.label}, not {label}"
            )
            continue
        if snap.name in candidates:
            raise ParseError(f"snapshot {snap.full_name} is listed twice", source="zfs list")
        candidates[snap.name] = snap
        protect = ""
        if snap.name in held:
            where = held[snap.name]
            protect = "held" if where == snap.full_name else f"held ({where})"
        if protect:
            reasons[snap.name] = protect
        items.append(RetentionItem(snap.name, snap.created, protected=bool(protect)))

    plan = plan_prune(items, policy, tz)
    keep, remove = plan.keep, plan.remove
    if just_taken is not None and just_taken in remove:
        # it counts under the policy like any other, but is never pruned by its own run
        keep = (just_taken, *keep)
        remove = tuple(n for n in remove if n != just_taken)
        reasons[just_taken] = "just taken"
    for name in (*keep, *remove):
        reasons.setdefault(name, plan.reasons.get(name, f"not kept by {policy}"))
    return ZfsPrunePlan(
        dataset=dataset,
        label=label,
        policy=str(policy),
        recursive=recursive,
        keep=keep,
        remove=remove,
        protected=plan.protected,
        ignored=tuple(s.name for s in ignored),
        reasons=MappingProxyType(reasons),
        snapshots=MappingProxyType({s.name: s for s in own}),
    )
