"""The lab's simulated NixOS hosts (dns, media, builder), mostly through the real SSH path.

Each test starts from ``fresh_lab`` (the session's lab, reset: time scale 0.025, so a 4 s build
takes 0.1 s, a boot 0.25 s and a 60 s dead-man timer 1.5 s). Waits are bounded polls on the lab's
state, never sleeps that hope.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from labsim.client import LabClient, wait_until
from labsim.inventory import render_inventory
from labsim.lab import Lab, LabOptions
from moxflow.errors import SshConnectError
from moxflow.ssh import CommandResult, SshRunner

pytestmark = pytest.mark.lab

NIXOS_HOSTS = ("dns", "media", "builder")


# --- helpers -----------------------------------------------------------------------------------


def runner(lab: LabClient, host: str) -> SshRunner:
    return SshRunner(
        host,
        "127.0.0.1",
        int(lab.info["hosts"][host]["port"]),
        key_file=lab.dir / "id_ed25519",
        known_hosts=lab.dir / "known_hosts",
        connect_timeout=5.0,
    )


def paths(lab: LabClient, host: str) -> dict[str, str]:
    info: dict[str, str] = lab.info["nixos"][host]
    return info


def nix_state(lab: LabClient, host: str) -> dict[str, Any]:
    return lab.nixos_state(host)


def health(lab: LabClient, host: str) -> tuple[int, str] | None:
    """(status, body) of the lab's health endpoint, or None when it answers nothing."""
    try:
        resp = httpx.get(lab.health_url(host), timeout=5.0)
    except httpx.HTTPError:
        return None
    return resp.status_code, resp.text


def ssh_refused(lab: LabClient, host: str) -> bool:
    try:
        with runner(lab, host) as r:
            r.run(["true"])
    except SshConnectError:
        return True
    return False


def deadman_argv(profile: str, generation: int, seconds: int) -> list[str]:
    """What moxflow's arm_deadman_argv builds (docs/internals-nixos.md)."""
    revert = (
        f"nix-env --profile {profile} --switch-generation {generation} && "
        f"{profile}-{generation}-link/bin/switch-to-configuration switch"
    )
    return [
        "systemd-run", "--unit", "moxflow-deadman", "--on-active", f"{seconds}s",
        "--description", "moxflow: revert unless confirmed", "/bin/sh", "-c", revert,
    ]  # fmt: skip


class Api:
    """The lab's Proxmox API with the lab's CA and token."""

    def __init__(self, lab: LabClient) -> None:
        self.base = lab.api_url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(lab.ca_file)
        self.session.headers.update(lab.auth_header)

    def post(self, path: str, **data: Any) -> str:
        resp = self.session.post(self.base + path, data=data, timeout=10)
        assert resp.status_code == 200, f"{resp.status_code} {resp.reason}"
        upid: str = resp.json()["data"]
        return upid

    def task(self, upid: str) -> dict[str, Any]:
        node = upid.split(":")[1]

        def stopped() -> dict[str, Any] | None:
            resp = self.session.get(f"{self.base}/nodes/{node}/tasks/{upid}/status", timeout=10)
            status: dict[str, Any] = resp.json()["data"]
            return status if status["status"] == "stopped" else None

        return wait_until(stopped, 5.0)

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def api(fresh_lab: LabClient) -> Iterator[Api]:
    client = Api(fresh_lab)
    yield client
    client.close()


@pytest.fixture
def lab(fresh_lab: LabClient) -> Iterator[LabClient]:
    """A fresh lab, reset again afterwards (these tests break hosts)."""
    yield fresh_lab
    fresh_lab.reset()


# --- the initial state -------------------------------------------------------------------------


