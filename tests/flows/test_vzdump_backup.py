"""End to end: flows.vzdump_backup and flows.offsite_copy against the lab, asserting its state."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from blocks.ssh import ssh_runner
from flows.jobs.vzdump_backup import vzdump_backup
from labsim.client import LabClient
from moxflow.errors import RunFailed, SshError
from moxflow.inventory import load_inventory
from moxflow.report import Outcome, RunReport
from tasks.backups import copy_archive
from tests.flows.conftest import edit_inventory, state_names, task_runs

# default topology: 9000 is a template; 100, 101 on pve1; 102-105 on pve2
GUESTS = {100, 101, 102, 103, 104, 105}
OWNER = {100: "pve1", 101: "pve1", 9000: "pve1", 102: "pve2", 103: "pve2", 104: "pve2", 105: "pve2"}


@pytest.fixture
def fast_lab(fresh_lab: LabClient) -> LabClient:
    """The fresh lab with a backup storage fast enough that a dump takes milliseconds."""
    fresh_lab.set_storage("nas-backup", bandwidth=10**13)
    return fresh_lab


def archives(lab: LabClient) -> dict[str, dict[str, Any]]:
    """Every archive on nas-backup by file name."""
    return {a["filename"]: a for a in lab.state()["storages"]["nas-backup"]["archives"]}


def offsite_files(lab: LabClient) -> dict[str, str]:
    """The offsite folder: file name → sha256 of its content."""
    folder = Path(lab.info["offsite"]["path"])
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def offsite_copy_flow(**kwargs: Any) -> RunReport:
    """flows.offsite_copy's flow, imported when a test runs it."""
    from flows.jobs.offsite_copy import offsite_copy as copy_flow

    report = copy_flow(**kwargs)
    assert isinstance(report, RunReport)
    return report


def outcomes(report: RunReport) -> dict[str, Outcome]:
    return {r.target: r.outcome for r in report.rows}


def failed_report(**kwargs: Any) -> RunReport:
    with pytest.raises(RunFailed) as info:
        vzdump_backup(**kwargs)
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def guest_requests(lab: LabClient) -> list[tuple[str, int]]:
    """(node, vmid) of every API request that names a guest."""
    out = []
    for r in lab.api_requests():
        m = re.match(r"^/nodes/([^/]+)/(?:qemu|lxc)/(\d+)", r["path"])
        vmid = int(m.group(2)) if m else r.get("params", {}).get("vmid")
        node = r["path"].split("/")[2] if r["path"].startswith("/nodes/") else None
        if vmid is not None and node is not None:
            out.append((node, int(vmid)))
    return out


def test_backs_up_verifies_and_copies_every_guest(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    before = set(archives(lab))
    report = vzdump_backup(inventory=str(lab_inventory))
    got = outcomes(report)
    assert got["9000 (debian-12-template)"] is Outcome.SKIPPED
    ok = {int(t.split()[0]) for t, o in got.items() if o is Outcome.OK and "offsite" not in t}
    assert ok == GUESTS
    assert all(o is Outcome.OK for t, o in got.items() if t.endswith("offsite"))
    now = archives(lab)
    new = {n: a for n, a in now.items() if n not in before}
    assert sorted(a["vmid"] for a in new.values()) == sorted(GUESTS)
    assert all("moxflow" in a["notes"] for a in new.values())
    # every row names its new archive
    taken = {r.taken for r in report.rows if r.taken and not r.target.endswith("offsite")}
    assert taken == set(new)
    # the offsite copies are complete and identical; no partial file is left
    files = offsite_files(lab)
    assert not [n for n in files if n.endswith(".part")]
    assert set(new) <= set(files)
    for name, sha in files.items():
        assert now[name]["sha256"] == sha
    # every request about a guest went to the node that owns it
    pairs = guest_requests(lab)
    assert pairs and all(OWNER[vmid] == node for node, vmid in pairs)
    assert "backup coverage:" in report.notes
    coverage = report.notes[report.notes.index("backup coverage:") + 1 :]
    assert len(coverage) == 1 + len(GUESTS) and not any(" NO" in line for line in coverage[1:])
    # the report speaks backups: archive, size, and for the copies rate and checksum
    columns = ["target", "archive", "size", "rate", "checksum", "outcome", "detail"]
    assert report.columns() == columns
    head = report.to_text().splitlines()[0]
    assert head.split() == [c.upper() for c in columns]
    table = {t["target"]: t for t in report.table()}
    size = re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB)")
    for r in report.rows:
        cells = table[r.target]
        if r.outcome is Outcome.OK and not r.target.endswith("offsite"):
            assert cells["archive"] == r.taken and size.fullmatch(cells["size"])
            assert cells["rate"] == cells["checksum"] == "—"
            assert "verified, on pve" in cells["detail"] and "backup(s) on nas-backup" in r.detail
        elif r.target.endswith("offsite"):
            names = re.sub(r" \(\+\d+ more\)$", "", cells["archive"]).split(", ")
            assert set(names) <= set(files)  # at most two named, then how many more
            assert size.fullmatch(cells["size"]) and cells["checksum"] == "verified"
            assert re.fullmatch(size.pattern + "/s", cells["rate"])
            assert re.search(r"^\d+ copied; \d+ cop(y|ies) offsite", cells["detail"])
    assert table["9000 (debian-12-template)"]["archive"] == "—"
    assert "0" not in {v for t in table.values() for v in t.values()}  # no unexplained counts


