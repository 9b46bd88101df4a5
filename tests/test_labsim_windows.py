"""The lab's guest agent and Windows VM (``labsim/pve/agent/``), through the HTTPS API with
moxflow's client and its core (``moxflow.windows``): the exec/exec-status contract, the
scripts it accepts, update rounds with a reboot, provisioning, faults, snapshots."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from blocks.proxmox import proxmox_client
from labsim.client import LabClient, wait_until
from moxflow import windows
from moxflow.errors import ProxmoxError
from moxflow.inventory import load_inventory
from moxflow.proxmox import ProxmoxClient

NODE, VMID = "pve2", 103


@pytest.fixture
def win(fresh_lab: LabClient, lab_inventory: Path) -> ProxmoxClient:
    """A client of the lab with the Windows VM running and its agent up."""
    fresh_lab.set_guest(VMID, status="running")
    client = proxmox_client(load_inventory(lab_inventory))
    wait_until(lambda: _answers(client), 10)
    return client


def _answers(client: ProxmoxClient) -> bool:
    try:
        client.agent_ping(NODE, VMID)
    except ProxmoxError:
        return False
    return True


def _run(client: ProxmoxClient, script: str, data: dict[str, Any] | None = None) -> Any:
    """Run ``script``; its final exec-status (read once) as the core parses it."""
    req = windows.exec_request(script, data)
    pid = client.agent_exec(NODE, VMID, req.command, req.input_data)
    final: list[windows.ExecStatus] = []

    def ended() -> bool:
        status = windows.parse_exec_status(client.agent_exec_status(NODE, VMID, pid))
        if status.exited:
            final.append(status)
        return status.exited

    wait_until(ended, 20)
    return final[0], pid


def _windows(lab: LabClient) -> dict[str, Any]:
    return dict(lab.state()["windows"][str(VMID)])


def test_osinfo_and_a_finished_process_is_read_once(win: ProxmoxClient) -> None:
    info = windows.parse_osinfo(win.agent_get_osinfo(NODE, VMID))
    assert (info.is_windows, info.build, info.version) == (True, 22631, "Windows 11")
    status, pid = _run(win, "reboot-pending.ps1")
    assert status.ok and not status.out_truncated
    assert windows.parse_reboot_pending(windows.script_output(status, "x")).pending is False
    with pytest.raises(ProxmoxError, match="Invalid parameter 'pid'"):
        win.agent_exec_status(NODE, VMID, pid)


def test_two_rounds_with_a_reboot(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    status, _ = _run(win, "list-updates.ps1", {"drivers": False})
    scan = windows.parse_update_scan(windows.script_output(status, "list-updates.ps1"))
    assert [u.kb for u in scan.updates] == ["KB5048685", "KB890830", "KB2267602"]
    plan = windows.plan_round(scan, round_no=1, max_rounds=3)
    status, _ = _run(win, "install-updates.ps1", {"ids": [u.id for u in plan.install]})
    run = windows.parse_install(windows.script_output(status, "install-updates.ps1"))
    assert (run.result_code, run.reboot_required, run.failed) == (2, True, ())
    state = _windows(fresh_lab)
    assert state["installed"] == ["KB5048685", "KB890830", "KB2267602"]
    assert state["reboot_pending"] is True and state["visible"] == []

    status, _ = _run(win, "install-updates.ps1", {"ids": [u.id for u in plan.install]})
    assert status.exitcode == 3  # a reboot comes first
    upid = win.reboot_vm(NODE, VMID)
    win.wait_task(upid, timeout=20)
    with pytest.raises(ProxmoxError, match="QEMU guest agent is not running"):
        win.agent_ping(NODE, VMID)
    wait_until(lambda: _answers(win), 20)

    status, _ = _run(win, "list-updates.ps1", {})
    scan = windows.parse_update_scan(windows.script_output(status, "list-updates.ps1"))
    assert [u.kb for u in scan.updates] == ["KB5049624"]  # round 2 appears after the reboot
    plan = windows.plan_round(scan, round_no=2, max_rounds=2)
    status, _ = _run(win, "install-updates.ps1", {"ids": [u.id for u in plan.install]})
    assert windows.parse_install(windows.script_output(status, "x")).result_code == 2
    assert _windows(fresh_lab)["pending"] == []


def test_a_failing_update_and_the_rollback(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    win.wait_task(win.create_snapshot(win.guest(VMID), "pre-win"), timeout=20)
    fresh_lab.control("windows", vmid=VMID, fail="KB890830=0x80240022")
    status, _ = _run(win, "list-updates.ps1", {})
    scan = windows.parse_update_scan(windows.script_output(status, "x"))
    status, _ = _run(win, "install-updates.ps1", {"ids": [u.id for u in scan.updates]})
    run = windows.parse_install(windows.script_output(status, "x"))
    assert run.result_code == 3
    assert [(u.kb, u.result_code, u.hresult) for u in run.failed] == [("KB890830", 4, "0x80240022")]
    problems = windows.verdict(agent_ok=True, installs=[run], reboot=None).problems
    assert problems == ("KB890830 failed (result code 4, 0x80240022)",)
    assert "KB890830" in [u["kb"] for u in _windows(fresh_lab)["pending"]]

    upid = win.rollback_snapshot(win.guest(VMID), "pre-win", start=True)
    win.wait_task(upid, timeout=20)
    state = _windows(fresh_lab)
    assert state["installed"] == [] and state["reboot_pending"] is False
    assert len(state["pending"]) == 4
    wait_until(lambda: _answers(win), 20)


def test_never_back_after_reboot_until_rollback(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    win.wait_task(win.create_snapshot(win.guest(VMID), "pre-win"), timeout=20)
    fresh_lab.control("windows", vmid=VMID, never_back="on")
    win.wait_task(win.reboot_vm(NODE, VMID), timeout=20)
    time.sleep(0.5)
    assert not _answers(win)
    win.wait_task(win.rollback_snapshot(win.guest(VMID), "pre-win", start=True), timeout=20)
    wait_until(lambda: _answers(win), 20)


def test_an_install_nobody_waits_for_goes_on_and_keeps_the_installer_busy(
    win: ProxmoxClient, fresh_lab: LabClient
) -> None:
    """The program that started an install is gone (nobody asks for its end): Windows goes
    on installing; a second install meanwhile finds the installer busy and changes nothing;
    the first one's updates are installed once."""
    fresh_lab.control("windows", vmid=VMID, install_seconds=40)  # 1 s each, scaled
    status, _ = _run(win, "list-updates.ps1", {})
    ids = [u.id for u in windows.parse_update_scan(windows.script_output(status, "x")).updates]
    req = windows.exec_request("install-updates.ps1", {"ids": ids})
    first = win.agent_exec(NODE, VMID, req.command, req.input_data)  # never asked again
    assert _windows(fresh_lab)["installing"] == ["KB5048685", "KB890830", "KB2267602"]
    status, _ = _run(win, "install-updates.ps1", {"ids": ids})
    assert status.exitcode == 5
    assert windows.parse_install(windows.script_output(status, "x")).error == "installer-busy"
    wait_until(lambda: _windows(fresh_lab)["installing"] == [], 20)
    state = _windows(fresh_lab)
    assert state["installed"] == ["KB5048685", "KB890830", "KB2267602"]
    assert state["reboot_pending"] is True
    ends = {e["pid"]: e["exitcode"] for e in state["execs"] if e["script"] == "install-updates.ps1"}
    assert ends[first] == 0 and sorted(ends.values()) == [0, 5]