def test_hosts_folders_and_inventory(lab: LabClient) -> None:
    state = lab.state()
    assert {"pve1", "pve2", "nas", *NIXOS_HOSTS} <= set(state["hosts"])
    assert state["hosts"]["pve1"]["nixos"] is None
    for host, vmid in zip(NIXOS_HOSTS, (100, 101, 102), strict=True):
        nix = state["hosts"][host]["nixos"]
        assert nix["vmid"] == vmid
        assert [g["generation"] for g in nix["generations"]] == [1, 2, 3]
        assert nix["current"] == nix["profile_generation"] == 3
        assert nix["up"] and not nix["network_cut"] and nix["failed_units"] == []
        assert nix["flake_rev"] == nix["upstream_rev"]
        root = Path(nix["root"])
        assert root == lab.dir / "hosts" / host
        lock = json.loads((root / "etc/nixos/flake.lock").read_text())
        # builder's flake has a disko input with a nixpkgs of its own, which nix writes
        # first: the system's nixpkgs is the node nixpkgs_2 (the root's input says which)
        system = "nixpkgs_2" if host == "builder" else "nixpkgs"
        assert lock["nodes"][system]["locked"]["rev"] == nix["flake_rev"]
        assert lock["nodes"]["root"]["inputs"] == (
            {"disko": "disko", "nixpkgs": "nixpkgs_2"}
            if host == "builder"
            else {"nixpkgs": "nixpkgs"}
        )
        if host == "builder":
            assert lock["nodes"]["disko"]["inputs"] == {"nixpkgs": "nixpkgs"}
            assert lock["nodes"]["nixpkgs"]["locked"]["rev"] != nix["flake_rev"]
            assert "disko.nixosModules.disko" in (root / "etc/nixos/flake.nix").read_text()
        assert f"nixosConfigurations.{host} =" in (root / "etc/nixos/flake.nix").read_text()
        profiles = root / "nix/var/nix/profiles"
        assert (profiles / "system").readlink() == Path("system-3-link")
        for n in (1, 2, 3):
            shim = profiles / f"system-{n}-link/bin/switch-to-configuration"
            assert shim.is_file() and shim.stat().st_mode & 0o111
        assert list((root / "var/lib/moxflow").iterdir()) == []
        assert health(lab, host) == (200, "ok\n")
    inventory = lab.inventory.read_text()
    port = lab.info["health_port"]
    assert "[nixos]" in inventory
    for host in NIXOS_HOSTS:
        assert f"[hosts.{host}]" in inventory
        assert f"[nixos.hosts.{host}]" in inventory
        assert f'http = "http://127.0.0.1:{port}/health/{host}"' in inventory
        assert f'flake = "{lab.dir}/hosts/{host}/etc/nixos"' in inventory
    assert 'snapshot = { method = "proxmox", vmid = 101 }' in inventory


def test_generated_topology_with_nixos_hosts() -> None:
    lab = Lab(LabOptions(nodes=2, guests_per_node=3, nixos_hosts=12))
    specs = lab.nixos_specs()
    assert [s.name for s in specs] == [f"nixos-{i:02d}" for i in range(1, 13)]
    assert {s.build_seconds for s in specs} == {1.0, 2.0, 3.0, 4.0}
    assert [s.canary for s in specs].count(True) == 1 and specs[0].canary
    assert all(s.vmid is None for s in specs)
    assert set(lab.hosts) == {"pve1", "pve2", "nas", "offsite", *(s.name for s in specs)}
    text = render_inventory(
        8006, {h: 22 for h in lab.hosts}, [(s, Path("/lab/hosts") / s.name) for s in specs], 9
    )
    assert text.count('snapshot = { method = "none" }') == 12
    assert 'flake = "/lab/hosts/nixos-12/etc/nixos"' in text


# --- flake update, build, switch ---------------------------------------------------------------


