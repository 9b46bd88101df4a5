"""The journal of a node's roll (written on the node before its first change, removed once
its guests are back) and the plan that recovers an interrupted update from it; pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from moxflow.errors import ParseError
from moxflow.guests import Guest
from moxflow.inventory import ProxmoxUpdateSettings
from moxflow.pveupdate import (
    GuestStep,
    NodeFacts,
    Preflight,
    RollJournal,
    build_roll_journal,
    clear_roll_journal_argv,
    configure_pending_argv,
    parse_roll_journal,
    plan_roll,
    read_roll_journal_argv,
    recovery_returns,
    write_roll_journal_argv,
)

WHEN = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
SNAP = "rpool/ROOT/pve-1@moxflow-pre-update-20261207-030000"


def vm(vmid: int, node: str, status: str = "running", **kw: Any) -> Guest:
    return Guest(vmid, f"vm{vmid}", node, "qemu", status, **kw)


def ct(vmid: int, node: str, status: str = "running") -> Guest:
    return Guest(vmid, f"ct{vmid}", node, "lxc", status)


JOURNAL = build_roll_journal(
    "pve1",
    "run-1",
    SNAP,
    [vm(100, "pve1"), ct(101, "pve1", "stopped"), vm(102, "pve2"), vm(900, "pve1", template=True)],
    WHEN,
)


def test_build_keeps_the_nodes_guests_and_their_state_templates_left_out() -> None:
    assert JOURNAL.guests == (vm(100, "pve1"), ct(101, "pve1", "stopped"))
    assert (JOURNAL.phase, JOURNAL.snapshot, JOURNAL.recovered) == ("leaving", SNAP, ())


def test_a_recovery_keeps_the_original_placement_snapshot_and_names_the_dead_run() -> None:
    again = build_roll_journal("pve1", "run-2", "other@snap", [vm(100, "pve2")], WHEN, JOURNAL)
    assert again.guests == JOURNAL.guests
    assert (again.flow_run_id, again.snapshot, again.recovered) == ("run-2", SNAP, ("run-1",))
    third = build_roll_journal("pve1", "run-3", None, [], WHEN, again)
    assert third.recovered == ("run-1", "run-2")


@pytest.mark.parametrize(
    "journal",
    [JOURNAL, JOURNAL.advance("upgrading"), RollJournal("pve1", "r", None, (), "leaving")],
)
def test_the_journal_round_trips(journal: RollJournal) -> None:
    assert parse_roll_journal(journal.to_json()) == journal


@pytest.mark.parametrize("text", ["", "\n", "  "])
def test_no_journal_is_none(text: str) -> None:
    assert parse_roll_journal(text) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"node": "pve1"',  # truncated
        "[]",
        '{"node": "pve1", "flow_run_id": "r", "phase": "rebooting", "guests": []}',
        '{"node": "pve1", "flow_run_id": "", "phase": "leaving", "guests": []}',
        '{"node": "pve1", "flow_run_id": "r", "phase": "leaving"}',
        '{"node": "pve1", "flow_run_id": "r", "phase": "leaving", "guests": [{"vmid": "x"}]}',
        '{"node": "pve1", "flow_run_id": "r", "phase": "leaving", "guests": ['
        '{"vmid": 1, "type": "docker", "node": "pve1", "status": "running"}]}',
        '{"node": "pve 1;rm", "flow_run_id": "r", "phase": "leaving", "guests": []}',
    ],
)
def test_a_broken_journal_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_roll_journal(text)


def test_the_journal_commands_write_atomically_and_quote() -> None:
    path = "/var/lib/moxflow/proxmox-update.json"
    argv = write_roll_journal_argv(path)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert "cat > /var/lib/moxflow/proxmox-update.json.tmp && mv " in argv[2]
    assert argv[2].startswith("mkdir -p /var/lib/moxflow && ")
    assert "cat /var/lib/moxflow/proxmox-update.json" in read_roll_journal_argv(path)[2]
    assert clear_roll_journal_argv(path) == ["rm", "-f", path]
    assert configure_pending_argv()[-2:] == ["--configure", "-a"]
    assert "--force-confold" in configure_pending_argv()


@pytest.mark.parametrize(
    ("now", "kw", "expected"),
    [
        # all home and as they were: nothing
        ([vm(100, "pve1"), ct(101, "pve1", "stopped")], {}, []),
        # migrated away, still running: back online; a stopped container back offline
        (
            [vm(100, "pve2"), ct(101, "pve3", "stopped")],
            {},
            [
                GuestStep(
                    100, "vm100", "qemu", "migrate", "pve2", "pve1", "online", "recover run run-1"
                ),
                GuestStep(
                    101, "ct101", "lxc", "migrate", "pve3", "pve1", "offline", "recover run run-1"
                ),
            ],
        ),
        # shut down at home: started
        (
            [vm(100, "pve1", "stopped"), ct(101, "pve1", "stopped")],
            {},
            [GuestStep(100, "vm100", "qemu", "start", "pve1", reason="recover run run-1")],
        ),
        # away and stopped: back offline, then started
        (
            [vm(100, "pve2", "stopped"), ct(101, "pve1", "stopped")],
            {},
            [
                GuestStep(
                    100, "vm100", "qemu", "migrate", "pve2", "pve1", "offline", "recover run run-1"
                ),
                GuestStep(100, "vm100", "qemu", "start", "pve1", reason="recover run run-1"),
            ],
        ),
        # HA-managed and away: HA brings it back when maintenance ends
        (
            [vm(100, "pve2"), ct(101, "pve1", "stopped")],
            {"ha_managed": {100}},
            [GuestStep(100, "vm100", "qemu", "ha", "pve1", reason="recover run run-1")],
        ),
        # the run's own steps bring it back; a guest gone is left to verification
        ([vm(100, "pve2")], {"handled": {100}}, []),
        # shut down by the dead run, migrated offline and back by this run's own steps:
        # started once home
        (
            [vm(100, "pve1", "stopped"), ct(101, "pve1", "stopped")],
            {"handled": {100, 101}},
            [GuestStep(100, "vm100", "qemu", "start", "pve1", reason="recover run run-1")],
        ),
        # an HA-managed one comes back as HA runs it
        ([vm(100, "pve1", "stopped")], {"handled": {100}, "ha_managed": {100}}, []),
    ],
)
def test_recovery_returns_every_guest_to_the_journals_placement(
    now: list[Guest], kw: dict[str, Any], expected: list[GuestStep]
) -> None:
    assert recovery_returns(JOURNAL, now, **kw) == expected


def test_a_node_with_a_dead_runs_journal_is_planned_even_with_nothing_pending() -> None:
    facts = NodeFacts(
        "pve1",
        "6.8.12-4-pve",
        guests=(ct(101, "pve1", "stopped"),),
        journal=JOURNAL,
        placement=(vm(100, "pve2"), ct(101, "pve1", "stopped")),
    )
    other = NodeFacts("pve2", "6.8.12-4-pve", guests=(vm(100, "pve2"),))
    plan = plan_roll([facts, other], ProxmoxUpdateSettings(), Preflight(), snapshot="x-1")
    node = next(n for n in plan.nodes if n.node == "pve1")
    assert node.skip is None and node.recover == JOURNAL
    assert node.snapshot == SNAP  # the interrupted run's, taken before any change
    assert [str(s) for s in node.returns] == [
        "CT 101 (ct101): migrate offline pve2 → pve1 (return)",  # it leaves again, as planned
        "VM 100 (vm100): migrate online pve2 → pve1 (recover run run-1)",
    ]
    text = "\n".join(node.describe())
    assert "recover the interrupted update of run run-1" in text
    assert next(n for n in plan.nodes if n.node == "pve2").skip == "nothing to upgrade"


@pytest.mark.parametrize("order", [[], ["pve2", "pve1"]])
def test_a_node_with_a_dead_runs_journal_is_rolled_first(order: list[str]) -> None:
    """Its guests are parked on the other nodes: a roll of one of those first would move
    them as its own; and it may be in HA maintenance, no target for anyone."""
    busy = NodeFacts(
        "pve1",
        "6.8.12-4-pve",
        guests=(vm(103, "pve1"), vm(104, "pve1")),
        journal=JOURNAL,
        placement=(vm(100, "pve2"), ct(101, "pve1", "stopped")),
    )
    idle = NodeFacts("pve2", "6.8.12-4-pve", pending=busy.pending, guests=(vm(100, "pve2"),))
    plan = plan_roll([idle, busy], ProxmoxUpdateSettings(nodes=order), Preflight())
    assert plan.nodes[0].node == "pve1"
