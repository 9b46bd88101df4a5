"""End to end: flows.windows_provision against the lab's Windows VM (103 ``win11-gaming``, on
pve2, with a GPU passed through). The lab is the fake: its guest agent accepts only moxflow's
own scripts, byte for byte, and acts on the JSON they get on stdin against a simulated
Windows (steamcmd, Steam apps, rustup's toolchains, scheduled tasks). Each test asserts the
lab's state afterwards, the report, and the run's task runs read back from the Prefect
server."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from blocks.proxmox import proxmox_client
from flows.jobs.windows_provision import windows_provision
from labsim.client import LabClient, wait_until
from moxflow import windows
from moxflow.errors import ProxmoxError, RunFailed
from moxflow.inventory import load_inventory
from moxflow.report import Outcome, RunReport
from tasks.targets import guest_target, hold
from tests.flows.conftest import guest_snapshots, step_runs, subflow_runs
from tests.flows.test_conformance import check_requests

VMID, NODE = 103, "pve2"
VM = "103 (win11-gaming)"
PASSWORD = "Pa55'w $(whoami) `id`; x"  # steamcmd takes it: no '"' and no line break
HOSTILE_DIR = "D:\\Games\\it's $(Remove-Item -Recurse D) `whoami`; exit 0"
TASK_XML = (
    '<?xml version="1.0" encoding="UTF-16"?>\n'
    '<Task version="1.4" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">\n'
    '  <Actions Context="Author"><Exec><Command>powershell.exe</Command>\n'
    "    <Arguments>-NoProfile -Command \"Copy-Item 'D:\\Saves' $(Get-Date -f yyyyMMdd); "
    '`whoami`"</Arguments>\n'
    "  </Exec></Actions>\n"
    "</Task>\n"
)
EVERY_ITEM = [
    "steamcmd",
    "steam:740",
    "steam:730",
    "rustup",
    "toolchain:stable",
    "toolchain:nightly",
    "default:stable",
    "component:clippy",
    "task:Backup games",
]


@pytest.fixture
def win(fresh_lab: LabClient) -> LabClient:
    """The lab with the Windows VM running and its agent answering."""
    fresh_lab.set_guest(VMID, status="running")
    client = proxmox_client(load_inventory(fresh_lab.dir / "inventory.toml"))
    wait_until(lambda: _answers(client), 10)
    return fresh_lab


def _answers(client: Any) -> bool:
    try:
        client.agent_ping(NODE, VMID)
    except ProxmoxError:
        return False
    return True


def inventory(lab: LabClient, name: str, *, install_dir: str = "", xml: str = TASK_XML) -> Path:
    """The lab's inventory with VM 103's provisioning: steamcmd, an anonymous app and one
    with a login (its password in a file beside the inventory), Rust (stable, nightly,
    clippy) and a scheduled task from an XML file beside the inventory; fast retries."""
    folder = lab.dir / f"{name}-tasks"
    folder.mkdir(exist_ok=True)
    (folder / "backup.xml").write_bytes(b"\xff\xfe" + xml.encode("utf-16-le"))
    (lab.dir / f"{name}-steam-password").write_text(PASSWORD + "\n")
    own_dir = f"install_dir = {json.dumps(install_dir)}\n" if install_dir else ""
    text = (lab.dir / "inventory.toml").read_text()
    text += (
        "\n[retries]\nattempts = 1\ndelays = [0.1]\n"
        "\n[windows]\nagent_timeout = 5\n"
        "\n[windows.vms.win11-gaming.steam]\n"
        f'username = "gamer_1"\npassword = "file:{name}-steam-password"\n'
        '[[windows.vms.win11-gaming.steam.apps]]\napp_id = 740\nname = "CS2 server"\n'
        f"[[windows.vms.win11-gaming.steam.apps]]\napp_id = 730\nanonymous = false\n{own_dir}"
        '\n[windows.vms.win11-gaming.rust]\ntoolchains = ["nightly"]\ncomponents = ["clippy"]\n'
        "\n[[windows.vms.win11-gaming.scheduled_tasks]]\n"
        f'name = "Backup games"\nxml = "{name}-tasks/backup.xml"\n'
    )
    dst = lab.dir / f"{name}-provision.toml"
    dst.write_text(text)
    return dst


def windows_state(lab: LabClient) -> dict[str, Any]:
    return dict(lab.state()["windows"][str(VMID)])


def pre_provision(lab: LabClient) -> dict[str, dict[str, Any]]:
    snaps = guest_snapshots(lab.state(), VMID)
    return {n: s for n, s in snaps.items() if n.startswith("moxflow-pre-provision-")}


def statuses(report: RunReport) -> dict[str, str]:
    """Each row's status by item (``<vm>: `` cut off)."""
    return {r.target.removeprefix(f"{VM}: "): r.cell("status") for r in report.rows}