def test_flake_update_changes_the_lock_only_when_upstream_moved(lab: LabClient) -> None:
    flake = paths(lab, "media")["flake"]
    lock = Path(flake) / "flake.lock"
    before = lock.read_text()
    with runner(lab, "media") as r:
        same = r.run(["nix", "flake", "update", "--flake", flake])
        assert (same.stdout, same.stderr) == ("", "")
        assert lock.read_text() == before
        lab.nixos("media", upstream="nixpkgs-next")
        moved = r.run(["nix", "flake", "update", "--flake", flake, "--commit-lock-file"])
        assert "• Updated input 'nixpkgs':" in moved.stderr
        assert "  → 'github:NixOS/nixpkgs/" in moved.stderr
        after = lock.read_text()
        assert after != before
        rev = json.loads(after)["nodes"]["nixpkgs"]["locked"]["rev"]
        assert (
            rev == nix_state(lab, "media")["upstream_rev"] == nix_state(lab, "media")["flake_rev"]
        )
        assert r.run(["nix", "flake", "update", "--flake", flake]).stderr == ""
        meta = json.loads(r.run(["nix", "flake", "metadata", "--json", flake]).stdout)
        assert meta["locks"]["nodes"]["nixpkgs"]["locked"]["rev"] == rev
        missing = r.run(["nix", "flake", "update", "--flake", "/nonexistent"], check=False)
        assert missing.exit_code == 1 and "is not part of a flake" in missing.stderr
    assert nix_state(lab, "media")["lock_commits"] == 1
    rc, _, err = lab.exec("pve1", ["nix", "flake", "update"])
    assert rc == 127 and "not found" in err


def test_build_switch_and_list_generations(lab: LabClient) -> None:
    p = paths(lab, "media")
    ref = p["flake"] + "#media"
    lab.nixos("media", upstream="rev-4")
    with runner(lab, "media") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        started = time.monotonic()
        built = r.run(["nixos-rebuild", "build", "--flake", ref])
        assert time.monotonic() - started >= 8.0 * 0.025  # build_seconds × time scale
        assert "building the system configuration..." in built.stderr
        assert nix_state(lab, "media")["profile_generation"] == 3  # a build changes nothing
        switched = r.run(["nixos-rebuild", "switch", "--flake", ref])
        assert "activating the configuration..." in switched.stderr
        gens = json.loads(r.run(["nixos-rebuild", "list-generations", "--json"]).stdout)
        assert [g["generation"] for g in gens] == [4, 3, 2, 1]
        assert set(gens[0]) == {
            "generation", "date", "nixosVersion", "kernelVersion", "configurationRevision",
            "specialisations", "current",
        }  # fmt: skip
        assert [g["current"] for g in gens] == [True, False, False, False]
        rev = nix_state(lab, "media")["flake_rev"]
        assert gens[0]["nixosVersion"].startswith("25.11.") and gens[0]["nixosVersion"].endswith(
            rev[:7]
        )
        # the same configuration again: no new generation
        r.run(["nixos-rebuild", "switch", "--flake", ref])
        assert nix_state(lab, "media")["profile_generation"] == 4
        assert r.run(["systemctl", "is-system-running"]).stdout == "running\n"
        wrong = r.run(["nixos-rebuild", "build", "--flake", p["flake"] + "#nope"], check=False)
        assert wrong.exit_code == 1 and "does not provide attribute" in wrong.stderr
        back = r.run(["nixos-rebuild", "switch", "--rollback"])
        assert "switching profile from version 4 to 3" in back.stderr
    profiles = Path(p["profile"]).parent
    assert (profiles / "system").readlink() == Path("system-3-link")
    assert (profiles / "system-4-link/bin/switch-to-configuration").is_file()
    state = nix_state(lab, "media")
    assert (state["current"], state["profile_generation"], state["builds"]) == (3, 3, 1)


def test_a_failing_build_changes_nothing(lab: LabClient) -> None:
    p = paths(lab, "builder")
    lab.nixos("builder", upstream="broken", build_fails=True)
    with runner(lab, "builder") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        result = r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#builder"], check=False)
    assert result.exit_code == 1
    assert "error: builder for '/nix/store/" in result.stderr
    assert "failed with exit code" in result.stderr
    state = nix_state(lab, "builder")
    assert (state["current"], state["profile_generation"]) == (3, 3)


