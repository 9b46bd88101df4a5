"""``moxflow.windows`` from realistic agent JSON, and the review rules of the ``.ps1`` files."""

from __future__ import annotations

import base64
import json
import re

import pytest

from moxflow import windows
from moxflow.errors import ConfigError, ParseError
from moxflow.guests import Guest

# what a PowerShell script must never contain: code built from text, or a shell in between
FORBIDDEN = [
    r"Invoke-Expression",
    r"\biex\b",
    r"ScriptBlock\]::Create",
    r"\bcmd(\.exe)?\s+/c",
    r"-ArgumentList",
    r"Add-Type",
    r"\$ExecutionContext",
    r"-EncodedCommand",
    r"Start-Job",
]


@pytest.mark.parametrize("name", windows.SCRIPTS)
def test_every_script_is_small_reads_stdin_and_has_no_forbidden_pattern(name: str) -> None:
    text = windows.script_text(name)
    assert "[Console]::In.ReadToEnd()" in text
    assert "$ErrorActionPreference = 'Stop'" in text
    assert "ConvertTo-Json -Compress" in text
    assert len(text) < 11_000 and text.isascii()
    for pattern in FORBIDDEN:
        assert not re.search(pattern, text, re.IGNORECASE), (name, pattern)


def test_the_folder_holds_exactly_the_known_scripts() -> None:
    assert sorted(p.name for p in windows.SCRIPTS_DIR.glob("*.ps1")) == sorted(windows.SCRIPTS)


def test_exec_request_sends_the_file_unchanged_and_values_as_json() -> None:
    value = "x'; $(rm -r C:\\) `n\"\ny"
    req = windows.exec_request("steam-app.ps1", {"install_dir": value, "app_id": 730})
    assert req.command[:5] == windows.POWERSHELL and req.command[5] == "-EncodedCommand"
    text = base64.b64decode(req.command[6]).decode("utf-16-le")
    assert text == (windows.SCRIPTS_DIR / "steam-app.ps1").read_text(encoding="utf-8")
    assert json.loads(req.input_data) == {"install_dir": value, "app_id": 730}
    with pytest.raises(ValueError, match="not one of"):
        windows.exec_request("evil.ps1")
    with pytest.raises(ValueError, match="64 KiB"):
        windows.exec_request("checks.ps1", {"services": ["x" * 70_000]})


@pytest.mark.parametrize(
    ("raw", "ok", "describe"),
    [
        ({"exited": 0}, False, "still running"),
        ({"exited": 1, "exitcode": 0, "out-data": "{}"}, True, "exit code 0"),
        ({"exited": 1, "exitcode": 3, "out-data": "{}"}, False, "exit code 3"),
        ({"exited": 1, "signal": -1073741819}, False, "signal 0xC0000005"),
    ],
)
def test_exec_status(raw: dict[str, object], ok: bool, describe: str) -> None:
    status = windows.parse_exec_status(raw)
    assert (status.ok, status.describe()) == (ok, describe)


def test_script_output_takes_the_last_json_line() -> None:
    status = windows.parse_exec_status(
        {"exited": 1, "exitcode": 0, "out-data": 'noise\r\n{"reboot_pending":true}\r\n'}
    )
    assert windows.script_output(status, "reboot-pending.ps1") == {"reboot_pending": True}
    with pytest.raises(ParseError, match="no JSON"):
        windows.script_output(windows.parse_exec_status({"exited": 1, "exitcode": 1}), "x")


OSINFO = {
    "result": {
        "id": "mswindows",
        "kernel-release": "26100",
        "variant": "server",
        "variant-id": "server",
        "pretty-name": "Windows Server 2025 Standard",
    }
}


def test_osinfo_decides_on_build_and_variant() -> None:
    info = windows.parse_osinfo(OSINFO)
    assert (info.is_windows, info.version) == (True, "Windows Server 2025")
    assert (
        windows.parse_osinfo(
            {"result": {"id": "mswindows", "kernel-release": "19045", "variant": "client"}}
        ).version
        == "Windows 10"
    )


