"""The ``[windows]`` section: defaults, a VM's own settings over the section's, the checks,
and a clear error naming the setting for each bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory, WindowsCheck, WindowsSettings, load_inventory
from moxflow.retention import KeepPolicy

HOSTS = """\
[hosts.pve1]
address = "10.0.0.11"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOXFLOW_"):
            monkeypatch.delenv(name)


def load(folder: Path, text: str) -> Inventory:
    path = folder / "inventory.toml"
    path.write_text(HOSTS + text)
    return load_inventory(path)


def test_defaults(tmp_path: Path) -> None:
    win = load(tmp_path, "").windows
    assert win == WindowsSettings()
    assert (win.vms, win.categories, win.drivers, win.max_rounds) == ({}, [], False, 3)
    assert (win.snapshot_ram, win.snapshot_consistent) == (True, False)
    assert (win.agent_timeout, win.install_timeout) == (900.0, 14400.0)
    assert win.adopt_max_age_hours == 6.0


def test_a_full_section_loads_and_a_vm_overrides_the_section(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """\
[windows]
categories = ["Security Updates", "Critical Updates"]
max_rounds = 4
snapshot_ram = true
agent_timeout = 1200
[windows.policies]
pre-update = "keep-last=5"

[windows.vms.103]
snapshot_consistent = true
categories = ["Definition Updates"]
max_rounds = 2
[[windows.vms.103.checks]]
service = "Spooler"
[[windows.vms.103.checks]]
port = 3389
[[windows.vms.103.checks]]
command = ["C:\\\\Tools\\\\check.exe", "--quick"]
exit_code = 3

[windows.vms.win11-office]
""",
    )
    win = inv.windows
    assert list(win.vms) == ["103", "win11-office"]  # in the file's order
    assert win.categories_of("103") == ["Definition Updates"]
    assert win.categories_of("win11-office") == ["Security Updates", "Critical Updates"]
    assert (win.max_rounds_of("103"), win.max_rounds_of("win11-office")) == (2, 4)
    assert win.snapshot_of("103") == (True, True)
    assert win.snapshot_of("win11-office") == (True, False)
    checks = win.vms["103"].checks
    assert [c.kind for c in checks] == ["service", "port", "command"]
    assert [c.describe() for c in checks] == [
        "service Spooler running",
        "TCP 3389 listening",
        "command C:\\Tools\\check.exe exits 3",
    ]
    assert inv.windows_policy("pre-update") == KeepPolicy(last=5)


def test_pre_update_snapshots_have_a_default_policy(tmp_path: Path) -> None:
    inv = load(tmp_path, "")
    assert inv.windows_policy("pre-update") == KeepPolicy(last=3)
    with pytest.raises(ConfigError, match=r"windows.policies.daily"):
        inv.windows_policy("daily")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[windows.vms.99]\n", "windows.vms.99: '99': a VMID is between 100 and 999999999"),
        ('[windows.vms."win 11"]\n', "'win 11' is neither a VMID nor a guest name"),
        ("[windows.vms.-win]\n", "'-win' is neither a VMID nor a guest name"),
        ("[windows]\nmax_rounds = 0\n", "windows.max_rounds"),
        ("[windows]\nmax_rounds = 21\n", "windows.max_rounds"),
        ("[windows.vms.103]\nmax_rounds = 0\n", "windows.vms.103.max_rounds"),
        ('[windows]\ncategories = [""]\n', "is not a Windows Update category"),
        ('[windows]\ncategories = [" Updates"]\n', "is not a Windows Update category"),
        ('[windows]\ncategories = ["Updates", "updates"]\n', "categories listed twice: updates"),
        ('[windows.vms.103]\ncategories = ["A\\u0007"]\n', "windows.vms.103.categories[0]"),
        ("[windows]\nagent_timeout = 0\n", "windows.agent_timeout"),
        ("[windows]\ninstall_timeout = -5\n", "windows.install_timeout"),
        ("[windows]\nadopt_max_age_hours = 0\n", "windows.adopt_max_age_hours"),
        ("[windows]\nadopt_max_age_hours = 9000\n", "windows.adopt_max_age_hours"),
        ('[windows]\nsnapshot_ram = "maybe"\n', "windows.snapshot_ram"),
        ('[windows.policies]\npre-update = "keep-lots=3"\n', "windows.policies.pre-update"),
        ("[windows]\ncolour = 1\n", "windows.colour"),
        ("[windows.vms.103]\nram = true\n", "windows.vms.103.ram"),
        (
            "[[windows.vms.103.checks]]\n",
            "give exactly one of service, port or command (got none)",
        ),
        (
            '[[windows.vms.103.checks]]\nservice = "a"\nport = 80\n',
            "give exactly one of service, port or command (got service and port)",
        ),
        ("[[windows.vms.103.checks]]\nport = 70000\n", "windows.vms.103.checks[0].port"),
        (
            '[[windows.vms.103.checks]]\nservice = "a/b"\n',
            "is not a Windows service name",
        ),
        (
            '[[windows.vms.103.checks]]\nservice = "Spooler"\nexit_code = 1\n',
            "exit_code only applies to command checks",
        ),
        (
            '[[windows.vms.103.checks]]\ncommand = ["check.exe"]\n',
            "first is the program's absolute path",
        ),
        ("[[windows.vms.103.checks]]\ncommand = []\n", "first is the program's absolute path"),
        (
            '[[windows.vms.103.checks]]\ncommand = ["C:\\\\x.exe"]\nexit_code = -1\n',
            "windows.vms.103.checks[0].exit_code",
        ),
    ],
)
def test_setting_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert expected in str(info.value)