def test_failed_units_exit_4_and_degrade_the_system(lab: LabClient) -> None:
    p = paths(lab, "media")
    lab.nixos("media", upstream="jellyfin-breaks", failed_units="jellyfin")
    with runner(lab, "media") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        result = r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#media"], check=False)
        assert result.exit_code == 4
        assert "warning: the following units failed: jellyfin.service" in result.stderr
        assert (
            "warning: error(s) occurred while switching to the new configuration" in result.stderr
        )
        running = r.run(["systemctl", "is-system-running"], check=False)
        assert (running.exit_code, running.stdout) == (1, "degraded\n")
        failed = json.loads(r.run(["systemctl", "list-units", "--failed", "--output=json"]).stdout)
        assert [u["unit"] for u in failed] == ["jellyfin.service"]
        assert failed[0]["active"] == "failed"
        inactive = r.run(["systemctl", "is-active", "jellyfin"], check=False)
        assert (inactive.exit_code, inactive.stdout) == (3, "failed\n")
        # the shim of the old generation, a real file run by the real shell, activates it
        switch = f"{p['profile']}-3-link/bin/switch-to-configuration"
        r.run(["nix-env", "--profile", p["profile"], "--switch-generation", "3"])
        r.run([switch, "switch"])
        assert r.run(["systemctl", "is-system-running"]).stdout == "running\n"
        assert r.run(["systemctl", "list-units", "--failed", "--output=json"]).stdout == "[]\n"
    state = nix_state(lab, "media")
    assert (state["current"], state["profile_generation"]) == (3, 3)


def test_health_endpoint_follows_the_active_generation(lab: LabClient) -> None:
    p = paths(lab, "dns")
    lab.nixos("dns", upstream="unbound-misconfigured", health_broken=True)
    with runner(lab, "dns") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#dns"])
        answer = health(lab, "dns")
        assert answer is not None and answer[0] == 503 and answer[1].startswith("unhealthy: ")
        assert health(lab, "media") == (200, "ok\n")
        r.run(["nixos-rebuild", "switch", "--rollback"])
    assert health(lab, "dns") == (200, "ok\n")
    assert health(lab, "no-such-host") == (404, "no NixOS host 'no-such-host'\n")


# --- the dead-man timer ------------------------------------------------------------------------


def test_cut_network_refuses_ssh_until_the_deadman_timer_reverts(lab: LabClient) -> None:
    p = paths(lab, "dns")
    lab.nixos("dns", upstream="firewall-typo", cut_network=True)
    with runner(lab, "dns") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        armed = r.run(deadman_argv(p["profile"], 3, 60))  # 60 s × 0.025 = 1.5 s
        assert "Running timer as unit: moxflow-deadman.timer" in armed.stderr
        assert r.run(["systemctl", "is-active", "moxflow-deadman.timer"]).stdout == "active\n"
        timers = json.loads(r.run(["systemctl", "list-timers", "--all", "--output=json"]).stdout)
        assert "moxflow-deadman.timer" in {t["unit"] for t in timers}
        # the connection that runs the switch goes down with the network
        with pytest.raises(SshConnectError):
            r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#dns"])
    state = nix_state(lab, "dns")
    assert state["network_cut"] and state["current"] == 4 and len(state["timers"]) == 1
    assert ssh_refused(lab, "dns")
    assert health(lab, "dns") is None
    wait_until(lambda: nix_state(lab, "dns")["timer_runs"], timeout=10.0)
    state = nix_state(lab, "dns")
    assert state["timer_runs"][0]["exit"] == 0
    assert (state["current"], state["profile_generation"], state["network_cut"]) == (3, 3, False)
    assert state["timers"] == [] and state["failed_units"] == []
    assert health(lab, "dns") == (200, "ok\n")
    with runner(lab, "dns") as r:
        gone = r.run(["systemctl", "is-active", "moxflow-deadman.timer"], check=False)
        assert (gone.exit_code, gone.stdout) == (3, "inactive\n")
        stop = r.run(["systemctl", "stop", "moxflow-deadman.timer"], check=False)
        assert stop.exit_code == 5 and "not loaded" in stop.stderr