SCAN = {
    "reboot_required": False,
    "updates": [
        {
            "id": "a",
            "kb": ["KB5048685"],
            "title": "CU",
            "size": 1,
            "categories": ["Security Updates"],
            "reboot": 1,
        },
        {
            "id": "b",
            "kb": ["KB890830"],
            "title": "MSRT",
            "size": 2,
            "categories": ["Update Rollups"],
            "reboot": 0,
        },
        {"id": "c", "kb": [], "title": "Defender", "size": 3, "categories": "Definition Updates"},
    ],
}


@pytest.mark.parametrize(
    ("kwargs", "install", "reason"),
    [
        ({}, ["KB5048685", "KB890830", "c"], None),
        ({"categories": ["security updates"]}, ["KB5048685"], None),
        ({"failed_before": ["a", "b", "c"]}, [], "nothing applicable is pending"),
        ({"round_no": 4}, [], "max rounds (3) reached with 3 update(s) pending"),
    ],
)
def test_plan_round(kwargs: dict[str, object], install: list[str], reason: str | None) -> None:
    scan = windows.parse_update_scan(SCAN)
    args: dict[str, object] = {"round_no": 1, "max_rounds": 3, **kwargs}
    plan = windows.plan_round(scan, **args)  # type: ignore[arg-type]
    assert ([u.kb for u in plan.install], plan.reason) == (install, reason)


def test_plan_waits_for_a_pending_reboot() -> None:
    scan = windows.parse_update_scan({**SCAN, "reboot_required": True})
    plan = windows.plan_round(scan, round_no=1, max_rounds=3)
    assert plan.install == () and plan.reason == "a reboot is pending: reboot before installing"


@pytest.mark.parametrize(
    ("config", "ram", "consistent", "kind"),
    [
        ({}, True, False, "ram"),
        ({"hostpci0": "0000:01:00.0"}, True, False, "disk-live"),
        ({"hostpci0": "0000:01:00.0"}, True, True, "disk-shutdown"),
        ({}, False, False, "disk-live"),
    ],
)
def test_choose_snapshot(config: dict[str, str], ram: bool, consistent: bool, kind: str) -> None:
    choice = windows.choose_snapshot(config, ram=ram, consistent=consistent)
    assert choice.kind == kind and choice.vmstate == (kind == "ram")
    assert ("no RAM state" in choice.reason) == (ram and bool(config))


def test_verdict_names_every_problem() -> None:
    run = windows.parse_install(
        {
            "result_code": 4,
            "updates": [
                {"id": "a", "kb": ["KB5048685"], "result_code": 4, "hresult": "0x80070005"}
            ],
        }
    )
    checks = windows.parse_checks(
        {
            "services": [{"name": "sshd", "status": "Stopped"}],
            "ports": [{"port": 3389, "listening": False}],
        }
    )
    reboot = windows.parse_reboot_pending({"reboot_pending": True, "reasons": ["windows-update"]})
    v = windows.verdict(
        agent_ok=True, installs=[run], reboot=reboot, checks=checks, services=["sshd"], ports=[3389]
    )
    assert v.problems == (
        "KB5048685 failed (result code 4, 0x80070005)",
        "a reboot is still pending (windows-update)",
        "service sshd is Stopped",
        "nothing listens on TCP 3389",
    )
    items = windows.parse_items({"items": [{"item": "steam:730", "status": "present"}]}, "s")
    assert not items[0].changed


# --- what the windows-update flow plans with --------------------------------------------------


def _guest(vmid: int, name: str, gtype: str = "qemu", template: bool = False) -> Guest:
    return Guest(vmid, name, "pve1", gtype, "running", template=template)  # type: ignore[arg-type]


GUESTS = [
    _guest(103, "win11-gaming"),
    _guest(104, "win11-office"),
    _guest(105, "twin"),
    _guest(106, "twin"),
    _guest(107, "ct", gtype="lxc"),
    _guest(9000, "tpl", template=True),
]


def test_select_vms_by_vmid_or_name_in_the_inventorys_order() -> None:
    chosen = windows.select_vms(["win11-office", "103"], GUESTS)
    assert [(k, g.vmid) for k, g in chosen] == [("win11-office", 104), ("103", 103)]
    only = windows.select_vms(["win11-office", "103"], GUESTS, ["win11-gaming"])
    assert [k for k, _ in only] == ["103"]
    assert [k for k, _ in windows.select_vms(["103", "104"], GUESTS, ["104"])] == ["104"]


