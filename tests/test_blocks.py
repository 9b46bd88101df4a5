"""The credential blocks: built in memory, they produce working clients for the lab and never
show their secrets."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr, ValidationError

from blocks.__main__ import main as blocks_main
from blocks.proxmox import ProxmoxCredentials, private_file, proxmox_client
from blocks.ssh import SshCredentials, ssh_runner
from labsim.client import LabClient
from moxflow.errors import ConfigError, ProxmoxAuthError, SshHostKeyError
from moxflow.inventory import Inventory, load_inventory

SECRET = "f00dfeed-0000-4000-8000-000000000000"


def _texts(block: Any) -> list[str]:
    """Every way a block shows itself: in logs, the UI, artifacts, serialized results."""
    return [
        str(block),
        repr(block),
        repr(block.model_dump()),
        json.dumps(block.model_dump(mode="json")),
        block.model_dump_json(),
        repr(vars(block)),
    ]


# --- without a lab -------------------------------------------------------------------------


def test_proxmox_block_hides_the_token_secret() -> None:
    block = ProxmoxCredentials(
        host="pve1", token_id="root@pam!moxflow", token_secret=SecretStr(SECRET)
    )
    assert isinstance(block.token_secret, SecretStr)
    for text in _texts(block):
        assert SECRET not in text
    client = block.get_client()
    assert SECRET not in repr(client)


def test_proxmox_block_rejects_a_non_pem_ca() -> None:
    with pytest.raises(ValidationError, match="ca_pem"):
        ProxmoxCredentials(
            host="pve1",
            token_id="root@pam!moxflow",
            token_secret=SecretStr(SECRET),
            ca_pem="/etc/pve/x.pem",
        )


def test_every_field_is_described() -> None:
    for block_type in (ProxmoxCredentials, SshCredentials):
        for name, info in block_type.model_fields.items():
            assert info.description, f"{block_type.__name__}.{name} has no description"


def test_private_files_are_private_and_rewritten() -> None:
    path = private_file("first", ".txt")
    assert path.read_text() == "first"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    path.write_text("tampered")
    assert private_file("first", ".txt") == path
    assert path.read_text() == "first"


def test_blocks_cli_lists_both_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert blocks_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "moxflow-proxmox-credentials" in out
    assert "moxflow-ssh-credentials" in out


def test_ssh_block_hides_the_private_key() -> None:
    pem = _new_ed25519_pem()
    block = SshCredentials(private_key=SecretStr(pem), private_key_passphrase=SecretStr("hunter2"))
    for text in _texts(block):
        assert "PRIVATE KEY" not in text
        assert "hunter2" not in text


def test_ssh_block_with_a_broken_key_is_a_config_error() -> None:
    block = SshCredentials(
        private_key=SecretStr("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    )
    with pytest.raises(ConfigError) as info:
        block.get_runner("pve1", "127.0.0.1", 22)
    assert info.value.setting == "private_key"
    assert "not a key" not in str(info.value)


def test_proxmox_block_client_keeps_max_connections() -> None:
    block = ProxmoxCredentials(
        host="pve1", token_id="root@pam!moxflow", token_secret=SecretStr(SECRET)
    )
    assert block.get_client().max_connections == 10
    assert block.get_client(max_connections=7).max_connections == 7


def test_ssh_block_runner_takes_a_host_user() -> None:
    block = SshCredentials(private_key=SecretStr(_new_ed25519_pem()), user="admin")
    assert block.get_runner("pve1", "127.0.0.1", 22).user == "admin"
    runner = block.get_runner("nas", "127.0.0.1", 2222, user="backup")
    assert (runner.user, runner.port, runner.key_file) == ("backup", 2222, None)


def _new_ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


# --- against the lab -----------------------------------------------------------------------


def _proxmox_block(lab: LabClient, **overrides: Any) -> ProxmoxCredentials:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": int(lab.info["api"]["port"]),
        "token_id": lab.info["api"]["token_id"],
        "token_secret": lab.token_secret(),
        "ca_pem": lab.ca_file.read_text(),
    }
    fields.update(overrides)
    return ProxmoxCredentials(**fields)


def _ssh_block(lab: LabClient, **overrides: Any) -> SshCredentials:
    fields: dict[str, Any] = {
        "private_key": (lab.dir / "id_ed25519").read_text(),
        "known_hosts": (lab.dir / "known_hosts").read_text(),
    }
    fields.update(overrides)
    return SshCredentials(**fields)


@pytest.mark.lab
def test_proxmox_block_client_works_against_the_lab(lab: LabClient) -> None:
    block = _proxmox_block(lab)
    with block.get_client() as client:
        guests = {g.vmid: g.name for g in client.resources()}
    assert guests[101] == "media-vm"
    for text in _texts(block):
        assert lab.token_secret() not in text


@pytest.mark.lab
def test_proxmox_block_with_a_wrong_secret(lab: LabClient) -> None:
    block = _proxmox_block(lab, token_secret=SecretStr(SECRET))
    with pytest.raises(ProxmoxAuthError) as info:
        block.get_client().resources()
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.lab
def test_ssh_block_runner_works_against_the_lab(lab: LabClient) -> None:
    block = _ssh_block(lab)
    port = int(lab.info["hosts"]["pve1"]["port"])
    with block.get_runner("pve1", "127.0.0.1", port) as runner:
        assert runner.key_file is None  # the key stays in memory
        assert "rpool/data" in runner.run(["zfs", "list", "-H", "-o", "name"]).stdout
    key_text = (lab.dir / "id_ed25519").read_text()
    for text in _texts(block):
        assert key_text.strip().splitlines()[1] not in text


@pytest.mark.lab
def test_ssh_block_refuses_hosts_missing_from_its_known_hosts(lab: LabClient) -> None:
    port = int(lab.info["hosts"]["pve1"]["port"])
    others = [
        line
        for line in (lab.dir / "known_hosts").read_text().splitlines()
        if f"]:{port} " not in line
    ]
    block = _ssh_block(lab, known_hosts="\n".join(others) + "\n")
    with pytest.raises(SshHostKeyError) as info:
        block.get_runner("pve1", "127.0.0.1", port).run(["true"])
    assert "SSH credentials block" in str(info.value)


# --- with a Prefect server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for this module's tests that save and load blocks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def _inventory(lab: LabClient, folder: Path, text: str) -> Inventory:
    """An inventory in ``folder``: ``text``, then the lab's SSH hosts (``[hosts.NAME]``)."""
    hosts = "".join(
        f'\n[hosts.{name}]\naddress = "127.0.0.1"\nport = {int(host["port"])}\n'
        for name, host in lab.info["hosts"].items()
    )
    path = folder / "inventory.toml"
    path.write_text(text + hosts)
    return load_inventory(path)