def test_a_check_made_in_code_is_checked_too() -> None:
    assert WindowsCheck(port=3389).kind == "port"
    with pytest.raises(ValueError, match="exactly one"):
        WindowsCheck()


# --- provisioning (steam, rust, scheduled_tasks of a VM) ------------------------------------


def test_a_vms_provisioning_loads(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """\
[windows.vms.103]
[windows.vms.103.steam]
username = "gamer_1"
password = "env:STEAM_PASSWORD"
[[windows.vms.103.steam.apps]]
app_id = 740
name = "CS2 server"
[[windows.vms.103.steam.apps]]
app_id = 730
anonymous = false
install_dir = "D:\\\\Games\\\\it's $(x) `y`; z"
[windows.vms.103.rust]
toolchains = ["nightly", "1.85.0", "nightly-2025-01-15-x86_64-pc-windows-msvc"]
components = ["clippy", "rust-src", "llvm-tools-preview"]
[[windows.vms.103.scheduled_tasks]]
name = "Backup games (nightly)"
xml = "tasks/backup games.xml"

[windows.vms.win11-office]
""",
    )
    win = inv.windows
    assert win.provisioned_vms() == ["103"]
    vm = win.vms["103"]
    assert vm.provisioned and not win.vms["win11-office"].provisioned
    steam = vm.steam
    assert steam is not None and steam.password == "env:STEAM_PASSWORD"
    assert steam.password.scheme == "env"  # a reference, never the secret
    assert [steam.install_dir(a) for a in steam.apps] == [
        "C:\\SteamApps\\740",
        "D:\\Games\\it's $(x) `y`; z",  # a legal folder name: it travels as data
    ]
    assert vm.rust is not None and vm.rust.default_toolchain == "stable"
    assert vm.rust.cargo_home == "C:\\Rust\\cargo"
    assert [t.xml for t in vm.scheduled_tasks] == ["tasks/backup games.xml"]
    assert inv.windows_policy("pre-provision") == KeepPolicy(last=3)


def test_a_policy_left_out_keeps_its_default(tmp_path: Path) -> None:
    inv = load(tmp_path, '[windows.policies]\npre-update = "keep-last=5"\n')
    assert inv.windows_policy("pre-update") == KeepPolicy(last=5)
    assert inv.windows_policy("pre-provision") == KeepPolicy(last=3)


