"""The lab's apt system through the wire: the HTTPS API with the lab's token and SSH with the
lab's keys (issue 13: rolling Proxmox host updates)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import requests

from labsim.client import LabClient, wait_until
from moxflow.errors import MoxflowError
from moxflow.ssh import SshRunner
from tests.conftest import LAB_TIME_SCALE


def _api(lab: LabClient, method: str, path: str, **params: Any) -> requests.Response:
    return requests.request(
        method,
        f"{lab.api_url}{path}",
        headers=lab.auth_header,
        verify=str(lab.ca_file),
        timeout=10,
        data=params if method != "GET" else None,
        params=params if method == "GET" else None,
    )


def _data(lab: LabClient, method: str, path: str, **params: Any) -> Any:
    resp = _api(lab, method, path, **params)
    assert resp.status_code == 200, (resp.status_code, resp.reason)
    return resp.json()["data"]


def _ssh(lab: LabClient, host: str, *argv: str) -> tuple[int, str, str]:
    runner = SshRunner(
        host,
        "127.0.0.1",
        int(lab.info["hosts"][host]["port"]),
        key_file=lab.dir / "id_ed25519",
        known_hosts=lab.dir / "known_hosts",
        connect_timeout=5.0,
    )
    with runner as r:
        result = r.run(list(argv), check=False)
    return result.exit_code, result.stdout, result.stderr


def _task(lab: LabClient, upid: str) -> dict[str, Any]:
    node = upid.split(":")[1]

    def done() -> dict[str, Any] | None:
        st = _data(lab, "GET", f"/nodes/{node}/tasks/{upid}/status")
        return st if st["status"] == "stopped" else None

    result: dict[str, Any] = wait_until(done)
    return result


def _apt(lab: LabClient, node: str) -> dict[str, Any]:
    result: dict[str, Any] = lab.state()["hosts"][node]["apt"]
    return result


def test_apt_update_task_shows_the_new_kernel_without_old_version(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    before = {p["Package"] for p in _data(lab, "GET", "/nodes/pve1/apt/update")}
    assert before == {"openssl", "pve-manager"}
    upid = _data(lab, "POST", "/nodes/pve1/apt/update")
    assert ":aptupdate:" in upid
    assert _task(lab, upid)["exitstatus"] == "OK"
    after = {p["Package"]: p for p in _data(lab, "GET", "/nodes/pve1/apt/update")}
    kernel = after["proxmox-kernel-6.14.11-5-pve-signed"]
    assert "OldVersion" not in kernel and kernel["Version"] == "6.14.11-5"
    assert after["pve-manager"]["OldVersion"] == "9.1.1"
    assert _data(lab, "GET", "/nodes/pve2/apt/update") == []


def test_enterprise_repo_fails_apt_update_both_ways(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    lab.control("apt_node", node="pve1", enterprise_repo="on")
    upid = _data(lab, "POST", "/nodes/pve1/apt/update")
    assert _task(lab, upid)["exitstatus"] == "command 'apt-get update' failed: exit code 100"
    rc, _, err = _ssh(lab, "pve1", "apt-get", "update")
    assert rc == 100 and "401  Unauthorized" in err
    assert "proxmox-kernel-6.14.11-5-pve-signed" not in _apt(lab, "pve1")["pending"]


def test_versions_order_and_running_kernel(fresh_lab: LabClient) -> None:
    items = _data(fresh_lab, "GET", "/nodes/pve1/apt/versions")
    names = [i["Package"] for i in items]
    assert names[:2] == ["proxmox-ve", "pve-manager"]
    assert items[0]["RunningKernel"] == "6.14.11-4-pve"
    assert items[1]["ManagerVersion"] == "9.1.1"
    kernels = [n for n in names if n.startswith("proxmox-kernel-")]
    assert names[2 : 2 + len(kernels)] == kernels
    rest = names[2 + len(kernels) :]
    assert rest == sorted(rest) and "openssl" in rest
    assert all(i["CurrentState"] == "Installed" for i in items)


def test_dist_upgrade_over_ssh_installs_the_kernel_and_reboot_runs_it(
    fresh_lab: LabClient,
) -> None:
    lab = fresh_lab
    assert _ssh(lab, "pve1", "apt-get", "update")[0] == 0
    rc, sim, _ = _ssh(lab, "pve1", "apt-get", "-qq", "-s", "dist-upgrade")
    assert rc == 0
    assert "Inst pve-manager [9.1.1] (9.1.2 " in sim
    assert "Inst proxmox-kernel-6.14.11-5-pve-signed (6.14.11-5 " in sim
    rc, out, err = _ssh(
        lab, "pve1", "sh", "-c",
        "DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confdef "
        "-o Dpkg::Options::=--force-confold dist-upgrade",
    )  # fmt: skip
    assert rc == 0, err
    assert "Unpacking pve-manager (9.1.2) over (9.1.1) ..." in out
    assert "Setting up proxmox-kernel-6.14.11-5-pve-signed (6.14.11-5) ..." in out
    assert _ssh(lab, "pve1", "apt-get", "-qq", "-s", "dist-upgrade")[1] == ""
    assert _ssh(lab, "pve1", "dpkg", "--audit")[1] == ""
    listed = _ssh(lab, "pve1", "proxmox-boot-tool", "kernel", "list")[1]
    assert listed.endswith("Automatically selected kernels:\n6.14.11-4-pve\n6.14.11-5-pve\n")
    assert "(running kernel: 6.14.11-4-pve)" in _ssh(lab, "pve1", "pveversion")[1]
    state = _apt(lab, "pve1")
    assert state["kernel_next_boot"] == "6.14.11-5-pve" and state["pending"] == {}

    boot_id = state["boot_id"]
    asked = time.time()
    assert _api(lab, "POST", "/nodes/pve1/status", command="reboot").json() == {"data": None}
    wait_until(lambda: _api(lab, "GET", "/nodes/pve1/status").status_code == 595)
    assert lab.state()["hosts"]["pve1"]["apt"]["status"] == "offline"
    assert _data(lab, "GET", "/cluster/status")[0]["quorate"] == 1  # the QDevice's vote
    wait_until(lambda: _api(lab, "GET", "/nodes/pve1/status").status_code == 200)
    status = _data(lab, "GET", "/nodes/pve1/status")
    assert status["current-kernel"]["release"] == "6.14.11-5-pve"
    assert status["uptime"] <= time.time() - asked + 1
    after = _apt(lab, "pve1")
    assert after["boot_id"] != boot_id and after["reboots"] == 1
    assert "(running kernel: 6.14.11-5-pve)" in _ssh(lab, "pve1", "pveversion")[1]


def test_broken_upgrade_leaves_half_configured_packages(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    lab.control("apt_node", node="pve1", break_upgrade="on")
    rc, _, err = _ssh(lab, "pve1", "apt-get", "-y", "dist-upgrade")
    assert rc == 100 and "returned an error code (1)" in err
    audit = _ssh(lab, "pve1", "dpkg", "--audit")[1]
    assert "only half configured" in audit and "pve-manager" in audit
    rc, _, err = _ssh(lab, "pve1", "apt-get", "-y", "dist-upgrade")
    assert rc == 100 and "dpkg --configure -a" in err
    assert _ssh(lab, "pve1", "dpkg", "--configure", "-a")[0] == 0
    assert _ssh(lab, "pve1", "dpkg", "--audit")[1] == ""
    assert _apt(lab, "pve1")["half_configured"] == []


def test_an_upgrade_dies_with_its_ssh_session_leaving_dpkg_to_configure(
    fresh_lab: LabClient,
) -> None:
    """As apt-get does on SIGHUP: the client gone (here: it gives up waiting and closes the
    session), the upgrade stops at once with every package unpacked and none configured;
    ``dpkg --configure -a`` (with the options the upgrade uses) finishes them."""
    lab = fresh_lab
    lab.control("apt_node", node="pve1", upgrade_seconds=2400.0)  # 60 s of real time
    runner = SshRunner(
        "pve1",
        "127.0.0.1",
        int(lab.info["hosts"]["pve1"]["port"]),
        key_file=lab.dir / "id_ed25519",
        known_hosts=lab.dir / "known_hosts",
        connect_timeout=5.0,
    )
    started = time.monotonic()
    with runner as r, contextlib.suppress(MoxflowError):
        r.run(["apt-get", "-y", "dist-upgrade"], timeout=0.5, check=False)
    wait_until(lambda: bool(_apt(lab, "pve1")["half_configured"]), 10)
    assert time.monotonic() - started < 30  # stopped, not run to its end
    assert "only half configured" in _ssh(lab, "pve1", "dpkg", "--audit")[1]
    assert "dpkg --configure -a" in _ssh(lab, "pve1", "apt-get", "-y", "dist-upgrade")[2]
    assert _ssh(lab, "pve1", "dpkg", "--force-confold", "--configure", "-a")[0] == 0
    assert _apt(lab, "pve1")["half_configured"] == []


def test_held_package_and_tools_only_on_nodes(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    lab.control("apt_node", node="pve1", hold="pve-manager")
    assert _ssh(lab, "pve1", "apt-mark", "showhold")[1] == "pve-manager\n"
    assert "Inst pve-manager" not in _ssh(lab, "pve1", "apt-get", "-qq", "-s", "dist-upgrade")[1]
    assert _ssh(lab, "nas", "apt-mark", "showhold")[0] == 127
    rc, out, _ = _ssh(lab, "pve2", "systemctl", "is-active", "pve-cluster", "pveproxy",
                      "pvedaemon", "pve-ha-lrm")  # fmt: skip
    assert (rc, out) == (0, "active\nactive\nactive\nactive\n")
    failed = ("systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager")
    assert _ssh(lab, "pve2", *failed) == (0, "", "")
    assert _ssh(lab, "pve1", "zfs", "snapshot", "rpool/ROOT/pve-1@pre-upgrade")[0] == 0
    assert "rpool/ROOT/pve-1@pre-upgrade" in _ssh(lab, "pve1", "zfs", "list", "-t", "snapshot")[1]
    assert _ssh(lab, "pve2", "zfs", "snapshot", "rpool/ROOT/pve-1@pre-upgrade")[0] == 0


def test_node_lingers_after_reboot_and_may_never_come_back(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    lab.control("apt_node", node="pve2", linger=20.0, never_back="on")  # 20 s × 0.025
    assert _data(lab, "POST", "/nodes/pve2/status", command="reboot") is None
    assert _api(lab, "GET", "/nodes/pve2/status").status_code == 200  # still answering
    assert _ssh(lab, "pve2", "pveversion")[0] == 0
    wait_until(lambda: _api(lab, "GET", "/nodes/pve2/status").status_code == 595)
    time.sleep(lab.state()["durations"]["reboot"] * lab.state()["time_scale"] * 2)
    assert _api(lab, "GET", "/nodes/pve2/status").status_code == 595
    lab.control("qdevice", state="absent")
    assert _data(lab, "GET", "/cluster/status")[0]["quorate"] == 0


def test_maintenance_moves_ha_services_and_back(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    assert (
        _data(lab, "GET", "/cluster/ha/status/manager_status")["manager_status"]["service_status"][
            "vm:104"
        ]["node"]
        == "pve2"
    )
    assert (
        _ssh(lab, "pve1", "ha-manager", "crm-command", "node-maintenance", "enable", "pve2")[0] == 0
    )

    def lrm_mode() -> str:
        st = _data(lab, "GET", "/cluster/ha/status/manager_status")
        mode: str = st["lrm_status"]["pve2"]["mode"]
        return mode

    assert lrm_mode() == "active"  # only queued
    wait_until(lambda: lrm_mode() == "maintenance")
    wait_until(lambda: lab.guest(104)["node"] == "pve1")
    st = _data(lab, "GET", "/cluster/ha/status/manager_status")
    assert st["manager_status"]["node_request"] == {"pve2": {"maintenance": 1}}
    _ssh(lab, "pve1", "ha-manager", "crm-command", "node-maintenance", "disable", "pve2")
    wait_until(lambda: lab.guest(104)["node"] == "pve2")
    assert lrm_mode() == "active"


def test_no_ha_resources_means_empty_manager_status(fresh_lab: LabClient) -> None:
    fresh_lab.set_guest(104, hastate=None)
    assert _data(fresh_lab, "GET", "/cluster/ha/status/manager_status") == {}


def test_migration_rules(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    resp = _api(lab, "POST", "/nodes/pve1/qemu/101/migrate", target="pve2")
    assert (resp.status_code, resp.reason) == (500, "can't migrate running VM without --online")
    pre = _data(lab, "GET", "/nodes/pve2/qemu/103/migrate")
    assert pre["local_resources"] == ["hostpci0"] and pre["allowed_nodes"] == ["pve1"]
    assert pre["local_disks"][0]["volid"] == "local-zfs:vm-103-disk-0"
    upid = _data(lab, "POST", "/nodes/pve2/qemu/103/migrate", target="pve1")
    task = _task(lab, upid)
    assert task["exitstatus"] == "migration aborted"
    upid = _data(lab, "POST", "/nodes/pve1/qemu/101/migrate", target="pve2", online=1,
                 **{"with-local-disks": 1})  # fmt: skip
    assert ":qmigrate:101:" in upid and lab.guest(101)["lock"] == "migrate"
    assert _task(lab, upid)["exitstatus"] == "OK"
    g = lab.guest(101)
    assert (g["node"], g["lock"], g["status"]) == ("pve2", None, "running")
    upid = _data(lab, "POST", "/nodes/pve2/qemu/104/migrate", target="pve1", online=1)
    assert ":hamigrate:104:" in upid and _task(lab, upid)["exitstatus"] == "OK"
    assert lab.guest(104)["node"] == "pve2"  # the move happens later
    wait_until(lambda: lab.guest(104)["node"] == "pve1")
    upid = _data(lab, "POST", "/nodes/pve1/lxc/100/migrate", target="pve2")
    assert ":vzmigrate:100:" in upid and _task(lab, upid)["exitstatus"] == "migration aborted"
    upid = _data(lab, "POST", "/nodes/pve1/lxc/100/migrate", target="pve2", restart=1,
                 **{"target-storage": "local-zfs"})  # fmt: skip
    assert _task(lab, upid)["exitstatus"] == "OK"
    assert (lab.guest(100)["node"], lab.guest(100)["status"]) == ("pve2", "running")


def test_apt_pending_control_and_state(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    out = lab.control("apt_pending", node="pve2", kernel="6.14.11-6-pve", refresh=True)
    assert out["pending"]["proxmox-kernel-6.14.11-6-pve-signed"] == "6.14.11-6"
    names = {p["Package"] for p in _data(lab, "GET", "/nodes/pve2/apt/update")}
    assert "proxmox-kernel-6.14.11-6-pve-signed" in names
    state = lab.state()
    assert state["qdevice"] is True and state["quorate"] is True
    assert state["ha"]["maintenance"] == []


def test_boot_starts_onboot_guests_and_a_running_ct_refuses_to_start(
    fresh_lab: LabClient,
) -> None:
    """pve-guests at boot starts every onboot=1 guest of the node, stopped before or not;
    starting a running container is refused at once, a running VM's start task fails."""
    lab = fresh_lab
    lab.set_guest(105, onboot=1)  # a stopped container on pve2
    assert _data(lab, "GET", "/nodes/pve2/lxc/105/config")["onboot"] == "1"
    assert _data(lab, "POST", "/nodes/pve2/status", command="reboot") is None
    wait_until(lambda: lab.state()["hosts"]["pve2"]["apt"]["reboots"] == 1)
    assert lab.guest(105)["status"] == "running"
    assert lab.guest(102)["status"] == "stopped"  # running before, no onboot: stays down
    resp = _api(lab, "POST", "/nodes/pve2/lxc/105/status/start")
    assert (resp.status_code, resp.reason) == (500, "CT 105 already running")
    upid = _data(lab, "POST", "/nodes/pve1/qemu/101/status/start")
    assert _task(lab, upid)["exitstatus"] == "VM 101 already running"