@pytest.mark.prefect
@pytest.mark.lab
@pytest.mark.usefixtures("prefect_server")
def test_register_save_and_load_round_trip(
    lab: LabClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client

    assert blocks_main(["register"]) == 0
    assert "registered moxflow SSH credentials" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        for slug in ("moxflow-proxmox-credentials", "moxflow-ssh-credentials"):
            assert client.read_block_type_by_slug(slug).slug == slug
    _proxmox_block(lab).save("lab-test", overwrite=True)
    _ssh_block(lab).save("lab-test", overwrite=True)
    proxmox = cast(ProxmoxCredentials, ProxmoxCredentials.load("lab-test"))
    ssh = cast(SshCredentials, SshCredentials.load("lab-test"))
    assert proxmox.token_secret.get_secret_value() == lab.token_secret()
    assert 101 in {g.vmid for g in proxmox.get_client().resources()}
    port = int(lab.info["hosts"]["nas"]["port"])
    with ssh.get_runner("nas", "127.0.0.1", port) as runner:
        assert "tank/backups" in runner.run(["zfs", "list", "-H", "-o", "name"]).stdout


@pytest.mark.prefect
@pytest.mark.lab
@pytest.mark.usefixtures("prefect_server")
def test_inventory_names_the_proxmox_block(lab: LabClient, tmp_path: Path) -> None:
    _proxmox_block(lab).save("inventory-pve", overwrite=True)
    inv = _inventory(lab, tmp_path, '[proxmox]\ncredentials = "inventory-pve"\n')
    with proxmox_client(inv, max_connections=5) as client:
        assert (client.host, client.port, client.token_id) == (
            "127.0.0.1",
            int(lab.info["api"]["port"]),
            lab.info["api"]["token_id"],
        )
        assert client.max_connections == 5
        assert client.ca_file is not None
        assert client.ca_file.read_text() == lab.ca_file.read_text()
        assert 101 in {g.vmid for g in client.resources()}  # the block's secret reached it


@pytest.mark.prefect
@pytest.mark.lab
@pytest.mark.usefixtures("prefect_server")
def test_inventory_names_the_ssh_block(lab: LabClient, tmp_path: Path) -> None:
    _ssh_block(lab, user="moxflow", command_timeout=42.0).save("inventory-ssh", overwrite=True)
    inv = _inventory(lab, tmp_path, '[ssh]\ncredentials = "inventory-ssh"\n')
    with ssh_runner(inv, "nas") as runner:
        assert (runner.user, runner.port) == ("moxflow", int(lab.info["hosts"]["nas"]["port"]))
        assert runner.key_file is None  # the block's key, in memory
        assert runner.command_timeout == 42.0
        assert "'inventory-ssh'" in runner.known_hosts_label
        assert "tank/backups" in runner.run(["zfs", "list", "-H", "-o", "name"]).stdout
    # a host's own user still wins over the block's
    path = tmp_path / "inventory.toml"
    path.write_text(path.read_text().replace("[hosts.nas]\n", '[hosts.nas]\nuser = "backup"\n'))
    with ssh_runner(load_inventory(path), "nas") as runner:
        assert runner.user == "backup"
        assert "tank/backups" in runner.run(["zfs", "list", "-H", "-o", "name"]).stdout


@pytest.mark.prefect
@pytest.mark.lab
@pytest.mark.usefixtures("prefect_server")
def test_an_unknown_block_is_a_config_error_naming_the_setting(
    lab: LabClient, tmp_path: Path
) -> None:
    inv = _inventory(
        lab, tmp_path, '[proxmox]\ncredentials = "nope"\n[ssh]\ncredentials = "nope"\n'
    )
    with pytest.raises(ConfigError) as info:
        proxmox_client(inv)
    assert info.value.setting == "proxmox.credentials"
    text = str(info.value)
    assert "no moxflow Proxmox credentials block named 'nope'" in text
    assert "python -m blocks register" in text
    with pytest.raises(ConfigError) as info:
        ssh_runner(inv, "nas")
    assert info.value.setting == "ssh.credentials"
    assert "no moxflow SSH credentials block named 'nope'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown host 'nope'"):
        ssh_runner(inv, "nope")  # the inventory's own errors come first


@pytest.mark.lab
def test_an_unreachable_prefect_server_is_a_config_error(lab: LabClient, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    inv = _inventory(lab, tmp_path, '[proxmox]\ncredentials = "homelab"\n')
    with (
        temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}),
        pytest.raises(ConfigError) as info,
    ):
        proxmox_client(inv)
    assert info.value.setting == "proxmox.credentials"
    assert "PREFECT_API_URL" in str(info.value)
