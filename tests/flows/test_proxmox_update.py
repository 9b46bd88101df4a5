"""End to end: flows.proxmox_update against a 3-node lab (and a 1-node and the default
2-node one). Each test asserts the lab's state afterwards: packages, kernels, reboots, where
each guest is and whether it runs, HA maintenance, the root dataset's snapshots.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blocks.proxmox import proxmox_client
from flows.jobs.health_report import health_report
from flows.jobs.proxmox_update import proxmox_update
from labsim.client import LabClient, start_lab, wait_until
from moxflow.errors import RunFailed
from moxflow.inventory import load_inventory
from moxflow.report import Outcome, RunReport
from tasks.targets import hold, node_target
from tests.conftest import LAB_TIME_SCALE
from tests.flows.conftest import step_runs, subflow_runs, task_runs, zfs_snapshots

NEW_KERNEL = "6.14.11-5-pve"
ROOT = "rpool/ROOT/pve-1"
CHAIN = ["other work", "snapshot", "guests-leave", "upgrade", "reboot", "verify", "guests-return"]


def _start(tmp: Path, nodes: int) -> LabClient:
    return start_lab(tmp, nodes=nodes, guests_per_node=3, time_scale=LAB_TIME_SCALE)


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    lab = _start(tmp_path_factory.mktemp("lab3"), 3)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def pve(lab3: LabClient) -> LabClient:
    lab3.reset()
    return lab3


def inventory(
    lab: LabClient, name: str, extra: str = "", reboot_timeout: float = 4.0, settings: str = ""
) -> Path:
    """The lab's inventory with a [proxmox_update] section: nodes in order, short waits, and
    ``settings`` (lines of that section)."""
    nodes = sorted(h for h, v in lab.state()["hosts"].items() if v.get("apt"))
    order = ", ".join(f'"{n}"' for n in nodes)
    text = (lab.dir / "inventory.toml").read_text()
    head = "[proxmox_update]\n"  # the lab's own section names each node's dpkg log
    assert head in text
    text = (
        text.replace(
            head, f"{head}nodes = [{order}]\nreboot_timeout = {reboot_timeout}\n{settings}"
        )
        + f"\n{extra}\n"
    )
    dst = lab.dir / f"{name}-pveupdate.toml"
    dst.write_text(text)
    return dst


def run(inv: Path, **params: Any) -> RunReport:
    return proxmox_update(inventory=str(inv), **params)


def run_failing(inv: Path, **params: Any) -> RunReport:
    with pytest.raises(RunFailed) as info:
        proxmox_update(inventory=str(inv), **params)
    report = info.value.report
    assert isinstance(report, RunReport)
    return report


def row(report: RunReport, target: str) -> Any:
    return next(r for r in report.rows if r.target == target)


def apt(state: dict[str, Any], node: str) -> dict[str, Any]:
    return dict(state["hosts"][node]["apt"])


def placement(state: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {k: (g["node"], g["status"]) for k, g in state["guests"].items()}


def pre_update(state: dict[str, Any], node: str) -> list[str]:
    return [n for n in zfs_snapshots(state, node) if n.startswith(f"{ROOT}@moxflow-pre-update-")]


def test_full_roll_with_migration_ends_where_it_began(pve: LabClient, tmp_path: Path) -> None:
    before = pve.state()
    state = proxmox_update(inventory=str(inventory(pve, tmp_path.name)), return_state=True)
    assert state.is_completed()
    after = pve.state()
    for node in ("pve1", "pve2", "pve3"):
        a = apt(after, node)
        assert a["pending"] == {} and a["kernel_running"] == NEW_KERNEL
        assert a["reboots"] == 1 and not a["maintenance"] and a["status"] == "online"
        assert len(pre_update(after, node)) == 1
    assert placement(after) == placement(before)  # where they began, running as before
    # guests really moved: migrations were sent, and the local-disk VMs were shut down
    posts = {(r["method"], r["path"]) for r in pve.api_requests()}
    assert ("POST", "/nodes/pve1/lxc/102/migrate") in posts
    assert ("POST", "/nodes/pve2/qemu/104/migrate") in posts
    assert ("POST", "/nodes/pve2/qemu/103/status/shutdown") in posts  # local disk: fallback
    # the run's task runs, read back from the Prefect server: the chain per node
    subflows = subflow_runs(state)
    assert set(subflows) == {"pve1", "pve2", "pve3"}
    for node, flow_run in subflows.items():
        names = [r.name for r in step_runs(flow_run)]
        assert names == [f"{node}: {s}" for s in CHAIN]


def test_idle_node_skipped_reboot_only_for_a_new_kernel_and_a_lingering_node_waited_for(
    pve: LabClient, tmp_path: Path
) -> None:
    pve.control("apt_pending", node="pve3", clear=True, refresh=True)  # nothing to do
    # pve1 answers (old kernel, old uptime) for 40 × 0.025 = 1 s after the reboot request:
    # not taken as rebooted until its uptime says so
    pve.control("apt_node", node="pve1", linger=40.0)
    pve.control("apt_pending", node="pve2", clear=True, packages="pve-manager=9.1.2")
    report = run(inventory(pve, tmp_path.name))
    st = pve.state()
    assert row(report, "pve3").outcome is Outcome.SKIPPED
    assert apt(st, "pve3")["reboots"] == 0 and pre_update(st, "pve3") == []
    assert apt(st, "pve2")["installed"]["pve-manager"] == "9.1.2"
    assert apt(st, "pve2")["reboots"] == 0  # no new kernel: no reboot
    assert row(report, "pve1").outcome is Outcome.OK
    assert apt(st, "pve1")["reboots"] == 1 and apt(st, "pve1")["kernel_running"] == NEW_KERNEL
    assert row(report, "pve2").cell("reboot") == "no"
    # waited for with backoff (0.2 s, doubling: the reboot_timeout of 4 s is short), not
    # looked at every 0.1 s: facts, about four looks over the lingering second, verify
    looks = [
        r for r in pve.api_requests() if r["method"] == "GET" and r["path"] == "/nodes/pve1/status"
    ]
    assert len(looks) <= 8


def test_upgrade_failing_on_node_2_stops_the_roll(pve: LabClient, tmp_path: Path) -> None:
    pve.control("apt_node", node="pve2", break_upgrade="on")
    before = pve.state()
    report = run_failing(inventory(pve, tmp_path.name))
    st = pve.state()
    assert row(report, "pve1").outcome is Outcome.OK
    assert row(report, "pve2").outcome is Outcome.FAILED
    assert row(report, "pve3").outcome is Outcome.SKIPPED
    assert "not started" in row(report, "pve3").detail
    untouched = ("installed", "kernel_running", "reboots", "maintenance", "half_configured")
    assert {k: apt(st, "pve3")[k] for k in untouched} == {
        k: apt(before, "pve3")[k] for k in untouched
    }
    assert pre_update(st, "pve3") == []
    assert apt(st, "pve2")["maintenance"] is True  # stays in maintenance
    [snap] = pre_update(st, "pve2")
    assert apt(st, "pve2")["half_configured"]
    text = "\n".join(report.notes)
    assert snap in text and "proxmox-boot-tool kernel pin 6.14.11-4-pve" in text
    assert "node-maintenance disable pve2" in text
    # the guests it sent away, each with the way back (they stay where they went)
    assert "VM 103 (vm-103) was shut down; to start it again, on pve2: `qm start 103`" in text
    assert "`qm migrate 104 pve2 --online`" in text and "`pct migrate 105 pve2 --restart`" in text
    assert placement(st)["103"] == ("pve2", "stopped") and placement(st)["104"][0] != "pve2"


def test_a_roll_stopped_before_the_upgrade_offers_no_kernel_pin(
    pve: LabClient, tmp_path: Path
) -> None:
    """CT 102's way out fails (its task ends in an error): pve1's guests-leave stops after
    VM 101 (stopped) moved. No package changed: the next steps name VM 101's way back and
    maintenance, and offer no kernel to pin and no rollback."""
    for task in ("vzmigrate", "vzshutdown"):
        pve.fault(target="task", type=task, id="102", action="error", exitstatus="disk busy")
    report = run_failing(inventory(pve, tmp_path.name), only=["pve1"])
    st = pve.state()
    assert row(report, "pve1").outcome is Outcome.FAILED
    assert "guests-leave" in row(report, "pve1").detail
    assert apt(st, "pve1")["installed"] == apt(pve.state(), "pve2")["installed"]  # untouched
    text = "\n".join(report.notes)
    assert "proxmox-boot-tool" not in text and "zfs rollback" not in text
    where = placement(st)["101"][0]
    assert where != "pve1"
    assert (
        f"VM 101 (vm-101) was migrated to {where}; to bring it back, on {where}: "
        "`qm migrate 101 pve1`"
    ) in text
    assert "VM 100 (vm-100) was moved by HA node maintenance" in text
    assert "node-maintenance disable pve1" in text


def _backup_running(pve: LabClient, seconds: float, node: str = "pve1", vmid: int = 101) -> None:
    """A backup of ``vmid`` (another tool's, not moxflow's) running for ``seconds``."""
    import requests

    pve.fault(target="task", type="vzdump", id=str(vmid), action="slow", delay=seconds, times=1)
    r = requests.post(
        f"{pve.api_url}/nodes/{node}/vzdump",
        data={"vmid": str(vmid), "storage": "nas-backup"},
        headers=pve.auth_header,
        verify=str(pve.ca_file),
        timeout=10,
    )
    assert r.ok, r.text
    wait_until(lambda: any(t["type"] == "vzdump" and t["status"] == "running"
                           for t in pve.state()["tasks"]), 10)  # fmt: skip


def test_a_backup_running_holds_its_node_back_then_it_is_busy_and_the_roll_stops(
    pve: LabClient, tmp_path: Path
) -> None:
    """Other work on a node (a backup) is no fault: the node's turn waits --lock-timeout
    for it, then the node is busy (not failed) and the roll stops there, nothing changed."""
    _backup_running(pve, 60.0)
    before = pve.state()
    report = run_failing(inventory(pve, tmp_path.name), lock_timeout=1.0)
    assert row(report, "pve1").outcome is Outcome.BUSY
    assert (
        "not started: other work on pve1 after 1 s (--lock-timeout): tasks running: "
        "vzdump 101 on pve1"
    ) in row(report, "pve1").detail
    for node in ("pve2", "pve3"):
        assert row(report, node).outcome is Outcome.SKIPPED
        assert row(report, node).detail == "not started: pve1 busy"
    assert all(r.outcome is not Outcome.FAILED for r in report.rows)
    st = pve.state()
    assert placement(st) == placement(before)
    for node in ("pve1", "pve2", "pve3"):
        assert pre_update(st, node) == [] and not apt(st, node)["maintenance"]
        assert apt(st, node)["installed"] == apt(before, node)["installed"]


def test_a_roll_waits_for_a_backup_to_end_then_goes(pve: LabClient, tmp_path: Path) -> None:
    """A backup on the node to update: the roll waits for its end, then goes."""
    _backup_running(pve, 3.0, "pve2", 104)
    report = run(inventory(pve, tmp_path.name), only=["pve2"], lock_timeout=60.0)
    assert row(report, "pve2").outcome is Outcome.OK, row(report, "pve2").detail
    [dump] = [t for t in pve.state()["tasks"] if t["type"] == "vzdump"]
    [snap] = [c for c in pve.commands() if c["host"] == "pve2" and "zfs snapshot" in c["command"]]
    assert snap["time"] >= dump["ended"]  # the roll's first change came after the backup's end


def test_a_backup_begun_during_the_roll_leaves_its_node_busy(
    pve: LabClient, tmp_path: Path
) -> None:
    """A backup of VM 104 starts on pve2 while pve1 is being updated: pve2's turn waits for
    it (--lock-timeout), then pve2 is busy and untouched; pve1's update stands."""
    from concurrent.futures import ThreadPoolExecutor

    pve.control("apt_node", node="pve1", linger=160.0)  # 160 × 0.025 = 4 s after its reboot
    inv = inventory(pve, tmp_path.name, reboot_timeout=20.0)
    before = pve.state()
    with ThreadPoolExecutor(1) as lane:
        roll = lane.submit(
            proxmox_update,
            inventory=str(inv),
            only=["pve1", "pve2"],
            lock_timeout=1.0,
            return_state=True,
        )
        wait_until(lambda: apt(pve.state(), "pve1")["rebooting"] or roll.done(), timeout=60)
        assert not roll.done(), roll.result()
        _backup_running(pve, 60.0, "pve2", 104)
        state = roll.result(timeout=120)
    assert state.is_failed()
    report = state.result(raise_on_failure=False).report
    assert row(report, "pve1").outcome is Outcome.OK, row(report, "pve1").detail
    busy = row(report, "pve2")
    assert busy.outcome is Outcome.BUSY
    assert "not started: other work on pve2 after 1 s (--lock-timeout): tasks running: vzdump" in (
        busy.detail
    )
    st = pve.state()
    assert pre_update(st, "pve2") == [] and not apt(st, "pve2")["maintenance"]
    assert apt(st, "pve2")["installed"] == apt(before, "pve2")["installed"]


