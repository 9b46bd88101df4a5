"""docs/install.md's API token section names only real Proxmox privileges, and every job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "docs" / "install.md"
# the reference schema beside the checkout (``../shared/reference``), where it is laid out
SCHEMA = ROOT.parent / "shared" / "reference" / "proxmox-ve-api-schema.json"

PRIV = re.compile(r"^(?:VM|Sys|Datastore|SDN|Pool|Mapping|Realm|Permissions|User|Group)\.[\w.]+$")


def _section() -> str:
    text = INSTALL.read_text()
    start = text.index("### The Proxmox API token")
    end = text.index("\n#", start + 1)
    return text[start:end]


def _job_table(section: str) -> list[list[str]]:
    """The rows of the table whose header starts with ``| job |``, as lists of cells."""
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| job |"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _documented_privileges(section: str) -> set[str]:
    names = {tok for row in _job_table(section) for tok in re.findall(r"`([^`]+)`", row[1])}
    for privs in re.findall(r'-privs "([^"]+)"', section):
        names.update(privs.split())
    return names


def _known_privileges() -> set[str]:
    """Every privilege PVE knows: the properties of ``GET /access/roles/{roleid}``."""
    schema = json.loads(SCHEMA.read_text())
    returns = schema["paths"]["/access/roles/{roleid}"]["GET"]["returns"]
    return set(returns["properties"])


def test_job_table_lists_every_flow() -> None:
    jobs = {row[0].strip("`") for row in _job_table(_section()) if row[0]}
    flows = {  # each job's command, flows/<job>.py, beside its flow in flows/jobs/<job>.py
        f"flows.{p.stem}"
        for p in (ROOT / "flows" / "jobs").glob("*.py")
        if "\n@flow(" in p.read_text() and (ROOT / "flows" / p.name).is_file()
    }
    assert "flows.vzdump_backup" in flows and "flows.params" not in flows
    assert flows - jobs == set()


def test_job_table_privileges_look_like_privileges() -> None:
    names = _documented_privileges(_section())
    assert names, "no privileges found in the token section"
    assert sorted(n for n in names if not PRIV.match(n)) == []


@pytest.mark.skipif(
    not SCHEMA.exists(), reason=f"the Proxmox API schema is not beside this checkout ({SCHEMA})"
)
def test_documented_privileges_exist_in_proxmox() -> None:
    known = _known_privileges()
    assert "VM.Audit" in known
    assert sorted(_documented_privileges(_section()) - known) == []
