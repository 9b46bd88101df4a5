"""The simulated Proxmox VE API, spoken to with plain ``requests`` as a real client would.

Each test starts from ``fresh_lab`` (the session's lab, reset) and asserts what a client sees
(status, reason phrase, body) and what the lab's state becomes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import requests

from labsim import pve, schema
from labsim.client import LabClient, wait_until
from labsim.lab import Lab, LabOptions


class Api:
    """A tiny client: the lab's URL, CA and token; returns raw responses."""

    def __init__(self, lab: LabClient, secret: str | None = None) -> None:
        self.lab = lab
        self.base = lab.api_url
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=
        self.session.verify = str(lab.ca_file)
        token = f"{lab.info['api']['token_id']}={secret or lab.token_secret()}"
        self.session.headers["Authorization"] = f"PVEAPIToken={token}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=10)

    def post(self, path: str, **data: Any) -> requests.Response:
        return self.session.post(self.base + path, data=data, timeout=10)

    def delete(self, path: str, **params: Any) -> requests.Response:
        return self.session.delete(self.base + path, params=params, timeout=10)

    def data(self, resp: requests.Response) -> Any:
        assert resp.status_code == 200, f"{resp.status_code} {resp.reason}: {resp.text}"
        return resp.json()["data"]

    def wait_task(self, upid: str, timeout: float = 5.0) -> dict[str, Any]:
        node = upid.split(":")[1]

        def stopped() -> dict[str, Any] | None:
            status: dict[str, Any] = self.data(self.get(f"/nodes/{node}/tasks/{upid}/status"))
            return status if status["status"] == "stopped" else None

        return wait_until(stopped, timeout)

    def snapshots(self, node: str, gtype: str, vmid: int) -> dict[str, dict[str, Any]]:
        items = self.data(self.get(f"/nodes/{node}/{gtype}/{vmid}/snapshot"))
        return {s["name"]: s for s in items}

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def api(fresh_lab: LabClient) -> Iterator[Api]:
    client = Api(fresh_lab)
    yield client
    client.close()


# --- auth, routing, validation ----------------------------------------------------------------


def test_wrong_token_is_401(fresh_lab: LabClient) -> None:
    bad = Api(fresh_lab, secret="00000000-0000-0000-0000-000000000000")
    resp = bad.get("/version")
    assert (resp.status_code, resp.reason) == (401, "authentication failure")
    assert resp.json() == {"data": None}
    anonymous = requests.get(
        fresh_lab.api_url + "/version", verify=str(fresh_lab.ca_file), timeout=10
    )
    assert anonymous.status_code == 401
    bad.close()


def test_version_and_keep_alive(api: Api) -> None:
    first = api.data(api.get("/version"))
    assert first["release"].startswith("9.")
    for _ in range(5):  # the same connection serves them all
        assert api.get("/version").status_code == 200


def test_unknown_path_or_method_is_501(api: Api) -> None:
    resp = api.get("/foo")
    assert (resp.status_code, resp.reason) == (501, "Method 'GET /foo' not implemented")
    resp = api.post("/version")
    assert (resp.status_code, resp.reason) == (501, "Method 'POST /version' not implemented")


def test_unknown_parameter_is_400_with_errors(api: Api) -> None:
    resp = api.post("/nodes/pve1/qemu/101/snapshot", snapname="ok1", bogus="1")
    assert (resp.status_code, resp.reason) == (400, "Parameter verification failed.")
    assert resp.json()["errors"] == {
        "bogus": "property is not defined in schema and the schema does not allow additional "
        "properties"
    }


def test_invalid_snapname_is_400(api: Api) -> None:
    resp = api.post("/nodes/pve1/qemu/101/snapshot", snapname="1-starts-with-a-digit")
    assert resp.status_code == 400
    assert resp.json() == {
        "data": None,
        "errors": {"snapname": "invalid format - invalid configuration ID '1-starts-with-a-digit'"},
    }
    resp = api.post("/nodes/pve1/qemu/101/snapshot", description="no name")
    assert resp.json()["errors"] == {"snapname": "property is missing and it is not optional"}
    resp = api.get("/nodes/pve1/qemu/abc/snapshot")
    assert resp.json()["errors"] == {"vmid": "type check ('integer') failed - got 'abc'"}


def test_reserved_snapshot_name_fails_at_once(api: Api) -> None:
    resp = api.post("/nodes/pve1/qemu/101/snapshot", snapname="current")
    assert (resp.status_code, resp.reason) == (
        500,
        "unable to use snapshot name 'current' (reserved name)",
    )


