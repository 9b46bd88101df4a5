"""Loading the inventory: sources and their order, validation errors, paths, secret references."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

import blocks  # noqa: F401 - registers the reader of block: references
from moxflow.errors import ConfigError, SecretError, UnsafeNameError
from moxflow.inventory import (
    GuestSnapshotSettings,
    HealthCheck,
    HostSettings,
    Inventory,
    NixosHost,
    NixosSettings,
    NoSnapshotMethod,
    ProxmoxSettings,
    ProxmoxSnapshotMethod,
    RustSettings,
    SecretRef,
    SshSettings,
    SshTarget,
    SteamApp,
    SteamSettings,
    WindowsCheck,
    WindowsSettings,
    WindowsTask,
    WindowsVm,
    ZfsDataset,
    ZfsSettings,
    ZfsSnapshotMethod,
    load_inventory,
)
from moxflow.retention import KeepPolicy

EXAMPLE = """\
timezone = "Europe/Berlin"

[proxmox]
host = "127.0.0.1"
port = 8006
token_id = "root@pam!moxflow"
token_secret = "file:pve-token"
ca_file = "pve-root-ca.pem"
verify_tls = true
timeout = 30.0

[ssh]
user = "root"
key_file = "id_ed25519"
known_hosts = "known_hosts"
strict_host_keys = true
connect_timeout = 10.0
command_timeout = 300.0

[hosts.pve1]
address = "127.0.0.1"
port = 22001

[hosts.nas]
address = "nas.lan"
user = "backup"
key_file = "/etc/moxflow/nas_key"

[zfs.policies]
hourly = "keep-hourly=24"
daily = "keep-daily=7,keep-weekly=4"

[[zfs.datasets]]
host = "pve1"
name = "rpool/data"
recursive = true
policies = { hourly = "keep-hourly=48" }

[[zfs.datasets]]
host = "nas"
name = "tank/backups"

