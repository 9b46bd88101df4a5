"""Proxmox host updates as data: raw API answers and command output in, typed facts out;
facts in, verdicts, decisions and plans out."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moxflow.errors import ParseError, UnsafeNameError
from moxflow.guests import Guest
from moxflow.inventory import ProxmoxUpdateSettings
from moxflow.pveupdate import (
    CLUSTER_SERVICES,
    ClusterNode,
    ClusterStatus,
    DpkgAudit,
    GuestStep,
    HaStatus,
    MigratePrecheck,
    NodeFacts,
    PendingPackage,
    Preflight,
    RunningTask,
    TargetNode,
    autoremove_argv,
    compare_versions,
    decide_reboot,
    dist_upgrade_argv,
    dpkg_audit_argv,
    failed_units_argv,
    failure_next_steps,
    held_packages_argv,
    judge_ha_status,
    judge_root_dataset,
    kernel_abi,
    kernel_list_argv,
    last_upgrade,
    maintenance_argv,
    not_active,
    other_work,
    parse_apt_updates,
    parse_apt_versions,
    parse_cluster_status,
    parse_dpkg_audit,
    parse_failed_units,
    parse_ha_status,
    parse_held_packages,
    parse_kernel_list,
    parse_migrate_precheck,
    parse_node_status,
    parse_qdevice,
    parse_running_tasks,
    parse_service_states,
    plan_guests,
    plan_roll,
    preflight,
    prove_reboot,
    pveversion_argv,
    return_steps,
    root_dataset_argv,
    root_snapshot_argv,
    services_argv,
    verify_guests,
    verify_node,
)

DATA = Path(__file__).parent / "data" / "pveupdate"


def text(name: str) -> str:
    return (DATA / name).read_text()


def data(name: str) -> Any:
    return json.loads(text(name))


def vm(vmid: int, node: str, status: str = "running", **kw: Any) -> Guest:
    return Guest(vmid=vmid, name=f"g{vmid}", node=node, type="qemu", status=status, **kw)


def ct(vmid: int, node: str, status: str = "running") -> Guest:
    return Guest(vmid=vmid, name=f"g{vmid}", node=node, type="lxc", status=status)


# --- versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("8.2.7", "8.2.4", 1),
        ("8.2.10", "8.2.9", 1),
        ("2.36-9+deb12u9", "2.36-9+deb12u7", 1),
        ("1.0~rc1", "1.0", -1),
        ("1:1.0", "2.0", 1),
        ("6.8.12-10-pve", "6.8.12-9-pve", 1),
        ("6.8.12-4-pve", "6.8.12-4-pve", 0),
        ("9.0.0", "8.4.1", 1),
    ],
)
def test_compare_versions(a: str, b: str, sign: int) -> None:
    result = compare_versions(a, b)
    assert (result > 0) - (result < 0) == sign
    back = compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


@pytest.mark.parametrize(
    ("package", "abi"),
    [
        ("proxmox-kernel-6.8.12-5-pve-signed", "6.8.12-5-pve"),
        ("proxmox-kernel-6.8.12-5-pve", "6.8.12-5-pve"),
        ("pve-kernel-5.15.158-2-pve", "5.15.158-2-pve"),
        ("proxmox-kernel-6.8", None),
        ("proxmox-kernel-helper", None),
        ("pve-manager", None),
    ],
)
def test_kernel_abi(package: str, abi: str | None) -> None:
    assert kernel_abi(package) == abi


# --- API parsers ---------------------------------------------------------------------------


def test_parse_apt_updates() -> None:
    pending = parse_apt_updates(data("apt_update.json"))
    assert [str(p) for p in pending] == [
        "libc6 2.36-9+deb12u7 → 2.36-9+deb12u9",
        "proxmox-kernel-6.8 6.8.12-4 → 6.8.12-5",
        "proxmox-kernel-6.8.12-5-pve-signed (new) → 6.8.12-5",
        "proxmox-kernel-helper 8.1.0 → 8.1.1",
        "pve-manager 8.2.4 → 8.2.7",
    ]
    assert [p.name for p in pending if p.kernel] == [
        "proxmox-kernel-6.8",
        "proxmox-kernel-6.8.12-5-pve-signed",
    ]
    assert pending[2].old_version is None


@pytest.mark.parametrize("raw", [{}, [1], [{"Package": "x"}], [{"Version": "1"}]])
def test_parse_apt_updates_refuses_other_shapes(raw: Any) -> None:
    with pytest.raises(ParseError):
        parse_apt_updates(raw)


def test_parse_apt_updates_of_nothing() -> None:
    assert parse_apt_updates([]) == parse_apt_updates(None) == []


def test_parse_apt_versions() -> None:
    installed = parse_apt_versions(data("apt_versions.json"))
    assert installed.running_kernel == "6.8.12-4-pve"
    assert installed.manager_version == "8.2.4"
    assert installed.versions["pve-manager"] == "8.2.4"  # OldVersion: Version is the candidate
    assert "ceph-fuse" not in installed.versions
    assert installed.kernels == ("6.8.12-4-pve", "6.8.8-2-pve")  # ConfigFiles: removed
    assert installed.broken == {"libpve-storage-perl": "HalfConfigured"}


def test_parse_node_status() -> None:
    status = parse_node_status(data("node_status.json"))
    assert (status.kernel_release, status.uptime) == ("6.8.12-4-pve", 1209600)
    assert status.manager_version == "8.2.4"


def test_parse_node_status_from_the_legacy_kversion() -> None:
    raw = data("node_status.json")
    del raw["current-kernel"]
    assert parse_node_status(raw).kernel_release == "6.8.12-4-pve"


@pytest.mark.parametrize("change", [{"uptime": None}, {"uptime": -1}, {"current-kernel": {}}])
def test_parse_node_status_refuses_missing_facts(change: dict[str, Any]) -> None:
    raw = data("node_status.json") | change
    raw.pop("kversion")
    with pytest.raises(ParseError):
        parse_node_status(raw)


def test_parse_cluster_status() -> None:
    status = parse_cluster_status(data("cluster_status.json"))
    assert status.name == "homelab"
    assert status.quorate is True
    assert [n.name for n in status.nodes] == ["pve1", "pve2", "pve3"]
    assert status.offline == ["pve3"]
    assert status.nodes[0].local is True


def test_a_single_node_has_no_cluster_row_and_is_quorate() -> None:
    raw = [{"type": "node", "id": "node/pve", "name": "pve", "nodeid": 0, "online": 1, "local": 1}]
    status = parse_cluster_status(raw)
    assert (status.name, status.quorate, status.offline) == (None, True, [])


def test_not_quorate() -> None:
    raw = data("cluster_status.json")
    raw[0]["quorate"] = 0
    assert parse_cluster_status(raw).quorate is False


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ({}, None),
        (None, None),
        (
            {"State": "Connected", "QNetd host": "10.0.0.5:5403", "Algorithm": "Fifty-Fifty split"},
            "Connected",
        ),
        ({"State": "Disconnected"}, "Disconnected"),
    ],
)
def test_parse_qdevice(raw: Any, state: str | None) -> None:
    assert parse_qdevice(raw) == state


def test_parse_ha_status() -> None:
    ha = parse_ha_status(data("ha_manager_status.json"))
    assert ha.active and ha.master == "pve2"
    assert ha.nodes == {"pve1": "maintenance", "pve2": "online", "pve3": "online"}
    assert ha.lrm_modes["pve1"] == "maintenance"
    assert ha.managed == {100, 101}
    # the LRM says maintenance, but vm:100 is still on pve1: not done yet
    assert [s.sid for s in ha.services_on("pve1")] == ["vm:100"]


STAMP = 1732100000.0


@pytest.mark.parametrize(
    ("master", "online", "age", "stale"),
    [
        ("pve2", True, 5.0, None),  # a current master
        ("pve2", True, 30.0, None),  # PVE's limit: still active
        ("pve2", True, 31.0, "its master pve2 last wrote it 31 s ago ('old timestamp - dead?"),
        ("pve2", False, 1.0, "its master pve2 is not online"),  # a dead master's last word
        ("pve9", True, 1.0, "its master pve9 is not online"),  # not a node of the cluster
    ],
)
def test_the_ha_status_counts_only_from_a_current_master(
    master: str, online: bool, age: float, stale: str | None
) -> None:
    ha = replace(parse_ha_status(data("ha_manager_status.json")), master=master)
    assert ha.timestamp == STAMP and ha.active
    cluster = ClusterStatus(
        "homelab",
        True,
        (ClusterNode("pve1", True), ClusterNode("pve2", online), ClusterNode("pve3", True)),
    )
    judged = judge_ha_status(ha, cluster, STAMP + age)
    if stale is None:
        assert judged == ha and judged.active
    else:
        assert judged.stale is not None and judged.stale.startswith(
            f"the HA manager status is stale: {stale}"
        )
        assert not judged.active  # nothing acts on maintenance, nothing in it is trusted


def test_an_ha_status_without_a_timestamp_is_stale_and_none_without_master_is_not() -> None:
    bare = HaStatus(master="pve1")
    assert judge_ha_status(bare, THREE, STAMP).stale == (
        "the HA manager status is stale: its master pve1 wrote no timestamp"
    )
    assert judge_ha_status(HaStatus(), THREE, STAMP) == HaStatus()


@pytest.mark.parametrize("raw", [{}, None, {"manager_status": {}, "lrm_status": {}}])
def test_no_ha_manager_is_inactive_not_all_online(raw: Any) -> None:
    ha = parse_ha_status(raw)
    assert ha == HaStatus()
    assert not ha.active and ha.services_on("pve1") == []


def test_parse_migrate_precheck_of_a_vm() -> None:
    check = parse_migrate_precheck(data("migrate_vm_local.json"))
    assert check.running
    assert check.allowed_nodes == ("pve3",)
    assert check.not_allowed == {"pve2": "storages local-zfs"}
    assert check.local_disks == ("local-zfs:vm-105-disk-0",)
    assert check.blocker == "local resources: hostpci0"


def test_parse_migrate_precheck_of_a_container() -> None:
    check = parse_migrate_precheck(data("migrate_ct.json"))
    assert check.allowed_nodes == ("pve2", "pve3")
    assert check.blocker is None


def test_parse_running_tasks() -> None:
    tasks = parse_running_tasks(data("cluster_tasks.json"))
    assert [str(t) for t in tasks] == ["vzdump 105 on pve1", "vncproxy 100 on pve2"]


# --- command parsers -----------------------------------------------------------------------


def test_parse_kernel_list_takes_the_highest_automatic_kernel() -> None:
    kernels = parse_kernel_list(text("kernel_list.txt"))
    assert kernels.manual == ()
    assert kernels.next_boot == "6.8.12-10-pve"  # by version, not as text


def test_parse_kernel_list_pin_wins() -> None:
    kernels = parse_kernel_list(text("kernel_list_pinned.txt"))
    assert (kernels.pinned, kernels.next_boot) == ("6.8.8-2-pve", "6.8.8-2-pve")
    assert (
        parse_kernel_list(
            text("kernel_list_pinned.txt") + "\nKernel pinned on next-boot:\n6.8.12-4-pve\n"
        ).next_boot
        == "6.8.12-4-pve"
    )


def test_parse_kernel_list_manual_kernel_wins_over_automatic() -> None:
    out = (
        "Manually selected kernels:\n6.5.13-6-pve\n\n"
        "Automatically selected kernels:\n6.8.12-4-pve\n"
    )
    assert parse_kernel_list(out).next_boot == "6.5.13-6-pve"


def test_parse_kernel_list_refuses_other_output() -> None:
    with pytest.raises(ParseError):
        parse_kernel_list("proxmox-boot-tool: command not found\n")


def test_parse_failed_units() -> None:
    assert parse_failed_units(text("failed_units.txt")) == {
        "ceph-mgr@pve1.service",
        "zfs-import@tank.service",
    }
    assert parse_failed_units("") == frozenset()
    assert parse_failed_units("● x.service loaded failed failed X\n") == {"x.service"}


def test_parse_service_states() -> None:
    assert services_argv() == [
        *("systemctl", "is-active", "pve-cluster", "pveproxy", "pvedaemon", "pve-ha-lrm")
    ]
    states = parse_service_states(CLUSTER_SERVICES, "active\nactive\nactivating\n")
    assert states == {
        "pve-cluster": "active",
        "pveproxy": "active",
        "pvedaemon": "activating",
        "pve-ha-lrm": "unknown",  # no answer for it
    }
    assert not_active(states) == ["pvedaemon activating", "pve-ha-lrm unknown"]
    all_up = parse_service_states(CLUSTER_SERVICES, "active\n" * 4)
    assert not_active(all_up) == []
    assert not_active(parse_service_states(["pve-ha-lrm"], "failed\n")) == ["pve-ha-lrm failed"]


def test_parse_dpkg_audit() -> None:
    audit = parse_dpkg_audit(text("dpkg_audit.txt"))
    assert not audit.ok
    assert audit.packages == ("pve-manager", "libpve-storage-perl")
    assert parse_dpkg_audit("").ok


def test_parse_held_packages() -> None:
    assert parse_held_packages("proxmox-ve\nzfsutils-linux\n\n") == ("proxmox-ve", "zfsutils-linux")
    assert parse_held_packages("") == ()


def test_last_upgrade() -> None:
    assert last_upgrade(text("dpkg.log"), UTC) == datetime(2024, 11, 20, 10, 32, 10, tzinfo=UTC)
    assert last_upgrade("2024-11-20 10:31:02 startup archives unpack\n", UTC) is None


# --- commands ------------------------------------------------------------------------------


def test_commands() -> None:
    assert dist_upgrade_argv() == [
        *("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y"),
        *("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"),
        "dist-upgrade",
    ]
    assert autoremove_argv() == [
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "autoremove",
    ]
    assert maintenance_argv("pve1", enable=True) == [
        *("ha-manager", "crm-command", "node-maintenance", "enable", "pve1")
    ]
    assert maintenance_argv("pve1", enable=False)[3] == "disable"
    assert root_snapshot_argv("rpool/ROOT/pve-1", "moxflow-pre-update-20241120-103000") == [
        *("zfs", "snapshot", "rpool/ROOT/pve-1@moxflow-pre-update-20241120-103000")
    ]
    assert kernel_list_argv() == ["proxmox-boot-tool", "kernel", "list"]
    assert pveversion_argv() == ["pveversion"]
    assert failed_units_argv() == [
        *("systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager")
    ]
    assert dpkg_audit_argv() == ["dpkg", "--audit"]
    assert held_packages_argv() == ["apt-mark", "showhold"]


@pytest.mark.parametrize(
    ("exit_code", "stdout", "stderr", "problem"),
    [
        (0, "rpool/ROOT/pve-1\n", "", None),
        (
            1,
            "",
            "cannot open 'rpool/ROOT/pve-1': dataset does not exist\n",
            "root dataset rpool/ROOT/pve-1 not found "
            "(cannot open 'rpool/ROOT/pve-1': dataset does not exist)",
        ),
        (
            127,
            "",
            "sh: 1: zfs: not found\n",
            "root dataset rpool/ROOT/pve-1 not found (sh: 1: zfs: not found)",
        ),
        (0, "rpool/ROOT\n", "", "root dataset rpool/ROOT/pve-1 not found (rpool/ROOT)"),
    ],
)
def test_judge_root_dataset(exit_code: int, stdout: str, stderr: str, problem: str | None) -> None:
    assert root_dataset_argv("rpool/ROOT/pve-1") == [
        *("zfs", "list", "-H", "-p", "-o", "name", "rpool/ROOT/pve-1")
    ]
    assert judge_root_dataset("rpool/ROOT/pve-1", exit_code, stdout, stderr) == problem


def test_root_dataset_refuses_hostile_names() -> None:
    with pytest.raises(UnsafeNameError):
        root_dataset_argv("rpool/ROOT;reboot")


@pytest.mark.parametrize("node", ["pve1;reboot", "-x", ""])
def test_maintenance_refuses_hostile_names(node: str) -> None:
    with pytest.raises(UnsafeNameError):
        maintenance_argv(node, enable=True)


# --- pre-flight ----------------------------------------------------------------------------

THREE = ClusterStatus(
    "homelab",
    True,
    (ClusterNode("pve1", True), ClusterNode("pve2", True), ClusterNode("pve3", True)),
)
TWO = ClusterStatus("duo", True, (ClusterNode("pve1", True), ClusterNode("pve2", True)))


def test_a_healthy_cluster_passes() -> None:
    verdict = preflight(THREE, HaStatus(), [], qdevice=None, two_node="refuse")
    assert verdict == Preflight()
    assert verdict.ok


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"cluster": ClusterStatus("homelab", False, THREE.nodes)}, "not quorate"),
        (
            {
                "cluster": ClusterStatus(
                    "homelab", True, (ClusterNode("pve1", True), ClusterNode("pve2", False))
                )
            },
            "node offline: pve2",
        ),
        ({"cluster": TWO}, "two-node cluster with no QDevice"),
        ({"cluster": TWO, "qdevice": "Disconnected"}, "its QDevice is Disconnected"),
        (
            {"dpkg": {"pve2": DpkgAudit(("pve-manager",), " pve-manager  x\n")}},
            "pve2: dpkg is broken",
        ),
        ({"broken": {"pve1": {"libpve-storage-perl": "HalfConfigured"}}}, "half installed"),
        ({"ha": HaStatus(master="pve1", nodes={"pve3": "fence"})}, "HA reports node pve3 fence"),
        (
            {"roots": {"pve1": None, "pve2": "root dataset rpool/ROOT/pve-1 not found (x)"}},
            "pve2: root dataset rpool/ROOT/pve-1 not found (x); nothing changes without the "
            "pre-update snapshot: correct [proxmox_update] root_dataset, or, for a node "
            "without a ZFS root, run with --no-snapshot",
        ),
    ],
)
def test_refusals(kwargs: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {"cluster": THREE, "ha": HaStatus(), "tasks": []}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    verdict = preflight(
        args["cluster"],
        args["ha"],
        args["tasks"],
        **{"qdevice": None, "two_node": "refuse", **kwargs},
    )
    assert not verdict.ok
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_stale_ha_status_refuses_when_ha_manages_guests() -> None:
    """A dead master's last status (its maintenance and service positions as they were) is
    not trusted: with HA resources nothing would move them; without, the CRM is idle and
    the roll needs no maintenance, but the old node states refuse nothing."""
    ha = parse_ha_status(data("ha_manager_status.json"))  # pve1 in maintenance back then
    stale = judge_ha_status(ha, THREE, STAMP + 3600)
    verdict = preflight(THREE, stale, [], qdevice=None, two_node="refuse")
    assert verdict.reasons == (
        f"{stale.stale}; the HA-managed guests leave through HA node maintenance, which "
        "needs a current CRM master",
    )
    idle = replace(stale, services=())
    assert preflight(THREE, idle, [], qdevice=None, two_node="refuse").ok
    plan = plan_roll(
        [facts("pve1", [vm(100, "pve1")])], ProxmoxUpdateSettings(), Preflight(), ha=idle
    )
    assert not plan.nodes[0].maintenance


@pytest.mark.parametrize(
    ("tasks", "busy"),
    [
        ([RunningTask("pve1", "vzdump", "105", "")], "tasks running: vzdump 105 on pve1"),
        ([RunningTask("pve2", "qmigrate", "100", "")], "tasks running: qmigrate 100 on pve2"),
    ],
)
def test_other_work_is_reported_not_refused(tasks: list[RunningTask], busy: str) -> None:
    """Other work now does not refuse the roll: each node's turn waits for its own."""
    verdict = preflight(
        THREE, HaStatus(), tasks, qdevice=None, two_node="refuse", nodes=["pve1", "pve2"]
    )
    assert verdict.ok and verdict.reasons == () and verdict.busy == (busy,)
    assert (
        str(verdict) == f"pre-flight passed; other work now (each node waits for its own): {busy}"
    )


