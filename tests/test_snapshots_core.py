"""Guest snapshot pruning as data: a snapshot list in, the prune plan out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from moxflow.guests import Guest
from moxflow.naming import snapshot_description, snapshot_name
from moxflow.proxmox import GuestSnapshot
from moxflow.retention import KeepPolicy
from moxflow.snapshots import plan_guest_prune, plan_guest_selection

NOW = datetime(2026, 11, 26, 2, 0, 5, tzinfo=UTC)


def listed(days_ago: int, snapstate: str | None = None) -> dict[str, Any]:
    """One entry of ``GET .../qemu/{vmid}/snapshot`` for a moxflow daily snapshot, the way
    qemu-server's snapshot_list writes it (src/PVE/API2/Qemu.pm): ``snapstate`` only while
    the snapshot is being made (``prepare``) or deleted (``delete``), or once that task died."""
    when = NOW - timedelta(days=days_ago)
    item: dict[str, Any] = {
        "name": snapshot_name("daily", when),
        "snaptime": int(when.timestamp()),
        "vmstate": 0,
        "description": snapshot_description("daily", when),
    }
    if snapstate:
        item["snapstate"] = snapstate
    return item


def test_half_made_and_half_deleted_snapshots_are_never_kept_in_place_of_good_ones() -> None:
    items = [
        listed(3),
        listed(2),
        listed(1, snapstate="delete"),  # a delete whose task died half-way
        listed(0, snapstate="prepare"),  # a snapshot whose task died half-way
    ]
    snaps = [GuestSnapshot.from_api(i) for i in items]
    plan = plan_guest_prune(snaps, "daily", KeepPolicy(last=2), UTC, just_taken=None)
    # the two newest whole snapshots are kept; the broken ones are neither kept nor removed
    assert plan.keep == (items[1]["name"], items[0]["name"])
    assert plan.remove == ()
    assert plan.protected == ()
    one = plan_guest_prune(snaps, "daily", KeepPolicy(last=1), UTC, just_taken=None)
    assert (one.keep, one.remove) == ((items[1]["name"],), (items[0]["name"],))


def test_a_dataset_plan_prunes_moxflow_snapshots_of_the_label_and_never_the_new_one() -> None:
    from moxflow.snapshots import DatasetJob, plan_dataset_snapshot
    from moxflow.zfs import ZfsSnapshot

    job = DatasetJob("pve1", "tank/media", True, KeepPolicy.parse("keep-last=2"))
    daily = [NOW - timedelta(days=d) for d in (1, 2, 3)]
    facts = {
        "tank/media": [ZfsSnapshot("tank/media", snapshot_name("daily", t), t) for t in daily]
        + [ZfsSnapshot("tank/media", "autosnap_2026-11-01_daily", NOW)],  # not moxflow's
        "tank/media/child": [
            ZfsSnapshot("tank/media/child", snapshot_name("daily", daily[2]), daily[2])
        ],
    }
    new = snapshot_name("daily", NOW)
    plan = plan_dataset_snapshot(job, facts, "daily", new, NOW, UTC)
    assert plan.taken == f"tank/media@{new}"
    # keep-last=2 counts the new one: of the three old, the newest stays; the child's one
    # old snapshot stays beside the new one there
    assert plan.prune == (
        f"tank/media@{snapshot_name('daily', daily[1])}",
        f"tank/media@{snapshot_name('daily', daily[2])}",
    )
    assert plan.kept == 4  # new + newest old on tank/media, new + old on the child


def test_a_guest_plan_counts_the_new_snapshot_and_never_prunes_it() -> None:
    from moxflow.guests import Guest
    from moxflow.snapshots import plan_guest_snapshot

    vm = Guest(101, "media-vm", "pve1", "qemu", status="running")
    items = [listed(3), listed(2), listed(1, snapstate="delete")]
    snaps = [
        *(GuestSnapshot.from_api(i) for i in items),
        GuestSnapshot("before-upgrade", "made by hand", NOW - timedelta(days=9)),
    ]
    new = snapshot_name("daily", NOW)
    plan = plan_guest_snapshot(
        vm, snaps, label="daily", snapname=new, now=NOW, policy=KeepPolicy(last=2), tz=UTC,
        vmstate=True,
    )  # fmt: skip
    assert (plan.snapname, plan.description) == (new, snapshot_description("daily", NOW))
    assert plan.vmstate  # a running VM keeps its RAM when asked
    # keep-last=2 counts the new one: the newer old one stays, the older goes; the half-deleted
    # one and the hand-made one are never considered
    assert (plan.prune, plan.kept) == ((items[0]["name"],), 2)
    ct = Guest(100, "dns", "pve1", "lxc", status="running")
    stopped = Guest(102, "builder", "pve2", "qemu", status="stopped")
    for guest in (ct, stopped):
        other = plan_guest_snapshot(
            guest, [], label="daily", snapname=new, now=NOW, policy=KeepPolicy(last=1), tz=UTC,
            vmstate=True,
        )  # fmt: skip
        assert (other.vmstate, other.prune, other.kept) == (False, (), 1)


def test_a_snapshot_of_the_same_name_another_run_took_counts_once() -> None:
    """Two runs of a label started in the same second: the second finds the first's snapshot
    under its own name. It plans it once, as the new one (never pruned), not twice."""
    from moxflow.guests import Guest
    from moxflow.snapshots import plan_guest_snapshot

    vm = Guest(101, "media-vm", "pve1", "qemu", status="running")
    new = snapshot_name("daily", NOW)
    theirs = GuestSnapshot(new, snapshot_description("daily", NOW, "other-run"), NOW)
    old = GuestSnapshot.from_api(listed(1))
    plan = plan_guest_snapshot(
        vm, [old, theirs], label="daily", snapname=new, now=NOW, policy=KeepPolicy(last=1),
        tz=UTC, vmstate=False,
    )  # fmt: skip
    assert (plan.prune, plan.kept) == ((old.name,), 1)


def test_guests_are_grouped_by_node_in_order() -> None:
    from moxflow.guests import Guest
    from moxflow.snapshots import NodeSnapshotPlan, guests_by_node, plan_node_snapshots

    guests = [
        Guest(104, "ha", "pve2", "qemu"),
        Guest(101, "media", "pve1", "qemu"),
        Guest(100, "dns", "pve1", "lxc"),
    ]
    grouped = guests_by_node(guests)
    assert list(grouped) == ["pve1", "pve2"]
    assert [g.vmid for g in grouped["pve1"]] == [100, 101]
    assert NodeSnapshotPlan("pve2", ()).size == "0 guests"
    facts = {100: [GuestSnapshot.from_api(listed(1))], 101: []}
    plan = plan_node_snapshots(
        "pve1", grouped["pve1"], facts, label="daily", snapname=snapshot_name("daily", NOW),
        now=NOW, policy=KeepPolicy(last=1), tz=UTC, vmstate=False,
    )  # fmt: skip
    assert plan.size == "2 guests"
    assert [(p.guest.vmid, p.prune, p.kept) for p in plan.guests] == [
        (100, (snapshot_name("daily", NOW - timedelta(days=1)),), 1),
        (101, (), 1),
    ]


# Every job selects through plan_guest_selection: a restore test's scratch guest (marked with
# the tag moxflow-scratch and a name starting moxflow-scratch-) is never selected, whatever the
# expression or its VMID; the tag alone (set by hand, copied by a clone) is not the mark.
SCRATCH_GUESTS = [
    Guest(101, "media-vm", "pve1", "qemu", "running", tags=("media",)),
    Guest(9000, "debian-12-template", "pve1", "qemu", template=True),
    # the scratch copy of 101, as a restore test leaves it: the original's tags plus the mark
    Guest(9900, "moxflow-scratch-media-vm", "pve1", "qemu", "running",
          tags=("media", "moxflow-scratch")),
    # marked, but outside any scratch range: the mark decides
    Guest(500, "moxflow-scratch-old", "pve2", "lxc", "stopped", tags=("moxflow-scratch",)),
    # the tag without the name: not moxflow's, selected like any guest
    Guest(501, "media-vm", "pve1", "qemu", "running", tags=("moxflow-scratch",)),
    # on a scratch VMID but not marked: not moxflow's, selected like any guest
    Guest(9901, "someone-elses", "pve2", "qemu", "running"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "running_only", "selected", "skipped"),
    [
        ("@all", False, [101, 501, 9901], {9000: "template", 9900: "scratch", 500: "scratch"}),
        ("@all", True, [101, 501, 9901], {9000: "template", 9900: "scratch", 500: "scratch"}),
        ("@tag-media", False, [101], {9900: "scratch"}),
        ("9900,101", False, [101], {9900: "scratch"}),
        ("media-vm", False, [101, 501], {}),
        ("@node-pve2", False, [9901], {500: "scratch"}),
        ("@tag-moxflow-scratch", False, [501], {9900: "scratch", 500: "scratch"}),
    ],
)
def test_no_job_selects_a_restore_tests_scratch_guest(
    expr: str, running_only: bool, selected: list[int], skipped: dict[int, str]
) -> None:
    chosen = plan_guest_selection(SCRATCH_GUESTS, expr, running_only=running_only)
    assert [g.vmid for g in chosen.guests] == selected
    why = {g.vmid: ("scratch" if "scratch guest" in r else r) for g, r in chosen.skipped}
    assert why == skipped