def test_every_request_is_logged(fresh_lab: LabClient, api: Api) -> None:
    api.get("/cluster/resources", type="vm")
    api.post("/nodes/pve1/qemu/101/snapshot", snapname="ok1", bogus="1")
    log = fresh_lab.api_requests()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/cluster/resources", 200),
        ("POST", "/nodes/pve1/qemu/101/snapshot", 400),
    ]
    assert log[0]["template"] == "/cluster/resources"
    assert log[0]["params"] == {"type": "vm"}
    assert log[1]["template"] == "/nodes/{node}/qemu/{vmid}/snapshot"
    assert set(log[1]["errors"]) == {"bogus"}
    assert fresh_lab.api_requests(since=log[0]["seq"]) == log[1:]


def test_every_served_endpoint_is_in_the_schema_subset() -> None:
    served = pve.served_endpoints()
    assert len(served) >= 25
    for method, template in served:
        assert method in schema.methods(template), f"{method} {template}"


# --- inventory --------------------------------------------------------------------------------


def test_cluster_resources_are_shaped_like_pve(api: Api) -> None:
    vms = {r["vmid"]: r for r in api.data(api.get("/cluster/resources", type="vm"))}
    assert sorted(vms) == [100, 101, 102, 103, 104, 105, 9000]
    media = vms[101]
    assert media["id"] == "qemu/101"
    assert (media["type"], media["name"], media["node"], media["status"]) == (
        "qemu",
        "media-vm",
        "pve1",
        "running",
    )
    assert (media["tags"], media["pool"], media["template"]) == ("media", "apps", 0)
    assert "lock" not in media
    assert vms[100]["type"] == "lxc" and vms[100]["tags"] == "infra;dns"
    assert vms[103]["status"] == "stopped" and vms[103]["tags"] == "windows;gaming;nosnap"
    assert vms[9000]["template"] == 1
    assert "tags" not in vms[105] and "pool" not in vms[105]
    nodes = api.data(api.get("/cluster/resources", type="node"))
    assert {n["node"] for n in nodes} == {"pve1", "pve2"}
    status = api.data(api.get("/cluster/status"))
    assert status[0]["type"] == "cluster" and status[0]["quorate"] == 1


def test_node_views(api: Api) -> None:
    assert [n["node"] for n in api.data(api.get("/nodes"))] == ["pve1", "pve2"]
    assert api.data(api.get("/nodes/pve2/status"))["current-kernel"]["release"]
    assert [g["vmid"] for g in api.data(api.get("/nodes/pve2/qemu"))] == [102, 103, 104]
    assert [g["vmid"] for g in api.data(api.get("/nodes/pve2/lxc"))] == [105]
    storages = {s["storage"]: s for s in api.data(api.get("/nodes/pve1/storage"))}
    assert set(storages) == {"local", "local-zfs", "nas-backup"}
    assert storages["nas-backup"]["shared"] == 1
    backup = api.data(api.get("/nodes/pve1/storage", content="backup"))
    assert {s["storage"] for s in backup} == {"local", "nas-backup"}


def test_guest_on_the_wrong_node_is_a_missing_config_file(api: Api) -> None:
    resp = api.get("/nodes/pve2/qemu/101/status/current")
    assert (resp.status_code, resp.reason) == (
        500,
        "Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist",
    )
    resp = api.get("/nodes/pve1/lxc/105/snapshot")
    assert resp.reason == "Configuration file 'nodes/pve1/lxc/105.conf' does not exist"
    assert api.data(api.get("/nodes/pve1/qemu/101/status/current"))["status"] == "running"


def test_unknown_node(api: Api) -> None:
    resp = api.get("/nodes/pve9/qemu")
    assert resp.status_code == 500
    assert resp.reason.startswith("hostname lookup 'pve9' failed")


def test_snapshot_list_has_current_and_parents(api: Api) -> None:
    snaps = api.snapshots("pve1", "qemu", 101)
    digest = api.data(api.get("/nodes/pve1/qemu/101/config"))["digest"]
    assert snaps["current"] == {
        "name": "current",
        "digest": digest,
        "description": "You are here!",
        "running": 1,
        "parent": "before-upgrade",
    }
    assert snaps["before-upgrade"]["vmstate"] == 0
    assert "parent" not in snaps["before-upgrade"]
    digest = api.data(api.get("/nodes/pve1/lxc/100/config"))["digest"]
    assert api.snapshots("pve1", "lxc", 100) == {
        "current": {
            "name": "current",
            "digest": digest,
            "description": "You are here!",
            "running": 1,
        }
    }


