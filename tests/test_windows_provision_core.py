"""``moxflow.windows_provision``: facts in, plan out; the task XML files; a unit's reported
items merged with its plan; the check after the run. No I/O but the XML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moxflow import windows
from moxflow import windows_provision as wp
from moxflow.errors import ConfigError
from moxflow.guests import Guest
from moxflow.inventory import WindowsSettings, WindowsVm
from moxflow.windows import ItemOutcome

VM = WindowsVm.model_validate(
    {
        "steam": {
            "username": "gamer_1",
            "password": "env:STEAM_PASSWORD",
            "apps": [
                {"app_id": 740, "name": "CS2 server"},
                {"app_id": 730, "anonymous": False, "install_dir": "D:\\Games\\cs2"},
            ],
        },
        "rust": {"toolchains": ["nightly"], "components": ["clippy", "rust-src"]},
        "scheduled_tasks": [{"name": "Backup games", "xml": "tasks/backup.xml"}],
    }
)
XML = {"Backup games": "<Task><Actions/></Task>"}
DISK = windows.choose_snapshot({"hostpci0": "0000:01:00"}, ram=True, consistent=False)

# provision-facts.ps1 on a fresh Windows 11: nothing there
NOTHING: dict[str, Any] = {
    "steamcmd": False,
    "apps": [
        {"app_id": 740, "installed": False, "state_flags": None},
        {"app_id": 730, "installed": False, "state_flags": None},
    ],
    "rustup": False,
    "toolchains": [],
    "default": "",
    "components": [],
    "tasks": [{"name": "Backup games", "exists": False, "sha256": ""}],
}
# ... and after a run: as rustup 1.28 and steamcmd leave it
EVERYTHING: dict[str, Any] = {
    "steamcmd": True,
    "apps": [
        {"app_id": 740, "installed": True, "state_flags": 4},
        {"app_id": 730, "installed": True, "state_flags": 4},
    ],
    "rustup": True,
    "toolchains": [
        "stable-x86_64-pc-windows-msvc (active, default)",
        "nightly-x86_64-pc-windows-msvc",
    ],
    "default": "stable-x86_64-pc-windows-msvc (default)",
    "components": [
        "cargo-x86_64-pc-windows-msvc",
        "clippy-x86_64-pc-windows-msvc",
        "rust-src",
        "rust-std-x86_64-pc-windows-msvc",
        "rustc-x86_64-pc-windows-msvc",
    ],
    "tasks": [
        {"name": "Backup games", "exists": True, "sha256": wp.task_sha256(XML["Backup games"])}
    ],
}


def plan(facts: dict[str, Any]) -> wp.ProvisionPlan:
    found = wp.parse_provision_facts(facts)
    return wp.plan_provision("103 (win11-gaming)", "Windows 11, build 22631", VM, XML, found, DISK)


def actions(p: wp.ProvisionPlan) -> dict[str, str]:
    return {i.item: i.action for i in p.items}


def test_a_fresh_vm_installs_everything_after_a_snapshot() -> None:
    p = plan(NOTHING)
    assert [u.name for u in p.todo] == [
        "steamcmd",
        "steam:740",
        "steam:730",
        "rust",
        "task:Backup games",
    ]
    assert actions(p) == {
        "steamcmd": "install",
        "steam:740": "install",
        "steam:730": "install",
        "rustup": "install",
        "toolchain:stable": "install",
        "toolchain:nightly": "install",
        "default:stable": "install",
        "component:clippy": "install",
        "component:rust-src": "install",
        "task:Backup games": "install",
    }
    assert p.skip is None
    lines = p.describe()
    assert lines[0] == (
        "103 (win11-gaming) (Windows 11, build 22631): 10 of 10 item(s) to change; snapshot "
        "first: PCI passthrough: no RAM state; disk only, file systems frozen through the agent "
        "(VSS)"
    )
    assert "  install steam:740 (CS2 server): not installed in C:\\SteamApps\\740" in lines
    assert "  install steamcmd: not found at C:\\steamcmd\\steamcmd.exe" in lines


def test_the_units_carry_their_data_and_never_the_password() -> None:
    units = {u.name: u for u in plan(NOTHING).units}
    assert units["steam:730"].data == {
        "steamcmd": "C:\\steamcmd\\steamcmd.exe",
        "install_dir": "D:\\Games\\cs2",
        "app_id": 730,
        "username": "gamer_1",
        "password": None,  # added by the task at the last moment
    }
    assert units["steam:730"].login and not units["steam:740"].login
    assert units["steam:740"].data["username"] is None  # anonymous
    assert units["rust"].data == {
        "cargo_home": "C:\\Rust\\cargo",
        "rustup_home": "C:\\Rust\\rustup",
        "default_toolchain": "stable",
        "toolchains": ["nightly"],
        "components": ["clippy", "rust-src"],
    }
    assert units["task:Backup games"].data == {"name": "Backup games", "xml": XML["Backup games"]}
    assert [u.script for u in units.values()] == [
        "steamcmd.ps1",
        "steam-app.ps1",
        "steam-app.ps1",
        "rustup.ps1",
        "scheduled-task.ps1",
    ]
    assert all(u.script in windows.SCRIPTS for u in units.values())


def test_everything_present_is_nothing_to_do() -> None:
    p = plan(EVERYTHING)
    assert set(actions(p).values()) == {"present"}
    assert p.todo == () and p.skip == "nothing to change: 10 item(s) present"
    assert p.describe() == [
        "103 (win11-gaming) (Windows 11, build 22631): nothing to change: 10 item(s) present"
    ]


def _with(**changes: Any) -> dict[str, Any]:
    return {**EVERYTHING, **changes}


@pytest.mark.parametrize(
    ("facts", "item", "action", "why"),
    [
        (
            _with(
                apps=[{"app_id": 740, "installed": True, "state_flags": 6}, EVERYTHING["apps"][1]]
            ),
            "steam:740",
            "update",
            "its manifest says StateFlags 6, not 4",
        ),
        (
            _with(default="nightly-x86_64-pc-windows-msvc (default)"),
            "default:stable",
            "update",
            "the default is nightly-x86_64-pc-windows-msvc",
        ),
        (_with(default=""), "default:stable", "update", "the default is none"),
        (
            _with(toolchains=["stable-x86_64-pc-windows-msvc (default)"]),
            "toolchain:nightly",
            "install",
            "",
        ),
        (
            _with(components=["clippy-preview-x86_64-pc-windows-msvc", "rust-src"]),
            "component:clippy",
            "install",
            "",
        ),
        (
            _with(tasks=[{"name": "Backup games", "exists": True, "sha256": "AB" * 32}]),
            "task:Backup games",
            "update",
            "tasks/backup.xml changed",
        ),
        (
            _with(tasks=[{"name": "Backup games", "exists": True, "sha256": ""}]),
            "task:Backup games",
            "update",
            "registered without moxflow: registered again from its XML",
        ),
    ],
)
def test_what_an_item_needs(facts: dict[str, Any], item: str, action: str, why: str) -> None:
    found = {i.item: i for i in plan(facts).items}[item]
    assert (found.action, found.why) == (action, why)
    others = [i for i in plan(facts).items if i.item != item]
    assert {i.action for i in others} == {"present"}


def test_the_facts_request_asks_for_what_the_vm_wants() -> None:
    assert wp.facts_request(VM) == {
        "steamcmd": "C:\\steamcmd\\steamcmd.exe",
        "apps": [
            {"app_id": 740, "install_dir": "C:\\SteamApps\\740"},
            {"app_id": 730, "install_dir": "D:\\Games\\cs2"},
        ],
        "cargo_home": "C:\\Rust\\cargo",
        "rustup_home": "C:\\Rust\\rustup",
        "toolchain": "stable",
        "tasks": ["Backup games"],
    }
    only_tasks = WindowsVm.model_validate({"scheduled_tasks": [{"name": "x", "xml": "x.xml"}]})
    request = wp.facts_request(only_tasks)
    assert (request["steamcmd"], request["apps"], request["cargo_home"]) == ("", [], "")
    assert wp.plan_units(only_tasks, {"x": "<Task/>"}, wp.ProvisionFacts())[0].name == "task:x"


def test_merge_items_fails_what_the_script_did_not_report() -> None:
    rust = next(u for u in plan(NOTHING).units if u.name == "rust")
    reported = [ItemOutcome("rustup", "failed", "rustup-init exit 1: no network")]
    merged = wp.merge_items(rust, reported)
    assert merged[0] == reported[0]
    assert {(o.status, o.detail) for o in merged[1:]} == {("failed", "not done: rustup failed")}
    task = plan(NOTHING).units[-1]
    assert wp.merge_items(task, []) == (
        ItemOutcome("task:Backup games", "failed", "scheduled-task.ps1 did not report it"),
    )
    extra = ItemOutcome("task:Other", "installed")
    assert wp.merge_items(task, [ItemOutcome("task:Backup games", "present"), extra])[-1] == extra


def test_the_check_after_fails_an_item_still_to_do() -> None:
    outcomes = [
        ItemOutcome("steam:740", "installed"),
        ItemOutcome("steam:730", "failed", "No subscription"),
        ItemOutcome("task:Backup games", "present"),
    ]
    after = plan(_with(apps=[{"app_id": 740, "installed": True, "state_flags": 6}])).units
    assert wp.check_after(outcomes, after) == (
        ItemOutcome(
            "steam:740",
            "failed",
            "reported installed, but the check after finds it still to update: its manifest "
            "says StateFlags 6, not 4",
        ),
        outcomes[1],
        outcomes[2],
    )


def test_a_password_steamcmd_cannot_take_is_named_without_its_value() -> None:
    assert wp.password_problem("s3cr3t $(x) `y`; 'z'") is None
    for bad in ('a"b', "a\nb", "a\rb"):
        problem = wp.password_problem(bad)
        assert problem is not None and bad not in problem


def test_provisioning_needs_a_vm_with_something_to_set_up() -> None:
    settings = WindowsSettings.model_validate({"vms": {"103": {}, "win11-gaming": {"rust": {}}}})
    assert wp.require_provisioning(settings) == ["win11-gaming"]
    with pytest.raises(ConfigError, match=r"no provisioning in \[windows.vms\]"):
        wp.require_provisioning(WindowsSettings.model_validate({"vms": {"103": {}}}))


# --- the scheduled tasks' XML files ------------------------------------------------------------

EXPORTED = (
    '<?xml version="1.0" encoding="UTF-16"?>\r\n'
    '<Task version="1.4" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">\r\n'
    '  <Actions Context="Author"><Exec><Command>powershell.exe</Command>'
    '<Arguments>-NoProfile -Command "Get-Date; $(whoami) `n"</Arguments></Exec></Actions>\r\n'
    "</Task>\r\n"
)
SETTING = "windows.vms.103.scheduled_tasks[0].xml"


def test_a_task_exported_by_task_scheduler_is_read_as_text(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.xml").write_bytes(b"\xff\xfe" + EXPORTED.encode("utf-16-le"))
    assert wp.read_task_xml(tmp_path, "tasks/a.xml", SETTING) == EXPORTED
    (tmp_path / "b.xml").write_text("<Task/>", encoding="utf-8-sig")
    assert wp.read_task_xml(tmp_path, "b.xml", SETTING) == "<Task/>"
    (tmp_path / "c.xml").write_bytes("<Task/>".encode("utf-16-le"))  # no BOM
    assert wp.read_task_xml(tmp_path, "c.xml", SETTING) == "<Task/>"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is not well-formed XML"),
        (b"<Task><Actions></Task>", "is not well-formed XML: mismatched tag"),
        (b"<Tasks/>", "has the root element <Tasks>, not <Task>"),
        (b"\x80\x81<Task/>", "is not UTF-8 or UTF-16 text"),
        (
            b'<!DOCTYPE Task [<!ENTITY a "aaaa">]><Task>&a;</Task>',
            "has a DOCTYPE; a task definition needs none",
        ),
        (b"<Task>" + b"x" * (300 * 1024) + b"</Task>", "is over 256 KiB"),
        (b"<Task>" + b'"' * 40_000 + b"</Task>", "more than the guest agent's 64 KiB"),
    ],
    ids=["missing", "empty", "broken", "root", "binary", "doctype", "huge", "too-big-as-data"],
)
def test_a_bad_task_file_is_a_config_error_naming_the_setting(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "t.xml").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        wp.read_task_xml(tmp_path, "t.xml", SETTING)
    assert info.value.setting == SETTING
    assert message in str(info.value) and str(info.value).startswith(SETTING + ": ")


def test_a_folder_is_not_a_task_file(tmp_path: Path) -> None:
    (tmp_path / "t.xml").mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        wp.read_task_xml(tmp_path, "t.xml", SETTING)


def test_select_vms_says_what_the_job_does() -> None:
    with pytest.raises(ConfigError, match="does not provision: 104; it provisions: 103"):
        windows.select_vms(["103"], [_guest(103), _guest(104)], ["104"], verb="provision")


def _guest(vmid: int) -> Guest:
    return Guest(vmid, f"vm{vmid}", "pve1", "qemu", "running")