def test_other_work_of_a_roll() -> None:
    """What holds back a roll of pve1: a blocking task on it or on one of its guests
    wherever that runs, a migration anywhere, a guest locked by the task that sets its lock;
    not a backup elsewhere, not a console, not a lock no task holds."""
    guests = [
        Guest(101, "media", "pve1", "qemu", "running", lock="backup"),
        Guest(102, "dns", "pve1", "lxc", "running", lock="snapshot-delete"),
        Guest(103, "gpu", "pve1", "qemu", "stopped", lock="suspended"),
        Guest(104, "web", "pve3", "lxc", "running", lock="mounted"),
    ]
    tasks = [
        RunningTask("pve1", "vzdump", "101", ""),
        RunningTask("pve1", "vncproxy", "102", ""),  # a console holds no lock
        RunningTask("pve3", "vzmount", "104", ""),  # a lock LOCK_TASKS does not list
        RunningTask("pve3", "vzdump", "300", ""),  # another node's backup of another guest
        RunningTask("pve2", "qmigrate", "200", ""),  # may be coming to pve1
    ]
    assert other_work(tasks, guests, ["pve1"]) == [
        "tasks running: vzdump 101 on pve1, qmigrate 200 on pve2",
        "guest 104 (web) on pve3 is locked (mounted) by vzmount 104 on pve3",
    ]
    assert other_work(tasks[2:], guests[1:3], ["pve1"]) == ["tasks running: qmigrate 200 on pve2"]
    verdict = preflight(
        THREE, HaStatus(), tasks, qdevice=None, two_node="refuse", locked=guests, nodes=["pve1"]
    )
    assert [r.split(":")[0] for r in verdict.reasons] == [
        "guest 102 (dns) on pve1 is locked (snapshot-delete) and no task holds it",
        "guest 103 (gpu) on pve1 is hibernated (lock suspended)",
    ]
    assert "`qm start 103` on pve1" in verdict.reasons[1]
    assert verdict.busy == tuple(other_work(tasks, guests, ["pve1"]))


