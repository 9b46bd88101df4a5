"""Shared fixtures: one simulated lab per test session.

``lab`` starts the daemon once (a guest snapshot task takes ~0.05 s); ``fresh_lab`` resets it
to the initial state before a test; ``lab_inventory`` is the lab's working inventory file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labsim.client import LabClient, start_lab

# 2 s per snapshot task × 0.025 = 0.05 s
LAB_TIME_SCALE = 0.025


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the session's lab (keys, certificates, inventory.toml, lab.json)."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def lab(lab_dir: Path) -> Iterator[LabClient]:
    """The session's running lab; stopped when the session ends."""
    client = start_lab(lab_dir, time_scale=LAB_TIME_SCALE)
    try:
        yield client
    finally:
        client.stop()


@pytest.fixture
def fresh_lab(lab: LabClient) -> LabClient:
    """The session's lab, reset to its initial state (faults, tasks, request log cleared)."""
    lab.reset()
    return lab


@pytest.fixture(scope="session")
def lab_inventory(lab: LabClient) -> Path:
    """The lab's working ``inventory.toml``."""
    return lab.dir / "inventory.toml"