def test_services_activate_after_ssh_and_a_late_unit_stays_activating(
    fresh_lab: LabClient,
) -> None:
    """After a boot SSH and pve-cluster answer first; pveproxy, pvedaemon and pve-ha-lrm
    activate a while later (the ``services`` duration). A node's ``late_unit`` stays
    activating after its next boot (or the restart an upgrade of its package makes)."""
    lab = fresh_lab
    units = ("pve-cluster", "pveproxy", "pvedaemon", "pve-ha-lrm")
    lab.set_time_scale(0.2)  # the services take 0.8 s after the boot: seen from here
    try:
        assert _data(lab, "POST", "/nodes/pve2/status", command="reboot") is None
        wait_until(lambda: _apt(lab, "pve2")["reboots"] == 1, timeout=20)
        rc, out, _ = _ssh(lab, "pve2", "systemctl", "is-active", *units)
        assert rc == 3 and out.splitlines()[0] == "active" and "activating" in out
        wait_until(lambda: _ssh(lab, "pve2", "systemctl", "is-active", *units)[0] == 0)
    finally:
        lab.set_time_scale(LAB_TIME_SCALE)
    lab.control("apt_node", node="pve1", late_unit="pve-ha-lrm")
    assert _data(lab, "POST", "/nodes/pve1/status", command="reboot") is None
    wait_until(lambda: _apt(lab, "pve1")["reboots"] == 1)
    wait_until(lambda: _apt(lab, "pve1")["units"]["pveproxy"] == "active")
    assert _ssh(lab, "pve1", "systemctl", "is-active", "pve-ha-lrm")[1] == "activating\n"
    assert "pve-ha-lrm.service loaded activating start" in _ssh(lab, "pve1", "systemctl")[1]
    lab.control("apt_node", node="pve1", late_unit="")
    assert _ssh(lab, "pve1", "systemctl", "is-active", "pve-ha-lrm") == (0, "active\n", "")