def test_a_locked_guest_refuses_the_roll_before_any_change(pve: LabClient, tmp_path: Path) -> None:
    """A guest of the roll with a config lock (here the one PVE leaves after a failed
    snapshot delete) could neither leave nor come back: pre-flight refuses, nothing moves."""
    pve.set_guest(102, lock="snapshot-delete")
    before = pve.state()
    report = run_failing(inventory(pve, tmp_path.name), only=["pve1"])
    cluster = row(report, "cluster")
    assert cluster.outcome is Outcome.FAILED
    assert "guest 102 (ct-102) on pve1 is locked (snapshot-delete)" in cluster.detail
    assert "`pct unlock 102` on pve1" in cluster.detail
    assert row(report, "pve1").outcome is Outcome.SKIPPED
    st = pve.state()
    assert placement(st) == placement(before) and pre_update(st, "pve1") == []
    assert not apt(st, "pve1")["maintenance"]
    assert apt(st, "pve1")["installed"] == apt(before, "pve1")["installed"]


def test_node_never_back_times_out_into_the_same_state(pve: LabClient, tmp_path: Path) -> None:
    pve.control("apt_node", node="pve1", never_back="on")
    report = run_failing(inventory(pve, tmp_path.name, reboot_timeout=1.5))
    st = pve.state()
    assert row(report, "pve1").outcome is Outcome.FAILED
    assert "reboot" in row(report, "pve1").detail
    assert {row(report, n).outcome for n in ("pve2", "pve3")} == {Outcome.SKIPPED}
    assert apt(st, "pve1")["maintenance"] is True and len(pre_update(st, "pve1")) == 1
    assert apt(st, "pve2")["reboots"] == 0 and pre_update(st, "pve2") == []


