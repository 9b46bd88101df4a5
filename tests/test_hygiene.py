"""Tests and tools read local files from the checkout, or from beside it: never from a
path of one particular machine, which a fresh clone elsewhere does not have."""

from __future__ import annotations

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