[guest_snapshots]
select = "@all,-@tag-nosnap"
running_only = false
vmstate = false
concurrency = 8
[guest_snapshots.policies]
hourly = "keep-last=3,keep-hourly=24"
daily = "keep-daily=7"
"""

MINIMAL = """\
[hosts.pve1]
address = "10.0.0.2"
"""

SECRET = "s3cr3t-Value-9f8e7d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOXFLOW_"):
            monkeypatch.delenv(name)


def write(folder: Path, text: str, name: str = "inventory.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def config_error(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_inventory(write(folder, text))
    return info.value


# --- loading -------------------------------------------------------------------------------


def test_example_loads_and_resolves_paths_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    path = write(lab, EXAMPLE)
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(path)
    assert inv.base_dir == lab
    assert inv.timezone == "Europe/Berlin"
    assert inv.tz.key == "Europe/Berlin"
    assert inv.proxmox is not None
    assert inv.proxmox.port == 8006
    assert inv.proxmox.token_secret == "file:pve-token"
    assert inv.proxmox.ca_file == lab / "pve-root-ca.pem"
    assert inv.ssh.key_file == lab / "id_ed25519"
    assert inv.ssh.known_hosts == lab / "known_hosts"
    assert inv.hosts["nas"].key_file == Path("/etc/moxflow/nas_key")
    assert [d.target for d in inv.zfs.datasets] == ["pve1:rpool/data", "nas:tank/backups"]
    assert inv.guest_snapshots.select == "@all,-@tag-nosnap"


def test_minimal_inventory_has_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, MINIMAL))
    assert inv.timezone == "UTC"
    assert inv.proxmox is None
    assert inv.ssh == SshSettings()
    assert inv.zfs == ZfsSettings()
    assert inv.guest_snapshots == GuestSnapshotSettings()
    assert inv.hosts == {"pve1": HostSettings(address="10.0.0.2")}


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOXFLOW_PROXMOX__PORT", "8007")
    monkeypatch.setenv("moxflow_ssh__user", "admin")  # case-insensitive
    monkeypatch.setenv("MOXFLOW_HOSTS__PVE1__PORT", "2222")
    monkeypatch.setenv("MOXFLOW_TIMEZONE", "UTC")
    inv = load_inventory(write(tmp_path, EXAMPLE))
    assert inv.proxmox is not None
    assert inv.proxmox.port == 8007
    assert inv.proxmox.host == "127.0.0.1"  # the rest of [proxmox] still from the file
    assert inv.ssh.user == "admin"
    assert inv.hosts["pve1"].port == 2222
    assert inv.hosts["pve1"].address == "127.0.0.1"
    assert inv.timezone == "UTC"


def test_keyword_overrides_beat_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOXFLOW_TIMEZONE", "Europe/Paris")
    inv = load_inventory(write(tmp_path, EXAMPLE), timezone="America/New_York")
    assert inv.timezone == "America/New_York"


def test_path_from_environment_then_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    there = tmp_path / "there"
    here.mkdir()
    there.mkdir()
    write(here, MINIMAL)
    write(there, MINIMAL.replace("10.0.0.2", "10.0.0.3"), "lab.toml")
    monkeypatch.chdir(here)
    assert load_inventory().hosts["pve1"].address == "10.0.0.2"
    assert load_inventory().base_dir == here
    monkeypatch.setenv("MOXFLOW_INVENTORY", str(there / "lab.toml"))
    assert load_inventory().hosts["pve1"].address == "10.0.0.3"
    assert load_inventory(here / "inventory.toml").hosts["pve1"].address == "10.0.0.2"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_inventory(missing)
    assert str(info.value) == (
        f"inventory file {missing} not found; pass --inventory FILE or set MOXFLOW_INVENTORY"
    )


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_inventory(tmp_path)


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[proxmox]\nhost = "127.0.0.1\nport = 8006\n')
    assert "is not valid TOML" in str(err)
    assert "line 2" in str(err)
    assert "column" in str(err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty: moxflow has nothing to work on"),
        ("# truncated\n\n", "is empty: moxflow has nothing to work on"),
        (
            'timezone = "UTC"\n[zfs.policies]\nhourly = "keep-hourly=24"\n',
            "has neither a [proxmox] section nor [hosts] tables",
        ),
    ],
)
def test_an_inventory_with_nothing_to_work_on_is_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    err = config_error(tmp_path, text)
    assert f"inventory file {tmp_path / 'inventory.toml'} {expected}" in str(err)
    assert "add a [proxmox] section" in str(err)
    assert "[hosts.NAME] table" in str(err)


@pytest.mark.parametrize(
    "text",
    [
        '[proxmox]\nhost = "pve.lan"\ntoken_id = "root@pam!moxflow"\ntoken_secret = "env:T"\n',
        MINIMAL,
    ],
)
def test_a_proxmox_section_or_one_host_is_enough(tmp_path: Path, text: str) -> None:
    assert load_inventory(write(tmp_path, text)).timezone == "UTC"


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[ssh]\nconnect_timeout = inf\n", "ssh.connect_timeout"),
        ("[ssh]\ncommand_timeout = -inf\n", "ssh.command_timeout"),
        ("[notifications]\ntimeout = nan\n", "notifications.timeout"),
        ("[health]\nsnapshot_grace = nan\n", "health.snapshot_grace"),
        ("[health.label_hours]\nhourly = inf\n", "health.label_hours.hourly"),
        ("[retries]\ndelays = [1, inf]\n", "retries.delays[1]"),
        ("[backups]\nsize_drop_ratio = nan\n", "backups.size_drop_ratio"),
    ],
)
def test_inf_and_nan_are_refused_naming_the_setting(
    tmp_path: Path, text: str, setting: str
) -> None:
    err = config_error(tmp_path, MINIMAL + text)
    assert f"{setting}: inf and nan are not allowed here; write a plain number" in str(err)


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[health]\nrestore_test_max_age_days = 1e300\n", "health.restore_test_max_age_days"),
        ("[health]\nnixos_max_age_days = 1e12\n", "health.nixos_max_age_days"),
        ("[health]\noffsite_max_age_hours = 1e9\n", "health.offsite_max_age_hours"),
        ("[health.label_hours]\nslow = 1e9\n", "health.label_hours.slow"),
        ("[health]\nsnapshot_grace = 1e9\n", "health.snapshot_grace"),
        ("[backups]\nmax_age_hours = 1e9\n", "backups.max_age_hours"),
    ],
)
def test_an_age_longer_than_a_year_is_refused(tmp_path: Path, text: str, setting: str) -> None:
    """These become timedeltas subtracted from now: a huge one overflows the clock."""
    err = config_error(tmp_path, MINIMAL + text)
    assert err.setting == setting
    assert "less than or equal to" in str(err)


def test_a_timeout_longer_than_a_year_is_refused(tmp_path: Path) -> None:
    err = config_error(tmp_path, MINIMAL + "[ssh]\ncommand_timeout = 1e300\n")
    assert err.setting == "ssh.command_timeout"
    assert "less than or equal to 31622400" in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
        ".".join(["x"] * 5000) + " = 1\n",
        "x = " + "[" * 40 + "]" * 40 + "\n",
    ],
    ids=["arrays", "inline-tables", "dotted-keys", "just-too-deep"],
)
def test_deep_nesting_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    err = config_error(tmp_path, MINIMAL + text)
    path = tmp_path / "inventory.toml"
    assert f"inventory file {path} nests tables or arrays more than 32 levels deep" in str(err)


def test_concurrent_loads_do_not_mix(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        folder = tmp_path / f"lab{i}"
        folder.mkdir()
        paths.append(write(folder, MINIMAL.replace("10.0.0.2", f"10.0.0.{i + 10}")))
    results: dict[int, tuple[str, Path]] = {}

    def load(i: int) -> None:
        for _ in range(20):
            inv = load_inventory(paths[i])
            results[i] = (inv.hosts["pve1"].address, inv.base_dir)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: (f"10.0.0.{i + 10}", paths[i].parent) for i in range(8)}


def test_constructed_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = Inventory(
        hosts={"pve1": HostSettings(address="10.0.0.2", key_file=Path("k"))},
        zfs=ZfsSettings(datasets=[ZfsDataset(host="pve1", name="rpool")]),
    )
    assert inv.base_dir == tmp_path
    assert inv.hosts["pve1"].key_file == tmp_path / "k"


# --- validation errors ---------------------------------------------------------------------


def test_every_problem_is_listed_with_its_setting(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        """\
timezone = "Mars/Olympus"
[proxmox]
host = "pve.lan"
token_id = "root"
token_secret = "env:PVE_TOKEN"
[hosts.pve1]
address = "10.0.0.2"
port = 0
""",
    )
    text = str(err)
    assert "has 3 problems" in text
    assert "(1) timezone: unknown time zone 'Mars/Olympus'" in text
    assert "proxmox.token_id: 'root' is not an API token id" in text
    assert "USER@REALM!TOKENID" in text
    assert "hosts.pve1.port: Input should be greater than or equal to 1" in text
    assert err.setting is None


def test_single_problem_sets_the_setting(tmp_path: Path) -> None:
    err = config_error(tmp_path, MINIMAL + "port = 70000\n")
    assert err.setting == "hosts.pve1.port"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tmezone = 'UTC'\n", "tmezone: unknown setting (a typo?); known here: timezone, proxmox"),
        (
            "[proxmox]\nhost='a'\ntoken_id='r@pam!t'\ntoken_secret='env:X'\nprot=1\n",
            "proxmox.prot: unknown setting (a typo?); known here: host, port, token_id",
        ),
        ("[hosts.pve1]\naddress='a'\nkeyfile='k'\n", "hosts.pve1.keyfile: unknown setting"),
        (
            "[[zfs.datasets]]\nhost='pve1'\nname='rpool'\nrecursve=true\n",
            "zfs.datasets[0].recursve: unknown setting (a typo?); known here: host, name",
        ),
        ("[zfs]\ndataset=[]\n", "zfs.dataset: unknown setting (a typo?); known here: policies"),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in str(config_error(tmp_path, text))


def test_missing_required_setting(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[proxmox]\nhost = 'a'\ntoken_secret = 'env:X'\n")
    assert "proxmox.token_id: required setting is missing" in str(err)


@pytest.mark.parametrize(
    "value",
    [SECRET, "PVEAPIToken=root@pam!moxflow=" + SECRET, "ENV:" + SECRET, "vault:" + SECRET],
)
def test_plain_secret_is_refused_without_echo(tmp_path: Path, value: str) -> None:
    err = config_error(
        tmp_path,
        f"[proxmox]\nhost = 'a'\ntoken_id = 'root@pam!m'\ntoken_secret = '{value}'\n",
    )
    text = str(err)
    assert "proxmox.token_secret: looks like a plain secret; store it in the environment" in text
    assert 'write token_secret = "env:PVE_TOKEN"' in text
    assert SECRET not in text
    assert SECRET not in repr(err)
    assert err.__cause__ is None
    assert err.__suppress_context__


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("env:", "env: needs an environment variable name"),
        ("env:PVE TOKEN", "env: needs an environment variable name"),
        ("file:", "file: needs a path"),
        ("block:Bad_Name", "block: needs a Prefect block name"),
    ],
)
def test_malformed_references(tmp_path: Path, ref: str, message: str) -> None:
    err = config_error(
        tmp_path, f"[proxmox]\nhost = 'a'\ntoken_id = 'root@pam!m'\ntoken_secret = '{ref}'\n"
    )
    assert f"proxmox.token_secret: {message}" in str(err)


@pytest.mark.parametrize(
    "name",
    [
        ";rm -rf /",
        "$(reboot)",
        "rpool/da ta",
        "rpool/data\\n",
        "rpool/'x'",
        "-o",
        "../etc",
        "rpool/d\\u0430ta",
        "rpool/data\\u0000",
        "rpool@snap",
    ],
)
def test_hostile_dataset_names_fail_at_load(tmp_path: Path, name: str) -> None:
    text = MINIMAL + '[[zfs.datasets]]\nhost = "pve1"\nname = "rpool"\n'
    text += f'[[zfs.datasets]]\nhost = "pve1"\nname = "{name}"\n'
    err = config_error(tmp_path, text)
    assert "zfs.datasets[1].name: invalid ZFS dataset name" in str(err)
    assert "[0]" not in str(err)


def test_dataset_on_unknown_host(tmp_path: Path) -> None:
    text = MINIMAL + '[hosts.nas]\naddress = "nas.lan"\n'
    text += '[[zfs.datasets]]\nhost = "pve1"\nname = "rpool"\n'
    text += '[[zfs.datasets]]\nhost = "pve9"\nname = "rpool/data"\n'
    err = config_error(tmp_path, text)
    assert str(err).endswith(
        "zfs.datasets[1].host: unknown host 'pve9'; add a [hosts.pve9] table or use one of: "
        "nas, pve1"
    )


def test_duplicate_dataset(tmp_path: Path) -> None:
    text = MINIMAL + '[[zfs.datasets]]\nhost = "pve1"\nname = "rpool"\n' * 2
    err = config_error(tmp_path, text)
    assert "zfs.datasets[1]: pve1:rpool is already listed as zfs.datasets[0]" in str(err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[zfs.policies]\nhourly = "keep-hourli=24"\n', "zfs.policies.hourly: unknown key"),
        ('[zfs.policies]\nHourly = "keep-hourly=24"\n', "zfs.policies.Hourly: invalid snapshot"),
        (
            '[guest_snapshots.policies]\ndaily = "keep-daily=-1"\n',
            "guest_snapshots.policies.daily: keep-daily must not be negative",
        ),
        (
            '[[zfs.datasets]]\nhost = "pve1"\nname = "rpool"\npolicies = { hourly = "" }\n',
            "zfs.datasets[0].policies.hourly: empty keep policy",
        ),
        ('[guest_snapshots]\nselect = "@everything"\n', "guest_snapshots.select: unknown keyword"),
        ("[guest_snapshots]\nconcurrency = 0\n", "guest_snapshots.concurrency: Input should be"),
        ('[hosts."pve 1"]\naddress = "a"\n', "hosts.pve 1: invalid host name 'pve 1'"),
        ('[hosts.x]\naddress = "-oProxyCommand=sh"\n', "hosts.x.address: '-oProxyCommand=sh'"),
        ('[hosts.x]\naddress = "a;b"\n', "hosts.x.address: 'a;b' is neither an IP address"),
        ('[ssh]\nuser = "root;id"\n', "ssh.user: 'root;id' is not a login name"),
        ("[ssh]\nconnect_timeout = 0\n", "ssh.connect_timeout: Input should be greater than 0"),
    ],
)
def test_setting_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in str(config_error(tmp_path, MINIMAL + text))


def test_ipv6_address_is_accepted(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, '[hosts.x]\naddress = "fd00::2"\n'))
    assert inv.hosts["x"].address == "fd00::2"


def test_environment_problems_name_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOXFLOW_SSH__PORTT", "22")
    err = config_error(tmp_path, MINIMAL)
    assert "ssh.portt: unknown setting" in str(err)
    assert "also read from the environment: MOXFLOW_SSH__PORTT" in str(err)


def test_environment_value_that_is_not_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOXFLOW_ZFS", "not json")
    err = config_error(tmp_path, MINIMAL)
    assert 'field "zfs"' in str(err)
    assert "MOXFLOW_ZFS" in str(err)


# --- lookups -------------------------------------------------------------------------------


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return load_inventory(write(tmp_path, EXAMPLE))


def test_zfs_policy_override_then_default(inv: Inventory) -> None:
    data, backups = inv.zfs.datasets
    assert inv.zfs_policy(data, "hourly") == KeepPolicy(hourly=48)
    assert inv.zfs_policy(backups, "hourly") == KeepPolicy(hourly=24)
    assert inv.zfs_policy(data, "daily") == KeepPolicy(daily=7, weekly=4)


def test_zfs_policy_missing_names_both_places(inv: Inventory) -> None:
    with pytest.raises(ConfigError) as info:
        inv.zfs_policy(inv.zfs.datasets[1], "weekly")
    text = str(info.value)
    assert "no keep policy for 'weekly' snapshots of nas:tank/backups" in text
    assert "[zfs.policies]" in text
    assert "zfs.datasets[1]" in text
    assert info.value.setting == "zfs.policies.weekly"


def test_zfs_policy_refuses_bad_label(inv: Inventory) -> None:
    with pytest.raises(UnsafeNameError):
        inv.zfs_policy(inv.zfs.datasets[0], "Hourly")


def test_guest_policy(inv: Inventory) -> None:
    assert inv.guest_policy("hourly") == KeepPolicy(last=3, hourly=24)
    with pytest.raises(ConfigError, match=r"\[guest_snapshots.policies\]"):
        inv.guest_policy("weekly")


def test_policies_parse_with_the_retention_rules() -> None:
    with pytest.raises(ValidationError, match="unknown key 'keep-everything'"):
        ZfsSettings(policies={"hourly": "keep-everything=1"})


def test_host_and_ssh_target(inv: Inventory) -> None:
    assert inv.host("pve1").port == 22001
    with pytest.raises(ConfigError) as info:
        inv.host("pve2")
    assert "unknown host 'pve2'; known hosts: nas, pve1" in str(info.value)
    base = inv.base_dir
    assert inv.ssh_target("pve1") == SshTarget(
        name="pve1",
        address="127.0.0.1",
        port=22001,
        user="root",
        key_file=base / "id_ed25519",
        known_hosts=base / "known_hosts",
        strict_host_keys=True,
        connect_timeout=10.0,
        command_timeout=300.0,
    )
    nas = inv.ssh_target("nas")
    assert (nas.user, nas.key_file, nas.port) == ("backup", Path("/etc/moxflow/nas_key"), 22)


def test_proxmox_secret_from_file_next_to_inventory(
    inv: Inventory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (inv.base_dir / "pve-token").write_text(SECRET + "\n")
    monkeypatch.chdir(tmp_path.parent)
    secret = inv.proxmox_secret()
    assert isinstance(secret, SecretStr)
    assert secret.get_secret_value() == SECRET
    assert SECRET not in repr(secret)


def test_proxmox_secret_without_proxmox(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=r"no \[proxmox\] section"):
        inv.proxmox_secret()


# --- credentials blocks --------------------------------------------------------------------


def test_credentials_blocks_are_named_instead_of_settings(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            '[proxmox]\ncredentials = "homelab"\n[ssh]\ncredentials = "homelab-ssh"\n'
            + MINIMAL
            + 'user = "admin"\n',
        )
    )
    assert inv.proxmox is not None
    assert (inv.proxmox.credentials, inv.proxmox.host, inv.proxmox.token_secret) == (
        "homelab",
        None,
        None,
    )
    assert inv.ssh.credentials == "homelab-ssh"
    assert inv.host("pve1").user == "admin"  # a host's own user stays allowed
    with pytest.raises(ConfigError) as info:
        inv.proxmox_secret()
    assert info.value.setting == "proxmox.token_secret"
    assert "credentials block 'homelab'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[proxmox]\ncredentials = "homelab"\nhost = "pve.lan"\n'
            'token_id = "root@pam!moxflow"\ntoken_secret = "env:PVE_TOKEN"\n',
            [
                "proxmox.host: not allowed with credentials = 'homelab'",
                "proxmox.token_id: not allowed with credentials = 'homelab'",
                "proxmox.token_secret: not allowed",
                "one or the other",
            ],
        ),
        (
            '[proxmox]\ncredentials = "homelab"\nca_file = "pve-root-ca.pem"\n',
            ["proxmox.ca_file: not allowed with credentials = 'homelab'"],
        ),
        (
            '[ssh]\ncredentials = "homelab"\nkey_file = "id_ed25519"\nuser = "root"\n',
            [
                "ssh.user: not allowed with credentials = 'homelab'",
                "ssh.key_file: not allowed with credentials = 'homelab'",
            ],
        ),
        (
            '[ssh]\ncredentials = "homelab"\n' + MINIMAL + 'key_file = "k"\n',
            ["hosts.pve1.key_file: not allowed with ssh.credentials = 'homelab'"],
        ),
        (
            '[proxmox]\ncredentials = "Home Lab"\n',
            ["proxmox.credentials: 'Home Lab' is not a Prefect block name"],
        ),
        (
            "[proxmox]\nhost = 'pve.lan'\n",
            [
                "proxmox.token_id: required setting is missing",
                "proxmox.token_secret: required setting is missing",
                "or name a moxflow Proxmox credentials block in credentials",
            ],
        ),
    ],
)
def test_credentials_blocks_or_settings_not_both(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    message = str(config_error(tmp_path, text))
    for part in expected:
        assert part in message


def test_credentials_and_a_setting_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOXFLOW_SSH__CONNECT_TIMEOUT", "5")
    err = config_error(tmp_path, '[ssh]\ncredentials = "homelab"\n')
    assert err.setting == "ssh.connect_timeout"
    assert "not allowed with credentials = 'homelab'" in str(err)


# --- secret references ---------------------------------------------------------------------


def ref(text: str) -> SecretRef:
    return SecretRef.check(text)


def test_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVE_TOKEN", SECRET)
    assert ref("env:PVE_TOKEN").resolve().get_secret_value() == SECRET
    assert (ref("env:PVE_TOKEN").scheme, ref("env:PVE_TOKEN").target) == ("env", "PVE_TOKEN")


@pytest.mark.parametrize("value", [None, ""])
def test_env_reference_unset_or_empty(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("PVE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("PVE_TOKEN", value)
    with pytest.raises(SecretError) as info:
        ref("env:PVE_TOKEN").resolve(setting="proxmox.token_secret")
    assert "environment variable PVE_TOKEN is" in str(info.value)
    assert info.value.setting == "proxmox.token_secret"
    assert str(info.value).startswith("proxmox.token_secret: ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET + "\n", SECRET),
        (SECRET + "\r\n", SECRET),
        (SECRET, SECRET),
        (SECRET + "\n\n", SECRET + "\n"),
        ("  " + SECRET, "  " + SECRET),
    ],
)
def test_file_reference(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "token").write_bytes(content.encode())
    assert ref("file:token").resolve(tmp_path).get_secret_value() == expected


def test_file_reference_absolute_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text(SECRET)
    assert ref(f"file:{tmp_path / 'token'}").resolve(Path("/nowhere")).get_secret_value() == SECRET
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ref("file:~/token").resolve(Path("/nowhere")).get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "not found"),
        (lambda d: (d / "token").write_text("\n"), "is empty"),
        (lambda d: (d / "token").write_text(""), "is empty"),
        (lambda d: (d / "token").mkdir(), "cannot be read"),
        (lambda d: (d / "token").write_bytes(b"\xff\xfe" + SECRET.encode()), "not UTF-8"),
    ],
)
def test_file_reference_problems(tmp_path: Path, setup: Any, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(SecretError) as info:
        ref("file:token").resolve(tmp_path, setting="proxmox.token_secret")
    assert message in str(info.value)
    assert str(tmp_path / "token") in str(info.value)
    assert info.value.setting == "proxmox.token_secret"
    assert SECRET not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_file_reference_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(SECRET)
    path.chmod(0)
    with pytest.raises(SecretError, match="cannot be read"):
        ref("file:token").resolve(tmp_path)


class FakeSecretBlock:
    """Stands in for ``prefect.blocks.system.Secret`` (same load/get surface)."""

    stored: dict[str, Any] = {"pve-token": SECRET, "json-token": {"a": 1}}  # noqa: RUF012

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def load(cls, name: str, *, _sync: bool | None = None) -> FakeSecretBlock:
        assert _sync is True
        if name not in cls.stored:
            raise ValueError(f"Unable to find block document named {name}")
        return cls(cls.stored[name])

    def get(self) -> Any:
        return self.value


@pytest.fixture
def fake_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("prefect.blocks.system")
    module.Secret = FakeSecretBlock  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "prefect.blocks.system", module)


@pytest.mark.usefixtures("fake_prefect")
def test_block_reference() -> None:
    assert ref("block:pve-token").resolve().get_secret_value() == SECRET
    assert ref("block:json-token").resolve().get_secret_value() == '{"a": 1}'


@pytest.mark.usefixtures("fake_prefect")
def test_block_reference_missing() -> None:
    with pytest.raises(SecretError) as info:
        ref("block:nope").resolve(setting="proxmox.token_secret")
    text = str(info.value)
    assert "Prefect Secret block 'nope' cannot be loaded" in text
    assert "Unable to find block document named nope" in text
    assert info.value.setting == "proxmox.token_secret"


def test_secret_ref_rejects_plain_values() -> None:
    with pytest.raises(ValueError, match="plain secret") as info:
        SecretRef.check(SECRET)
    assert SECRET not in str(info.value)


# --- the models themselves -----------------------------------------------------------------


def all_models() -> list[type[BaseModel]]:
    return [
        Inventory,
        ProxmoxSettings,
        SshSettings,
        HostSettings,
        ZfsSettings,
        ZfsDataset,
        GuestSnapshotSettings,
        NixosSettings,
        NixosHost,
        ProxmoxSnapshotMethod,
        ZfsSnapshotMethod,
        NoSnapshotMethod,
        HealthCheck,
        WindowsSettings,
        WindowsVm,
        WindowsCheck,
        SteamSettings,
        SteamApp,
        RustSettings,
        WindowsTask,
    ]


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_every_setting_is_described(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert len(field.description) > 15
    assert model.__doc__


def test_json_schema_renders_secret_refs_as_strings() -> None:
    schema = ProxmoxSettings.model_json_schema()
    assert schema["properties"]["token_secret"]["type"] == "string"
    assert "env:NAME" in schema["properties"]["token_secret"]["description"]


def test_importing_the_core_does_not_import_prefect() -> None:
    code = (
        "import sys, moxflow.inventory, moxflow.naming, moxflow.selection, moxflow.zfs, "
        "moxflow.nixos, moxflow.health; "
        "print('prefect' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# --- NixOS updates -------------------------------------------------------------------------

NIXOS = """\
[hosts.pve1]
address = "10.0.0.2"
[hosts.dns]
address = "10.0.0.53"
[hosts.media]
address = "10.0.0.10"
[hosts.builder]
address = "10.0.0.11"