def test_a_slow_boot(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    fresh_lab.control("windows", vmid=VMID, boot_seconds=40)  # 1 s, scaled
    win.wait_task(win.reboot_vm(NODE, VMID), timeout=20)
    assert not _answers(win)
    time.sleep(0.5)
    assert not _answers(win)
    wait_until(lambda: _answers(win), 20)


def test_agent_faults_and_a_stopped_vm(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    fresh_lab.control("windows", vmid=VMID, hang="on")
    with pytest.raises(ProxmoxError, match="qga command 'guest-ping' failed - got timeout"):
        win.agent_ping(NODE, VMID)
    fresh_lab.control("windows", vmid=VMID, hang="off", truncate=10)
    status, _ = _run(win, "reboot-pending.ps1")
    assert status.out_truncated and len(status.out) == 10
    with pytest.raises(windows.ParseError, match="truncated"):
        windows.script_output(status, "reboot-pending.ps1")
    fresh_lab.set_guest(VMID, status="stopped")
    with pytest.raises(ProxmoxError, match="VM 103 is not running"):
        win.agent_ping(NODE, VMID)


def test_a_ram_snapshot_of_a_passthrough_vm_fails(win: ProxmoxClient) -> None:
    config = {"hostpci0": "0000:01:00.0,pcie=1,x-vga=1"}
    assert windows.choose_snapshot(config, ram=True, consistent=False).kind == "disk-live"
    with pytest.raises(ProxmoxError, match="VFIO"):
        win.wait_task(win.create_snapshot(win.guest(VMID), "with-ram", vmstate=True), timeout=20)


def test_only_the_repo_scripts_run(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    text = windows.script_text("list-updates.ps1") + "\nInvoke-Expression $in.x"
    forged = base64.b64encode(text.encode("utf-16-le")).decode()
    pid = win.agent_exec(NODE, VMID, [*windows.POWERSHELL, "-EncodedCommand", forged], "{}")
    wait_until(lambda: win.agent_exec_status(NODE, VMID, pid)["exited"] == 1, 5)
    record = _windows(fresh_lab)["execs"][-1]
    assert record["script"] is None and "byte for byte" in record["rejected"]
    assert _windows(fresh_lab)["installed"] == []


HOSTILE = "a'b\"c $(Remove-Item C:\\ -Recurse) `whoami`; exit 0\nnext line"


def test_a_hostile_value_reaches_the_guest_as_data(
    win: ProxmoxClient, fresh_lab: LabClient
) -> None:
    xml = "<?xml version='1.0'?><Task><Description>" + HOSTILE + "</Description></Task>"
    status, _ = _run(win, "scheduled-task.ps1", {"name": HOSTILE, "xml": xml})
    items = windows.parse_items(windows.script_output(status, "x"), "scheduled-task.ps1")
    assert [(i.item, i.status) for i in items] == [(f"task:{HOSTILE}", "installed")]
    record = _windows(fresh_lab)["execs"][-1]
    assert record["script"] == "scheduled-task.ps1" and record["rejected"] is None
    assert record["data"] == {"name": HOSTILE, "xml": xml}
    sent = windows.exec_request("scheduled-task.ps1", {"name": HOSTILE, "xml": xml})
    decoded = base64.b64decode(sent.command[-1]).decode("utf-16-le")
    assert decoded == (windows.SCRIPTS_DIR / "scheduled-task.ps1").read_text(encoding="utf-8")
    assert HOSTILE not in " ".join(sent.command)


def test_provisioning_twice_changes_nothing(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    fresh_lab.control("windows", vmid=VMID, fail="app:999")
    steam = {"steamcmd": "C:\\steamcmd\\steamcmd.exe", "install_dir": "D:\\Games"}
    rust = {
        "cargo_home": "C:\\Rust\\cargo",
        "rustup_home": "C:\\Rust\\rustup",
        "default_toolchain": "stable",
        "toolchains": ["nightly"],
        "components": ["clippy"],
    }

    def provision() -> list[tuple[str, str]]:
        out: list[windows.ItemOutcome] = []
        for script, data in [
            ("steamcmd.ps1", {"steamcmd": steam["steamcmd"]}),
            ("steam-app.ps1", {**steam, "app_id": 999, "username": "u", "password": "s3cr3t"}),
            ("steam-app.ps1", {**steam, "app_id": 740}),
            ("rustup.ps1", rust),
        ]:
            status, _ = _run(win, script, data)
            out += windows.parse_items(windows.script_output(status, script), script)
        return [(i.item, i.status) for i in out]

    first = provision()
    assert first == [
        ("steamcmd", "installed"),
        ("steam:999", "failed"),
        ("steam:740", "installed"),
        ("rustup", "installed"),
        ("toolchain:stable", "installed"),  # with rustup
        ("toolchain:nightly", "installed"),
        ("default:stable", "installed"),
        ("component:clippy", "installed"),
    ]
    second = provision()
    assert [s for _, s in second] == ["present", "failed", *["present"] * 6]
    state = _windows(fresh_lab)
    assert state["apps"] == {"740": "D:\\Games"}
    assert "s3cr3t" not in str(state["execs"])


def test_provision_facts_see_what_the_scripts_did(win: ProxmoxClient, fresh_lab: LabClient) -> None:
    from moxflow import windows_provision as wp
    from moxflow.inventory import WindowsVm

    vm = WindowsVm.model_validate(
        {
            "steam": {"apps": [{"app_id": 740}]},
            "rust": {"toolchains": ["nightly"], "components": ["clippy", "rust-src"]},
            "scheduled_tasks": [{"name": "Backup", "xml": "b.xml"}],
        }
    )
    xml = {"Backup": "<Task/>"}

    def facts() -> wp.ProvisionFacts:
        status, _ = _run(win, "provision-facts.ps1", wp.facts_request(vm))
        return wp.parse_provision_facts(windows.script_output(status, "provision-facts.ps1"))

    before = wp.plan_units(vm, xml, facts())
    assert {i.action for u in before for i in u.items} == {"install"}
    for unit in before:
        status, _ = _run(win, unit.script, dict(unit.data))
        reported = windows.parse_items(windows.script_output(status, unit.script), unit.script)
        assert {o.status for o in wp.merge_items(unit, reported)} == {"installed"}
    after = wp.plan_units(vm, xml, facts())
    assert {i.action for u in after for i in u.items} == {"present"}
    state = _windows(fresh_lab)
    assert state["toolchains"]["stable"] == ["cargo", "rust-std", "rustc", "clippy", "rust-src"]
    assert all(e["rejected"] is None for e in state["execs"])


def test_file_write_replaces_and_file_read_has_its_limits(
    win: ProxmoxClient, fresh_lab: LabClient
) -> None:
    """file-write opens ``wb`` (a second write replaces the file, no append), its content is
    capped at 61440 characters by the schema (400), ``encode=0`` takes base64; file-read
    pages by ``offset``/``count`` and says ``truncated``; a missing file is PVE's 500."""
    from tests.test_labsim_api import Api

    api = Api(fresh_lab)
    base = f"/nodes/{NODE}/qemu/{VMID}/agent"
    path = r"C:\ProgramData\moxflow\result.json"
    assert api.post(f"{base}/file-write", file=path, content="first, longer").status_code == 200
    assert api.post(f"{base}/file-write", file=path, content="second").status_code == 200
    read = api.data(api.get(f"{base}/file-read", file=path.upper()))
    assert read == {"content": "second", "bytes-read": 6}
    part = api.data(api.get(f"{base}/file-read", file=path, offset=2, count=3))
    assert part == {"content": "con", "bytes-read": 3, "truncated": True}
    raw = base64.b64encode(b"\x00\xffbinary").decode()
    assert api.post(f"{base}/file-write", file=path, content=raw, encode=0).status_code == 200
    encoded = api.data(api.get(f"{base}/file-read", file=path, decode=0))
    assert base64.b64decode(encoded["content"]) == b"\x00\xffbinary"
    assert api.post(f"{base}/file-write", file=path, content="x" * 61441).status_code == 400
    assert api.post(f"{base}/file-write", file=path, content="x" * 61440).status_code == 200
    missing = api.get(f"{base}/file-read", file=r"C:\nothing.txt")
    assert missing.status_code == 500 and "cannot find the file" in missing.reason
    fresh_lab.control("windows", vmid=VMID, agent_off="on")
    assert api.get(f"{base}/file-read", file=path).status_code == 500
    api.close()


def test_a_bound_the_schema_holds_as_a_string_is_compared_as_a_number() -> None:
    """file-read's ``count`` has ``"maximum": "16777216"`` (a string) in the schema dump."""
    from labsim import schema

    prop = schema.endpoint("GET", "/nodes/{node}/qemu/{vmid}/agent/file-read")
    assert prop is not None
    count = prop["parameters"]["properties"]["count"]
    assert schema.check_value(count, "16777216") is None
    assert schema.check_value(count, "16777217") == "value must have a maximum value of 16777216"