def chain(state: Any) -> list[str]:
    """The step names of the VM's subflow run, in order, as the Prefect server has them."""
    subflows = subflow_runs(state)
    assert set(subflows) == {VM}
    return [r.name.removeprefix(f"{VM}: ") for r in step_runs(subflows[VM])]


def lab_view(lab: LabClient) -> dict[str, Any]:
    """What provisioning could change: the Windows guest (less the record of execs) and the
    VM as Proxmox has it (its snapshots, status, config; less its uptime, the clock's)."""
    state = lab.state()
    inside = {k: v for k, v in state["windows"][str(VMID)].items() if k != "execs"}
    guest = {k: v for k, v in state["guests"][str(VMID)].items() if k != "uptime"}
    return {"windows": inside, "guest": guest}


def test_the_first_run_installs_everything_and_the_second_changes_nothing(
    win: LabClient, tmp_path: Path
) -> None:
    inv = inventory(win, tmp_path.name)
    state = windows_provision(inventory=str(inv), return_state=True)
    assert state.is_completed()
    report = state.result()
    found = statuses(report)
    assert found == {"snapshot": "taken", **dict.fromkeys(EVERY_ITEM, "installed")}
    assert all(r.outcome is Outcome.OK for r in report.rows)
    (snap,) = pre_provision(win).values()  # before the first change
    assert snap["vmstate"] is False  # a passthrough VM: disk only
    snap_row = next(r for r in report.rows if r.target == f"{VM}: snapshot")
    assert snap_row.detail.endswith("(disk only)")
    inside = windows_state(win)
    assert inside["steamcmd"] is True
    assert inside["apps"] == {"730": "C:\\SteamApps\\730", "740": "C:\\SteamApps\\740"}
    assert inside["toolchains"] == {
        "nightly": ["cargo", "rust-std", "rustc"],
        "stable": ["cargo", "rust-std", "rustc", "clippy"],
    }
    assert inside["default_toolchain"] == "stable"
    assert list(inside["tasks"]) == ["Backup games"]
    # the chain, read back from the Prefect server
    assert chain(state) == [
        "snapshot",
        "steamcmd",
        "steam:740",
        "steam:730",
        "rust",
        "task:Backup games",
        "verify",
        "prune",
    ]
    assert all(e["rejected"] is None for e in inside["execs"])
    assert check_requests(win.api_requests()) == []

    before = lab_view(win)
    execs = len(inside["execs"])
    win.clear_api_requests()
    again = windows_provision(inventory=str(inv), return_state=True)
    assert again.is_completed()
    report = again.result()
    assert statuses(report) == dict.fromkeys(EVERY_ITEM, "present")
    assert lab_view(win) == before  # nothing changed: no snapshot, no install
    assert subflow_runs(again) == {}  # no VM had anything to do
    assert [e["script"] for e in windows_state(win)["execs"][execs:]] == ["provision-facts.ps1"]
    changes = [r for r in win.api_requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert {r["path"].rsplit("/", 1)[-1] for r in changes} <= {"ping", "exec"}
    assert f"{VM} ({'Windows 11, build 22631'}): nothing to change: 9 item(s) present" in (
        report.notes
    )


def test_a_changed_task_definition_is_updated_alone(win: LabClient, tmp_path: Path) -> None:
    inv = inventory(win, tmp_path.name)
    windows_provision(inventory=str(inv))
    first = set(pre_provision(win))
    inventory(win, tmp_path.name, xml=TASK_XML.replace("yyyyMMdd", "yyyy-MM-dd"))
    state = windows_provision(inventory=str(inv), return_state=True)
    assert state.is_completed()
    found = statuses(state.result())
    assert found.pop("task:Backup games") == "updated"
    assert found == {"snapshot": "taken", **dict.fromkeys(EVERY_ITEM[:-1], "present")}
    assert chain(state) == ["snapshot", "task:Backup games", "verify", "prune"]
    assert len(set(pre_provision(win)) - first) == 1


def test_a_failing_item_does_not_stop_the_others(win: LabClient, tmp_path: Path) -> None:
    win.control("windows", vmid=VMID, fail="app:730")  # "No subscription"
    win.control("windows", vmid=VMID, fail="toolchain:nightly")
    state = windows_provision(inventory=str(inventory(win, tmp_path.name)), return_state=True)
    assert state.is_failed()
    assert "103 (win11-gaming): steam:730" in (state.message or "")
    assert "103 (win11-gaming): toolchain:nightly" in (state.message or "")
    with pytest.raises(RunFailed) as info:
        state.result()
    report = info.value.report
    assert isinstance(report, RunReport)
    rows = {r.target.removeprefix(f"{VM}: "): r for r in report.rows}
    assert rows["steam:730"].outcome is Outcome.FAILED
    assert "No subscription" in rows["steam:730"].detail
    assert rows["toolchain:nightly"].outcome is Outcome.FAILED
    assert "invalid toolchain name" in rows["toolchain:nightly"].detail
    others = {k: r.cell("status") for k, r in rows.items() if r.outcome is not Outcome.FAILED}
    assert others == {
        "snapshot": "taken",
        **{i: "installed" for i in EVERY_ITEM if i not in ("steam:730", "toolchain:nightly")},
    }
    # the units after the failing one ran; its task run is Failed on the server, no other is
    subflow = subflow_runs(state)[VM]
    assert subflow.state.name == "Failed"
    assert subflow.state.message == f"{VM}: not provisioned: steam:730, toolchain:nightly"
    runs = step_runs(subflow)
    ended = {r.name.removeprefix(f"{VM}: "): r.state.name for r in runs}
    assert ended == {
        "snapshot": "Completed",
        "steamcmd": "Completed",
        "steam:740": "Completed",
        "steam:730": "Failed",
        "rust": "Failed",  # toolchain:nightly failed in it; the rest of rust was installed
        "task:Backup games": "Completed",
        "verify": "Completed",
        "prune": "Completed",
    }
    inside = windows_state(win)
    assert set(inside["apps"]) == {"740"} and set(inside["toolchains"]) == {"stable"}
    assert list(inside["tasks"]) == ["Backup games"]
    assert len(pre_provision(win)) == 1  # kept: nothing is rolled back


def _decoded(request: dict[str, Any]) -> str:
    command = request["params"]["command"]
    return base64.b64decode(command[-1]).decode("utf-16-le")


def test_user_values_reach_the_guest_as_data(win: LabClient, tmp_path: Path) -> None:
    """A folder with quotes, $(), backticks and ';', a task definition with those and line
    breaks: each sits in the data the lab decoded, unchanged; every script is its repo
    file, byte for byte."""
    inv = inventory(win, tmp_path.name, install_dir=HOSTILE_DIR)
    report = windows_provision(inventory=str(inv))
    assert statuses(report)["steam:730"] == "installed"
    execs = windows_state(win)["execs"]
    assert all(e["rejected"] is None for e in execs)
    app = next(e for e in execs if e["script"] == "steam-app.ps1" and e["data"]["app_id"] == 730)
    assert app["data"]["install_dir"] == HOSTILE_DIR
    task = next(e for e in execs if e["script"] == "scheduled-task.ps1")
    assert task["data"] == {"name": "Backup games", "xml": TASK_XML}
    assert windows_state(win)["apps"]["730"] == HOSTILE_DIR
    sent = [r for r in win.api_requests() if r["path"].endswith("/agent/exec")]
    assert sent
    for request in sent:
        text = _decoded(request)
        assert text in {windows.script_text(s) for s in windows.SCRIPTS}
        command = " ".join(request["params"]["command"])
        for value in (HOSTILE_DIR, "Get-Date", "whoami"):
            assert value not in command and value not in text


def test_the_password_never_reaches_a_log_or_a_command_line(win: LabClient, tmp_path: Path) -> None:
    state = windows_provision(inventory=str(inventory(win, tmp_path.name)), return_state=True)
    assert state.is_completed()
    # the Prefect server's logs of the run, its subflow run and every task run
    flow_runs = [state.state_details.flow_run_id, *(r.id for r in subflow_runs(state).values())]
    logs = wait_until(lambda: _logs(flow_runs), 10)  # the last lines reach the server after
    assert any("steam:730 installed" in m for m in logs)
    assert not [m for m in logs if PASSWORD in m or "Pa55" in m]
    # the lab: the recorded execs keep its length only; the command lines never hold it
    execs = windows_state(win)["execs"]
    login = next(e for e in execs if e["script"] == "steam-app.ps1" and e["data"]["app_id"] == 730)
    assert login["data"]["username"] == "gamer_1"
    assert login["data"]["password"] == f"<{len(PASSWORD)} characters>"
    assert PASSWORD not in json.dumps(execs)
    requests = win.api_requests()
    for r in requests:
        assert PASSWORD not in json.dumps(r["params"].get("command", ""))
        assert PASSWORD not in r["path"]
    # it went only as data: in the input of the one exec that logs in
    carried = [
        r
        for r in requests
        if PASSWORD in json.loads(r["params"].get("input-data") or "{}").values()
    ]
    assert len(carried) == 1 and _decoded(carried[0]) == windows.script_text("steam-app.ps1")
    assert PASSWORD not in state.result().to_text()


def _logs(flow_run_ids: list[Any]) -> list[str] | None:
    """The runs' log lines on the Prefect server, once the run's summary line is there."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what this process still holds
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids))
        )
    messages = [log.message for log in logs]
    return messages if any("windows-provision [provision] OK" in m for m in messages) else None


def test_dry_run_changes_nothing_and_shows_the_plan(win: LabClient, tmp_path: Path) -> None:
    before = lab_view(win)
    win.clear_api_requests()
    report = windows_provision(inventory=str(inventory(win, tmp_path.name)), dry_run=True)
    found = statuses(report)
    assert found == {"snapshot": "to take (disk only)", **dict.fromkeys(EVERY_ITEM, "to install")}
    assert all(r.outcome is Outcome.PLANNED for r in report.rows)
    text = report.to_text()
    assert "install steam:740 (CS2 server): not installed in C:\\SteamApps\\740" in text
    assert "PCI passthrough: no RAM state" in text
    assert lab_view(win) == before
    assert [e["script"] for e in windows_state(win)["execs"]] == ["provision-facts.ps1"]
    changes = [r for r in win.api_requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert {r["path"].rsplit("/", 1)[-1] for r in changes} <= {"ping", "exec"}


def test_a_stopped_vm_is_refused_before_any_change(win: LabClient, tmp_path: Path) -> None:
    win.set_guest(VMID, status="stopped")
    with pytest.raises(RunFailed) as info:
        windows_provision(inventory=str(inventory(win, tmp_path.name)))
    (row,) = info.value.report.rows
    assert row.outcome is Outcome.FAILED and row.target == VM
    assert "refused" in row.detail and "moxflow provisions a running Windows VM only" in row.detail
    assert pre_provision(win) == {} and windows_state(win)["execs"] == []


def test_a_vm_with_an_interrupted_update_is_refused_before_any_change(
    win: LabClient, tmp_path: Path
) -> None:
    """A windows-update run died half-way (its pre-update snapshot says in progress, its run
    is over): setting things up on top of that update would be lost to its rollback, or
    would leave its rollback point behind. Run windows_update first, the row says."""
    from tests.flows.test_windows_update import _a_run, _left

    dead = _a_run()
    left = _left(win, dead, hours=1)
    before = lab_view(win)
    win.clear_api_requests()
    with pytest.raises(RunFailed) as info:
        windows_provision(inventory=str(inventory(win, tmp_path.name)))
    (row,) = info.value.report.rows
    assert row.outcome is Outcome.FAILED and row.target == VM, row
    assert f"an interrupted update is on the VM: snapshot {left} of the interrupted run {dead}" in (
        row.detail
    )
    assert "run windows_update first to finish that update" in row.detail
    assert lab_view(win) == before and windows_state(win)["execs"] == []
    assert [r for r in win.api_requests() if r["method"] in ("POST", "PUT", "DELETE")] == []


def test_a_vm_another_run_holds_is_busy(win: LabClient, tmp_path: Path) -> None:
    inv = inventory(win, tmp_path.name)
    with hold([guest_target(VMID)], wait=0), pytest.raises(RunFailed) as info:
        windows_provision(inventory=str(inv), lock_timeout=0.5)
    (row,) = info.value.report.rows
    assert row.outcome is Outcome.BUSY and "moxflow-guest-103" in row.detail
    assert pre_provision(win) == {} and windows_state(win)["apps"] == {}


def test_a_missing_task_file_is_bad_input_naming_the_setting(
    win: LabClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.windows_provision import main

    inv = inventory(win, tmp_path.name)
    (win.dir / f"{tmp_path.name}-tasks" / "backup.xml").unlink()
    assert main(["--inventory", str(inv)]) == 2
    err = capsys.readouterr().err
    assert "windows.vms.win11-gaming.scheduled_tasks[0].xml: the task definition " in err
    assert "does not exist" in err
    with pytest.raises(RunFailed) as info:  # a deployment's run: the VM is refused
        windows_provision(inventory=str(inv))
    (row,) = info.value.report.rows
    assert row.outcome is Outcome.FAILED and "scheduled_tasks[0].xml" in row.detail
    assert pre_provision(win) == {} and windows_state(win)["execs"] == []