def test_a_locked_guest_of_the_roll_refuses_it() -> None:
    locked = [
        Guest(101, "media", "pve1", "qemu", "running", lock="snapshot-delete"),
        Guest(102, "dns", "pve2", "lxc", "stopped", lock="backup"),
        Guest(900, "tpl", "pve1", "qemu", "stopped", template=True, lock="disk"),
        Guest(103, "web", "pve1", "qemu", "running"),
    ]
    verdict = preflight(THREE, HaStatus(), [], qdevice=None, two_node="refuse", locked=locked)
    assert verdict.reasons == (
        "guest 101 (media) on pve1 is locked (snapshot-delete) and no task holds it: it could "
        "neither leave its node nor come back; once you know nothing is at work on it, clear "
        "it (`qm unlock 101` on pve1)",
        "guest 102 (dns) on pve2 is locked (backup) and no task holds it: it could neither "
        "leave its node nor come back; once you know nothing is at work on it, clear it "
        "(`pct unlock 102` on pve2)",
    )


def test_console_sessions_do_not_refuse() -> None:
    tasks = [RunningTask("pve2", "vncproxy", "100", ""), RunningTask("pve1", "qmstart", "100", "")]
    assert preflight(THREE, HaStatus(), tasks, qdevice=None, two_node="refuse").ok


