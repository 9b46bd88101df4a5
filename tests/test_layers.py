"""The layers: ``moxflow/`` works without Prefect, its modules import each other without a
circle, and Prefect-only work (``block:`` secrets, the clients tasks use) lives in ``blocks/``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from moxflow.errors import SecretError
from moxflow.inventory import SecretRef, register_block_resolver

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "moxflow"


def core_modules() -> list[str]:
    """Every module of the core, packages included, as dotted names."""
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_core_module_imports_with_prefect_unimportable() -> None:
    modules = core_modules()
    assert "moxflow.inventory.secrets" in modules
    code = (
        "import importlib, sys\n"
        "sys.modules['prefect'] = None  # any 'import prefect...' now raises ImportError\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['prefect']"  # only the blocker itself


def _imports(path: Path, name: str) -> set[str]:
    """The core modules ``path`` imports anywhere in it: at the top, in a function, or only
    for type checking (``from moxflow.x import y`` counts as ``moxflow.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_the_core_has_no_import_circle() -> None:
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name in modules:
        path = CORE.joinpath(*name.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        deps = set()
        for imported in _imports(path, name):
            # importing moxflow.a.b runs moxflow/a/__init__.py first, unless we are inside it
            parts = imported.split(".")
            deps.update(
                parent
                for parent in (".".join(parts[:i]) for i in range(2, len(parts) + 1))
                if not name.startswith(f"{parent}.")
            )
        graph[name] = {m for m in deps if m in modules and m != name}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    circles = sorted(name for name in modules if name in reach(name))
    assert circles == []
    assert "moxflow.inventory" in reach("moxflow.nixos")  # the old circle, now one way
    assert "moxflow.nixos" not in reach("moxflow.inventory")
    assert "moxflow.health" not in reach("moxflow.inventory")


def test_the_core_never_names_prefect() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {m}"
        for path in sorted(CORE.rglob("*.py"))
        for m in _imports(path, "moxflow")
        if m == "prefect" or m.startswith("prefect.")
    ]
    assert found == []


def test_a_block_reference_without_the_blocks_package_says_so() -> None:
    previous = register_block_resolver(None)
    try:
        with pytest.raises(SecretError) as info:
            SecretRef.check("block:pve-token").resolve(setting="proxmox.token_secret")
    finally:
        register_block_resolver(previous)
    assert info.value.setting == "proxmox.token_secret"
    assert "Prefect Secret block 'pve-token' cannot be loaded" in str(info.value)
    assert "import blocks" in str(info.value)


def test_importing_blocks_registers_the_prefect_secret_reader() -> None:
    code = (
        "import moxflow.inventory.secrets as s\n"
        "before = s._block_resolver\n"
        "import blocks, sys\n"
        "print(before is None, s._block_resolver is blocks.secrets.read_secret_block,\n"
        "      'prefect.blocks.system' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.split() == ["True", "True", "False"]  # Prefect is read when a block is


def test_a_registered_reader_gets_the_name_and_the_setting() -> None:
    seen: list[tuple[str, str]] = []

    def reader(name: str, setting: str) -> SecretStr:
        seen.append((name, setting))
        return SecretStr("s3cret")

    previous = register_block_resolver(reader)
    try:
        secret = SecretRef.check("block:pve-token").resolve(setting="proxmox.token_secret")
    finally:
        register_block_resolver(previous)
    assert secret.get_secret_value() == "s3cret"
    assert seen == [("pve-token", "proxmox.token_secret")]
