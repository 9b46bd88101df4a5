"""Conformance: every request moxflow sends names a real PVE path and method, with valid params.

The jobs run against the lab (snapshots with pruning and a locked guest; backups, prune and a
restore test), then each request the lab received is checked against the schema subset in
``labsim/pve-api-subset.json`` (extracted from the real PVE 9.1 API schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.jobs.guest_snapshot import guest_snapshot
from flows.jobs.restore_test import restore_test
from flows.jobs.vzdump_backup import vzdump_backup
from labsim import schema
from labsim.client import LabClient
from moxflow.errors import RunFailed
from tests.flows.conftest import edit_inventory


def test_every_request_the_jobs_send_conforms_to_the_pve_schema(
    fresh_lab: LabClient, lab_inventory: Path, tmp_path: Path
) -> None:
    inv = str(
        edit_inventory(lab_inventory, tmp_path, {'daily = "keep-daily=7"': 'daily = "keep-last=1"'})
    )
    guest_snapshot(label="daily", dry_run=True, inventory=inv)
    guest_snapshot(label="daily", inventory=inv)
    fresh_lab.set_guest(104, lock="backup")
    with pytest.raises(RunFailed, match="busy"):  # 104 stays locked: busy, the others prune
        guest_snapshot(label="daily", lock_timeout=0.5, vmstate=True, inventory=inv)
    fresh_lab.set_guest(104, lock=None)

    requests = fresh_lab.api_requests()
    seen = {(r["method"], r["template"]) for r in requests}
    # the run exercised listing, creating, deleting and waiting
    assert {
        ("GET", "/cluster/resources"),
        ("GET", "/nodes/{node}/qemu/{vmid}/snapshot"),
        ("GET", "/nodes/{node}/lxc/{vmid}/snapshot"),
        ("POST", "/nodes/{node}/qemu/{vmid}/snapshot"),
        ("POST", "/nodes/{node}/lxc/{vmid}/snapshot"),
        ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}"),
        ("GET", "/nodes/{node}/tasks/{upid}/status"),
    } <= seen
    assert check_requests(requests) == []


def check_requests(requests: list[dict[str, Any]]) -> list[str]:
    """Every request names a real path and method, with valid parameters; the problems."""
    problems = []
    for r in requests:
        route = schema.match_path(r["path"])
        if route is None:
            problems.append(f"{r['method']} {r['path']}: no such path in the PVE schema")
            continue
        if r["method"] not in schema.methods(route.template):
            problems.append(f"{r['method']} {route.template}: no such method")
            continue
        errors = schema.validate(r["method"], route.template, {**r["params"], **route.path_params})
        if errors:
            problems.append(f"{r['method']} {r['path']}: {errors}")
        if r["status"] in (400, 501):
            problems.append(f"{r['method']} {r['path']}: the lab answered {r['status']}")
    return problems


def test_backup_and_restore_requests_conform(fresh_lab: LabClient, lab_inventory: Path) -> None:
    """vzdump, content listing, prune, restore, start, agent ping, stop, destroy."""
    fresh_lab.set_storage("nas-backup", bandwidth=10**13)
    inv = str(lab_inventory)
    vzdump_backup(select="101,100", offsite=False, dry_run=True, inventory=inv)
    vzdump_backup(select="101,100", offsite=False, inventory=inv)
    restore_test(select="101", inventory=inv)
    requests = fresh_lab.api_requests()
    seen = {(r["method"], r["template"]) for r in requests}
    assert {
        ("POST", "/nodes/{node}/vzdump"),
        ("GET", "/nodes/{node}/storage/{storage}/content"),
        ("GET", "/nodes/{node}/storage/{storage}/prunebackups"),
        ("POST", "/nodes/{node}/qemu"),
        ("DELETE", "/nodes/{node}/qemu/{vmid}"),
        ("PUT", "/nodes/{node}/storage/{storage}/content/{volume}"),  # the restore-test note
    } <= seen
    assert check_requests(requests) == []


def test_the_lab_rejects_what_pve_rejects() -> None:
    """The same validator catches a wrong parameter, type, pattern and an unknown path."""
    snap = "/nodes/{node}/qemu/{vmid}/snapshot"
    ok = {"node": "pve1", "vmid": "101", "snapname": "moxflow-daily-20261126-010203"}
    assert schema.validate("POST", snap, ok) == {}
    assert "snapname" in schema.validate("POST", snap, {**ok, "snapname": "Bad Name"})
    assert "vmid" in schema.validate("POST", snap, {**ok, "vmid": "12"})
    assert "bogus" in schema.validate("POST", snap, {**ok, "bogus": "1"})
    assert "vmstate" in schema.validate("POST", snap, {**ok, "vmstate": "yes"})
    assert schema.match_path("/nodes/pve1/qemu/101/snapshotz") is None
