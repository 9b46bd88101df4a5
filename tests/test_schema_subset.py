"""The committed Proxmox VE API schema subset is exactly what the extraction script makes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from labsim import schema

REPO = Path(__file__).resolve().parents[1]


def _extractor() -> ModuleType:
    path = REPO / "scripts" / "extract_pve_schema.py"
    spec = importlib.util.spec_from_file_location("extract_pve_schema", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_subset_matches_the_reference_schema() -> None:
    extractor = _extractor()
    reference: Path = extractor.DEFAULT_SCHEMA
    if not reference.is_file():
        pytest.skip(f"the reference schema is not beside this checkout ({reference})")
    subset = extractor.extract(json.loads(reference.read_text(encoding="utf-8")))
    committed = (REPO / "labsim" / "pve-api-subset.json").read_text(encoding="utf-8")
    assert committed == extractor.render(subset), (
        "labsim/pve-api-subset.json is stale: run python scripts/extract_pve_schema.py"
    )


def test_subset_has_every_endpoint_the_project_names() -> None:
    extractor = _extractor()
    for path, wanted in extractor.SUBSET.items():
        assert set(wanted) <= schema.methods(path), path
    assert "POST" in schema.methods("/nodes/{node}/qemu/{vmid}/agent/exec")
    assert "GET" in schema.methods("/nodes/{node}/qemu/{vmid}/agent/exec-status")


def test_match_path_prefers_literal_segments() -> None:
    route = schema.match_path("/nodes/pve1/qemu/101/snapshot/before/rollback")
    assert route is not None
    assert route.template == "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback"
    assert route.path_params == {"node": "pve1", "vmid": "101", "snapname": "before"}
    status = schema.match_path("/nodes/pve1/qemu/101/status/current")
    assert status is not None and status.template == "/nodes/{node}/qemu/{vmid}/status/current"
    assert schema.match_path("/nodes/pve1/nonsense") is None


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"node": "pve1", "vmid": "101", "snapname": "ok-name"}, {}),
        ({"node": "pve1", "vmid": "101", "snapname": "Mixed_Case"}, {}),  # PVE matches /i
        (
            {"node": "pve1", "vmid": "101"},
            {"snapname": "property is missing and it is not optional"},
        ),
        (
            {"node": "pve1", "vmid": "abc", "snapname": "x1"},
            {"vmid": "type check ('integer') failed - got 'abc'"},
        ),
        (
            {"node": "pve1", "vmid": "99", "snapname": "x1"},
            {"vmid": "value must have a minimum value of 100"},
        ),
        (
            {"node": "pve1", "vmid": "101", "snapname": "x1", "vmstate": "yes"},
            {"vmstate": "type check ('boolean') failed - got 'yes'"},
        ),
        (
            {"node": "pve1", "vmid": "101", "snapname": "a" * 41},
            {"snapname": "value may only be 40 characters long"},
        ),
        (
            {"node": "pve1", "vmid": "101", "snapname": "bad name"},
            {"snapname": "invalid format - invalid configuration ID 'bad name'"},
        ),
        (
            {"node": "bad_node!", "vmid": "101", "snapname": "x1"},
            {"node": "invalid format - value does not look like a valid node name"},
        ),
    ],
)
def test_validate_snapshot_post(params: dict[str, str], errors: dict[str, str]) -> None:
    assert schema.validate("POST", "/nodes/{node}/qemu/{vmid}/snapshot", params) == errors


def test_validate_enum_and_unknown_parameters() -> None:
    assert schema.validate("GET", "/cluster/resources", {"type": "vm"}) == {}
    assert schema.validate("GET", "/cluster/resources", {"type": "vms", "x": "1"}) == {
        "type": "value 'vms' does not have a value in the enumeration 'vm, storage, node, sdn'",
        "x": "property is not defined in schema and the schema does not allow additional "
        "properties",
    }


def test_validate_array_parameters() -> None:
    template = "/nodes/{node}/qemu/{vmid}/agent/exec"
    ok = {"node": "pve1", "vmid": "101", "command": ["powershell.exe", "-NoProfile"]}
    assert schema.validate("POST", template, ok) == {}