[nixos]
confirm_timeout = 180.0
health_grace = 90.0
max_parallel = 3
lock_wait = 30.0
state_dir = "/var/lib/moxflow"

[nixos.hosts.dns]
canary = true
snapshot = { method = "proxmox", vmid = 100 }
[[nixos.hosts.dns.health]]
tcp = "10.0.0.53:53"

[nixos.hosts.media]
flake = "/srv/nixos-config"
attr = "media-server"
after = ["dns"]
commit_lock_file = true
profile = "/nix/var/nix/profiles/system-media"
state_dir = "/persist/moxflow"
snapshot = { method = "zfs", host = "pve1", dataset = "rpool/data/subvol-101-disk-0" }
[[nixos.hosts.media.health]]
http = "http://10.0.0.10:8096/health"
expect_text = "Healthy"
timeout = 10.0
[[nixos.hosts.media.health]]
command = ["systemctl", "is-active", "jellyfin"]

[nixos.hosts.builder]
snapshot = { method = "none" }
"""


def test_nixos_section_loads_with_defaults_and_overrides(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, NIXOS))
    nixos = inv.nixos
    assert (nixos.confirm_timeout, nixos.health_grace, nixos.max_parallel, nixos.lock_wait) == (
        180.0,
        90.0,
        3,
        30.0,
    )
    assert list(nixos.hosts) == ["dns", "media", "builder"]  # inventory order is kept
    dns, media, builder = nixos.hosts.values()
    assert dns.canary and not media.canary
    assert dns.flake == "/etc/nixos"
    assert media.after == ["dns"]
    assert media.commit_lock_file
    assert dns.snapshot == ProxmoxSnapshotMethod(method="proxmox", vmid=100)
    assert media.snapshot == ZfsSnapshotMethod(
        method="zfs", host="pve1", dataset="rpool/data/subvol-101-disk-0"
    )
    assert builder.snapshot == NoSnapshotMethod(method="none")
    assert dns.health == [HealthCheck(tcp="10.0.0.53:53")]
    http, command = media.health
    assert (http.kind, http.expect_status, http.expect_text, http.timeout) == (
        "http",
        200,
        "Healthy",
        10.0,
    )
    assert command.command == ["systemctl", "is-active", "jellyfin"]
    assert command.timeout == 5.0


def test_nixos_accessors(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, NIXOS))
    assert inv.nixos_host("media").flake == "/srv/nixos-config"
    assert inv.nixos_attr("media") == "media-server"
    assert inv.nixos_attr("dns") == "dns"
    assert inv.nixos_profile("media") == "/nix/var/nix/profiles/system-media"
    assert inv.nixos_profile("dns") == "/nix/var/nix/profiles/system"
    assert inv.nixos_state_dir("media") == "/persist/moxflow"
    assert inv.nixos_state_dir("builder") == "/var/lib/moxflow"
    with pytest.raises(ConfigError) as info:
        inv.nixos_host("pve1")
    assert "'pve1' is not a NixOS host; known NixOS hosts: dns, media, builder" in str(info.value)
    assert info.value.setting == "nixos.hosts"
    assert "[nixos.hosts.pve1]" in str(info.value)


def test_nixos_defaults_without_a_section(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, MINIMAL))
    assert inv.nixos == NixosSettings()
    assert inv.nixos.profile == "/nix/var/nix/profiles/system"
    assert inv.nixos.state_dir == "/var/lib/moxflow"
    assert (inv.nixos.confirm_timeout, inv.nixos.health_grace) == (120.0, 60.0)
    assert (inv.nixos.max_parallel, inv.nixos.lock_wait) == (2, 0.0)


def test_nixos_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOXFLOW_NIXOS__MAX_PARALLEL", "1")
    monkeypatch.setenv("MOXFLOW_NIXOS__HOSTS__BUILDER__CANARY", "true")
    inv = load_inventory(write(tmp_path, NIXOS))
    assert inv.nixos.max_parallel == 1
    assert inv.nixos.hosts["builder"].canary
    assert inv.nixos.hosts["builder"].snapshot == NoSnapshotMethod(method="none")  # from the file


@pytest.mark.parametrize(
    ("old", "new", "setting", "message"),
    [
        (
            "[nixos.hosts.builder]",
            "[nixos.hosts.nas]",
            "nixos.hosts.nas",
            "'nas' is not a [hosts] name; add a [hosts.nas] table with its address or use one "
            "of: builder, dns, media, pve1",
        ),
        (
            'after = ["dns"]',
            'after = ["dsn"]',
            "nixos.hosts.media.after[0]",
            "'dsn' is not a NixOS host; after names [nixos.hosts] tables: dns, media, builder",
        ),
        (
            'after = ["dns"]',
            'after = ["dns", "pve1"]',
            "nixos.hosts.media.after[1]",
            "'pve1' is not a NixOS host",
        ),
        (
            "canary = true",
            'after = ["media"]',
            "nixos.hosts.dns.after",
            "dependency cycle dns → media → dns; remove one of these names from an after list",
        ),
        (
            "[nixos.hosts.builder]",
            '[nixos.hosts.builder]\nafter = ["builder"]',
            "nixos.hosts.builder.after",
            "dependency cycle builder → builder",
        ),
        (
            "canary = true",
            'canary = true\nafter = ["builder"]',
            "nixos.hosts.dns.after[0]",
            "canary dns waits for builder, which is not a canary",
        ),
        (
            'flake = "/srv/nixos-config"',
            'flake = "/srv/nixos-config; reboot"',
            "nixos.hosts.media.flake",
            "invalid path '/srv/nixos-config; reboot'",
        ),
        (
            'flake = "/srv/nixos-config"',
            'flake = "srv/nixos-config"',
            "nixos.hosts.media.flake",
            "a path on the host is absolute",
        ),
        (
            'flake = "/srv/nixos-config"',
            'flake = "/srv/$(id)"',
            "nixos.hosts.media.flake",
            "no spaces, quotes or shell metacharacters",
        ),
        (
            'state_dir = "/var/lib/moxflow"',
            'state_dir = "/var/lib/mox flow"',
            "nixos.state_dir",
            "invalid path '/var/lib/mox flow'",
        ),
        (
            'profile = "/nix/var/nix/profiles/system-media"',
            'profile = "/nix/var/nix/profiles/`id`"',
            "nixos.hosts.media.profile",
            "invalid path",
        ),
        (
            'attr = "media-server"',
            'attr = "media server"',
            "nixos.hosts.media.attr",
            "invalid nixosConfigurations attribute 'media server'",
        ),
        (
            "vmid = 100",
            "vmid = 99",
            "nixos.hosts.dns.snapshot.vmid",
            "Input should be greater than or equal to 100",
        ),
        (
            'method = "proxmox", vmid = 100',
            'method = "pve", vmid = 100',
            "nixos.hosts.dns.snapshot",
            'unknown method \'pve\'; use "proxmox", "zfs" or "none"',
        ),
        (
            'method = "proxmox", vmid = 100',
            "vmid = 100",
            "nixos.hosts.dns.snapshot",
            'needs a method: "proxmox", "zfs" or "none"',
        ),
        (
            'method = "proxmox", vmid = 100',
            'method = "proxmox", vmid = 100, vmstate = true',
            "nixos.hosts.dns.snapshot.vmstate",
            "unknown setting (a typo?); known here: method, vmid",
        ),
        (
            'snapshot = { method = "none" }',
            "",
            "nixos.hosts.builder.snapshot",
            "required setting is missing; say how to snapshot the host before an update: "
            'snapshot = { method = "proxmox", vmid = N }',
        ),
        (
            'host = "pve1", dataset',
            'host = "pve9", dataset',
            "nixos.hosts.media.snapshot.host",
            "unknown host 'pve9'; add a [hosts.pve9] table or use one of: builder, dns, media",
        ),
        (
            'dataset = "rpool/data/subvol-101-disk-0"',
            'dataset = "rpool/data;reboot"',
            "nixos.hosts.media.snapshot.dataset",
            "invalid ZFS dataset name 'rpool/data;reboot'",
        ),
        (
            'http = "http://10.0.0.10:8096/health"',
            'http = "ftp://10.0.0.10/health"',
            "nixos.hosts.media.health[0].http",
            "is not an http:// or https:// URL",
        ),
        (
            'http = "http://10.0.0.10:8096/health"',
            'http = "http://admin:hunter2@10.0.0.10/health"',
            "nixos.hosts.media.health[0].http",
            "a health URL must not carry a user or password",
        ),
        (
            'http = "http://10.0.0.10:8096/health"',
            'http = "http://10.0.0.10:99999/health"',
            "nixos.hosts.media.health[0].http",
            "is not a URL",
        ),
        (
            'http = "http://10.0.0.10:8096/health"',
            'http = "http://10.0.0.10/health"\ntcp = "10.0.0.10:8096"',
            "nixos.hosts.media.health[0]",
            "give exactly one of http, tcp or command (got http and tcp)",
        ),
        (
            'http = "http://10.0.0.10:8096/health"\nexpect_text = "Healthy"',
            "",
            "nixos.hosts.media.health[0]",
            "give exactly one of http, tcp or command (got none)",
        ),
        (
            'tcp = "10.0.0.53:53"',
            'tcp = "10.0.0.53:53"\nexpect_status = 200',
            "nixos.hosts.dns.health[0]",
            "expect_status only applies to http checks",
        ),
        (
            'tcp = "10.0.0.53:53"',
            'tcp = "10.0.0.53"',
            "nixos.hosts.dns.health[0].tcp",
            "'10.0.0.53' is not \"host:port\"",
        ),
        (
            'tcp = "10.0.0.53:53"',
            'tcp = "fd00::53:53"',
            "nixos.hosts.dns.health[0].tcp",
            '"[fd00::5]:22"',
        ),
        (
            'tcp = "10.0.0.53:53"',
            'tcp = "10.0.0.53:0"',
            "nixos.hosts.dns.health[0].tcp",
            "port 0 is not between 1 and 65535",
        ),
        (
            'tcp = "10.0.0.53:53"',
            'tcp = "-oProxyCommand=x:22"',
            "nixos.hosts.dns.health[0].tcp",
            "is neither an IP address nor a DNS name",
        ),
        (
            'command = ["systemctl", "is-active", "jellyfin"]',
            "command = []",
            "nixos.hosts.media.health[1].command",
            "a command is a non-empty list of arguments",
        ),
        (
            'command = ["systemctl", "is-active", "jellyfin"]',
            'command = ["", "x"]',
            "nixos.hosts.media.health[1].command",
            "a command is a non-empty list of arguments",
        ),
        (
            'command = ["systemctl", "is-active", "jellyfin"]',
            'command = "systemctl is-active jellyfin"',
            "nixos.hosts.media.health[1].command",
            "Input should be a valid list",
        ),
        (
            "max_parallel = 3",
            "max_parallel = 0",
            "nixos.max_parallel",
            "Input should be greater than or equal to 1",
        ),
        (
            "lock_wait = 30.0",
            "lock_wait = -1",
            "nixos.lock_wait",
            "Input should be greater than or equal to 0",
        ),
        (
            "health_grace = 90.0",
            "health_grace = 180.0",
            "nixos.confirm_timeout",
            "180 s is not longer than health_grace (180 s): the host would switch back",
        ),
        (
            "canary = true",
            "canary = true\nflakes = '/etc/nixos'",
            "nixos.hosts.dns.flakes",
            "unknown setting (a typo?); known here: flake, attr, canary",
        ),
    ],
)
def test_nixos_errors_name_the_setting(
    tmp_path: Path, old: str, new: str, setting: str, message: str
) -> None:
    assert old in NIXOS
    err = config_error(tmp_path, NIXOS.replace(old, new, 1))
    assert err.setting == setting, str(err)
    assert f"has 1 problem: {setting}: " in str(err)
    assert message in str(err)


def test_nixos_problems_are_all_listed(tmp_path: Path) -> None:
    text = NIXOS.replace("[nixos.hosts.builder]", "[nixos.hosts.nas]").replace(
        'host = "pve1", dataset', 'host = "pve9", dataset'
    )
    err = config_error(tmp_path, text)
    assert "has 2 problems" in str(err)
    assert "(1) nixos.hosts.media.snapshot.host: unknown host 'pve9'" in str(err)
    assert "(2) nixos.hosts.nas: 'nas' is not a [hosts] name" in str(err)
    assert err.setting is None


def test_nixos_models_validate_without_a_file() -> None:
    with pytest.raises(ValidationError, match="dependency cycle a → b → a"):
        NixosSettings(
            hosts={
                "a": NixosHost(after=["b"], snapshot=NoSnapshotMethod(method="none")),
                "b": NixosHost(after=["a"], snapshot=NoSnapshotMethod(method="none")),
            }
        )
    with pytest.raises(ValidationError, match="give exactly one of http, tcp or command"):
        HealthCheck(tcp="a:1", command=["true"])


# --- schedules (checked by cronsim) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("0 0 31 2 *", "day '31' never comes in month '2'"),
        ("0 0 * * 8", "'8' is not a valid day of week (0-7)"),
        ("0 0 * jan-xyz *", "'xyz' is not a valid month (1-12)"),
        ("0 9-17/0 * * *", "'9-17/0' is not an hour"),
        ("0 0 * * 5L", "'5l': Prefect's scheduler takes no L in the day of week"),
        ("0 0 LW * *", "'lw': Prefect's scheduler takes no W in the day of month"),
        ("@daily", "write five fields"),
    ],
)
def test_schedules_cron_would_refuse(cron: str, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        Inventory(schedules={"zfs-snapshot/daily": cron})
    assert problem in str(info.value)
    assert "is not a cron schedule" in str(info.value)


def test_schedules_take_what_cron_and_prefect_take() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    good = ["0 0 L * *", "0 3 * * fri#2", "0 2 * * 1-5/2", "0 0 * * 7", " 0  1 * * SUN "]
    inv = Inventory(schedules={f"zfs-snapshot/s{i}": c for i, c in enumerate(good)})
    assert inv.schedules["zfs-snapshot/s4"] == "0 1 * * sun"  # spaces and case normalized
    for cron in inv.schedules.values():
        assert CronSchedule(cron=cron, timezone="UTC").cron == cron
