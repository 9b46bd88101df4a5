"""The lab's backups through its HTTPS API: vzdump, archives on storages, prune, restore.

Sizes: guest 100 (8 GiB) makes a 1.2 GiB archive, 101 (64 GiB) 12.8 GiB, 104 (32 GiB)
12.8 GiB; tests set a storage's bandwidth so that a backup takes a fraction of a second at
the session's time scale (0.025).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncssh
import pytest
import requests

from labsim import pve, schema
from labsim.client import LabClient, wait_until
from labsim.pve import backups
from labsim.pve.backups import Archive
from tests.conftest import LAB_TIME_SCALE

GiB = 1024**3
MiB = 1024**2
VOLID_RE = re.compile(r"^nas-backup:backup/vzdump-(qemu|lxc)-\d+-\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d\.")


class Api:
    def __init__(self, lab: LabClient) -> None:
        self.lab = lab
        self.base = lab.api_url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(lab.ca_file)
        token = f"{lab.info['api']['token_id']}={lab.token_secret()}"
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

    def wait_task(self, upid: str, timeout: float = 8.0) -> dict[str, Any]:
        node = upid.split(":")[1]

        def stopped() -> dict[str, Any] | None:
            status: dict[str, Any] = self.data(self.get(f"/nodes/{node}/tasks/{upid}/status"))
            return status if status["status"] == "stopped" else None

        return wait_until(stopped, timeout)

    def log(self, upid: str) -> list[str]:
        node = upid.split(":")[1]
        lines = self.data(self.get(f"/nodes/{node}/tasks/{upid}/log", limit=1000))
        return [line["t"] for line in lines]

    def backups(self, node: str = "pve1", **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.data(
            self.get(f"/nodes/{node}/storage/nas-backup/content", content="backup", **params)
        )
        return items

    def vzdump(self, node: str, vmid: int | str, **params: Any) -> str:
        upid: str = self.data(
            self.post(
                f"/nodes/{node}/vzdump",
                vmid=vmid,
                storage=params.pop("storage", "nas-backup"),
                mode="snapshot",
                compress="zstd",
                **params,
            )
        )
        return upid


@pytest.fixture
def api(fresh_lab: LabClient) -> Iterator[Api]:
    client = Api(fresh_lab)
    yield client
    client.session.close()


def _fast(lab: LabClient, seconds: float = 0.2, size: float = 1.2 * GiB) -> None:
    """Make nas-backup write an archive of ``size`` in ``seconds`` of real time."""
    lab.set_storage("nas-backup", bandwidth=size / (seconds / LAB_TIME_SCALE))


def _archive(lab: LabClient, volid: str) -> dict[str, Any]:
    for st in lab.state()["storages"].values():
        for a in st["archives"]:
            if a["volid"] == volid:
                result: dict[str, Any] = a
                return result
    raise AssertionError(f"no archive {volid}")


# --- vzdump -----------------------------------------------------------------------------------


def test_vzdump_makes_a_real_archive_with_notes(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab)
    upid = api.vzdump(
        "pve1",
        100,
        **{"notes-template": "{{guestname}} on {{node}} in {{cluster}} ({{vmid}})", "protected": 1},
    )
    assert upid.startswith("UPID:pve1:") and ":vzdump:100:" in upid
    assert fresh_lab.guest(100)["lock"] == "backup"
    assert fresh_lab.state()["vzdump_locks"] == {"pve1": upid}
    status = api.wait_task(upid)
    assert status["exitstatus"] == "OK"
    log = api.log(upid)
    assert log[0].startswith("INFO: starting new backup job: vzdump 100 --storage nas-backup")
    assert any(re.fullmatch(r"INFO: archive file size: 1\.\d\dGB", line) for line in log)
    assert any(line.startswith("INFO: Backup finished at ") for line in log)
    assert log[-2:] == ["INFO: Backup job finished successfully", "TASK OK"]
    assert fresh_lab.guest(100)["lock"] is None
    assert fresh_lab.state()["vzdump_locks"] == {}

    [item] = api.backups(vmid=100)
    assert VOLID_RE.match(item["volid"]) and item["volid"].endswith(".tar.zst")
    assert item["notes"] == "dns on pve1 in labsim (100)"
    assert item["protected"] == 1
    assert (item["subtype"], item["format"], item["vmid"]) == ("lxc", "tar.zst", 100)
    assert item["size"] == int(8 * GiB * 0.15) + 100 * 4096
    state = _archive(fresh_lab, item["volid"])
    path = Path(fresh_lab.info["storages"]["nas-backup"]["path"]) / item["volid"].split("/")[-1]
    assert state["path"] == str(path)
    data = path.read_bytes()
    assert len(data) == item["size"] // MiB
    assert hashlib.sha256(data).hexdigest() == state["sha256"]
    assert path.with_name(path.name + ".notes").read_text() == "dns on pve1 in labsim (100)\n"
    assert path.with_name(path.name + ".protected").exists()
    # the same on pve2: the storage is shared
    assert [b["volid"] for b in api.backups("pve2", vmid=100)] == [item["volid"]]


def test_vzdump_of_a_guest_on_another_node_answers_ok(api: Api, fresh_lab: LabClient) -> None:
    assert api.data(api.post("/nodes/pve2/vzdump", vmid=100, storage="nas-backup")) == "OK"
    state = fresh_lab.state()
    assert state["tasks"] == [] and state["backup_jobs"] == []
    assert api.backups(vmid=100) == []


def test_vzdump_serialises_per_node(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab, 0.3)
    first = api.vzdump("pve1", 100)
    second = api.vzdump("pve1", 100, storage="local")
    other = api.vzdump("pve2", 105, storage="local")  # another node: not blocked
    jobs = {j["upid"]: j for j in fresh_lab.state()["backup_jobs"]}
    assert jobs[first]["state"] == "running"
    assert jobs[second]["state"] == "waiting"
    assert jobs[other]["state"] == "running"
    assert "INFO: trying to get global lock - waiting..." in api.log(second)
    t0 = time.monotonic()
    api.wait_task(first)
    assert fresh_lab.state()["vzdump_locks"]["pve1"] == second
    assert api.wait_task(second)["exitstatus"] == "OK"
    assert "INFO: got global lock" in api.log(second)
    assert time.monotonic() - t0 > 0.1  # it ran after the first one, not alongside
    local = api.data(api.get("/nodes/pve1/storage/local/content", content="backup"))
    assert [b["vmid"] for b in local] == [100]
    assert api.data(api.get("/nodes/pve2/storage/local/content", vmid=100)) == []


def test_bandwidth_is_shared_between_backups_to_one_storage(api: Api, fresh_lab: LabClient) -> None:
    bw = 1.2 * GiB / (0.3 / LAB_TIME_SCALE)
    fresh_lab.set_storage("nas-backup", bandwidth=bw)
    one = api.vzdump("pve1", 100)
    two = api.vzdump("pve2", 105, bwlimit=int(bw / 4 / 1024))  # capped at a quarter
    rates = {j["upid"]: j["rate"] for j in fresh_lab.state()["backup_jobs"]}
    assert rates[two] == pytest.approx(bw / 4 / LAB_TIME_SCALE, rel=1e-3)
    assert rates[one] == pytest.approx(bw * 3 / 4 / LAB_TIME_SCALE, rel=1e-3)
    api.wait_task(one)
    [job] = fresh_lab.state()["backup_jobs"]
    assert job["rate"] == pytest.approx(bw / 4 / LAB_TIME_SCALE, rel=1e-3)  # still capped
    fresh_lab.set_storage("nas-backup", bandwidth=bw * 100)
    api.wait_task(two)
    # without caps: two equal shares
    fresh_lab.set_storage("nas-backup", bandwidth=bw)
    a, b = api.vzdump("pve1", 100), api.vzdump("pve2", 105)
    rates = {j["upid"]: j["rate"] for j in fresh_lab.state()["backup_jobs"]}
    assert rates[a] == pytest.approx(rates[b]) and rates[a] == pytest.approx(
        bw / 2 / LAB_TIME_SCALE, rel=1e-3
    )
    fresh_lab.set_storage("nas-backup", bandwidth=bw * 100)
    assert api.wait_task(a)["exitstatus"] == api.wait_task(b)["exitstatus"] == "OK"


def test_storage_full_fails_the_backup(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab)
    st = fresh_lab.state()["storages"]["nas-backup"]
    before = len(st["archives"])
    fresh_lab.set_storage(
        "nas-backup", used=st["total"] - sum(a["size"] for a in st["archives"]) - 100 * MiB
    )
    upid = api.vzdump("pve1", 100)
    status = api.wait_task(upid)
    assert status["exitstatus"] == "job errors"
    log = api.log(upid)
    assert any(
        line.startswith("ERROR: Backup of VM 100 failed") and "No space left on device" in line
        for line in log
    )
    assert log[-2:] == ["INFO: Backup job finished with errors", "TASK ERROR: job errors"]
    assert len(fresh_lab.state()["storages"]["nas-backup"]["archives"]) == before
    assert fresh_lab.guest(100)["lock"] is None


def test_task_faults_fail_or_hang_a_backup(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab)
    fresh_lab.fault(target="task", type="vzdump", id="100", action="error", times=1,
                    message="vma_queue_write: write error - Broken pipe")  # fmt: skip
    upid = api.vzdump("pve1", 100)
    assert api.wait_task(upid)["exitstatus"] == "job errors"
    assert "ERROR: Backup of VM 100 failed - vma_queue_write: write error - Broken pipe" in (
        api.log(upid)
    )
    fresh_lab.fault(target="task", type="vzdump", id="100", action="hang", times=1)
    hung = api.vzdump("pve1", 100)
    waiting = api.vzdump("pve1", 101, lockwait=1)  # 60 s × 0.025
    time.sleep(0.3)
    assert fresh_lab.guest(100)["lock"] == "backup"
    status = api.wait_task(waiting, timeout=5)
    assert status["exitstatus"] == "can't acquire lock '/var/run/vzdump.lock' - got timeout"
    assert fresh_lab.guest(101)["lock"] is None
    assert api.data(api.get(f"/nodes/pve1/tasks/{hung}/status"))["status"] == "running"
    api.data(api.delete(f"/nodes/pve1/tasks/{hung}"))  # stop it
    assert api.wait_task(hung)["exitstatus"] == "interrupted by signal"
    assert fresh_lab.guest(100)["lock"] is None
    assert fresh_lab.state()["vzdump_locks"] == {}
    assert api.wait_task(api.vzdump("pve1", 100))["exitstatus"] == "OK"


# --- content, prune ---------------------------------------------------------------------------


def test_initial_backups_and_delete(api: Api, fresh_lab: LabClient) -> None:
    items = api.backups()
    # sorted by volid: oldest first per guest; the older backup of 101 is protected
    assert [(b["vmid"], b.get("protected", 0)) for b in items] == [
        (101, 1), (101, 0), (104, 0), (104, 0)
    ]  # fmt: skip
    assert items[0]["notes"] == "media-vm before the Jellyfin upgrade"
    assert all(VOLID_RE.match(b["volid"]) for b in items)
    protected = next(b for b in items if b.get("protected"))
    path = f"/nodes/pve1/storage/nas-backup/content/{quote(protected['volid'], safe='')}"
    status = api.wait_task(api.data(api.delete(path)))
    assert status["exitstatus"].startswith("cannot remove protected archive")
    other = next(b for b in items if b["vmid"] == 104)
    file = Path(_archive(fresh_lab, other["volid"])["path"])
    assert file.is_file()
    path = f"/nodes/pve1/storage/nas-backup/content/{quote(other['volid'], safe='')}"
    assert api.wait_task(api.data(api.delete(path)))["exitstatus"] == "OK"
    assert other["volid"] not in {b["volid"] for b in api.backups()}
    assert not file.exists()
    resp = api.delete(path)
    assert resp.status_code == 500 and "does not exist" in resp.reason


def test_prune_dry_run_and_delete(api: Api, fresh_lab: LabClient) -> None:
    path = "/nodes/pve1/storage/nas-backup/prunebackups"
    marks = api.data(api.get(path, **{"prune-backups": "keep-last=1", "type": "qemu"}))
    by_vmid: dict[int, list[str]] = {}
    for m in sorted(marks, key=lambda m: -m["ctime"]):
        assert set(m) == {"volid", "ctime", "mark", "type", "vmid"}
        by_vmid.setdefault(m["vmid"], []).append(m["mark"])
    assert by_vmid == {101: ["keep", "protected"], 104: ["keep", "remove"]}
    assert len(api.backups()) == 4  # a dry run
    only = api.data(api.get(path, **{"prune-backups": "keep-last=1", "vmid": 104}))
    assert {m["vmid"] for m in only} == {104}
    resp = api.get(path, **{"prune-backups": "keep-often=1"})
    assert resp.status_code == 400
    upid = api.data(api.delete(path, **{"prune-backups": "keep-last=1", "type": "qemu"}))
    assert api.wait_task(upid)["exitstatus"] == "OK"
    left = api.backups()
    assert sorted(b["vmid"] for b in left) == [101, 101, 104]
    assert any(b.get("protected") for b in left)
    # no option at all keeps everything
    assert {m["mark"] for m in api.data(api.get(path))} == {"keep", "protected"}


def _arch(vmid: int, when: str, protected: bool = False, name: str | None = None) -> Archive:
    ctime = int(time.mktime(time.strptime(when, "%Y-%m-%d %H:%M")))
    filename = name or backups.archive_name("qemu", vmid, ctime)
    return Archive("s", None, filename, vmid, "qemu", ctime, 1, protected=protected)


def test_prune_semantics_match_pve() -> None:
    items = [
        _arch(1, "2026-11-26 02:00"),
        _arch(1, "2026-11-25 14:00"),
        _arch(1, "2026-11-25 02:00"),
        _arch(1, "2026-11-24 02:00", protected=True),
        _arch(1, "2026-11-23 02:00"),
        _arch(1, "2026-11-16 02:00"),
        _arch(1, "2026-11-01 02:00"),
        _arch(1, "2026-10-01 02:00", name="my-own-copy.vma.zst"),
    ]

    def marks(opts: str) -> list[str]:
        got = dict(
            (a.filename, m) for a, m in backups.prune_marks(items, backups.parse_prune(opts))
        )
        return [got[a.filename] for a in items]

    assert marks("keep-last=2") == [
        "keep", "keep", "remove", "protected", "remove", "remove", "remove", "renamed"
    ]  # fmt: skip
    # daily: newest per day; the 25th's 02:00 is not the newest of its day
    assert marks("keep-daily=3") == [
        "keep", "keep", "remove", "protected", "keep", "remove", "remove", "renamed"
    ]  # fmt: skip
    # keep-last covers 26 and 25 (14:00); daily then adds the next days not yet covered
    assert marks("keep-last=2,keep-daily=2") == [
        "keep", "keep", "remove", "protected", "keep", "keep", "remove", "renamed"
    ]  # fmt: skip
    assert marks("keep-weekly=2,keep-monthly=3")[:7] == [
        "keep",
        "remove",
        "remove",
        "protected",
        "remove",
        "keep",
        "remove",
    ]  # fmt: skip  (Nov 1 is in a month already kept by the weekly one of the 16th)
    assert set(marks("")) == {"keep", "protected", "renamed"}
    assert set(marks("keep-all=1")) == {"keep", "protected", "renamed"}
    with pytest.raises(ValueError, match="keep-all cannot be set together"):
        backups.parse_prune("keep-all=1,keep-last=2")


# --- restore, destroy, agent ------------------------------------------------------------------


def test_restore_destroy_and_agent(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab, 0.05, 12.8 * GiB)
    [newest] = [b for b in api.backups(vmid=101) if not b.get("protected")]
    resp = api.post("/nodes/pve1/qemu", vmid=101, archive=newest["volid"], storage="local-zfs")
    assert (resp.status_code, resp.reason) == (
        500,
        "unable to restore VM 101 - VM 101 already exists on node 'pve1'",
    )
    upid = api.data(
        api.post(
            "/nodes/pve2/qemu",
            vmid=901,
            archive=newest["volid"],
            storage="local-zfs",
            unique=1,
            start=1,
        )
    )
    assert ":qmrestore:901:" in upid
    assert fresh_lab.guest(901)["lock"] == "create"
    assert api.wait_task(upid)["exitstatus"] == "OK"
    g = fresh_lab.guest(901)
    assert (g["name"], g["node"], g["status"], g["lock"]) == ("media-vm", "pve2", "running", None)
    assert fresh_lab.guest(101)["status"] == "running"  # the original is untouched

    def ping() -> bool:
        resp = api.post("/nodes/pve2/qemu/901/agent/ping")
        if resp.status_code == 500:
            assert resp.reason == "QEMU guest agent is not running"
            return False
        return bool(api.data(resp) == {"result": {}})

    wait_until(ping, 5)

    resp = api.delete("/nodes/pve2/qemu/901")
    assert (resp.status_code, resp.reason) == (500, "VM 901 is running - destroy failed")
    api.wait_task(api.data(api.post("/nodes/pve2/qemu/901/status/stop")))
    resp = api.post("/nodes/pve2/qemu/901/agent/ping")
    assert (resp.status_code, resp.reason) == (500, "VM 901 is not running")
    destroy = api.data(api.delete("/nodes/pve2/qemu/901"))
    assert ":qmdestroy:901:" in destroy
    assert api.wait_task(destroy)["exitstatus"] == "OK"
    assert "901" not in fresh_lab.state()["guests"]

    fresh_lab.set_guest(104, agent=False)
    resp = api.post("/nodes/pve2/qemu/104/agent/ping")
    assert (resp.status_code, resp.reason) == (500, "No QEMU guest agent configured")


def test_restore_a_container(api: Api, fresh_lab: LabClient) -> None:
    _fast(fresh_lab)
    api.wait_task(api.vzdump("pve1", 100))
    [item] = api.backups(vmid=100)
    resp = api.post("/nodes/pve1/lxc", vmid=100, ostemplate=item["volid"], restore=1)
    assert resp.reason == "unable to restore CT 100 - CT 100 already exists on node 'pve1'"
    upid = api.data(
        api.post("/nodes/pve2/lxc", vmid=902, ostemplate=item["volid"], restore=1,
                 storage="local-zfs", unique=1)
    )  # fmt: skip
    assert ":vzrestore:902:" in upid
    assert api.wait_task(upid)["exitstatus"] == "OK"
    g = fresh_lab.guest(902)
    assert (g["type"], g["name"], g["status"]) == ("lxc", "dns", "stopped")
    assert api.wait_task(api.data(api.delete("/nodes/pve2/lxc/902")))["exitstatus"] == "OK"
    assert "902" not in fresh_lab.state()["guests"]


# --- files, offsite, schema, reset ------------------------------------------------------------


def _ssh(
    lab: LabClient, host: str, command: str, data: bytes | None = None
) -> asyncssh.SSHCompletedProcess:
    d = lab.dir

    async def run() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "127.0.0.1",
            lab.info["hosts"][host]["port"],
            username="root",
            client_keys=[str(d / "id_ed25519")],
            known_hosts=str(d / "known_hosts"),
            agent_path=None,
            config=None,
        ) as conn:
            return await conn.run(command, input=data, check=False, timeout=10, encoding=None)

    return asyncio.run(run())


def test_offsite_copy_over_ssh_and_reset(api: Api, fresh_lab: LabClient) -> None:
    info = fresh_lab.info
    offsite = Path(info["offsite"]["path"])
    assert info["offsite"]["host"] == "offsite" and offsite.is_dir()
    assert list(offsite.iterdir()) == []
    item = api.backups(vmid=104)[0]
    name = item["volid"].split("/")[-1]
    src = Path(info["storages"]["nas-backup"]["path"]) / name
    read = _ssh(fresh_lab, "pve2", f"cat {src}")  # a node's shell reads its storage
    assert read.exit_status == 0 and isinstance(read.stdout, bytes)
    dest = offsite / name
    copy = _ssh(
        fresh_lab,
        "offsite",
        f"cat > {dest}.part && mv {dest}.part {dest} && sha256sum {dest}",
        read.stdout,
    )
    assert copy.exit_status == 0, copy.stderr
    sha = _archive(fresh_lab, item["volid"])["sha256"]
    assert isinstance(copy.stdout, bytes) and copy.stdout.split()[0].decode() == sha
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    (offsite / "stray").write_text("x")
    fresh_lab.set_storage("nas-backup", used=0)
    fresh_lab.reset()
    assert list(offsite.iterdir()) == []
    st = fresh_lab.state()["storages"]["nas-backup"]
    assert len(st["archives"]) == 4 and st["used"] > 800 * GiB
    files = sorted(p.name for p in src.parent.iterdir() if p.name.endswith(".zst"))
    assert files == sorted(a["filename"] for a in st["archives"])


def test_every_backup_endpoint_is_served_from_the_schema() -> None:
    served = set(pve.served_endpoints())
    wanted = {
        ("POST", "/nodes/{node}/vzdump"),
        ("GET", "/nodes/{node}/storage/{storage}/content"),
        ("GET", "/nodes/{node}/storage/{storage}/content/{volume}"),
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"),
        ("GET", "/nodes/{node}/storage/{storage}/prunebackups"),
        ("DELETE", "/nodes/{node}/storage/{storage}/prunebackups"),
        ("POST", "/nodes/{node}/qemu"),
        ("POST", "/nodes/{node}/lxc"),
        ("DELETE", "/nodes/{node}/qemu/{vmid}"),
        ("DELETE", "/nodes/{node}/lxc/{vmid}"),
        ("POST", "/nodes/{node}/qemu/{vmid}/agent/ping"),
        ("DELETE", "/nodes/{node}/tasks/{upid}"),
    }
    assert wanted <= served
    for method, template in wanted:
        assert schema.endpoint(method, template) is not None
