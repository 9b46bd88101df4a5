"""The inventory loader under random input: any TOML document, any value in any setting of a
valid inventory, gives an ``Inventory`` or a ``ConfigError`` naming the file or the setting;
never a traceback of another kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory, load_inventory

# Hypothesis warns when the `random` module's state moves while it draws. These strategies
# never use it, but under `make test` (pytest-xdist) the process also holds the background
# threads of earlier flow tests (Prefect's services use `random` for their jitter), which
# can move it meanwhile: a warning about someone else's thread, not about these tests.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID = """\
timezone = "Europe/Berlin"
[proxmox]
host = "pve.lan"
token_id = "root@pam!moxflow"
token_secret = "env:PVE_TOKEN"
timeout = 30.0
[ssh]
user = "root"
connect_timeout = 10.0
command_timeout = 300.0
[hosts.pve1]
address = "10.0.0.2"
port = 22
[hosts.media]
address = "media.lan"
[zfs.policies]
hourly = "keep-hourly=24"
[[zfs.datasets]]
host = "pve1"
name = "rpool/data"
recursive = true
[guest_snapshots]
select = "@all"
concurrency = 4
[guest_snapshots.policies]
daily = "keep-daily=7"
[nixos]
max_parallel = 2
confirm_timeout = 120.0
[nixos.hosts.media]
flake = "/etc/nixos"
snapshot = { method = "proxmox", vmid = 101 }
[backups]
storage = "local"
task_timeout = 3600.0
max_age_hours = 26.0
[retries]
attempts = 3
delays = [1.0, 5.0]
[health]
snapshot_grace = 1.5
offsite_max_age_hours = 48.0
restore_test_max_age_days = 8.0
nixos_max_age_days = 14.0
label_hours = { twice-daily = 12.0 }
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOXFLOW_"):
            monkeypatch.delenv(name)


def load(folder: Path, text: str) -> Inventory | ConfigError:
    path = folder / "inventory.toml"
    path.write_text(text, encoding="utf-8")
    try:
        return load_inventory(path)
    except ConfigError as exc:
        return exc


# --- TOML text from values -----------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    return (
        '"'
        + "".join(
            f"\\u{ord(c):04x}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
        )
        + '"'
    )


def toml_value(value: Any) -> str:
    """``value`` as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "env:X", "file:/nonexistent", "block:x", "@all", "keep-last=1"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def documents() -> st.SearchStrategy[str]:
    """Random TOML documents: top-level keys (known and not) and tables of random values."""
    keys = st.sampled_from(
        ["timezone", "proxmox", "ssh", "hosts", "zfs", "guest_snapshots", "nixos",
         "notifications", "backups", "offsite", "restore_test", "health", "retries",
         "schedules", "x"]
    )  # fmt: skip
    doc = st.dictionaries(keys, values, max_size=6)
    return doc.map(lambda d: "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items()))


# every `key = value` line of the valid inventory, by its dotted setting
def settings_of(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    table = ""
    for number, line in enumerate(text.splitlines()):
        if line.startswith("["):
            table = line.strip("[]")
        elif " = " in line:
            found.append((number, f"{table}.{line.split(' = ')[0]}".lstrip(".")))
    return found


SETTINGS = settings_of(VALID)


@FUZZ
@given(text=documents())
def test_any_document_loads_or_is_a_config_error(tmp_path: Path, text: str) -> None:
    result = load(tmp_path, text)
    if isinstance(result, ConfigError):
        assert str(tmp_path / "inventory.toml") in str(result) or result.setting


@FUZZ
@given(where=st.sampled_from(SETTINGS), value=values)
def test_any_value_in_any_setting_loads_or_names_it(
    tmp_path: Path, where: tuple[int, str], value: Any
) -> None:
    number, setting = where
    lines = VALID.splitlines()
    key = lines[number].split(" = ")[0]
    lines[number] = f"{key} = {toml_value(value)}"
    result = load(tmp_path, "\n".join(lines) + "\n")
    if isinstance(result, ConfigError):
        # the setting (or the table it sits in, for a value that breaks a table's check)
        table = setting.rsplit(".", 1)[0]
        assert setting in str(result) or table in str(result), str(result)


def test_the_valid_inventory_is_valid(tmp_path: Path) -> None:
    assert isinstance(load(tmp_path, VALID), Inventory)