def test_a_node_whose_lrm_does_not_come_up_after_its_reboot_stops_the_roll(
    pve: LabClient, tmp_path: Path
) -> None:
    """pve1 answers SSH and pveversion after its reboot, but pve-ha-lrm stays activating:
    not back. The reboot step runs out of time naming the service; pve1 stays in HA
    maintenance (never left while its LRM is down); pve2 and pve3 are not started."""
    pve.control("apt_node", node="pve1", late_unit="pve-ha-lrm")
    report = run_failing(inventory(pve, tmp_path.name, reboot_timeout=2.0))
    st = pve.state()
    detail = row(report, "pve1").detail
    assert row(report, "pve1").outcome is Outcome.FAILED
    assert "pve1: reboot: " in detail and "not active: pve-ha-lrm activating" in detail
    assert apt(st, "pve1")["reboots"] == 1 and apt(st, "pve1")["maintenance"] is True
    assert apt(st, "pve1")["units"]["pve-ha-lrm"] == "activating"
    assert apt(st, "pve1")["units"]["pveproxy"] == "active"  # the others came up
    assert {row(report, n).outcome for n in ("pve2", "pve3")} == {Outcome.SKIPPED}


def test_maintenance_is_left_only_once_the_lrm_runs_again(pve: LabClient, tmp_path: Path) -> None:
    """No reboot, but the upgrade of pve-ha-manager restarts pve-ha-lrm, which stays
    activating: guests-return waits for it and never asks to leave maintenance."""
    pve.control("apt_pending", node="pve1", packages="pve-ha-manager=5.0.6", refresh=True)
    pve.control("apt_node", node="pve1", late_unit="pve-ha-lrm")
    inv = inventory(pve, tmp_path.name, settings="maintenance_timeout = 1.5\n")
    report = run_failing(inv, only=["pve1"], reboot="never")
    st = pve.state()
    detail = row(report, "pve1").detail
    assert "pve1: guests-return: pve-ha-lrm active before leaving HA maintenance" in detail
    assert "last seen: pve-ha-lrm activating" in detail
    assert apt(st, "pve1")["installed"]["pve-ha-manager"] == "5.0.6"
    assert apt(st, "pve1")["reboots"] == 0 and apt(st, "pve1")["maintenance"] is True
    commands = [c["command"] for c in pve.commands() if c["host"] == "pve1"]
    assert not any("node-maintenance disable" in c for c in commands)