def test_two_nodes_with_a_connected_qdevice_pass() -> None:
    assert preflight(TWO, HaStatus(), [], qdevice="Connected", two_node="refuse").ok


def test_two_nodes_allowed_is_a_warning_unless_ha_manages_guests() -> None:
    allowed = preflight(TWO, HaStatus(), [], qdevice=None, two_node="allow")
    assert allowed.ok and "quorum is lost" in allowed.warnings[0]
    ha = parse_ha_status(data("ha_manager_status.json"))
    ha = HaStatus(master=ha.master, services=ha.services)
    refused = preflight(TWO, ha, [], qdevice=None, two_node="allow")
    assert not refused.ok and "fenced" in refused.reasons[0]


def test_held_packages_are_a_warning() -> None:
    verdict = preflight(
        THREE, HaStatus(), [], qdevice=None, two_node="refuse", held={"pve1": ("proxmox-ve",)}
    )
    assert verdict.ok
    assert verdict.warnings == ("pve1: held packages stay at their version: proxmox-ve",)


# --- reboot --------------------------------------------------------------------------------

NEW_KERNEL = tuple(parse_apt_updates(data("apt_update.json")))
NO_KERNEL = (PendingPackage("pve-manager", "8.2.4", "8.2.7"),)


@pytest.mark.parametrize(
    ("policy", "next_boot", "pending", "reboot", "expected", "pending_reboot", "why"),
    [
        (
            "auto",
            "6.8.12-4-pve",
            NEW_KERNEL,
            True,
            "6.8.12-5-pve",
            False,
            "new kernel 6.8.12-5-pve",
        ),
        ("auto", "6.8.12-4-pve", NO_KERNEL, False, "6.8.12-4-pve", False, "no reboot needed"),
        (
            "auto",
            "6.8.12-5-pve",
            NO_KERNEL,
            True,
            "6.8.12-5-pve",
            False,
            "is installed and boots next",
        ),
        ("always", "6.8.12-4-pve", NO_KERNEL, True, "6.8.12-4-pve", False, "reboot = always"),
        ("never", "6.8.12-4-pve", NEW_KERNEL, False, "6.8.12-5-pve", True, "reboot pending"),
        ("never", "6.8.12-4-pve", NO_KERNEL, False, "6.8.12-4-pve", False, "no reboot needed"),
        ("auto", None, NO_KERNEL, False, "6.8.12-4-pve", False, "no reboot needed"),
    ],
)
def test_decide_reboot(
    policy: Any,
    next_boot: str | None,
    pending: tuple[PendingPackage, ...],
    reboot: bool,
    expected: str,
    pending_reboot: bool,
    why: str,
) -> None:
    decision = decide_reboot(policy, "6.8.12-4-pve", next_boot, pending)
    assert (decision.reboot, decision.expected_kernel, decision.pending) == (
        reboot,
        expected,
        pending_reboot,
    )
    assert why in decision.reason


