"""Every job's --help explains every option, and answers before Prefect is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

OPTIONS = {
    "flows.zfs_snapshot": ["--inventory", "--dry-run", "--label", "--only"],
    "flows.guest_snapshot": [
        "--inventory",
        "--dry-run",
        "--label",
        "--select",
        "--running-only",
        "--vmstate",
        "--concurrency",
        "--lock-timeout",
    ],
    "flows.nixos_update": [
        "--inventory",
        "--dry-run",
        "--only",
        "--max-parallel",
        "--continue-on-failure",
        "--no-snapshot",
        "--force",
    ],
    "flows.vzdump_backup": ["--inventory", "--dry-run", "--select", "--storage", "--no-offsite"],
    "flows.restore_test": ["--inventory", "--dry-run", "--select", "--scratch-vmid", "--storage"],
    "flows.restore": ["--vmid", "--backup", "--target-vmid", "--force", "--storage", "--node"],
    "flows.health_report": ["--inventory", "--dry-run", "--only"],
    "flows.windows_update": [
        "--inventory",
        "--dry-run",
        "--only",
        "--categories",
        "--max-rounds",
        "--lock-timeout",
    ],
    "flows.proxmox_update": [
        "--inventory",
        "--dry-run",
        "--only",
        "--guests",
        "--reboot",
        "--lock-timeout",
        "--no-snapshot",
    ],
    "flows.windows_provision": ["--inventory", "--dry-run", "--only", "--lock-timeout"],
}


@pytest.mark.parametrize("module", sorted(OPTIONS))
def test_help_explains_every_option(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for option in OPTIONS[module]:
        line = next((ln for ln in out.stdout.splitlines() if ln.strip().startswith(option)), "")
        assert line, f"{option} missing from --help"
    assert "exit status" in out.stdout
    # -X importtime lists every module imported: Prefect must not be among them
    assert " prefect" not in out.stderr


@pytest.mark.parametrize("module", sorted(OPTIONS))
def test_every_option_has_a_help_text(module: str) -> None:
    import importlib

    parser = importlib.import_module(module).command.parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 10, action.option_strings