@pytest.mark.parametrize(
    ("keys", "only", "message"),
    [
        ([], None, "no [windows.vms] in the inventory"),
        (["999"], None, "999: no guest with this VMID"),
        (["nope"], None, "nope: no guest with this name"),
        (["twin"], None, "twin: 2 guests carry this name (105, 106); use the VMID"),
        (["ct"], None, "guest 107 (ct) is a container, not a Windows VM"),
        (["tpl"], None, "guest 9000 (tpl) is a template"),
        (["103", "win11-gaming"], None, "win11-gaming: guest 103 (win11-gaming) is listed as 103"),
        (["103"], ["104"], "--only names VMs this job does not update: 104; it updates: 103"),
    ],
)
def test_select_vms_refuses_clearly(keys: list[str], only: list[str] | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        windows.select_vms(keys, GUESTS, only)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("agent", "enabled"),
    [
        ("1", True),
        ("0", False),
        ("enabled=1,fstrim_cloned_disks=1", True),
        ("enabled=0,type=virtio", False),
        ("1,freeze-fs-on-backup=0", True),
        (None, False),
    ],
)
def test_agent_enabled(agent: str | None, enabled: bool) -> None:
    config = {} if agent is None else {"agent": agent}
    assert windows.agent_enabled(config) is enabled


OFFERED = windows.parse_update_scan(
    {
        "reboot_required": False,
        "updates": [
            {"id": "a", "kb": ["KB1"], "title": "Cumulative (KB1)", "size": 2**20,
             "categories": ["Security Updates"], "reboot": 1},
            {"id": "b", "kb": ["KB2"], "title": "Defender", "size": 0,
             "categories": ["Definition Updates"]},
        ],
    }
)  # fmt: skip


def test_plan_vm_lists_what_it_installs_and_leaves() -> None:
    plan = windows.plan_vm(
        "103 (w)", "Windows 11, build 22631", OFFERED, {"hostpci0": "0000:01:00.0"},
        reboot_pending=False, ram=True, consistent=False, categories=["security updates"],
    )  # fmt: skip
    assert [u.kb for u in plan.install] == ["KB1"] and plan.skip is None
    assert plan.snapshot.kind == "disk-live"
    lines = plan.describe()
    assert "1 update(s) to install" in lines[0] and "no RAM state" in lines[0]
    assert lines[1] == "  install Cumulative (KB1) (1.0 MiB, Security Updates, reboot: always)"
    assert lines[2].startswith("  leave KB2 Defender (0 B, Definition Updates, reboot: never)")
    assert "not chosen" in lines[2]


def test_plan_vm_skips_when_nothing_applies_and_reboots_first_when_pending() -> None:
    plan = windows.plan_vm(
        "103 (w)", "W", OFFERED, {}, reboot_pending=False, ram=True, consistent=False,
        categories=["Drivers"],
    )  # fmt: skip
    assert plan.skip == "nothing applicable is pending (2 update(s) left out)"
    assert plan.describe() == ["103 (w) (W): nothing applicable is pending (2 update(s) left out)"]
    empty = windows.UpdateScan(False, ())
    pending = windows.plan_vm(
        "103 (w)", "W", empty, {}, reboot_pending=True, ram=True, consistent=False
    )
    assert pending.skip is None and pending.reboot_first
    assert pending.snapshot.kind == "ram"