def test_a_pinned_kernel_keeps_booting_despite_a_new_one() -> None:
    decision = decide_reboot("auto", "6.8.12-4-pve", "6.8.12-4-pve", NEW_KERNEL, pinned=True)
    assert not decision.reboot and decision.expected_kernel == "6.8.12-4-pve"


T = datetime(2024, 11, 20, 10, 40, tzinfo=UTC)


@pytest.mark.parametrize(
    ("uptime", "after", "rebooted"),
    [
        (1209650.0, 30, False),  # still answering, the old uptime
        (20.0, 90, True),  # uptime reset
        (90.0, 90, False),  # up as long as since the request: not this reboot
        (None, 60, False),  # offline
    ],
)
def test_prove_reboot(uptime: float | None, after: int, rebooted: bool) -> None:
    proof = prove_reboot(T, T + timedelta(seconds=after), uptime)
    assert proof.rebooted is rebooted
    assert proof.reason


# --- guests --------------------------------------------------------------------------------

SETTINGS = ProxmoxUpdateSettings(fallback={"105": "leave"})
PVE1 = {
    "pve-manager": "8.2.4",
    "qemu-server": "8.2.4",
    "pve-qemu-kvm": "9.0.2-3",
    "pve-container": "5.1.12",
}
OTHERS = [
    TargetNode("pve2", versions={"pve-manager": "8.2.4"}, running=3),
    TargetNode("pve3", versions={"pve-manager": "8.2.4"}, running=1),
]


def test_plan_guests_migrates_by_kind_and_balances() -> None:
    guests = [
        vm(100, "pve1"),
        ct(101, "pve1"),
        vm(102, "pve1", "stopped"),
        vm(103, "pve1"),
        vm(200, "pve2"),
    ]
    steps = plan_guests("pve1", guests, SETTINGS, others=OTHERS, versions=PVE1)
    assert [str(s) for s in steps] == [
        "VM 100 (g100): migrate online pve1 → pve3",
        "CT 101 (g101): migrate restart pve1 → pve3",
        "VM 102 (g102): migrate offline pve1 → pve2",  # stopped: adds no load
        "VM 103 (g103): migrate online pve1 → pve2",  # both have 3 running now: by name
    ]


def test_plan_guests_prefers_upgraded_nodes_and_never_an_older_one() -> None:
    others = [
        TargetNode("pve2", versions={"pve-manager": "8.2.7"}, upgraded=True, running=5),
        TargetNode("pve3", versions={"pve-manager": "8.2.4"}, running=0),
        TargetNode("pve4", versions={"pve-manager": "8.1.0"}, running=0),
    ]
    steps = plan_guests("pve1", [vm(100, "pve1")], SETTINGS, others=others, versions=PVE1)
    assert steps[0].target == "pve2"
    only_old = [TargetNode("pve4", versions={"pve-manager": "8.1.0"})]
    fallback = plan_guests("pve1", [vm(100, "pve1")], SETTINGS, others=only_old, versions=PVE1)
    assert fallback[0].action == "shutdown"
    assert "no node can take it" in fallback[0].reason