# --- snapshots and tasks ----------------------------------------------------------------------


def test_snapshot_create_runs_as_a_task_then_is_listed(fresh_lab: LabClient, api: Api) -> None:
    upid = api.data(
        api.post("/nodes/pve1/qemu/101/snapshot", snapname="moxflow-hourly-1", description="m")
    )
    assert upid.startswith("UPID:pve1:") and ":qmsnapshot:101:root@pam!moxflow:" in upid
    status = api.wait_task(upid)
    assert status["exitstatus"] == "OK"
    assert (status["type"], status["id"], status["user"]) == ("qmsnapshot", "101", "root@pam")
    snaps = api.snapshots("pve1", "qemu", 101)
    assert snaps["moxflow-hourly-1"]["parent"] == "before-upgrade"
    assert snaps["moxflow-hourly-1"]["description"] == "m"
    assert "snapstate" not in snaps["moxflow-hourly-1"]
    assert snaps["current"]["parent"] == "moxflow-hourly-1"
    log = api.data(api.get(f"/nodes/pve1/tasks/{upid}/log"))
    assert log[-1] == {"n": len(log), "t": "TASK OK"}
    assert fresh_lab.guest(101)["lock"] is None
    listed = api.data(api.get("/nodes/pve1/tasks", typefilter="qmsnapshot"))
    assert [t["upid"] for t in listed] == [upid]
    assert listed[0]["status"] == "OK"


def test_current_entry_has_the_config_digest_and_running(api: Api) -> None:
    # the pseudo entry as qemu-server (src/PVE/API2/Qemu.pm) and pve-container
    # (src/PVE/API2/LXC/Snapshot.pm) write it in snapshot_list, for VMs and containers alike:
    # {name: current, digest: the config's digest, running: 0|1, description, parent?}
    for node, gtype, vmid, running in (
        ("pve1", "qemu", 101, 1),
        ("pve2", "qemu", 103, 0),
        ("pve1", "lxc", 100, 1),
        ("pve2", "lxc", 105, 0),
    ):
        current = api.snapshots(node, gtype, vmid)["current"]
        config = api.data(api.get(f"/nodes/{node}/{gtype}/{vmid}/config"))
        assert current["digest"] == config["digest"], (gtype, vmid)
        assert (current["running"], current["description"]) == (running, "You are here!")
    before = api.snapshots("pve1", "qemu", 101)["current"]["digest"]
    api.wait_task(api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="d1")))
    after = api.snapshots("pve1", "qemu", 101)["current"]
    assert after["parent"] == "d1" and after["digest"] != before  # the config changed


def test_container_snapshot_and_delete(fresh_lab: LabClient, api: Api) -> None:
    upid = api.data(api.post("/nodes/pve1/lxc/100/snapshot", snapname="s1"))
    assert ":vzsnapshot:100:" in upid
    assert api.wait_task(upid)["exitstatus"] == "OK"
    upid = api.data(api.delete("/nodes/pve1/lxc/100/snapshot/s1"))
    assert ":vzdelsnapshot:100:" in upid
    assert api.wait_task(upid)["exitstatus"] == "OK"
    assert set(api.snapshots("pve1", "lxc", 100)) == {"current"}
    assert fresh_lab.guest(100)["snapshots"] == {}


def test_delete_reparents_and_missing_snapshot_fails_in_the_task(api: Api) -> None:
    for name in ("a1", "a2"):
        api.wait_task(api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname=name)))
    upid = api.data(api.delete("/nodes/pve1/qemu/101/snapshot/a1"))
    assert api.wait_task(upid)["exitstatus"] == "OK"
    snaps = api.snapshots("pve1", "qemu", 101)
    assert snaps["a2"]["parent"] == "before-upgrade"
    upid = api.data(api.delete("/nodes/pve1/qemu/101/snapshot/a1"))
    assert api.wait_task(upid)["exitstatus"] == "snapshot 'a1' does not exist"
    resp = api.get("/nodes/pve1/qemu/101/snapshot/a1/config")
    assert (resp.status_code, resp.reason) == (500, "snapshot 'a1' does not exist")
    assert api.data(api.get("/nodes/pve1/qemu/101/snapshot/a2/config"))["name"] == "media-vm"


