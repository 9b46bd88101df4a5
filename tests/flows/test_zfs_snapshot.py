"""End to end: flows.zfs_snapshot against the lab's SSH hosts, asserting the lab's ZFS state."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flows.jobs.zfs_snapshot import zfs_snapshot
from flows.zfs_snapshot import main
from labsim.client import LabClient
from moxflow.errors import RunFailed
from moxflow.report import Outcome, RunReport
from tests.flows.conftest import (
    all_zfs_snapshots,
    edit_inventory,
    state_names,
    task_runs,
    zfs_snapshots,
)

MOX = re.compile(r"^moxflow-(?P<label>[a-z0-9_-]+)-\d{8}-\d{6}$")

# the lab's foreign, held and other-label snapshots (docs/internals.md, default topology)
FOREIGN = "tank/media@autosnap_2026-11-01_00:00:00_daily"
HELD = "rpool/data@manual-keep"
OLD_DAILY = "tank/media@moxflow-daily-20261101-000000"


def new_snapshots(before: set[str], after: set[str]) -> set[str]:
    return after - before


def run_failed(**params: object) -> RunReport:
    with pytest.raises(RunFailed) as info:
        zfs_snapshot(**params)  # type: ignore[arg-type]
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def rows_by_target(report: RunReport) -> dict[str, Outcome]:
    return {r.target: r.outcome for r in report.rows}


def test_snapshots_every_dataset_and_leaves_foreign_held_and_other_label_alone(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    before = all_zfs_snapshots(fresh_lab.state())
    report = zfs_snapshot(label="hourly", inventory=str(lab_inventory))
    after_state = fresh_lab.state()
    after = all_zfs_snapshots(after_state)

    assert report.ok
    assert {r.outcome for r in report.rows} == {Outcome.OK}
    assert before <= after, f"something was removed: {before - after}"
    added = new_snapshots(before, after)
    assert len(report.rows) == 4
    assert all(r.taken for r in report.rows)
    assert {f"{r.target.split(':')[0]}:{r.taken}" for r in report.rows} <= added
    # every configured dataset got exactly one new snapshot with the same moxflow name
    names = {a.split("@", 1)[1] for a in added}
    assert len(names) == 1 and MOX.match(names.pop())
    # recursive datasets snapshot their children too
    assert any(a.startswith("pve1:rpool/data/vm-101-disk-0@") for a in added)
    assert not any(a.startswith("pve1:tank/media/") for a in added)
    pve1 = zfs_snapshots(after_state, "pve1")
    assert FOREIGN in pve1 and HELD in pve1 and OLD_DAILY in pve1


def test_prunes_only_moxflow_snapshots_of_the_label_by_policy(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    # three older hourly snapshots of tank/media, one of them held
    olds = [f"moxflow-hourly-202611{d:02d}-000000" for d in (20, 21, 22)]
    for name in olds:
        rc, _, err = fresh_lab.exec("pve1", ["zfs", "snapshot", f"tank/media@{name}"])
        assert rc == 0, err
    rc, _, err = fresh_lab.exec("pve1", ["zfs", "hold", "mine", f"tank/media@{olds[0]}"])
    assert rc == 0, err
    inv = edit_inventory(
        lab_inventory, tmp_path, {'hourly = "keep-hourly=24"': 'hourly = "keep-last=2"'}
    )

    report = zfs_snapshot(label="hourly", only=["pve1/tank/media"], inventory=str(inv))

    snaps = zfs_snapshots(fresh_lab.state(), "pve1")
    media = {n for n in snaps if n.startswith("tank/media@")}
    (row,) = report.rows
    assert row.outcome is Outcome.OK
    assert row.taken in media
    # keep-last=2 keeps the new one and the newest old one; the held one stays, never counted
    assert f"tank/media@{olds[2]}" in media
    assert f"tank/media@{olds[1]}" not in media
    assert f"tank/media@{olds[0]}" in media
    assert set(row.removed) == {f"tank/media@{olds[1]}"}
    assert FOREIGN in media and OLD_DAILY in media


def test_dry_run_changes_nothing_and_shows_the_plan(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    before = fresh_lab.state()
    report = zfs_snapshot(label="daily", dry_run=True, inventory=str(lab_inventory))
    after = fresh_lab.state()
    assert all_zfs_snapshots(before) == all_zfs_snapshots(after)
    assert {r.outcome for r in report.rows} == {Outcome.PLANNED}
    media = next(r for r in report.rows if r.target == "pve1:tank/media")
    assert media.taken and media.taken.startswith("tank/media@moxflow-daily-")
    assert "dry run" in report.summary()


def test_failed_snapshot_prunes_nothing_there_and_the_run_fails(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    # a policy that would prune the old daily snapshot of tank/media if the run went on
    inv = edit_inventory(
        lab_inventory, tmp_path, {'daily = "keep-daily=7,keep-weekly=4"': 'daily = "keep-last=1"'}
    )
    fresh_lab.fault(
        target="command",
        host="pve1",
        command="zfs snapshot.*tank/media",
        action="error",
        exit=1,
        stderr="cannot create snapshot 'tank/media@x': out of space",
    )
    report = run_failed(label="daily", inventory=str(inv))
    outcomes = rows_by_target(report)
    assert outcomes["pve1:tank/media"] is Outcome.FAILED
    assert outcomes["pve1:rpool/data"] is Outcome.OK
    assert outcomes["nas:tank/backups"] is Outcome.OK
    assert OLD_DAILY in zfs_snapshots(fresh_lab.state(), "pve1")
    failed = next(r for r in report.rows if r.target == "pve1:tank/media")
    assert "out of space" in failed.detail and failed.removed == ()


def test_dropped_connection_fails_that_host_and_the_others_complete(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    fresh_lab.fault(target="connect", host="nas", action="drop")
    report = run_failed(label="hourly", inventory=str(lab_inventory))
    outcomes = rows_by_target(report)
    assert outcomes.pop("nas:tank/backups") is Outcome.FAILED
    assert set(outcomes.values()) == {Outcome.OK}
    nas = zfs_snapshots(fresh_lab.state(), "nas")
    assert not any(MOX.match(n.split("@")[1]) for n in nas)


def test_changed_host_key_stops_that_host_with_a_clear_error(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    known = lab_inventory.parent / "known_hosts"
    port = fresh_lab.info["hosts"]["pve2"]["port"]
    other = next(
        line.split(" ", 1)[1]
        for line in known.read_text().splitlines()
        if not line.startswith(f"[127.0.0.1]:{port} ")
    )
    forged = tmp_path / "known_hosts"
    forged.write_text(
        "\n".join(
            f"[127.0.0.1]:{port} {other}" if line.startswith(f"[127.0.0.1]:{port} ") else line
            for line in known.read_text().splitlines()
        )
        + "\n"
    )
    inv = edit_inventory(
        lab_inventory, tmp_path, {'known_hosts = "known_hosts"': f'known_hosts = "{forged}"'}
    )
    before = zfs_snapshots(fresh_lab.state(), "pve2")

    report = run_failed(label="hourly", inventory=str(inv))

    row = next(r for r in report.rows if r.target == "pve2:rpool/data")
    assert row.outcome is Outcome.FAILED
    assert "host key" in row.detail and "known_hosts" in row.detail
    assert zfs_snapshots(fresh_lab.state(), "pve2") == before
    assert rows_by_target(report)["pve1:rpool/data"] is Outcome.OK


@pytest.mark.parametrize(
    "hostile",
    ["tank/media; reboot", "tank/$(reboot)", "-o/tank", "tank/../etc", "tank/a b", "tank\nreboot"],
)
def test_hostile_dataset_name_is_refused_before_any_command(
    fresh_lab: LabClient,
    lab_inventory: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile: str,
) -> None:
    inv = edit_inventory(
        lab_inventory, tmp_path, {'name = "tank/backups"': f"name = {hostile!r}".replace("'", '"')}
    )
    before = fresh_lab.state()
    code = main(["--inventory", str(inv), "--label", "hourly"])
    err = capsys.readouterr().err
    assert code == 2
    assert "zfs.datasets" in err
    assert all_zfs_snapshots(fresh_lab.state()) == all_zfs_snapshots(before)
    assert fresh_lab.commands() == []


def test_cli_bad_label_and_unknown_only_are_usage_errors(
    fresh_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--inventory", str(lab_inventory), "--label", "Bad Label!"]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["--inventory", str(lab_inventory), "--only", "nosuchhost"]) == 2
    assert "nosuchhost" in capsys.readouterr().err
    assert main(["--inventory", str(lab_inventory), "--label", "weekly"]) == 2
    assert "weekly" in capsys.readouterr().err
    assert fresh_lab.commands() == []


def test_cli_runs_and_prints_the_report(
    fresh_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--inventory", str(lab_inventory), "--label", "hourly", "--only", "nas"])
    out = capsys.readouterr().out
    assert code == 0
    assert "nas:tank/backups" in out and "TARGET" in out
    assert "zfs-snapshot [hourly] OK" in out
    # the lab records what ran, so the "no command ran" checks above can fail
    ran = [c["command"] for c in fresh_lab.commands() if c["host"] == "nas"]
    assert any(c.startswith("zfs snapshot tank/backups@moxflow-hourly-") for c in ran)


def test_the_report_is_a_table_artifact_in_prefect(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report = zfs_snapshot(label="hourly", only=["nas"], inventory=str(lab_inventory))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["zfs-snapshot-report"])),
        )
    newest = max(artifacts, key=lambda a: a.created or 0)
    assert newest.type == "table"
    assert newest.description == report.summary()
    rows = newest.data if isinstance(newest.data, list) else json.loads(str(newest.data))
    assert [r["target"] for r in rows] == ["nas:tank/backups"]
    assert set(rows[0]) == {"target", "taken", "kept", "removed", "outcome", "seconds", "detail"}


def test_each_step_is_a_task_run_chained_list_snapshot_prune(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """The run graph tells the story: per dataset a list (the facts), a snapshot, and a prune
    that takes the snapshot's result as its input (the graph's edge)."""
    state = zfs_snapshot(label="hourly", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    for target in ("pve1:rpool/data", "pve1:tank/media", "pve2:rpool/data", "nas:tank/backups"):
        listed, snap, prune = (runs[f"{target}: {step}"] for step in ("list", "snapshot", "prune"))
        assert all(r.state is not None and r.state.is_completed() for r in (listed, snap, prune))
        assert [i.id for i in prune.task_inputs["taken"]] == [snap.id]  # type: ignore[union-attr]
        assert listed.end_time <= snap.start_time <= snap.end_time <= prune.start_time  # type: ignore[operator]


def test_a_dry_run_stops_after_the_plan(fresh_lab: LabClient, lab_inventory: Path) -> None:
    before = fresh_lab.state()
    state = zfs_snapshot(
        label="daily", dry_run=True, inventory=str(lab_inventory), return_state=True
    )
    assert state.is_completed()
    steps = {name.rsplit(": ", 1)[1] for name in task_runs(state)}
    assert steps == {"list"}  # no snapshot, no prune task ever ran
    assert fresh_lab.state()["hosts"] == before["hosts"]


def test_a_dropped_connection_on_a_step_is_retried_by_prefect(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    fresh_lab.fault(target="command", host="pve2", command="^zfs snapshot", action="drop", times=1)
    state = zfs_snapshot(label="hourly", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    snap = task_runs(state)["pve2:rpool/data: snapshot"]
    names = state_names(snap.id)
    assert "Retrying" in names and names[-1] == "Completed", names
    report = state.result()
    assert rows_by_target(report)["pve2:rpool/data"] is Outcome.OK
    taken = next(r.taken for r in report.rows if r.target == "pve2:rpool/data")
    assert taken and taken in zfs_snapshots(fresh_lab.state(), "pve2")


def test_a_failed_command_is_not_retried(fresh_lab: LabClient, lab_inventory: Path) -> None:
    fresh_lab.fault(
        target="command",
        host="pve1",
        command="zfs snapshot.*tank/media",
        action="error",
        exit=1,
        stderr="cannot create snapshot 'tank/media@x': out of space",
    )
    state = zfs_snapshot(label="hourly", inventory=str(lab_inventory), return_state=True)
    assert state.is_failed()
    runs = task_runs(state)
    names = state_names(runs["pve1:tank/media: snapshot"].id)
    assert "Retrying" not in names and names[-1] == "Failed", names
    assert "pve1:tank/media: prune" not in runs  # its snapshot failed: it never ran


def test_a_snapshot_made_before_the_connection_dropped_is_not_made_twice(
    fresh_lab: LabClient, lab_inventory: Path
) -> None:
    """The command ran, its answer was lost: Prefect retries the step, which finds the
    snapshot of this run's name already there and takes it as its own."""
    fresh_lab.fault(
        target="command", host="pve2", command="^zfs snapshot", action="drop-after", times=1
    )
    state = zfs_snapshot(label="hourly", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    names = state_names(task_runs(state)["pve2:rpool/data: snapshot"].id)
    assert "Retrying" in names and names[-1] == "Completed", names
    taken = next(r.taken for r in state.result().rows if r.target == "pve2:rpool/data")
    assert taken in zfs_snapshots(fresh_lab.state(), "pve2")
    assert rows_by_target(state.result())["pve2:rpool/data"] is Outcome.OK
    tried = [
        c for c in fresh_lab.commands() if c["host"] == "pve2" and "zfs snapshot" in c["command"]
    ]
    assert len(tried) == 2  # the retry found it there ("dataset already exists")


def test_retries_come_from_the_inventory(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    """[retries] attempts = 0: a dropped connection fails the step at once."""
    no_retries = {"[guest_snapshots]": "[retries]\nattempts = 0\n\n[guest_snapshots]"}
    inv = edit_inventory(lab_inventory, tmp_path, no_retries)
    fresh_lab.fault(target="command", host="pve2", command="^zfs snapshot", action="drop", times=1)
    state = zfs_snapshot(label="hourly", inventory=str(inv), return_state=True)
    assert state.is_failed()
    names = state_names(task_runs(state)["pve2:rpool/data: snapshot"].id)
    assert "Retrying" not in names and names[-1] == "Failed", names