@pytest.mark.parametrize(
    ("target", "vm_to", "ct_to"),
    [
        ({}, "pve2", "pve2"),  # the same versions
        ({"qemu-server": "8.2.3"}, None, "pve2"),  # older VM tools: no VM, containers fine
        ({"pve-qemu-kvm": "9.0.2-2"}, None, "pve2"),  # older QEMU: no VM
        ({"pve-container": "5.1.11"}, "pve2", None),  # older container tools: no container
        ({"pve-manager": "8.2.3"}, None, None),  # older manager: nothing
        ({"qemu-server": "8.3.0", "pve-container": "5.2.0"}, "pve2", "pve2"),  # newer
    ],
)
def test_a_target_runs_each_package_of_the_guest_kind_the_same_or_newer(
    target: dict[str, str], vm_to: str | None, ct_to: str | None
) -> None:
    others = [TargetNode("pve2", versions={**PVE1, **target})]
    steps = plan_guests(
        "pve1", [vm(100, "pve1"), ct(101, "pve1")], SETTINGS, others=others, versions=PVE1
    )
    assert [s.target for s in steps] == [vm_to, ct_to]
    for s in steps:
        if s.target is None:
            assert s.action == "shutdown"
            assert "cannot migrate: no node can take it (older packages: pve2: " in s.reason


def test_the_plan_for_later_nodes_uses_the_versions_read_after_an_upgrade() -> None:
    """pve1 was to get qemu-server 8.2.5 (pending) but held it at 8.2.4: once its real
    versions are read, pve2's VM (already at 8.2.5) can no longer go there; its container
    still can."""
    pending = (*NEW_KERNEL, PendingPackage("qemu-server", "8.2.4", "8.2.5"))
    pve1 = replace(facts("pve1", []), pending=pending)
    pve2 = replace(
        facts("pve2", [vm(200, "pve2"), ct(201, "pve2")]),
        versions={**PVE1, "qemu-server": "8.2.5"},
    )
    settings = ProxmoxUpdateSettings(nodes=["pve1", "pve2"])
    predicted = plan_roll([pve1, pve2], settings, Preflight())
    assert [s.target for s in predicted.nodes[1].guests] == ["pve1", "pve1"]
    real = {**pve1.new_versions, "qemu-server": "8.2.4"}
    again = plan_roll([pve1, pve2], settings, Preflight(), actual={"pve1": real})
    [vm_step, ct_step] = again.nodes[1].guests
    assert (vm_step.action, vm_step.target) == ("shutdown", None)
    assert "pve1: qemu-server 8.2.4 < 8.2.5" in vm_step.reason
    assert (ct_step.action, ct_step.target) == ("migrate", "pve1")


def test_plan_guests_skips_offline_and_maintenance_nodes() -> None:
    others = [
        TargetNode("pve2", online=False),
        TargetNode("pve3", maintenance=True),
        TargetNode("pve4"),
    ]
    assert plan_guests("pve1", [vm(100, "pve1")], SETTINGS, others=others)[0].target == "pve4"


def test_a_guest_that_cannot_move_follows_its_fallback() -> None:
    local = parse_migrate_precheck(data("migrate_vm_local.json"))
    guests = [vm(105, "pve1"), vm(106, "pve1"), vm(107, "pve1", "stopped")]
    prechecks = {105: local, 106: local, 107: local}
    steps = plan_guests("pve1", guests, SETTINGS, others=OTHERS, prechecks=prechecks)
    assert [(s.vmid, s.action) for s in steps] == [
        (105, "leave"),
        (106, "shutdown"),
        (107, "leave"),
    ]
    assert "local resources: hostpci0" in steps[0].reason
    assert "stopped already" in steps[2].reason


def test_a_local_disk_alone_blocks_too() -> None:
    check = MigratePrecheck(True, ("pve2",), local_disks=("local-lvm:vm-110-disk-0",))
    steps = plan_guests("pve1", [vm(110, "pve1")], SETTINGS, others=OTHERS, prechecks={110: check})
    assert steps[0].action == "shutdown" and "local disks" in steps[0].reason


def test_the_precheck_limits_the_targets() -> None:
    check = MigratePrecheck(True, ("pve2",))
    steps = plan_guests("pve1", [vm(100, "pve1")], SETTINGS, others=OTHERS, prechecks={100: check})
    assert steps[0].target == "pve2"


def test_a_node_the_precheck_refuses_is_never_a_target() -> None:
    """PVE lists the nodes a guest cannot go to (a storage missing there) apart from the
    allowed ones, which may be empty: the refused ones are out either way."""
    check = MigratePrecheck(True, (), not_allowed={"pve2": "unavailable storages: nfs-vm"})
    steps = plan_guests("pve1", [vm(100, "pve1")], SETTINGS, others=OTHERS, prechecks={100: check})
    assert steps[0].action == "migrate" and steps[0].target != "pve2"
    everywhere = {n.name: "no" for n in OTHERS}
    refused = MigratePrecheck(True, (), not_allowed=everywhere)
    [step] = plan_guests(
        "pve1", [vm(100, "pve1")], SETTINGS, others=OTHERS, prechecks={100: refused}
    )
    assert step.action == "shutdown" and "no node can take it" in step.reason