def test_not_quorate_refused_before_any_change(pve: LabClient, tmp_path: Path) -> None:
    inv = inventory(pve, tmp_path.name)
    for node in ("pve2", "pve3"):
        pve.control("apt_node", node=node, never_back="on")
    with proxmox_client(load_inventory(str(inv))) as client:
        client.reboot_node("pve2")
        client.reboot_node("pve3")
    wait_until(lambda: apt(pve.state(), "pve3")["status"] == "offline", timeout=5)
    report = run_failing(inv)
    st = pve.state()
    assert "not quorate" in row(report, "cluster").detail
    assert pre_update(st, "pve1") == [] and apt(st, "pve1")["maintenance"] is False
    assert apt(st, "pve1")["pending"] and apt(st, "pve1")["kernel_running"] != NEW_KERNEL


def test_a_stale_ha_manager_status_is_refused_before_any_change(
    pve: LabClient, tmp_path: Path
) -> None:
    """pve-ha-crm runs nowhere: the manager status is what pve1 wrote over 30 s ago (in lab
    time), maintenance and services as they were. Nothing would act on maintenance, and VM
    100 is HA-managed: the roll is refused in pre-flight, nothing changed."""
    before = pve.state()
    pve.control("ha_crm", state="stopped")
    wait_until(lambda: pve.state()["ha"]["status"]["manager_status"]["stale"])
    report = run_failing(inventory(pve, tmp_path.name))
    st = pve.state()
    refused = row(report, "cluster").detail
    assert "the HA manager status is stale: its master pve1 last wrote it" in refused
    assert "is pve-ha-crm running?" in refused
    for node in ("pve1", "pve2", "pve3"):
        assert apt(st, node)["installed"] == apt(before, node)["installed"]
        assert pre_update(st, node) == [] and apt(st, node)["maintenance"] is False
    assert st["ha"]["requests"] == []  # no maintenance request queued
    assert placement(st) == placement(before)


