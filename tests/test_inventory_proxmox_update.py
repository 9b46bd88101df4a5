"""The ``[proxmox_update]`` section: defaults, fallbacks, policies, nodes checked against
[hosts] and against the cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory, ProxmoxUpdateSettings, load_inventory
from moxflow.retention import KeepPolicy

HOSTS = """\
[hosts.pve1]
address = "10.0.0.11"
[hosts.pve2]
address = "10.0.0.12"
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
    update = load(tmp_path, "").proxmox_update
    assert update == ProxmoxUpdateSettings()
    assert (update.guests, update.reboot) == ("migrate", "auto")
    assert update.default_fallback == "shutdown"
    assert update.root_dataset == "rpool/ROOT/pve-1"
    assert update.two_node_without_qdevice == "refuse"
    assert (update.reboot_timeout, update.migration_timeout) == (900.0, 600.0)
    assert update.nodes == []


def test_a_full_section_loads(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """\
[proxmox_update]
nodes = ["pve2", "pve1"]
guests = "shutdown"
reboot = "always"
root_dataset = "rpool/ROOT/pve-2"
default_fallback = "leave"
two_node_without_qdevice = "allow"
reboot_timeout = 1200
fallback = { 105 = "leave", "gaming-vm" = "shutdown" }
[proxmox_update.policies]
pre-update = "keep-last=5"
""",
    )
    update = inv.proxmox_update
    assert update.nodes == ["pve2", "pve1"]
    assert (update.guests, update.reboot, update.root_dataset) == (
        "shutdown",
        "always",
        "rpool/ROOT/pve-2",
    )
    assert update.reboot_timeout == 1200.0
    assert update.fallback_for(105, "db") == "leave"
    assert update.fallback_for(120, "gaming-vm") == "shutdown"
    assert update.fallback_for(121, "other") == "leave"  # default_fallback
    assert inv.proxmox_update_policy("pre-update") == KeepPolicy(last=5)


def test_the_vmid_entry_wins_over_the_name() -> None:
    update = ProxmoxUpdateSettings(fallback={"105": "leave", "db": "shutdown"})
    assert update.fallback_for(105, "db") == "leave"


def test_pre_update_snapshots_have_a_default_policy(tmp_path: Path) -> None:
    inv = load(tmp_path, "")
    assert inv.proxmox_update_policy("pre-update") == KeepPolicy(last=3)
    with pytest.raises(ConfigError, match=r"proxmox_update.policies.daily"):
        inv.proxmox_update_policy("daily")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('nodes = ["pve9"]\n', "proxmox_update.nodes[0]: 'pve9' is not a [hosts] name"),
        ('nodes = ["pve1", "pve1"]\n', "nodes listed twice: pve1"),
        ('guests = "evacuate"\n', "proxmox_update.guests"),
        ('reboot = "sometimes"\n', "proxmox_update.reboot"),
        ('default_fallback = "migrate"\n', "proxmox_update.default_fallback"),
        ('fallback = { 105 = "migrate" }\n', "proxmox_update.fallback.105"),
        ('fallback = { "a b" = "leave" }\n', "neither a VMID nor a guest name"),
        ('two_node_without_qdevice = "yes"\n', "proxmox_update.two_node_without_qdevice"),
        ('root_dataset = "rpool/ROOT/pve-1@x"\n', "proxmox_update.root_dataset"),
        ("reboot_timeout = 0\n", "proxmox_update.reboot_timeout"),
        ('dpkg_log = "var/log/dpkg.log"\n', "proxmox_update.dpkg_log"),
        ('dpkg_log = "/var/log/{node}; rm -rf /"\n', "proxmox_update.dpkg_log"),
        ('policies = { pre-update = "keep-lots=3" }\n', "proxmox_update.policies.pre-update"),
        ("colour = 1\n", "proxmox_update.colour"),
    ],
)
def test_setting_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[proxmox_update]\n" + text)
    assert expected in str(info.value)


def test_dpkg_log_per_node(tmp_path: Path) -> None:
    assert load(tmp_path, "").proxmox_update.dpkg_log_of("pve1") == "/var/log/dpkg.log"
    inv = load(tmp_path, '[proxmox_update]\ndpkg_log = "/srv/logs/{node}/dpkg.log"\n')
    assert inv.proxmox_update.dpkg_log_of("pve2") == "/srv/logs/pve2/dpkg.log"


def test_nodes_default_to_the_whole_cluster(tmp_path: Path) -> None:
    inv = load(tmp_path, "")
    assert inv.proxmox_update_nodes(["pve2", "pve1"]) == ["pve1", "pve2"]


def test_listed_nodes_keep_their_order(tmp_path: Path) -> None:
    inv = load(tmp_path, '[proxmox_update]\nnodes = ["pve2", "pve1"]\n')
    assert inv.proxmox_update_nodes(["pve1", "pve2", "pve3"]) == ["pve2", "pve1"]


def test_a_cluster_node_without_a_hosts_table_is_refused(tmp_path: Path) -> None:
    inv = load(tmp_path, "")
    with pytest.raises(ConfigError, match=r"no \[hosts\] table for node pve3"):
        inv.proxmox_update_nodes(["pve1", "pve2", "pve3"])


def test_a_listed_node_the_cluster_lacks_is_refused(tmp_path: Path) -> None:
    inv = load(tmp_path, '[proxmox_update]\nnodes = ["pve2"]\n')
    with pytest.raises(ConfigError, match=r"not nodes of the cluster: pve2"):
        inv.proxmox_update_nodes(["pve1"])