def test_a_confirmed_switch_disarms_the_timer(lab: LabClient) -> None:
    p = paths(lab, "builder")
    with runner(lab, "builder") as r:
        r.run(deadman_argv(p["profile"], 3, 40))
        again = r.run(deadman_argv(p["profile"], 3, 40), check=False)
        assert again.exit_code == 1 and "already loaded" in again.stderr
        assert r.run(["systemctl", "stop", "moxflow-deadman.timer"]).exit_code == 0
        gone = r.run(["systemctl", "is-active", "moxflow-deadman.timer"], check=False)
        assert gone.exit_code == 3
    assert nix_state(lab, "builder")["timers"] == []


def test_a_broken_deadman_leaves_the_host_down_until_a_snapshot_rollback(
    lab: LabClient, api: Api
) -> None:
    p = paths(lab, "dns")
    base = "/nodes/pve1/lxc/100"
    assert api.task(api.post(f"{base}/snapshot", snapname="before-update"))["exitstatus"] == "OK"
    lab.nixos("dns", upstream="bad", cut_network=True, deadman_broken=True)
    with runner(lab, "dns") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        r.run(deadman_argv(p["profile"], 3, 20))  # 0.5 s
        with pytest.raises(SshConnectError):
            r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#dns"])
    wait_until(lambda: nix_state(lab, "dns")["timer_runs"], timeout=10.0)
    state = nix_state(lab, "dns")
    assert state["timer_runs"][0]["exit"] != 0
    assert state["current"] == 4 and state["network_cut"]
    assert "moxflow-deadman.service" in state["failed_units"]
    assert ssh_refused(lab, "dns") and health(lab, "dns") is None
    # a power cycle boots the profile's generation: still the broken one
    assert api.task(api.post(f"{base}/status/stop"))["exitstatus"] == "OK"
    assert api.task(api.post(f"{base}/status/start"))["exitstatus"] == "OK"
    wait_until(lambda: nix_state(lab, "dns")["up"], timeout=5.0)
    assert nix_state(lab, "dns")["network_cut"] and ssh_refused(lab, "dns")
    # only the snapshot brings it back
    upid = api.post(f"{base}/snapshot/before-update/rollback", start=1)
    assert api.task(upid)["exitstatus"] == "OK"
    wait_until(lambda: nix_state(lab, "dns")["up"], timeout=5.0)
    state = nix_state(lab, "dns")
    assert (state["current"], state["profile_generation"], state["network_cut"]) == (3, 3, False)
    assert state["flake_rev"] != state["upstream_rev"]  # the lock is the snapshot's again
    assert health(lab, "dns") == (200, "ok\n")
    assert not ssh_refused(lab, "dns")


def test_flake_update_moves_the_systems_nixpkgs_not_the_side_inputs(lab: LabClient) -> None:
    flake = paths(lab, "builder")["flake"]
    lock = Path(flake) / "flake.lock"
    before = json.loads(lock.read_text())["nodes"]
    lab.nixos("builder", upstream="nixpkgs-next")
    with runner(lab, "builder") as r:
        moved = r.run(["nix", "flake", "update", "--flake", flake])
        assert "• Updated input 'nixpkgs':" in moved.stderr
        assert r.run(["nix", "flake", "update", "--flake", flake, "disko"]).stderr == ""
    after = json.loads(lock.read_text())["nodes"]
    assert (
        after["nixpkgs_2"]["locked"]["rev"] == lab.state()["hosts"]["builder"]["nixos"]["flake_rev"]
    )
    assert after["nixpkgs_2"] != before["nixpkgs_2"]
    assert {k: after[k] for k in ("disko", "nixpkgs", "root")} == {
        k: before[k] for k in ("disko", "nixpkgs", "root")
    }


# --- guest snapshots, power, reboot ------------------------------------------------------------