def test_two_nodes_without_qdevice_refused(fresh_lab: LabClient, tmp_path: Path) -> None:
    fresh_lab.control("qdevice", state="absent")
    inv = inventory(fresh_lab, tmp_path.name)
    report = run_failing(inv)
    st = fresh_lab.state()
    assert "two-node cluster with no QDevice" in row(report, "cluster").detail
    assert pre_update(st, "pve1") == [] and apt(st, "pve1")["reboots"] == 0


def test_only_one_node_its_guests_go_to_the_others_and_a_local_disk_follows_its_fallback(
    pve: LabClient, tmp_path: Path
) -> None:
    """--only pve3: pve1 and pve2 are not updated but still take pve3's guests (same
    version); VM 107 has a local disk and its fallback leaves it running."""
    before = pve.state()
    inv = inventory(pve, tmp_path.name, '[proxmox_update.fallback]\n107 = "leave"\n')
    report = run(inv, only=["pve3"])
    st = pve.state()
    assert row(report, "pve3").outcome is Outcome.OK
    assert [r.target for r in report.rows] == ["pve3"]
    posts = [r["path"] for r in pve.api_requests() if r["method"] == "POST"]
    away = [p for p in posts if p.startswith("/nodes/pve3/") and p.endswith("/migrate")]
    back = [p for p in posts if p.startswith(("/nodes/pve1/", "/nodes/pve2/")) and "migrate" in p]
    assert away and len(back) == len(away)  # moved to the nodes --only left out, and back
    assert "/nodes/pve3/qemu/107/migrate" not in away
    assert "/nodes/pve3/qemu/107/status/shutdown" not in posts  # left running
    assert placement(st)["107"] == ("pve3", "running")  # started after the reboot
    assert placement(st) == placement(before)
    for node in ("pve1", "pve2"):  # not updated
        assert apt(st, node)["installed"] == apt(before, node)["installed"]
        assert apt(st, node)["reboots"] == 0 and pre_update(st, node) == []


def test_a_node_left_out_whose_journal_cannot_be_read_refuses_the_roll(
    pve: LabClient, tmp_path: Path
) -> None:
    """--only pve3, and pve1's SSH drops every connection: whether an update was left
    unfinished there (its guests parked, dpkg half-configured) cannot be known, so pve1's
    row says its journal could not be read and nothing changes on any node."""
    before = pve.state()
    inv = inventory(pve, tmp_path.name)
    pve.fault(target="connect", host="pve1", action="drop")
    report = run_failing(inv, only=["pve3"])
    assert row(report, "pve1").outcome is Outcome.FAILED
    assert "its update journal could not be read" in row(report, "pve1").detail
    assert row(report, "pve3").outcome is Outcome.SKIPPED
    assert not [n for n in report.notes if "pre-flight passed" in n], report.notes
    st = pve.state()
    assert placement(st) == placement(before)
    for node in ("pve1", "pve2", "pve3"):
        assert apt(st, node)["installed"] == apt(before, node)["installed"]
        assert not apt(st, node)["maintenance"] and pre_update(st, node) == []
    posts = [r["path"] for r in pve.api_requests() if r["method"] == "POST"]
    assert not [p for p in posts if p.endswith("/apt/update")], posts  # not even refreshed


def test_guests_onboot_already_started_are_back_not_a_failure(
    pve: LabClient, tmp_path: Path
) -> None:
    """VM 103 and CT 105 have onboot=1: shut down for pve2's update, they run again as soon
    as it boots, before guests-return would start them; "already running" is their return,
    not a failure. VM 104 (no onboot) is started by moxflow."""
    for vmid in (103, 105):
        pve.set_guest(vmid, onboot=1)
    before = placement(pve.state())
    report = run(inventory(pve, tmp_path.name), only=["pve2"], guests="shutdown")
    st = pve.state()
    assert row(report, "pve2").outcome is Outcome.OK, row(report, "pve2").detail
    assert apt(st, "pve2")["reboots"] == 1
    assert placement(st) == before
    posts = [r["path"] for r in pve.api_requests() if r["method"] == "POST"]
    for path in ("/nodes/pve2/qemu/103", "/nodes/pve2/lxc/105", "/nodes/pve2/qemu/104"):
        assert f"{path}/status/shutdown" in posts
    assert "/nodes/pve2/qemu/104/status/start" in posts