def test_existing_name_and_template_fail_in_the_task(api: Api) -> None:
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="before-upgrade"))
    assert api.wait_task(upid)["exitstatus"] == "snapshot name 'before-upgrade' already used"
    upid = api.data(api.post("/nodes/pve1/qemu/9000/snapshot", snapname="t1"))
    assert api.wait_task(upid)["exitstatus"] == "you can't take a snapshot if it's a template"


def test_locked_guest_task_fails_at_once(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.set_guest(101, lock="backup")
    resources = {r["vmid"]: r for r in api.data(api.get("/cluster/resources", type="vm"))}
    assert resources[101]["lock"] == "backup"
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="s1"))
    status = api.data(api.get(f"/nodes/pve1/tasks/{upid}/status"))
    assert (status["status"], status["exitstatus"]) == ("stopped", "VM is locked (backup)")
    log = api.data(api.get(f"/nodes/pve1/tasks/{upid}/log"))
    assert log[-1]["t"] == "TASK ERROR: VM is locked (backup)"
    fresh_lab.set_guest(100, lock="backup")
    upid = api.data(api.post("/nodes/pve1/lxc/100/snapshot", snapname="s1"))
    assert api.wait_task(upid)["exitstatus"] == "CT is locked (backup)"
    assert "s1" not in api.snapshots("pve1", "qemu", 101)


def test_running_snapshot_locks_the_guest(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.set_time_scale(1000.0)  # a snapshot now takes 2000 s
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="slow1"))
    status = api.data(api.get(f"/nodes/pve1/tasks/{upid}/status"))
    assert status["status"] == "running" and "exitstatus" not in status
    assert fresh_lab.guest(101)["lock"] == "snapshot"
    assert api.snapshots("pve1", "qemu", 101)["slow1"]["snapstate"] == "prepare"
    second = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="slow2"))
    assert api.wait_task(second)["exitstatus"] == "VM is locked (snapshot)"
    active = api.data(api.get("/nodes/pve1/tasks", source="active"))
    assert [t["upid"] for t in active] == [upid]
    fresh_lab.reset()  # back to the initial time scale, task and snapshot gone
    assert fresh_lab.state()["time_scale"] == pytest.approx(0.025)
    assert "slow1" not in fresh_lab.guest(101)["snapshots"]


def test_a_snapshots_description_is_not_updated_while_the_guest_is_locked(
    fresh_lab: LabClient, api: Api
) -> None:
    # qemu-server's update_snapshot_config: check_lock inside lock_config, then the snapshot
    path = "/nodes/pve1/qemu/101/snapshot/before-upgrade/config"
    fresh_lab.set_time_scale(1000.0)  # a rollback now takes 2000 s
    api.data(api.post("/nodes/pve1/qemu/101/snapshot/before-upgrade/rollback"))
    assert fresh_lab.guest(101)["lock"] == "rollback"
    resp = api.session.put(api.base + path, data={"description": "x"}, timeout=10)
    assert (resp.status_code, resp.reason) == (500, "VM is locked (rollback)")
    resp = api.session.put(
        api.base + path.replace("before-upgrade", "nope"), data={"description": "x"}, timeout=10
    )
    assert (resp.status_code, resp.reason) == (500, "VM is locked (rollback)")
    assert fresh_lab.guest(101)["snapshots"]["before-upgrade"]["description"] != "x"
    fresh_lab.reset()
    resp = api.session.put(api.base + path, data={"description": "x"}, timeout=10)
    assert resp.status_code == 200
    assert fresh_lab.guest(101)["snapshots"]["before-upgrade"]["description"] == "x"


def test_time_scale_shortens_tasks(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.set_time_scale(0.001)  # 2 ms
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="quick"))
    assert api.wait_task(upid, timeout=1.0)["exitstatus"] == "OK"


def test_rollback_only_to_the_newest_on_zfs(fresh_lab: LabClient, api: Api) -> None:
    api.wait_task(api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="newest")))
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot/before-upgrade/rollback"))
    assert api.wait_task(upid)["exitstatus"] == (
        "can't rollback, 'before-upgrade' is not most recent snapshot on 'local-zfs:vm-101-disk-0'"
    )
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot/newest/rollback", start=1))
    assert ":qmrollback:101:" in upid
    assert api.wait_task(upid)["exitstatus"] == "OK"
    guest = fresh_lab.guest(101)
    assert (guest["status"], guest["lock"], guest["parent"]) == ("running", None, "newest")


# --- faults -----------------------------------------------------------------------------------


