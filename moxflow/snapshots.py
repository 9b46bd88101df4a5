"""Pure planning for the two snapshot jobs: which targets, which names, what to prune.

Nothing here does I/O. The flows call these with the inventory and the facts their tasks read,
and the tasks carry out the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from moxflow.errors import ConfigError
from moxflow.guests import Guest
from moxflow.inventory import Inventory
from moxflow.naming import (
    is_moxflow_description,
    parse_snapshot_name,
    snapshot_description,
    validate_label,
)
from moxflow.proxmox import GuestSnapshot
from moxflow.retention import KeepPolicy, PrunePlan, RetentionItem, plan_prune
from moxflow.selection import parse_selection, require_matches, select_guests, unmatched
from moxflow.zfs import ZfsSnapshot, plan_dataset_prune


@dataclass(frozen=True, slots=True)
class DatasetJob:
    """Snapshot one configured dataset (and its children when recursive), then prune."""

    host: str
    dataset: str
    recursive: bool
    policy: KeepPolicy

    @property
    def target(self) -> str:
        return f"{self.host}:{self.dataset}"


@dataclass(frozen=True, slots=True)
class DatasetPlan:
    """What a ZFS snapshot run does to one configured dataset: take ``taken``, then destroy
    ``prune`` (``dataset@name``, moxflow's own of the label that the policy lets go), keeping
    ``kept`` snapshots of the label. Made from the facts read before anything changes."""

    job: DatasetJob
    snapname: str
    prune: tuple[str, ...]
    kept: int

    @property
    def taken(self) -> str:
        return f"{self.job.dataset}@{self.snapname}"


def plan_dataset_snapshot(
    job: DatasetJob,
    facts: Mapping[str, Sequence[ZfsSnapshot]],
    label: str,
    snapname: str,
    now: datetime,
    tz: tzinfo,
) -> DatasetPlan:
    """Plan one dataset from its snapshots (``facts``: per dataset, the job's and, when
    recursive, its children's): the new snapshot counts under the keep policy as if taken
    (on every dataset listed, as ``zfs snapshot -r`` takes it on each), but is never removed."""
    grouped: dict[str, list[ZfsSnapshot]] = {ds: list(snaps) for ds, snaps in facts.items()}
    grouped.setdefault(job.dataset, [])
    prune: list[str] = []
    kept = 0
    for dataset, snaps in sorted(grouped.items()):
        would = [*snaps, ZfsSnapshot(dataset, snapname, now, 0, 0)]
        plan = plan_dataset_prune(would, dataset, label, job.policy, tz, snapname)
        prune.extend(f"{dataset}@{name}" for name in plan.remove)
        kept += len(plan.keep) + len(plan.protected)
    return DatasetPlan(job=job, snapname=snapname, prune=tuple(prune), kept=kept)


def plan_dataset_jobs(inv: Inventory, label: str, only: Sequence[str] = ()) -> list[DatasetJob]:
    """The datasets a ZFS snapshot run touches, each with its policy for ``label``.

    ``only`` holds ``HOST`` or ``HOST/DATASET`` filters; a filter that matches nothing, or no
    dataset at all, is a ``ConfigError`` so that a typo never turns into a silent no-op.
    """
    validate_label(label)
    if not inv.zfs.datasets:
        raise ConfigError(
            "the inventory has no [[zfs.datasets]] tables: no dataset to snapshot",
            setting="zfs.datasets",
            hint='add a [[zfs.datasets]] table (host = "NAME", name = "pool/dataset") for each '
            "dataset to snapshot, and its keep policies in [zfs.policies]",
        )
    jobs = [
        DatasetJob(
            host=ds.host,
            dataset=ds.name,
            recursive=ds.recursive,
            policy=inv.zfs_policy(ds, label),
        )
        for ds in inv.zfs.datasets
    ]
    if not only:
        return jobs
    chosen: list[DatasetJob] = []
    for flt in only:
        host, _, dataset = flt.partition("/")
        inv.host(host)  # unknown host → ConfigError listing the known ones
        matches = [j for j in jobs if j.host == host and (not dataset or j.dataset == dataset)]
        if not matches:
            known = ", ".join(j.target for j in jobs if j.host == host) or "none"
            raise ConfigError(
                f"--only {flt!r} matches no configured dataset (configured on {host}: {known})",
                setting="zfs.datasets",
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


@dataclass(frozen=True, slots=True)
class GuestSelection:
    """The guests a guest snapshot run touches, and the ones it leaves out with the reason."""

    guests: tuple[Guest, ...]
    skipped: tuple[tuple[Guest, str], ...]
    unmatched: tuple[str, ...]


def plan_guest_selection(
    all_guests: Sequence[Guest], expr: str, *, running_only: bool, strict: bool = True
) -> GuestSelection:
    """Apply the selection language, then drop templates, restore tests' scratch guests
    (moxflow's own: marked with the tag ``moxflow-scratch``) and stopped guests if asked.

    ``strict`` (what a job does before it changes anything): a guest the selection names that
    is not there raises ``SelectionError``. The health report reads without it.
    """
    selection = parse_selection(expr)
    if strict:
        require_matches(selection, all_guests)
    picked = select_guests(expr, all_guests)
    guests: list[Guest] = []
    skipped: list[tuple[Guest, str]] = []
    for guest in picked:
        if guest.scratch:
            skipped.append((guest, "a restore test's scratch guest (moxflow's own)"))
        elif guest.template:
            skipped.append((guest, "template"))
        elif running_only and not guest.running:
            skipped.append((guest, f"not running ({guest.status})"))
        else:
            guests.append(guest)
    return GuestSelection(
        guests=tuple(guests),
        skipped=tuple(skipped),
        unmatched=tuple(unmatched(selection, all_guests)),
    )


def plan_guest_prune(
    snapshots: Iterable[GuestSnapshot],
    label: str,
    policy: KeepPolicy,
    tz: tzinfo,
    just_taken: str | None,
) -> PrunePlan:
    """Prune plan over moxflow's own snapshots of ``label`` on one guest.

    A snapshot counts as moxflow's only when its name parses as ours for this label *and*
    its description carries moxflow's marker; anything else is never considered. A half-made
    or half-deleted one (``snapstate``) is neither kept nor removed: it never takes the place
    of a good one. The one just taken counts under the policy but is never removed.
    """
    items: list[RetentionItem] = []
    for snap in snapshots:
        if not snap.complete:
            continue
        parsed = parse_snapshot_name(snap.name)
        if parsed is None or parsed.label != label:
            continue
        if not is_moxflow_description(snap.description or ""):
            continue
        items.append(RetentionItem(snap.name, parsed.created))
    plan = plan_prune(items, policy, tz)
    if just_taken is None or just_taken not in plan.remove:
        return plan
    # it counts under the policy like any other, but is never pruned by its own run
    return PrunePlan(
        keep=(just_taken, *plan.keep),
        remove=tuple(n for n in plan.remove if n != just_taken),
        protected=plan.protected,
        reasons={**plan.reasons, just_taken: "just taken"},
    )


@dataclass(frozen=True, slots=True)
class GuestSnapshotPlan:
    """What a guest snapshot run does to one guest: take ``snapname`` (with the RAM when
    ``vmstate``), described as moxflow's, then delete ``prune`` (moxflow's own of the label
    that the policy lets go), keeping ``kept``. Made from the snapshots read before anything
    changes."""

    guest: Guest
    snapname: str
    description: str
    vmstate: bool
    prune: tuple[str, ...]
    kept: int


@dataclass(frozen=True, slots=True)
class NodeSnapshotPlan:
    """The guest plans of one node, which its snapshot and prune steps carry out together."""

    node: str
    guests: tuple[GuestSnapshotPlan, ...]

    @property
    def size(self) -> str:
        """How many guests, in words: ``1 guest``, ``50 guests`` (the steps' run names)."""
        return guests_text(len(self.guests))


def guests_text(count: int) -> str:
    """``1 guest``, ``2 guests``."""
    return f"{count} guest" + ("" if count == 1 else "s")


def busy_guest(guest: Guest, error: str, tries: int, seconds: float) -> str:
    """Why a guest's snapshot was not taken, for its busy row: what Proxmox said of the lock
    (``error``, e.g. ``VM is locked (backup)``), how long it was waited out, what to do."""
    unlock = "qm" if guest.type == "qemu" else "pct"
    return (
        f"locked by another operation: {error}; still locked after {tries} tries over "
        f"{seconds:.1f}s, not snapshotted this time. The next run takes it; if the lock stays "
        f"while no task runs on the guest (its Task History in the Proxmox UI), "
        f"`{unlock} unlock {guest.vmid}` on {guest.node}; see docs/operating.md"
    )


def guests_by_node(guests: Iterable[Guest]) -> dict[str, tuple[Guest, ...]]:
    """The guests grouped by node, nodes sorted by name, each node's guests by VMID."""
    grouped: dict[str, list[Guest]] = {}
    for guest in sorted(guests, key=lambda g: (g.node, g.vmid)):
        grouped.setdefault(guest.node, []).append(guest)
    return {node: tuple(members) for node, members in grouped.items()}


def plan_guest_snapshot(
    guest: Guest,
    snapshots: Iterable[GuestSnapshot],
    *,
    label: str,
    snapname: str,
    now: datetime,
    policy: KeepPolicy,
    tz: tzinfo,
    vmstate: bool,
    run: str = "",
) -> GuestSnapshotPlan:
    """Plan one guest from its snapshots: the new one counts under the keep policy as if
    taken, and is never pruned. ``vmstate`` (RAM) is kept only for a running VM; ``run``
    (the flow run's id) goes into the description."""
    description = snapshot_description(label, now, run)
    with_ram = vmstate and guest.type == "qemu" and guest.running
    new = GuestSnapshot(snapname, description, snaptime=now, vmstate=with_ram)
    # one of that name there already (another run of the label took it in the same second)
    # counts once, as the new one: the snapshot step then says whose it is
    others = [s for s in snapshots if s.name != snapname]
    plan = plan_guest_prune([*others, new], label, policy, tz, just_taken=snapname)
    return GuestSnapshotPlan(
        guest=guest,
        snapname=snapname,
        description=description,
        vmstate=with_ram,
        prune=plan.remove,
        kept=len(plan.keep) + len(plan.protected),
    )


def plan_node_snapshots(
    node: str,
    guests: Iterable[Guest],
    facts: Mapping[int, Sequence[GuestSnapshot]],
    *,
    label: str,
    snapname: str,
    now: datetime,
    policy: KeepPolicy,
    tz: tzinfo,
    vmstate: bool,
    run: str = "",
) -> NodeSnapshotPlan:
    """Plan the guests of one node from their snapshots (``facts``, by VMID)."""
    return NodeSnapshotPlan(
        node,
        tuple(
            plan_guest_snapshot(
                guest,
                facts[guest.vmid],
                label=label,
                snapname=snapname,
                now=now,
                policy=policy,
                tz=tz,
                vmstate=vmstate,
                run=run,
            )
            for guest in guests
        ),
    )


def utc_now() -> datetime:
    """The run's timestamp (one per run, shared by every target)."""
    return datetime.now(UTC).replace(microsecond=0)