def test_ha_guests_go_with_maintenance_only_with_a_master() -> None:
    ha = HaStatus(master="pve2", services=parse_ha_status(data("ha_manager_status.json")).services)
    guests = [vm(100, "pve1"), vm(103, "pve1")]
    steps = plan_guests("pve1", guests, SETTINGS, others=OTHERS, ha=ha)
    assert [s.action for s in steps] == ["ha", "migrate"]
    no_master = HaStatus(services=ha.services)
    steps = plan_guests("pve1", guests, SETTINGS, others=OTHERS, ha=no_master)
    assert [s.action for s in steps] == ["migrate", "migrate"]


@pytest.mark.parametrize(
    ("policy", "actions"),
    [("leave", ["leave", "leave", "leave"]), ("shutdown", ["shutdown", "leave", "leave"])],
)
def test_single_host_policies(policy: Any, actions: list[str]) -> None:
    guests = [vm(100, "pve"), vm(101, "pve", "stopped"), vm(102, "pve", template=True)]
    steps = plan_guests("pve", guests, SETTINGS, policy=policy)
    assert [s.action for s in steps] == actions


def test_migrate_on_a_single_host_falls_back() -> None:
    steps = plan_guests("pve", [vm(100, "pve"), vm(105, "pve")], SETTINGS)
    assert [s.action for s in steps] == ["shutdown", "leave"]


def test_return_steps() -> None:
    local = {106: MigratePrecheck(True, (), local_resources=("usb0",))}
    guests = [vm(100, "pve1"), ct(101, "pve1"), vm(106, "pve1")]
    steps = plan_guests("pve1", guests, SETTINGS, others=OTHERS, prechecks=local)
    back = return_steps(steps)
    assert [str(s) for s in back] == [
        "VM 100 (g100): migrate online pve3 → pve1 (return)",
        "CT 101 (g101): migrate restart pve3 → pve1 (return)",
        "VM 106 (g106): start on pve1 (return)",
    ]


# --- the roll ------------------------------------------------------------------------------


def facts(
    name: str, guests: list[Guest], pending: tuple[PendingPackage, ...] = NEW_KERNEL
) -> NodeFacts:
    return NodeFacts(
        name=name,
        running_kernel="6.8.12-4-pve",
        pending=pending,
        kernels=parse_kernel_list(
            text("kernel_list_pinned.txt").replace("Pinned kernel:\n6.8.8-2-pve\n", "")
        ),
        versions=PVE1,
        guests=tuple(guests),
    )


def test_plan_roll_orders_by_running_guests_and_skips_idle_nodes() -> None:
    nodes = [
        facts("pve1", [vm(100, "pve1"), vm(101, "pve1")]),
        facts("pve2", [vm(200, "pve2")]),
        facts("pve3", [], pending=()),
    ]
    plan = plan_roll(
        nodes, ProxmoxUpdateSettings(), Preflight(), snapshot="moxflow-pre-update-20241120-103000"
    )
    assert [(n.node, n.skip) for n in plan.nodes] == [
        ("pve3", "nothing to upgrade"),
        ("pve2", None),
        ("pve1", None),
    ]
    pve2, pve1 = plan.nodes[1], plan.nodes[2]
    assert pve2.guests[0].target == "pve3"  # nothing upgraded yet: the idlest node
    assert {s.target for s in pve1.guests} == {"pve2"}  # upgraded first
    assert pve1.reboot is not None and pve1.reboot.reboot
    assert pve1.snapshot == "rpool/ROOT/pve-1@moxflow-pre-update-20241120-103000"
    assert len(pve1.returns) == 2


def test_plan_roll_keeps_the_inventory_order() -> None:
    nodes = [facts("pve1", []), facts("pve2", [vm(200, "pve2")])]
    plan = plan_roll(nodes, ProxmoxUpdateSettings(nodes=["pve2", "pve1"]), Preflight())
    assert [n.node for n in plan.nodes] == ["pve2", "pve1"]


def test_plan_roll_sends_guests_to_bystanders_of_the_same_or_a_newer_version() -> None:
    """--only pve1: pve2 and pve3 are not updated, but take guests when their version is at
    least pve1's; a bystander on an older version never does."""
    older = NodeFacts("pve2", "6.8.12-4-pve", versions={**PVE1, "pve-manager": "8.2.2"})
    same = NodeFacts("pve3", "6.8.12-4-pve", versions=PVE1)
    plan = plan_roll(
        [facts("pve1", [vm(100, "pve1"), ct(101, "pve1")])],
        ProxmoxUpdateSettings(),
        Preflight(),
        bystanders=[older, same],
    )
    assert [n.node for n in plan.nodes] == ["pve1"]  # bystanders are not planned
    assert [(s.action, s.target) for s in plan.nodes[0].guests] == [
        ("migrate", "pve3"),
        ("migrate", "pve3"),
    ]
    alone = plan_roll([facts("pve1", [vm(100, "pve1")])], ProxmoxUpdateSettings(), Preflight())
    assert [s.action for s in alone.nodes[0].guests] == ["shutdown"]  # nowhere to go


def test_dry_run_text() -> None:
    nodes = [facts("pve1", [vm(100, "pve1")]), facts("pve2", [], pending=())]
    ha = HaStatus(master="pve2")
    plan = plan_roll(
        nodes, ProxmoxUpdateSettings(), Preflight(warnings=("w",)), ha=ha, reboot="never"
    )
    lines = plan.describe()
    assert lines[0] == "Proxmox update: 1 of 2 nodes to update"
    assert lines[1] == "pre-flight passed; warnings: w"
    assert "1. pve2: skipped (nothing to upgrade)" in lines
    assert "2. pve1: 5 packages to upgrade" in lines
    assert "    pve-manager 8.2.4 → 8.2.7" in lines
    assert "  HA node maintenance: enabled during the update" in lines
    assert any(line.startswith("  reboot: no (reboot pending (reboot = never)") for line in lines)
    assert "  guest VM 100 (g100): migrate online pve1 → pve2" in lines