def test_the_snapshot_an_earlier_run_may_have_left_unfinished() -> None:
    from datetime import UTC, datetime

    from moxflow.naming import snapshot_description, snapshot_name
    from moxflow.proxmox import GuestSnapshot

    def snap(day: int, run: str, **kw: object) -> GuestSnapshot:
        when = datetime(2025, 1, day, tzinfo=UTC)
        name = snapshot_name("pre-update", when)
        return GuestSnapshot(name, snapshot_description("pre-update", when, run), when, **kw)  # type: ignore[arg-type]

    old, dead = snap(1, "run-a"), snap(2, "run-b")
    pick = windows.unfinished_candidate
    assert pick([old, dead], "pre-update", "run-c") == dead  # the newest, another run's
    assert pick([old, dead], "pre-update", "run-b") is None  # this run's own
    assert pick([old, snap(3, "run-b", snapstate="prepare")], "pre-update", "x") == old
    by_hand = GuestSnapshot("moxflow-pre-update-20250104-000000", "taken by hand")
    assert pick([old, by_hand], "pre-update", "run-c") is None  # names no run
    assert pick([snap(5, "run-d")], "daily", "run-c") is None  # another label
    foreign = GuestSnapshot("before-gpu-driver", "moxflow: by run x")
    assert pick([foreign], "pre-update", "y") is None
    assert pick([], "pre-update", "run-c") is None


def test_a_snapshot_that_says_its_update_is_done_is_not_unfinished() -> None:
    from datetime import UTC, datetime

    from moxflow.naming import snapshot_description, snapshot_name
    from moxflow.proxmox import GuestSnapshot

    when = datetime(2025, 1, 2, tzinfo=UTC)

    def snap(state: str) -> GuestSnapshot:
        text = snapshot_description("pre-update", when, "run-b", state=state)
        return GuestSnapshot(snapshot_name("pre-update", when), text, when)

    pick = windows.unfinished_candidate
    assert pick([snap("in progress")], "pre-update", "run-c") == snap("in progress")
    assert pick([snap("")], "pre-update", "run-c") == snap("")  # the Prefect server judges
    assert pick([snap("committed")], "pre-update", "run-c") is None
    assert pick([snap("rolled back")], "pre-update", "run-c") is None


def test_an_interrupted_snapshot_is_adopted_only_when_newest_and_young() -> None:
    from datetime import UTC, datetime, timedelta

    from moxflow.naming import snapshot_name
    from moxflow.proxmox import GuestSnapshot

    now = datetime(2025, 1, 2, 12, tzinfo=UTC)
    taken = now - timedelta(hours=5)
    left = GuestSnapshot(snapshot_name("pre-update", taken), "", taken)
    later = GuestSnapshot("before-driver", "", taken + timedelta(minutes=1))
    refuse = windows.not_adopted
    assert refuse(103, [left], left, "run-b", now, 6.0) is None
    too_old = refuse(103, [left], left, "run-b", now, 4.0)
    assert too_old is not None and "older than [windows] adopt_max_age_hours (4 h)" in too_old
    assert "of the interrupted run run-b (taken 5h ago)" in too_old
    assert f"qm rollback 103 {left.name}, then qm delsnapshot 103 {left.name}" in too_old
    newer = refuse(103, [left, later], left, "run-b", now, 6.0)
    assert newer is not None and "a newer snapshot exists (before-driver)" in newer
    assert "qm delsnapshot 103 before-driver" in newer
    # the age is the name's (the run's clock), not the node's snaptime
    skewed = GuestSnapshot(left.name, "", now)
    assert refuse(103, [skewed], skewed, "run-b", now, 4.0) is not None


def test_readable_stderr_of_powershell_clixml() -> None:
    clixml = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<S S="Error">Exception calling "Search" with "1" argument(s): '
        "&quot;0x80072EE2&quot;_x000D__x000A_</S>"
        '<S S="Error">At line:9 char:1_x000D__x000A_</S></Objs>'
    )
    assert windows.readable_stderr(clixml) == (
        'Exception calling "Search" with "1" argument(s): "0x80072EE2"\r\nAt line:9 char:1'
    )
    assert windows.readable_stderr("plain text\n") == "plain text\n"


def test_verdict_takes_a_commands_expected_exit_code() -> None:
    ended = windows.ExecStatus(exited=True, exitcode=3)
    ok = windows.verdict(
        agent_ok=True, installs=[], reboot=None, commands={"c": ended}, expect={"c": 3}
    )
    assert ok.ok
    bad = windows.verdict(agent_ok=True, installs=[], reboot=None, commands={"c": ended})
    assert bad.problems == ("command c: exit code 3, not exit code 0",)