def test_rollback_of_guest_101_restores_media(lab: LabClient, api: Api) -> None:
    p = paths(lab, "media")
    base = "/nodes/pve1/qemu/101"
    lock = Path(p["flake"]) / "flake.lock"
    lock_before = lock.read_text()
    assert api.task(api.post(f"{base}/snapshot", snapname="moxflow-pre-update"))["exitstatus"] == (
        "OK"
    )
    snap = lab.state()["guests"]["101"]["snapshots"]["moxflow-pre-update"]
    assert snap["nixos"]["profile_generation"] == 3
    lab.nixos("media", upstream="r5")
    with runner(lab, "media") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#media"])
        r.run(["mkdir", "-p", p["state_dir"] + "/run-1"])
        r.run(["sh", "-c", f"echo switched > {p['state_dir']}/journal"])
    assert nix_state(lab, "media")["current"] == 4
    upid = api.post(f"{base}/snapshot/moxflow-pre-update/rollback")
    assert api.task(upid)["exitstatus"] == "OK"
    assert lab.guest(101)["status"] == "stopped"  # no vmstate, no start=1: stopped
    state = nix_state(lab, "media")
    assert not state["up"] and ssh_refused(lab, "media") and health(lab, "media") is None
    assert [g["generation"] for g in state["generations"]] == [1, 2, 3]
    assert state["profile_generation"] == 3
    assert lock.read_text() == lock_before
    assert list(Path(p["state_dir"]).iterdir()) == []
    assert not (Path(p["profile"]).parent / "system-4-link").exists()
    assert api.task(api.post(f"{base}/status/start"))["type"] == "qmstart"
    wait_until(lambda: nix_state(lab, "media")["up"], timeout=5.0)
    assert nix_state(lab, "media")["current"] == 3
    assert health(lab, "media") == (200, "ok\n")
    with runner(lab, "media") as r:
        gens = json.loads(r.run(["nixos-rebuild", "list-generations", "--json"]).stdout)
    assert [(g["generation"], g["current"]) for g in gens] == [(3, True), (2, False), (1, False)]


def test_a_rollback_with_vmstate_keeps_the_host_running(lab: LabClient, api: Api) -> None:
    p = paths(lab, "media")
    base = "/nodes/pve1/qemu/101"
    assert api.task(api.post(f"{base}/snapshot", snapname="ram", vmstate=1))["exitstatus"] == "OK"
    lab.nixos("media", upstream="r6")
    with runner(lab, "media") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#media"])
    assert api.task(api.post(f"{base}/snapshot/ram/rollback"))["exitstatus"] == "OK"
    assert lab.guest(101)["status"] == "running"
    state = nix_state(lab, "media")
    assert state["up"] and (state["current"], state["profile_generation"]) == (3, 3)


def test_a_zfs_rollback_of_the_guest_disk_restores_the_host(lab: LabClient) -> None:
    """The inventory's snapshot method zfs: the container's dataset on its node."""
    p = paths(lab, "dns")
    disk = "rpool/data/subvol-100-disk-0"
    with runner(lab, "pve1") as pve1:
        pve1.run(["zfs", "snapshot", f"{disk}@moxflow-pre-update"])
        lab.nixos("dns", upstream="r7")
        with runner(lab, "dns") as r:
            r.run(["nix", "flake", "update", "--flake", p["flake"]])
            r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#dns"])
        assert nix_state(lab, "dns")["current"] == 4
        pve1.run(["zfs", "rollback", f"{disk}@moxflow-pre-update"])
    wait_until(lambda: nix_state(lab, "dns")["up"], timeout=5.0)
    state = nix_state(lab, "dns")
    assert (state["current"], state["profile_generation"]) == (3, 3)
    assert [g["generation"] for g in state["generations"]] == [1, 2, 3]
    assert state["flake_rev"] != state["upstream_rev"]


