"""The install comes from constraints.txt, within pyproject.toml's bounds.

`make` installs with ``pip -c constraints.txt``, so a fresh clone gets the versions CI last
passed with, not whatever was released since. These tests read what is installed in the
environment running them (the one `make` built) and hold it against both files.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;#]+)\s*$")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]]
    return reqs


def _installed() -> dict[str, str]:
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if d.metadata["Name"]
    }


def test_every_installed_package_is_the_pinned_version() -> None:
    pins, installed = _pins(), _installed()
    wrong = {
        name: f"installed {version}, pinned {pins[name]}"
        for name, version in installed.items()
        if name in pins and version != pins[name]
    }
    assert wrong == {}, "the environment was not installed from constraints.txt: run `make venv`"


def test_every_installed_package_is_pinned() -> None:
    # the venv's own tools and moxflow itself are the only unpinned distributions
    unpinned = set(_installed()) - set(_pins()) - {"moxflow", "setuptools", "wheel"}
    assert unpinned == set(), "installed but not in constraints.txt: run `make lock`"


def test_every_pin_is_installed() -> None:
    missing = set(_pins()) - set(_installed())
    assert missing == set(), "pinned but not installed: constraints.txt is stale (`make lock`)"


def test_the_pins_satisfy_pyproject_bounds() -> None:
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"
        )


def test_the_direct_dependencies_have_upper_bounds() -> None:
    # type stubs follow their library and may float; everything else stops before a break
    loose = [
        str(r)
        for r in _requirements()
        if not r.name.startswith("types-")
        and r.name != "packaging"
        and not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]
    assert loose == []


def test_make_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs, "the Makefile installs nothing?"
    assert all("-c $(LOCK)" in line for line in installs if "$(BIN)" in line), installs
    assert "LOCK   := constraints.txt" in makefile