def test_the_manager_status_is_what_the_last_master_wrote(fresh_lab: LabClient) -> None:
    """While pve1's CRM is master the status is current; with every pve-ha-crm stopped it
    keeps its master and ages (in lab seconds: 30 s are 0.75 s here) and maintenance
    requests wait; once the CRM runs again they are applied."""
    lab = fresh_lab

    def status() -> dict[str, Any]:
        ms: dict[str, Any] = _data(lab, "GET", "/cluster/ha/status/manager_status")[
            "manager_status"
        ]
        return ms

    assert status()["master_node"] == "pve1" and time.time() - status()["timestamp"] < 2
    lab.control("ha_crm", state="stopped")
    wait_until(lambda: time.time() - status()["timestamp"] > 31)
    assert status()["master_node"] == "pve1"
    assert "old timestamp - dead?" in _ssh(lab, "pve2", "ha-manager", "status")[1]
    current = {r["id"]: r for r in _data(lab, "GET", "/cluster/ha/status/current")}
    assert "old timestamp - dead?" in current["master"]["status"]
    _ssh(lab, "pve1", "ha-manager", "crm-command", "node-maintenance", "enable", "pve2")
    time.sleep(lab.state()["durations"]["maintenance"] * LAB_TIME_SCALE * 4)
    assert lab.state()["ha"]["maintenance"] == []  # no master: only queued
    lab.control("ha_crm", state="running")
    assert time.time() - status()["timestamp"] < 2
    wait_until(lambda: lab.state()["ha"]["maintenance"] == ["pve2"])


def test_a_dead_masters_status_stays_until_another_crm_takes_over(fresh_lab: LabClient) -> None:
    lab = fresh_lab
    lab.control("apt_node", node="pve1", never_back="on")
    assert _data(lab, "POST", "/nodes/pve1/status", command="reboot") is None
    wait_until(lambda: _apt(lab, "pve1")["status"] == "offline")
    ms = _data(lab, "GET", "/cluster/ha/status/manager_status")["manager_status"]
    assert ms["master_node"] == "pve1"  # written by pve1 before it went down
    wait_until(lambda: lab.state()["ha"]["master"] == "pve2")  # its lock expired
    ms = _data(lab, "GET", "/cluster/ha/status/manager_status")["manager_status"]
    assert ms["master_node"] == "pve2" and time.time() - ms["timestamp"] < 2