def test_a_failing_rollback_leaves_the_guest_locked_and_down(lab: LabClient, api: Api) -> None:
    base = "/nodes/pve2/qemu/102"
    assert api.task(api.post(f"{base}/snapshot", snapname="pre"))["exitstatus"] == "OK"
    lab.fault(target="task", type="qmrollback", id="102", action="error", exitstatus="zfs error")
    status = api.task(api.post(f"{base}/snapshot/pre/rollback", start=1))
    assert status["exitstatus"] == "zfs error"
    guest = lab.guest(102)
    assert (guest["status"], guest["lock"]) == ("stopped", "rollback")
    assert not nix_state(lab, "builder")["up"] and ssh_refused(lab, "builder")


def test_reboot_boots_the_profile_generation(lab: LabClient) -> None:
    p = paths(lab, "builder")
    with runner(lab, "builder") as r:
        r.run(["nix-env", "-p", p["profile"], "--switch-generation", "2"])
        assert nix_state(lab, "builder")["current"] == 3  # not activated yet
        r.run(["systemctl", "reboot"])
    assert nix_state(lab, "builder")["boots"] == 1
    wait_until(lambda: nix_state(lab, "builder")["up"], timeout=5.0)
    with runner(lab, "builder") as r:
        gens = json.loads(r.run(["nixos-rebuild", "list-generations", "--json"]).stdout)
    assert [g["generation"] for g in gens if g["current"]] == [2]
    assert nix_state(lab, "builder")["current"] == 2


def test_builds_on_many_hosts_run_in_parallel(lab: LabClient) -> None:
    for host in NIXOS_HOSTS:
        lab.nixos(host, upstream="parallel", build_seconds=40.0)  # 1 s each
    results: dict[str, tuple[int, str, str]] = {}

    def build(host: str) -> None:
        flake = paths(lab, host)["flake"]
        lab.exec(host, ["nix", "flake", "update", "--flake", flake])
        results[host] = lab.exec(host, ["nixos-rebuild", "build", "--flake", f"{flake}#{host}"])

    started = time.monotonic()
    threads = [threading.Thread(target=build, args=(h,)) for h in NIXOS_HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - started
    assert all(rc == 0 for rc, _, _ in results.values()), results
    assert 1.0 <= elapsed < 2.5  # not 3 s one after the other


def test_reset_restores_everything(lab: LabClient) -> None:
    p = paths(lab, "media")
    lab.nixos("media", upstream="r9", failed_units=["jellyfin"], cut_network=True)
    with runner(lab, "media") as r:
        r.run(["nix", "flake", "update", "--flake", p["flake"]])
        r.run(deadman_argv(p["profile"], 3, 4000))
        r.run(["touch", p["state_dir"] + "/lock"])
        with pytest.raises(SshConnectError):
            r.run(["nixos-rebuild", "switch", "--flake", p["flake"] + "#media"])
    assert ssh_refused(lab, "media")
    lab.reset()
    state = nix_state(lab, "media")
    assert (state["current"], state["profile_generation"], state["network_cut"]) == (3, 3, False)
    assert state["timers"] == [] and state["failed_units"] == []
    assert state["next"] == {
        "build_fails": False, "failed_units": [], "health_broken": False,
        "cut_network": False, "deadman_broken": False,
    }  # fmt: skip
    assert state["flake_rev"] == state["upstream_rev"]
    assert list(Path(p["state_dir"]).iterdir()) == []
    assert not (Path(p["profile"]).parent / "system-4-link").exists()
    assert health(lab, "media") == (200, "ok\n")
    with runner(lab, "media") as r:
        assert isinstance(r.run(["systemctl", "is-system-running"]), CommandResult)


def test_cli_nixos_sets_the_next_generation(lab: LabClient) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "labsim", "nixos", "--dir", str(lab.dir), "--host", "media",
            "--failed-units", "jellyfin,nginx", "--health-broken", "--build-seconds", "2",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["next"]["failed_units"] == ["jellyfin.service", "nginx.service"]
    assert state["next"]["health_broken"] and not state["next"]["cut_network"]
    assert state["build_seconds"] == 2.0
    healthy = lab.nixos("media", healthy=True)
    assert healthy["next"]["failed_units"] == [] and not healthy["next"]["health_broken"]