def test_a_missing_root_dataset_is_refused_before_any_change_unless_no_snapshot(
    pve: LabClient, tmp_path: Path
) -> None:
    """The inventory names a root dataset the nodes do not have: pre-flight refuses, naming
    it and --no-snapshot, before any change. With --no-snapshot the node is updated without
    a snapshot, and the report says so loudly."""
    before = pve.state()
    bad = "rpool/ROOT/debian"
    path = inventory(pve, tmp_path.name, settings=f'root_dataset = "{bad}"\n')
    report = run_failing(path)
    st = pve.state()
    refused = row(report, "cluster").detail
    assert f"root dataset {bad} not found (cannot open '{bad}': dataset does not exist)" in refused
    assert "--no-snapshot" in refused
    assert {row(report, n).outcome for n in ("pve1", "pve2", "pve3")} == {Outcome.SKIPPED}
    for node in ("pve1", "pve2", "pve3"):
        assert apt(st, node)["installed"] == apt(before, node)["installed"]
        assert apt(st, node)["maintenance"] is False and pre_update(st, node) == []
    assert placement(st) == placement(before)

    report = run(path, only=["pve1"], no_snapshot=True)
    st = pve.state()
    assert row(report, "pve1").outcome is Outcome.OK
    assert apt(st, "pve1")["pending"] == {} and apt(st, "pve1")["reboots"] == 1
    assert pre_update(st, "pve1") == []
    assert report.notes[0].startswith("WARNING: --no-snapshot: no node's root dataset is")
    assert row(report, "pve1").cell("snapshot") == "NONE (--no-snapshot)"
    assert "no root snapshot (--no-snapshot)" in row(report, "pve1").detail


def test_guests_go_only_to_nodes_that_really_run_the_same_or_newer_packages(
    pve: LabClient, tmp_path: Path
) -> None:
    """pve2 runs qemu-server 9.0.31 already; pve1 is offered it too but holds it at 9.0.30.
    The plan made before the roll would send pve2's VM 104 to pve1 (upgraded first); once
    pve1's installed versions are read after its upgrade, VM 104 has no node running
    qemu-server 9.0.31 or newer and follows its fallback (shut down), while CT 105 (its
    container tools are the same everywhere) still goes to pve1."""
    pve.control("apt_pending", node="pve2", clear=True, packages="qemu-server=9.0.31")
    assert pve.exec("pve2", ["apt-get", "update"])[0] == 0
    assert pve.exec("pve2", ["apt-get", "-y", "dist-upgrade"])[0] == 0
    pve.control("apt_pending", node="pve2", packages="pve-manager=9.1.2", refresh=True)
    pve.control("apt_pending", node="pve1", packages="qemu-server=9.0.31", refresh=True)
    pve.control("apt_node", node="pve1", hold="qemu-server")
    before = pve.state()
    assert apt(before, "pve2")["installed"]["qemu-server"] == "9.0.31"
    state = proxmox_update(
        inventory=str(inventory(pve, tmp_path.name)), reboot="never", return_state=True
    )
    assert state.is_completed()
    report = state.result()
    st = pve.state()
    assert apt(st, "pve1")["installed"]["qemu-server"] == "9.0.30"  # held
    assert "pve2: planned again with pve1's installed versions" in report.notes
    posts = {r["path"]: r for r in pve.api_requests() if r["method"] == "POST"}
    assert "/nodes/pve2/qemu/104/migrate" not in posts
    assert "/nodes/pve2/qemu/104/status/shutdown" in posts
    assert posts["/nodes/pve2/lxc/105/migrate"]["params"]["target"] == "pve1"
    assert placement(st) == placement(before)
    assert "pve1: installed versions" in task_runs(state)


def test_a_node_another_run_holds_is_busy_and_untouched(pve: LabClient, tmp_path: Path) -> None:
    before = pve.state()
    with hold([node_target("pve2")], wait=0):
        state = proxmox_update(
            inventory=str(inventory(pve, tmp_path.name)),
            only=["pve2"],
            lock_timeout=0.5,
            return_state=True,
        )
    assert state.is_failed()
    report = state.result(raise_on_failure=False).report
    assert row(report, "pve2").outcome is Outcome.BUSY and not report.ok
    assert "another moxflow run holds moxflow-node-pve2" in row(report, "pve2").detail
    st = pve.state()
    keys = ("installed", "kernel_running", "reboots", "maintenance", "half_configured")
    assert {k: apt(st, "pve2")[k] for k in keys} == {k: apt(before, "pve2")[k] for k in keys}
    assert pre_update(st, "pve2") == [] and placement(st) == placement(before)