def test_api_error_fault_then_success(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(
        target="api",
        method="POST",
        path=r"^/nodes/pve1/qemu/101/snapshot$",
        action="error",
        status=500,
        message="internal error",
        times=2,
    )
    for _ in range(2):
        resp = api.post("/nodes/pve1/qemu/101/snapshot", snapname="f1")
        assert (resp.status_code, resp.reason) == (500, "internal error")
    assert api.get("/nodes/pve1/qemu/101/snapshot").status_code == 200  # GET not matched
    assert fresh_lab.state()["faults"] == []  # used up
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="f1"))
    assert api.wait_task(upid)["exitstatus"] == "OK"


def test_api_drop_fault_closes_the_connection(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(target="api", path="^/version$", action="drop", times=1)
    with pytest.raises(requests.ConnectionError):
        api.get("/version")
    assert api.get("/version").status_code == 200
    dropped = [e for e in fresh_lab.api_requests() if e["reason"] == "dropped"]
    assert len(dropped) == 1


def test_api_hang_fault_is_released_by_clearing(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(target="api", path="^/cluster/status$", action="hang")
    with pytest.raises(requests.Timeout):
        api.session.get(api.base + "/cluster/status", timeout=0.3)
    fresh_lab.clear_faults()
    assert api.get("/cluster/status").status_code == 200


def test_api_slow_fault_delays_then_answers(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(target="api", path="^/version$", action="slow", delay=0.2, times=1)
    resp = api.get("/version")
    assert resp.status_code == 200
    assert resp.elapsed.total_seconds() >= 0.18  # Event.wait may wake a hair early


def test_task_error_fault(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(
        target="task", type="qmsnapshot", id="101", action="error", exitstatus="snapshot failed"
    )
    upid = api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="doomed"))
    status = api.wait_task(upid)
    assert status["exitstatus"] == "snapshot failed"
    assert "doomed" not in api.snapshots("pve1", "qemu", 101)  # cleaned up like PVE does
    assert fresh_lab.guest(101)["lock"] is None
    upid = api.data(api.post("/nodes/pve2/qemu/102/snapshot", snapname="fine"))
    assert api.wait_task(upid)["exitstatus"] == "OK"  # another guest is not affected


def test_task_hang_fault(fresh_lab: LabClient, api: Api) -> None:
    fresh_lab.fault(target="task", type="qmdelsnapshot", action="hang", times=1)
    upid = api.data(api.delete("/nodes/pve1/qemu/101/snapshot/before-upgrade"))
    with pytest.raises(TimeoutError):
        api.wait_task(upid, timeout=0.3)
    assert fresh_lab.guest(101)["lock"] == "snapshot-delete"


def test_bad_fault_specs_are_refused(fresh_lab: LabClient) -> None:
    from labsim.client import LabError

    with pytest.raises(LabError, match="target"):
        fresh_lab.fault(target="moon", action="error")
    with pytest.raises(LabError, match="regex"):
        fresh_lab.fault(target="api", path="(", action="error")


def test_reset_restores_the_initial_state(fresh_lab: LabClient, api: Api) -> None:
    api.wait_task(api.data(api.post("/nodes/pve1/qemu/101/snapshot", snapname="gone")))
    fresh_lab.set_guest(102, lock="backup", status="stopped")
    fresh_lab.fault(target="api", path="^/nodes$", action="error")
    fresh_lab.reset()
    state = fresh_lab.state()
    assert set(state["guests"]["101"]["snapshots"]) == {"before-upgrade"}
    assert state["guests"]["102"]["lock"] is None
    assert state["guests"]["102"]["status"] == "running"
    assert state["faults"] == [] and state["tasks"] == []
    assert fresh_lab.api_requests() == []
    assert api.get("/nodes").status_code == 200


# --- state, exec, topology --------------------------------------------------------------------


def test_state_has_everything(fresh_lab: LabClient) -> None:
    state = fresh_lab.state()
    assert set(state) >= {"cluster", "nodes", "guests", "storages", "tasks", "hosts", "faults"}
    assert set(state["hosts"]) == {"pve1", "pve2", "nas", "offsite", "dns", "media", "builder"}
    assert state["hosts"]["pve1"]["port"] == fresh_lab.info["hosts"]["pve1"]["port"]
    assert state["guests"]["101"]["snapshots"]["before-upgrade"]["snaptime"] > 0


def test_exec_dispatches_to_the_simulated_command(fresh_lab: LabClient) -> None:
    rc, out, err = fresh_lab.exec("pve1", ["zfs", "list", "-H", "-o", "name"])
    assert rc == 0, err
    assert "rpool/data" in out.split()
    rc, _, err = fresh_lab.exec("pve1", ["no-such-tool"])
    assert rc == 127 and "not found" in err


def test_ssh_host_runs_the_simulated_zfs(fresh_lab: LabClient) -> None:
    """End to end: the lab's key and known_hosts, the SSH server, the shim, the socket."""
    d = fresh_lab.dir
    port = fresh_lab.info["hosts"]["pve1"]["port"]

    async def run() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="root",
            client_keys=[str(d / "id_ed25519")],
            known_hosts=str(d / "known_hosts"),
            agent_path=None,
            config=None,
        ) as conn:
            return await conn.run("zfs list -H -o name -r rpool/data", check=False, timeout=10)

    result = asyncio.run(run())
    assert result.exit_status == 0, result.stderr
    assert "rpool/data" in str(result.stdout).split()


def test_lab_files(fresh_lab: LabClient) -> None:
    d = fresh_lab.dir
    for name in ("pve-root-ca.pem", "pve-token", "id_ed25519", "id_ed25519.pub", "known_hosts"):
        assert (d / name).is_file(), name
    assert (d / "pve-token").stat().st_mode & 0o077 == 0
    lines = (d / "known_hosts").read_text().splitlines()
    assert len(lines) == 7  # pve1, pve2, nas, offsite, dns, media, builder
    assert all(line.startswith("[127.0.0.1]:") and " ssh-ed25519 AAAA" in line for line in lines)
    inventory = (d / "inventory.toml").read_text()
    assert 'token_secret = "file:pve-token"' in inventory
    assert 'select = "@all,-@tag-nosnap"' in inventory
    assert inventory.count("[[zfs.datasets]]") == 4
    assert os.access(d / "bin" / "zfs", os.X_OK)


def test_generated_topology() -> None:
    lab = Lab(LabOptions(nodes=3, guests_per_node=6))
    assert list(lab.nodes) == ["pve1", "pve2", "pve3"]
    per_node = {n: [g for g in lab.guests.values() if g.node == n] for n in lab.nodes}
    for guests in per_node.values():
        assert len(guests) == 7
        assert sum(g.template for g in guests) == 1
        assert {g.type for g in guests} == {"qemu", "lxc"}
    assert any(g.status == "stopped" and not g.template for g in lab.guests.values())
    assert len({tuple(g.tags) for g in lab.guests.values()}) > 3
    assert set(lab.hosts) == {"pve1", "pve2", "pve3", "nas", "offsite"}


# --- the command line -------------------------------------------------------------------------


def _labsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labsim", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_up_state_fault_down(tmp_path: Path) -> None:
    d = str(tmp_path / "cli-lab")
    up = _labsim("up", "--dir", d, "--time-scale", "0.01")
    assert up.returncode == 0, up.stderr
    try:
        assert "Proxmox API  https://127.0.0.1:" in up.stdout
        again = _labsim("up", "--dir", d)
        assert again.returncode == 0 and "already running" in again.stdout
        fault = _labsim(
            "fault", "--dir", d, "--target", "api", "--path", "^/version$",
            "--action", "error", "--status", "503", "--times", "1",
        )  # fmt: skip
        assert fault.returncode == 0, fault.stderr
        state = json.loads(_labsim("state", "--dir", d).stdout)
        assert state["faults"][0]["status"] == 503
        assert state["time_scale"] == pytest.approx(0.01)
        assert _labsim("fault", "--dir", d, "--clear").returncode == 0
        assert _labsim("time-scale", "--dir", d, "0.5").returncode == 0
        assert json.loads(_labsim("state", "--dir", d).stdout)["time_scale"] == 0.5
        assert _labsim("reset", "--dir", d).returncode == 0
    finally:
        down = _labsim("down", "--dir", d)
    assert down.returncode == 0, down.stderr
    gone = _labsim("state", "--dir", d)
    assert gone.returncode == 2
    assert f"no lab running in {Path(d).resolve()}" in gone.stderr
    assert "python -m labsim up --dir" in gone.stderr


def test_cli_help_explains_every_option() -> None:
    out = _labsim("fault", "--help").stdout
    for option in ("--target", "--action", "--method", "--path", "--host", "--command",
                   "--type", "--id", "--status", "--message", "--exit", "--stderr",
                   "--exitstatus", "--delay", "--times", "--clear"):  # fmt: skip
        assert option in out