def test_no_snapshot_plans_none_and_says_so() -> None:
    nodes = [facts("pve1", [vm(100, "pve1")])]
    name = "moxflow-pre-update-20241120-103000"
    plan = plan_roll(nodes, ProxmoxUpdateSettings(), Preflight(), snapshot=name, no_snapshot=True)
    [pve1] = plan.nodes
    assert pve1.snapshot is None and pve1.no_snapshot
    assert "  snapshot: NONE (--no-snapshot: nothing to roll back to)" in plan.describe()
    taken = plan_roll(nodes, ProxmoxUpdateSettings(), Preflight(), snapshot=name)
    assert taken.nodes[0].snapshot == f"rpool/ROOT/pve-1@{name}"


def test_plan_roll_refuses_a_hostile_snapshot_name() -> None:
    with pytest.raises(UnsafeNameError):
        plan_roll([facts("pve1", [])], ProxmoxUpdateSettings(), Preflight(), snapshot="x;rm")


# --- verify --------------------------------------------------------------------------------


def test_verify_node() -> None:
    ok = verify_node("pve1", THREE, "6.8.12-5-pve", "6.8.12-5-pve", {"a.service"}, {"a.service"})
    assert ok.ok and str(ok) == "healthy"
    bad = verify_node(
        "pve3",
        ClusterStatus("homelab", False, (ClusterNode("pve3", False),)),
        "6.8.12-4-pve",
        "6.8.12-5-pve",
        set(),
        {"pve-ha-lrm.service"},
    )
    assert bad.reasons == (
        "pve3 is not online in the cluster",
        "the cluster is not quorate",
        "kernel 6.8.12-4-pve is running, expected 6.8.12-5-pve",
        "units failed since the update: pve-ha-lrm.service",
    )


def test_verify_guests() -> None:
    before = [vm(100, "pve1"), vm(101, "pve1", "stopped"), vm(102, "pve1")]
    assert verify_guests(before, [vm(100, "pve1"), vm(101, "pve1", "stopped"), vm(102, "pve1")]).ok
    verdict = verify_guests(before, [vm(100, "pve2"), vm(101, "pve1", "stopped")])
    assert verdict.reasons == (
        "guest 100 (g100) is on pve2, was on pve1",
        "guest 102 (g102) is gone",
    )
    assert verify_guests([vm(100, "pve1")], [vm(100, "pve1", "stopped")]).reasons == (
        "guest 100 (g100) is stopped, was running",
    )


# --- failure -------------------------------------------------------------------------------


def test_failure_next_steps() -> None:
    steps = failure_next_steps(
        "pve2",
        "rpool/ROOT/pve-1",
        "moxflow-pre-update-20241120-103000",
        "6.8.12-4-pve",
        upgraded=True,
    )
    joined = "\n".join(steps)
    assert (
        "`proxmox-boot-tool kernel pin 6.8.12-4-pve --next-boot` then `proxmox-boot-tool refresh`"
        in joined
    )
    assert "`zfs rollback -r rpool/ROOT/pve-1@moxflow-pre-update-20241120-103000`" in joined
    assert "rescue system" in joined
    assert "`ha-manager crm-command node-maintenance disable pve2`" in joined


def test_failure_next_steps_without_snapshot_or_maintenance() -> None:
    steps = failure_next_steps(
        "pve", "rpool/ROOT/pve-1", None, "6.8.12-4-pve", upgraded=True, maintenance=False
    )
    assert steps[2] == "no root snapshot was taken"
    assert not any("maintenance" in s for s in steps)


def test_failure_next_steps_before_the_upgrade_offer_no_kernel_pin() -> None:
    """The roll stopped before apt-get dist-upgrade ran (guests-leave failed): no package
    changed, so there is no previous kernel to boot and nothing to roll back."""
    steps = failure_next_steps(
        "pve2", "rpool/ROOT/pve-1", "moxflow-pre-update-20241120-103000", "6.8.12-4-pve",
        upgraded=False,
    )  # fmt: skip
    joined = "\n".join(steps)
    assert "proxmox-boot-tool" not in joined and "zfs rollback" not in joined
    assert (
        "no package was changed; the root snapshot "
        "rpool/ROOT/pve-1@moxflow-pre-update-20241120-103000 is kept"
    ) in joined


def test_failure_next_steps_name_each_guest_left_away_and_how_to_bring_it_back() -> None:
    away = [
        GuestStep(104, "web", "qemu", "migrate", "pve2", "pve3", "online"),
        GuestStep(105, "db", "lxc", "migrate", "pve2", "pve1", "restart"),
        GuestStep(107, "", "qemu", "migrate", "pve2", "pve1", "offline"),
        GuestStep(103, "gpu", "qemu", "shutdown", "pve2"),
        GuestStep(108, "ct", "lxc", "shutdown", "pve2"),
        GuestStep(100, "ha", "qemu", "ha", "pve2"),
    ]
    steps = failure_next_steps("pve2", "rpool/ROOT/pve-1", None, None, upgraded=False, away=away)
    assert steps[2:-1] == [
        "VM 100 (ha) was moved by HA node maintenance; it returns when maintenance is disabled",
        "VM 103 (gpu) was shut down; to start it again, on pve2: `qm start 103`",
        "VM 104 (web) was migrated to pve3; to bring it back, on pve3: "
        "`qm migrate 104 pve2 --online`",
        "CT 105 (db) was migrated to pve1; to bring it back, on pve1: "
        "`pct migrate 105 pve2 --restart`",
        "VM 107 was migrated to pve1; to bring it back, on pve1: `qm migrate 107 pve2`",
        "CT 108 (ct) was shut down; to start it again, on pve2: `pct start 108`",
    ]
    assert steps[-1].startswith("pve2 stays in HA maintenance")
    # out of maintenance (it never got there): no HA line
    calm = failure_next_steps(
        "pve2", "rpool/ROOT/pve-1", None, None, upgraded=False, maintenance=False, away=away
    )
    assert not any("HA" in s for s in calm)
