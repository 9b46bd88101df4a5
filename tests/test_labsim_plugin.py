"""A system from a test module alone plugs into the lab: its API route, its SSH command, its
control operation (CLI and client) and its state field all work, with no labsim file edited."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from labsim.client import LabClient, LabError, start_lab
from moxflow.ssh import SshRunner
from tests.conftest import LAB_TIME_SCALE

TOY = f"{Path(__file__).with_name('labsim_toy.py')}:make"


@pytest.fixture(scope="module")
def toy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    client = start_lab(tmp_path_factory.mktemp("toy-lab"), time_scale=LAB_TIME_SCALE, systems=[TOY])
    try:
        yield client
    finally:
        client.stop()


def _labsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labsim", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _api_lamp(lab: LabClient) -> object:
    resp = requests.get(
        f"{lab.api_url}/toy/lamp", headers=lab.auth_header, verify=str(lab.ca_file), timeout=10
    )
    resp.raise_for_status()
    return resp.json()["data"]


def _ssh_lamp(lab: LabClient, host: str) -> tuple[int, str]:
    runner = SshRunner(
        host,
        "127.0.0.1",
        int(lab.info["hosts"][host]["port"]),
        key_file=lab.dir / "id_ed25519",
        known_hosts=lab.dir / "known_hosts",
        connect_timeout=5.0,
    )
    with runner as r:
        result = r.run(["lamp"], check=False)
    return result.exit_code, result.stdout


def test_the_toy_system_answers_everywhere(toy_lab: LabClient) -> None:
    d = str(toy_lab.dir)
    assert toy_lab.state()["toy"] == {"lamp": False}
    assert _api_lamp(toy_lab) == {"on": 0}
    assert _ssh_lamp(toy_lab, "pve1") == (0, "lamp is off\n")

    cli = _labsim("toy-lamp", "--dir", d, "--state", "on")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == {"on": True}
    state = json.loads(_labsim("state", "--dir", d).stdout)
    assert state["toy"] == {"lamp": True}
    assert _api_lamp(toy_lab) == {"on": 1}
    assert _ssh_lamp(toy_lab, "pve1") == (0, "lamp is on\n")
    assert _ssh_lamp(toy_lab, "nas") == (127, "")  # nas has no lamp: "sh: 1: lamp: not found"

    assert toy_lab.control("toy_lamp", state="off") == {"on": False}
    assert toy_lab.state()["toy"] == {"lamp": False}
    help_text = _labsim("toy-lamp", "--dir", d, "--help").stdout
    assert "Switch the toy lamp on or off." in help_text


def test_the_toy_system_adds_to_the_inventory(toy_lab: LabClient) -> None:
    from moxflow.inventory import load_inventory

    text = toy_lab.inventory.read_text()
    assert text.endswith("# toy: the lamp is on pve1\n")
    assert "pve1" in load_inventory(toy_lab.inventory).hosts  # and it still loads


def test_the_toy_system_resets_with_the_lab(toy_lab: LabClient) -> None:
    toy_lab.control("toy_lamp", state="on")
    toy_lab.reset()
    assert toy_lab.state()["toy"] == {"lamp": False}


def test_a_lab_without_the_toy_knows_nothing_of_it(lab: LabClient) -> None:
    assert "toy" not in lab.state()
    with pytest.raises(LabError, match="unknown op 'toy_lamp'"):
        lab.control("toy_lamp", state="on")
    cli = _labsim("toy-lamp", "--dir", str(lab.dir), "--state", "on")
    assert cli.returncode == 2 and "invalid choice: 'toy-lamp'" in cli.stderr


def test_a_bad_system_spec_stops_the_lab_from_starting(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no factory 'nothing'"):
        start_lab(
            tmp_path / "bad", systems=[f"{Path(__file__).with_name('labsim_toy.py')}:nothing"]
        )


def test_up_with_a_system_the_running_lab_lacks_is_refused(lab: LabClient) -> None:
    again = _labsim("up", "--dir", str(lab.dir), "--system", TOY)
    assert again.returncode == 2
    assert "has no" in again.stderr and "labsim down" in again.stderr
    assert _labsim("up", "--dir", str(lab.dir)).returncode == 0  # as it is: fine