def test_enterprise_repository_fails_pre_flight_before_any_change(
    pve: LabClient, tmp_path: Path
) -> None:
    """Each node with the enterprise repository and no subscription says so, in one run,
    and so does a problem of the whole cluster (a stale HA manager status)."""
    for node in ("pve2", "pve3"):
        pve.control("apt_node", node=node, enterprise_repo="on")
    pve.control("ha_crm", state="stopped")
    wait_until(lambda: pve.state()["ha"]["status"]["manager_status"]["stale"])
    before = pve.state()
    report = run_failing(inventory(pve, tmp_path.name))
    st = pve.state()
    for node in ("pve2", "pve3"):
        detail = row(report, node).detail
        assert row(report, node).outcome is Outcome.FAILED and detail.startswith("pre-flight: ")
        assert "apt-get update failed on the enterprise repository" in detail
        assert "https://enterprise.proxmox.com/debian/pve" in detail
    assert row(report, "pve1").outcome is Outcome.SKIPPED
    assert "the HA manager status is stale" in row(report, "cluster").detail
    for node in ("pve1", "pve2", "pve3"):
        assert apt(st, node)["installed"] == apt(before, node)["installed"]
        assert apt(st, node)["reboots"] == 0 and pre_update(st, node) == []
    assert placement(st) == placement(before)


