"""Tests and tools read local files from the checkout, or from beside it: never from a
path of one particular machine, which a fresh clone elsewhere does not have."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"""Path\(\s*["'](/(?:work|root|home|Users|srv|mnt|opt)/[^"']*)["']""")


def test_no_code_names_a_path_of_one_machine() -> None:
    found = []
    for folder in ("tests", "scripts", "benchmarks", "flows", "tasks", "moxflow", "labsim",
                   "blocks", "deployments"):  # fmt: skip
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                for m in MACHINE_PATH.finditer(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {m[1]}")
    assert found == [], "use a path relative to the checkout (Path(__file__)) instead"


RAW_CALL = re.compile(r"\bclient\.(get|post|put|delete)\(\s*f?[\"']/")


def test_tasks_and_flows_speak_to_proxmox_through_typed_methods() -> None:
    """No raw API path and no hand-checked UPID outside moxflow/proxmox.py: one client surface."""
    found = []
    for folder in ("tasks", "flows", "blocks", "deployments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if RAW_CALL.search(line) or '"UPID:' in line:
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == [], "add a typed method to ProxmoxClient (moxflow/proxmox.py) instead"


def test_one_logger_shape() -> None:
    defined = [
        str(p.relative_to(ROOT))
        for folder in ("tasks", "flows", "moxflow", "blocks")
        for p in (ROOT / folder).rglob("*.py")
        if "class LoggerLike(" in p.read_text()
    ]
    assert defined == ["tasks/_logging.py"]


PRODUCTION = ("moxflow", "tasks", "flows", "blocks", "deployments")


def test_no_assert_in_production_code() -> None:
    """``python -O`` drops asserts: what production code must hold is checked and raised as
    an error of moxflow/errors.py (labsim, the tests' simulator, may assert)."""
    found = []
    for folder in PRODUCTION:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Assert)
            ]
    assert found == [], "raise an error of moxflow/errors.py instead"


def test_the_proxmox_update_raises_errors_of_the_one_tree() -> None:
    """Its error classes live in moxflow/errors.py, with the tree drawn in its docstring."""
    from moxflow import errors

    for module in ("moxflow/pveupdate.py", "tasks/pveupdate.py", "flows/jobs/proxmox_update.py"):
        tree = ast.parse((ROOT / module).read_text())
        classes = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            and any(getattr(b, "id", "").endswith(("Error", "Failed")) for b in node.bases)
        ]
        assert classes == [], f"{module} defines {classes}: move them to moxflow/errors.py"
    assert issubclass(errors.UpdateStepFailed, errors.MoxflowError)
    assert "UpdateStepFailed" in (errors.__doc__ or "")