def test_a_failing_dump_is_retried_once_and_named(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    lab.fault(target="task", type="vzdump", id="101", action="error", times=2,
              message="vma_queue_write: write error - Broken pipe")  # fmt: skip
    report = failed_report(select="100,101,104", inventory=str(lab_inventory), offsite=False)
    got = outcomes(report)
    assert got["101 (media-vm)"] is Outcome.FAILED
    assert got["100 (dns)"] is Outcome.OK and got["104 (homeassistant)"] is Outcome.OK
    row = next(r for r in report.rows if r.target == "101 (media-vm)")
    assert "failed twice" in row.detail and "Broken pipe" in row.detail
    posts = [
        r for r in lab.api_requests() if r["method"] == "POST" and r["path"].endswith("/vzdump")
    ]
    assert sorted(int(r["params"]["vmid"]) for r in posts) == [100, 101, 101, 104]


def test_storage_full_fails_the_run(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    st = lab.state()["storages"]["nas-backup"]
    lab.set_storage("nas-backup", used=st["total"] - sum(a["size"] for a in st["archives"]) - 2**20)
    before = set(archives(lab))
    report = failed_report(select="100", inventory=str(lab_inventory), offsite=False)
    row = next(r for r in report.rows if r.target == "100 (dns)")
    assert row.outcome is Outcome.FAILED and "job errors" in row.detail
    assert set(archives(lab)) == before
    assert outcomes(report)["100 (dns) coverage"] is Outcome.FAILED  # no backup at all


def test_offsite_down_keeps_backups_and_the_next_run_copies(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    lab.fault(target="connect", host="offsite", action="drop")
    report = failed_report(select="100,104", inventory=str(lab_inventory))
    got = outcomes(report)
    assert got["100 (dns)"] is Outcome.OK and got["104 (homeassistant)"] is Outcome.OK
    assert got["100 (dns) offsite"] is Outcome.FAILED
    assert offsite_files(lab) == {}
    made = {r.taken for r in report.rows if r.outcome is Outcome.OK}
    assert made <= set(archives(lab))  # the backups are kept
    lab.clear_faults()
    again = offsite_copy_flow(select="100,104", inventory=str(lab_inventory))
    assert all(r.outcome is Outcome.OK for r in again.rows)
    files = offsite_files(lab)
    assert made <= set(files)
    now = archives(lab)
    assert all(now[n]["sha256"] == sha for n, sha in files.items())


def test_a_corrupted_copy_is_detected_and_redone(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    # the first checksum on the offsite host disagrees, as for a copy damaged on the way
    lab.fault(target="command", host="offsite", command="^sha256sum", action="error",
              exit=0, stdout="0" * 64 + "  x.part\n", times=1)  # fmt: skip
    report = vzdump_backup(select="100", inventory=str(lab_inventory))
    assert outcomes(report)["100 (dns) offsite"] is Outcome.OK
    writes = [c for c in lab.commands() if c["host"] == "offsite" and "base64 -d" in c["command"]]
    assert len(writes) == 2
    files = offsite_files(lab)
    assert len(files) == 1 and not any(n.endswith(".part") for n in files)
    [(name, sha)] = files.items()
    assert archives(lab)[name]["sha256"] == sha
    row = next(t for t in report.table() if t["target"] == "100 (dns) offsite")
    assert (row["archive"], row["checksum"]) == (name, "verified")  # the second copy was


def test_a_copy_corrupted_twice_is_a_checksum_mismatch(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    lab.fault(target="command", host="offsite", command="^sha256sum", action="error",
              exit=0, stdout="0" * 64 + "  x.part\n", times=2)  # fmt: skip
    report = failed_report(select="100", inventory=str(lab_inventory))
    assert outcomes(report)["100 (dns) offsite"] is Outcome.FAILED
    row = next(t for t in report.table() if t["target"] == "100 (dns) offsite")
    assert row["checksum"] == "mismatch" and "arrived corrupted twice" in row["detail"]
    assert row["archive"] == row["size"] == row["rate"] == "—"  # nothing was copied
    assert offsite_files(lab) == {}


def test_prune_keeps_protected_and_exactly_what_the_policy_keeps(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    lab = fast_lab
    inv = edit_inventory(
        lab_inventory, tmp_path, {'policy = "keep-last=3,keep-daily=7"': 'policy = "keep-last=1"'}
    )
    before = archives(lab)
    report = vzdump_backup(select="101,104", inventory=str(inv), offsite=False)
    now = archives(lab)
    protected = {n for n, a in before.items() if a["protected"]}
    assert len(protected) == 1 and protected <= set(now)
    for vmid in (101, 104):
        left = [n for n, a in now.items() if a["vmid"] == vmid and not a["protected"]]
        row = next(r for r in report.rows if r.target.startswith(f"{vmid} "))
        assert left == [row.taken]  # only the new one
        gone = {n for n, a in before.items() if a["vmid"] == vmid and not a["protected"]}
        assert set(row.removed) == gone


def test_dry_run_changes_nothing(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    before = lab.state()["storages"]["nas-backup"]["archives"]
    report = vzdump_backup(dry_run=True, inventory=str(lab_inventory))
    assert report.dry_run
    assert {r.outcome for r in report.rows} == {Outcome.PLANNED, Outcome.SKIPPED}
    assert lab.state()["storages"]["nas-backup"]["archives"] == before
    assert offsite_files(lab) == {}
    assert all(r["method"] == "GET" for r in lab.api_requests())
    plan = {r.target: r for r in report.rows}
    assert plan["101 (media-vm) offsite"].detail.startswith("would copy 2")


def test_a_hanging_dump_is_timed_out_stopped_and_the_node_goes_on(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    lab = fast_lab
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {"max_age_hours = 26.0": "max_age_hours = 26.0\ntask_timeout = 1.0"},
    )
    lab.fault(target="task", type="vzdump", id="100", action="hang", times=1)
    report = failed_report(select="100,101", inventory=str(inv), offsite=False)
    got = {r.target: r for r in report.rows}
    assert got["100 (dns)"].outcome is Outcome.FAILED
    assert "timed out and was stopped" in got["100 (dns)"].detail
    assert got["101 (media-vm)"].outcome is Outcome.OK  # the node's vzdump lock was freed
    assert lab.guest(100)["lock"] is None and lab.state()["vzdump_locks"] == {}


def test_a_dump_an_earlier_run_left_running_is_adopted_not_doubled(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    """A run killed during a vzdump leaves PVE's task running. The next run waits for that
    task (naming its UPID), takes its archive, and starts no second vzdump of the guest."""
    from blocks.proxmox import proxmox_client

    lab = fast_lab
    before = {n for n, a in archives(lab).items() if a["vmid"] == 101}
    lab.fault(target="task", type="vzdump", id="101", action="slow", delay=3.0, times=1)
    with proxmox_client(load_inventory(lab_inventory)) as client:  # the killed run's
        orphan = client.vzdump("pve1", 101, storage="nas-backup", mode="snapshot")
    lab.clear_api_requests()
    report = vzdump_backup(select="101", offsite=False, inventory=str(lab_inventory))
    (row,) = [r for r in report.rows if r.target == "101 (media-vm)"]
    assert row.outcome is Outcome.OK
    assert f"adopted vzdump {orphan} of an earlier run" in row.detail
    starts = [r for r in lab.api_requests() if r["method"] == "POST" and "vzdump" in r["path"]]
    assert starts == []  # no second vzdump
    new = {n for n, a in archives(lab).items() if a["vmid"] == 101} - before
    assert len(new) == 1 and row.taken in new


def test_ok_instead_of_a_upid_is_a_failure_not_a_success(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    from blocks.proxmox import proxmox_client
    from moxflow.backups import BackupJob, GuestDump, dump_failure
    from moxflow.errors import ProxmoxError
    from moxflow.guests import Guest
    from tasks.backups import vzdump_guest

    client = proxmox_client(load_inventory(lab_inventory))
    stale = Guest(100, "dns", "pve2", "lxc")  # a listing from before a migration
    job = BackupJob(storage="nas-backup")
    with pytest.raises(ProxmoxError) as info:
        vzdump_guest.fn(client, GuestDump(stale, "nas-backup"), job)
    assert "answered 'OK' instead of a task" in dump_failure(info.value, job.retry_timeout)
    assert fast_lab.state()["backup_jobs"] == []


def input_ids(run: Any, key: str) -> list[Any]:
    """The ids of the task runs a task run took as its input ``key`` (the graph's edges)."""
    return [i.id for i in run.task_inputs.get(key, [])]


def test_each_step_is_a_task_run_chained_vzdump_verify_prune_copy(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    """The run graph tells the story: per guest a vzdump, then a verify that takes its
    result; a node's vzdumps one after the other; the storage's prune after the verifies;
    each archive's offsite copy after its guest's verify and the prune; then coverage."""
    state = vzdump_backup(select="100,101,104", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    report = state.result()
    taken = {r.target: r.taken for r in report.rows}
    prune, coverage = runs["nas-backup: prune"], runs["nas-backup: coverage"]
    for label in ("100 (dns)", "101 (media-vm)", "104 (homeassistant)"):
        dump, verify = runs[f"{label}: vzdump"], runs[f"{label}: verify"]
        copy = runs[f"{label} {taken[label]}: offsite-copy"]  # the new archive's copy
        for run in (dump, verify, copy):
            assert run.state is not None and run.state.is_completed(), run.name
        assert input_ids(verify, "dumped") == [dump.id]
        assert dump.end_time <= verify.start_time <= verify.end_time <= prune.start_time
        assert verify.id in input_ids(prune, "verified")
        assert input_ids(copy, "verified") == [verify.id]
        assert prune.id in input_ids(copy, "wait_for")
        assert prune.end_time <= copy.start_time <= copy.end_time <= coverage.start_time
    # pve1 backs up 100, then 101: the second vzdump waits for the first
    first, second = runs["100 (dns): vzdump"], runs["101 (media-vm): vzdump"]
    assert input_ids(second, "wait_for") == [first.id]
    assert first.end_time <= second.start_time
    # 101's older archives the offsite policy keeps are steps of their own, after 101's verify
    new_copy = f"101 (media-vm) {taken['101 (media-vm)']}: offsite-copy"
    older = [n for n in runs if n.startswith("101 (media-vm) vzdump-") and n != new_copy]
    assert len(older) == 2
    for name in older:
        assert input_ids(runs[name], "verified") == [runs["101 (media-vm): verify"].id]
    assert runs["offsite: prune"].end_time <= coverage.start_time


def test_a_dry_run_stops_after_the_plan(fast_lab: LabClient, lab_inventory: Path) -> None:
    lab = fast_lab
    before, copies = lab.state(), offsite_files(lab)
    state = vzdump_backup(dry_run=True, inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    names = set(task_runs(state))
    facts = {n for n in names if n.endswith(": list") or n.startswith("list-guests")}
    assert names == facts  # no vzdump, verify, prune, copy or coverage task ever ran
    assert {"pve1:nas-backup: list", "pve2:nas-backup: list", "offsite: list"} <= names
    after = lab.state()
    for key in ("storages", "tasks", "backup_jobs", "vzdump_locks"):
        assert after[key] == before[key], key
    for vmid, guest in after["guests"].items():  # (their uptime goes on)
        was = before["guests"][vmid]
        assert (guest["lock"], guest["snapshots"]) == (was["lock"], was["snapshots"]), vmid
    assert offsite_files(lab) == copies
    assert all(r["method"] == "GET" for r in lab.api_requests())
    plan = {r.target: r for r in state.result().rows}
    assert plan["101 (media-vm)"].detail.endswith("would remove 0")
    assert plan["101 (media-vm) offsite"].detail.startswith("would copy 2")


def test_offsite_copy_is_the_same_chain_of_steps(fast_lab: LabClient, lab_inventory: Path) -> None:
    """flows.offsite_copy: the facts (each node's backups, the offsite folder), then one
    offsite-copy step per archive, one after the other, then the offsite prune; with
    --dry-run only the facts, and the folder untouched."""
    from flows.jobs.offsite_copy import offsite_copy as copy_flow

    lab = fast_lab
    kept = {n for n, a in archives(lab).items() if a["vmid"] in (101, 104)}
    dry = copy_flow(select="101,104", dry_run=True, inventory=str(lab_inventory), return_state=True)
    assert dry.is_completed()
    names = {n for n in task_runs(dry) if not n.startswith("list-guests")}
    assert names == {"pve1:nas-backup: list", "pve2:nas-backup: list", "offsite: list"}
    assert offsite_files(lab) == {}
    plan = {r.target: r for r in dry.result().rows}
    assert plan["101 (media-vm) offsite"].outcome is Outcome.PLANNED
    state = copy_flow(select="101,104", inventory=str(lab_inventory), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    copies = sorted((r for n, r in runs.items() if n.endswith(": offsite-copy")),
                    key=lambda r: r.start_time)  # fmt: skip
    assert {r.name.split(" ")[-2].rstrip(":") for r in copies} == kept
    for before, after in itertools.pairwise(copies):  # one after the other
        assert input_ids(after, "wait_for") == [before.id]
        assert before.end_time <= after.start_time
    prune = runs["offsite: prune"]
    assert {r.id for r in copies} == set(input_ids(prune, "copies"))
    assert set(offsite_files(lab)) == kept


def test_a_transient_api_error_on_a_step_is_retried_by_prefect(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    lab = fast_lab
    inv = edit_inventory(
        lab_inventory, tmp_path, {'policy = "keep-last=3,keep-daily=7"': 'policy = "keep-last=1"'}
    )
    path = "/nodes/pve1/storage/nas-backup/prunebackups"
    lab.fault(target="api", method="DELETE", path=f"^{path}$", action="error", status=503,
              message="service unavailable", times=1)  # fmt: skip
    before = archives(lab)
    state = vzdump_backup(select="101,104", offsite=False, inventory=str(inv), return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    names = state_names(runs["nas-backup: prune"].id)
    assert "Retrying" in names and names[-1] == "Completed", names
    deletes = [
        r["status"] for r in lab.api_requests() if r["method"] == "DELETE" and r["path"] == path
    ]
    assert deletes == [503, 200]
    report = state.result()
    for vmid in (101, 104):
        row = next(r for r in report.rows if r.target.startswith(f"{vmid} "))
        gone = {n for n, a in before.items() if a["vmid"] == vmid and not a["protected"]}
        assert row.outcome is Outcome.OK
        assert set(row.removed) == gone  # also what the first attempt removed (104's)
        assert not gone & set(archives(lab))
        assert "Retrying" not in state_names(runs[f"{row.target}: vzdump"].id)


def test_the_vzdump_step_is_never_retried_by_prefect(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    """An API 5xx is transient, yet the start of a vzdump is not run again blindly: the step
    itself waits it out for --lock-timeout, after looking for an archive, and then fails."""
    lab = fast_lab
    lab.fault(target="api", method="POST", path="^/nodes/pve2/vzdump$", action="error",
              status=503, message="service unavailable", times=1)  # fmt: skip
    before = set(archives(lab))
    state = vzdump_backup(
        select="100,104", offsite=False, lock_timeout=0.1, inventory=str(lab_inventory),
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    runs = task_runs(state)
    names = state_names(runs["104 (homeassistant): vzdump"].id)
    assert "Retrying" not in names and names[-1] == "Failed", names
    assert "104 (homeassistant): verify" not in runs  # its vzdump failed: it never ran
    posts = [
        r for r in lab.api_requests() if r["method"] == "POST" and r["path"].endswith("/vzdump")
    ]
    assert sorted(int(r["params"]["vmid"]) for r in posts) == [100, 104]
    assert not {n for n in set(archives(lab)) - before if "-104-" in n}
    with pytest.raises(RunFailed) as info:
        state.result()
    got = {r.target: r for r in info.value.report.rows}
    assert got["100 (dns)"].outcome is Outcome.OK
    row = got["104 (homeassistant)"]
    assert row.outcome is Outcome.FAILED and "HTTP 503" in row.detail


@pytest.mark.parametrize("module", ["flows.vzdump_backup", "flows.offsite_copy"])
def test_help_answers_before_prefect_is_imported(module: str) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--select" in out.stdout and "--dry-run" in out.stdout and "exit status" in out.stdout
    assert " prefect" not in out.stderr


def test_cli_dry_run_and_bad_selection(
    fast_lab: LabClient, lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.vzdump_backup import main

    assert main(["--inventory", str(lab_inventory), "--select", "@bogus"]) == 2
    assert main(["--inventory", str(lab_inventory), "--select", "100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "100 (dns)" in out and "backup coverage:" in out and "planned" in out
    assert all(r["method"] == "GET" for r in fast_lab.api_requests())


def copy_104(lab: LabClient, inventory: Path, chunk: int) -> tuple[dict[str, Any], Path, str]:
    """Copy 104's newest archive to the offsite folder with ``copy_archive`` directly, in
    chunks of ``chunk`` bytes: (the archive, its file on the node, the copy's checksum)."""
    inv = load_inventory(inventory)
    archive = max((a for a in archives(lab).values() if a["vmid"] == 104), key=lambda a: a["ctime"])
    src = Path(inv.backups.storage_path("nas-backup", "pve2")) / archive["filename"]
    folder = lab.info["offsite"]["path"]
    with ssh_runner(inv, "pve2") as source, ssh_runner(inv, "offsite") as dest:
        done = copy_archive(source, str(src), dest, folder, logging.getLogger("test"), chunk=chunk)
    assert done.size == src.stat().st_size
    return archive, src, done.sha256


def offsite_writes(lab: LabClient) -> list[dict[str, Any]]:
    return [c for c in lab.commands() if c["host"] == "offsite" and "base64 -d" in c["command"]]


def test_a_multi_chunk_copy_is_identical_and_leaves_no_part(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    chunk = 1000  # not a multiple of 3: every chunk's base64 ends in padding
    archive, src, sha = copy_104(lab, lab_inventory, chunk)
    size = src.stat().st_size
    assert size > 5 * chunk and size % chunk
    assert sha == archive["sha256"]
    assert offsite_files(lab) == {archive["filename"]: archive["sha256"]}  # no .part left
    copied = Path(lab.info["offsite"]["path"]) / archive["filename"]
    assert copied.read_bytes() == src.read_bytes()
    writes = offsite_writes(lab)
    assert len(writes) == -(-size // chunk)
    assert sum(">>" in c["command"] for c in writes) == len(writes) - 1  # the first truncates


def test_a_copy_failing_half_way_leaves_no_part_file(
    fast_lab: LabClient, lab_inventory: Path
) -> None:
    lab = fast_lab
    # reading the third chunk (skip=2) fails, after two chunks were written to NAME.part
    lab.fault(target="command", host="pve2", command=r"^sh -c .*dd if=.* 1000 2$",
              action="error", stderr="dd: error reading: Input/output error")  # fmt: skip
    with pytest.raises(SshError, match="Input/output error"):
        copy_104(lab, lab_inventory, chunk=1000)
    assert len(offsite_writes(lab)) == 2  # it got half way
    assert offsite_files(lab) == {}  # and the partial copy is gone


def test_offsite_bwlimit_paces_the_copies(
    fast_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    lab = fast_lab
    limit = 8  # KiB/s: the two archives of 104 (~22 KiB) need some 3 s
    inv = edit_inventory(
        lab_inventory,
        tmp_path,
        {'[offsite]\nhost = "offsite"': f'[offsite]\nbwlimit = {limit}\nhost = "offsite"'},
    )
    report = offsite_copy_flow(select="104", inventory=str(inv))
    [row] = [r for r in report.rows if r.target.endswith("offsite")]
    assert row.outcome is Outcome.OK
    folder = Path(lab.info["offsite"]["path"])
    copied = [p for p in folder.iterdir() if p.name.startswith("vzdump-") and "-104-" in p.name]
    assert copied and not any(p.name.endswith(".part") for p in copied)
    total = sum(p.stat().st_size for p in copied)
    # each archive averages at most the limit, so the copies took at least this long
    assert row.seconds >= total / (limit * 1024) - 0.001  # (rounded to ms)