def test_a_nodes_guests_are_held_for_its_whole_chain(pve: LabClient, tmp_path: Path) -> None:
    """While pve1's roll waits for its reboot (pve1 keeps answering for 6 s), CT 102 runs
    on another node, migrated there for the update: another run's backup of it waits for
    its slot, then leaves it busy (nothing dumped); the roll ends well and brings it home."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.jobs.vzdump_backup import vzdump_backup

    pve.control("apt_node", node="pve1", linger=240.0)  # 240 × 0.025 = 6 s
    inv = inventory(pve, tmp_path.name, reboot_timeout=20.0)
    archives = {a["volid"] for s in pve.state()["storages"].values() for a in s["archives"]}
    with ThreadPoolExecutor(1) as lane:
        roll = lane.submit(proxmox_update, inventory=str(inv), only=["pve1"], return_state=True)
        wait_until(lambda: apt(pve.state(), "pve1")["rebooting"] or roll.done(), timeout=60)
        assert not roll.done(), roll.result()
        away = placement(pve.state())["102"][0]
        assert away != "pve1"  # migrated for the update, not back yet
        dump = vzdump_backup(
            select="102", offsite=False, lock_timeout=0.5, inventory=str(inv), return_state=True
        )
        assert apt(pve.state(), "pve1")["rebooting"]  # the roll was mid-chain all along
        state = roll.result(timeout=120)
    assert state.is_completed()
    assert dump.is_failed()
    rows = dump.result(raise_on_failure=False).report.rows
    [busy] = [r for r in rows if r.target == "102 (ct-102)"]
    assert busy.outcome is Outcome.BUSY
    assert "another moxflow run holds moxflow-guest-102" in busy.detail
    st = pve.state()
    new = [a for s in st["storages"].values() for a in s["archives"] if a["volid"] not in archives]
    assert not any(a["vmid"] == 102 for a in new)
    assert placement(st)["102"][0] == "pve1"


@pytest.fixture(scope="module")
def lab1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    lab = _start(tmp_path_factory.mktemp("lab1"), 1)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.mark.parametrize("guests", ["leave", "shutdown"])
def test_single_host(lab1: LabClient, guests: str) -> None:
    lab1.reset()
    before = placement(lab1.state())
    report = run(inventory(lab1, f"single-{guests}"), guests=guests)
    st = lab1.state()
    assert row(report, "pve1").outcome is Outcome.OK
    assert apt(st, "pve1")["kernel_running"] == NEW_KERNEL
    assert placement(st) == before
    posts = [r["path"] for r in lab1.api_requests() if r["method"] == "POST"]
    shut = [p for p in posts if p.endswith("/status/shutdown")]
    assert bool(shut) == (guests == "shutdown")


def test_dry_run_changes_nothing_and_shows_versions(pve: LabClient, tmp_path: Path) -> None:
    before = pve.state()
    report = run(inventory(pve, tmp_path.name), dry_run=True)
    after = pve.state()
    assert {r.outcome for r in report.rows} == {Outcome.PLANNED}
    for node in ("pve1", "pve2", "pve3"):
        assert apt(after, node)["installed"] == apt(before, node)["installed"]
        assert pre_update(after, node) == []
    assert placement(after) == placement(before)
    text = report.to_text()
    assert "pve-manager 9.1.1 → 9.1.2" in text
    assert f"reboot: yes (new kernel {NEW_KERNEL} is being installed" in text
    assert "VM 103 (vm-103): shut down" in text and "migrate online pve2 → pve1" in text


def test_health_report_after_an_upgrade_without_reboot(pve: LabClient, tmp_path: Path) -> None:
    inv = inventory(pve, tmp_path.name)
    run(inv, only=["pve1"], reboot="never", guests="leave")
    st = pve.state()
    assert apt(st, "pve1")["reboots"] == 0 and apt(st, "pve1")["pending"] == {}
    report = health_report(only=["nodes"], inventory=str(inv))
    assert isinstance(report, RunReport) and report.ok
    rows = {r.target: r for r in report.rows}
    # reboot pending: the new kernel is installed and boots next, the old one still runs
    assert rows["pve1 reboot"].detail == (
        f"reboot pending: running 6.14.11-4-pve, {NEW_KERNEL} boots next"
    )
    assert rows["pve2 reboot"].detail.startswith("no reboot pending")
    # the last upgrade: the lines the upgrade just appended to pve1's dpkg log
    log = Path(apt(st, "pve1")["dpkg_log"]).read_text().splitlines()
    assert any(line.endswith(" upgrade pve-manager:amd64 9.1.1 9.1.2") for line in log)
    assert rows["pve1 last upgrade"].detail == f"dpkg's log: {log[-1][:19]}"
    assert rows["pve1 last upgrade"].cell("last") == "0m ago"
    assert rows["pve2 last upgrade"].cell("last") == "10d ago"
    # pending updates: none left on pve1; pve2 still has its own
    assert rows["pve1 node updates"].detail == "0 pending"
    pending = len(apt(st, "pve2")["pending"])
    assert pending and rows["pve2 node updates"].detail.startswith(f"{pending} pending: ")


def test_the_steps_that_must_not_repeat_are_never_retried() -> None:
    """Leaving and returning guests, the upgrade and the reboot request are not idempotent:
    Prefect never runs them again on its own (a second dist-upgrade, a second reboot, a
    guest migrated back twice)."""
    from tasks.pveupdate import guests_leave, guests_return, reboot, upgrade

    assert [t.retries for t in (guests_leave, upgrade, reboot, guests_return)] == [0, 0, 0, 0]


def test_a_task_begun_between_the_two_reads_holds_its_guests_lock(pve: LabClient) -> None:
    """The roll's facts read the running tasks, then the guests. A snapshot another job
    starts between the two locks its guest with a task the first read missed: the tasks are
    read again, and the lock is that task's (work to wait for), not one left over (which
    refuses the roll)."""
    import threading

    from moxflow.naming import snapshot_description, snapshot_name
    from moxflow.pveupdate import lock_holder
    from moxflow.snapshots import utc_now
    from tasks.pveupdate import ClusterFacts, _cluster_facts

    inv = load_inventory(pve.dir / "inventory.toml")
    with proxmox_client(inv) as reader, proxmox_client(inv) as other_job:
        guest = next(g for g in other_job.resources() if g.type == "qemu" and not g.template)
        # the guests' read is held 5 s; the snapshot then runs for 30 s more
        pve.fault(target="api", method="GET", path="^/cluster/resources", action="slow",
                  delay=5, times=1)  # fmt: skip
        pve.fault(target="task", type="qmsnapshot", action="slow", delay=30, times=1)
        pve.clear_api_requests()
        nodes = {n for n, h in pve.state()["hosts"].items() if h.get("apt")}
        out: list[ClusterFacts] = []
        reading = threading.Thread(target=lambda: out.append(_cluster_facts(reader)))
        reading.start()

        def tasks_read() -> bool:
            paths = {r["path"] for r in pve.api_requests() if r["method"] == "GET"}
            return all(f"/nodes/{n}/tasks" in paths for n in nodes)

        wait_until(tasks_read, timeout=10)
        now = utc_now()
        other_job.create_snapshot(
            guest, snapshot_name("hourly", now), snapshot_description("hourly", now)
        )
        reading.join(30)
    [facts] = out
    [seen] = [g for g in facts.guests if g.vmid == guest.vmid]
    assert seen.lock == "snapshot"  # the guests' read came after the snapshot began
    holder = lock_holder(seen, facts.tasks)
    assert holder is not None and holder.type == "qmsnapshot"
