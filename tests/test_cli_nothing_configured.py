"""An inventory with nothing for the job to do is bad input: exit status 2 and a message
naming what to add, never "OK, 0 targets" (a truncated inventory used to end that way)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

# every job, with the options it needs besides --inventory
JOBS: dict[str, list[str]] = {
    "zfs_snapshot": ["--label", "hourly"],
    "guest_snapshot": ["--label", "hourly"],
    "nixos_update": [],
    "vzdump_backup": [],
    "offsite_copy": [],
    "restore_test": [],
    "restore": ["--vmid", "100"],
    "health_report": [],
    "windows_update": [],
    "windows_provision": [],
}

ONE_HOST = '[hosts.pve1]\naddress = "10.0.0.2"\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOXFLOW_"):
            monkeypatch.delenv(name)


def run(job: str, inventory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    main = importlib.import_module(f"flows.{job}").main
    status = main(["--inventory", str(inventory), "--dry-run", *JOBS[job]])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("job", sorted(JOBS))
@pytest.mark.parametrize("text", ["", "# the rest was lost\n"], ids=["empty", "comment-only"])
def test_an_empty_inventory_is_a_usage_error(
    job: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    status, err = run(job, path, capsys)
    assert status == 2
    assert f"error: inventory file {path} is empty" in err
    assert "add a [proxmox] section" in err


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("zfs_snapshot", "the inventory has no [[zfs.datasets]] tables"),
        ("nixos_update", "the inventory has no [nixos.hosts] tables"),
        ("guest_snapshot", "the inventory has no [proxmox] section"),
        ("vzdump_backup", "the inventory has no [proxmox] section"),
        ("restore_test", "the inventory has no [proxmox] section"),
        ("restore", "the inventory has no [proxmox] section"),
        ("offsite_copy", "offsite"),
        ("windows_update", "no [windows.vms] in the inventory"),
        ("windows_provision", "no provisioning in [windows.vms]"),
    ],
)
def test_no_job_configured_for_the_flow_is_a_usage_error(
    job: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(ONE_HOST)
    status, err = run(job, path, capsys)
    assert status == 2
    assert expected in err
    assert "add " in err  # and says what to add