VM = "[windows.vms.103]\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[windows.vms.103.steam]\nsteamcmd = "steamcmd.exe"\n',
            "windows.vms.103.steam.steamcmd: 'steamcmd.exe' is not an absolute Windows path",
        ),
        ('[windows.vms.103.steam]\nlibrary = "C:\\\\Games\\\\"\n', "no trailing"),
        ('[windows.vms.103.steam]\nlibrary = "C:\\\\Games\\\\..\\\\Windows"\n', "'..' parts"),
        ('[windows.vms.103.steam]\nlibrary = "C:\\\\a\\"b"\n', "windows.vms.103.steam.library"),
        ('[windows.vms.103.steam]\nlibrary = "C:\\\\a:b"\n', "windows.vms.103.steam.library"),
        ('[windows.vms.103.steam]\nlibrary = "C:/Games"\n', "windows.vms.103.steam.library"),
        (
            '[windows.vms.103.steam]\nusername = "me@example.org"\npassword = "env:P"\n',
            "windows.vms.103.steam.username: 'me@example.org' is not a Steam account name",
        ),
        (
            '[windows.vms.103.steam]\nusername = "me"\n',
            "windows.vms.103.steam.password: a Steam login needs both username and password",
        ),
        (
            '[windows.vms.103.steam]\nusername = "me"\npassword = "hunter2"\n',
            "windows.vms.103.steam.password: looks like a plain secret",
        ),
        (
            "[[windows.vms.103.steam.apps]]\napp_id = 730\nanonymous = false\n",
            "windows.vms.103.steam.apps[0].anonymous: app 730 needs a Steam login: set "
            "username and password",
        ),
        (
            "[[windows.vms.103.steam.apps]]\napp_id = 740\n"
            "[[windows.vms.103.steam.apps]]\napp_id = 740\n",
            "windows.vms.103.steam.apps[1].app_id: app 740 is already listed as apps[0]",
        ),
        ("[[windows.vms.103.steam.apps]]\napp_id = 0\n", "windows.vms.103.steam.apps[0].app_id"),
        ("[[windows.vms.103.steam.apps]]\n", "windows.vms.103.steam.apps[0].app_id: required"),
        (
            '[[windows.vms.103.steam.apps]]\napp_id = 740\nname = "a\\nb"\n',
            "windows.vms.103.steam.apps[0].name",
        ),
        (
            '[windows.vms.103.rust]\ndefault_toolchain = "stable; rm -rf"\n',
            "windows.vms.103.rust.default_toolchain: 'stable; rm -rf' is not a rustup toolchain",
        ),
        (
            '[windows.vms.103.rust]\ntoolchains = ["nightly", "nightly"]\n',
            "toolchains listed twice: nightly",
        ),
        (
            '[windows.vms.103.rust]\ncomponents = ["Clippy"]\n',
            "windows.vms.103.rust.components[0]: 'Clippy' is not a rustup component name",
        ),
        ('[windows.vms.103.rust]\ncargo_home = "~/.cargo"\n', "windows.vms.103.rust.cargo_home"),
        ("[windows.vms.103.rust]\nprofile = 1\n", "windows.vms.103.rust.profile: unknown setting"),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "a\\"; $(x)"\nxml = "a.xml"\n',
            "windows.vms.103.scheduled_tasks[0].name: 'a\"; $(x)' is not a scheduled task name",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "\\\\Microsoft\\\\x"\nxml = "a.xml"\n',
            "is not a scheduled task name",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "x*"\nxml = "a.xml"\n',
            "is not a scheduled task name",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "x"\nxml = "../etc/x.xml"\n',
            "windows.vms.103.scheduled_tasks[0].xml: '../etc/x.xml' is not the path of a task's "
            "XML file beside the inventory",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "x"\nxml = "/etc/x.xml"\n',
            "windows.vms.103.scheduled_tasks[0].xml",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "x"\nxml = "C:\\\\x.xml"\n',
            "windows.vms.103.scheduled_tasks[0].xml",
        ),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "x"\nxml = "task.txt"\n',
            "ending in .xml",
        ),
        ('[[windows.vms.103.scheduled_tasks]]\nname = "x"\n', "scheduled_tasks[0].xml: required"),
        (
            '[[windows.vms.103.scheduled_tasks]]\nname = "Backup"\nxml = "a.xml"\n'
            '[[windows.vms.103.scheduled_tasks]]\nname = "backup"\nxml = "b.xml"\n',
            "windows.vms.103.scheduled_tasks[1].name: task 'backup' is already listed as "
            "scheduled_tasks[0]",
        ),
        ("[windows]\nprovision_timeout = 0\n", "windows.provision_timeout"),
        ('[windows.policies]\npre-provision = "keep"\n', "windows.policies.pre-provision"),
    ],
)
def test_provisioning_setting_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, VM + text)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)  # a plain secret is never echoed
