"""The SSH runners every job uses, ``ssh_runner(inv, host)``, and the Prefect block that can
hold the identity and trusted host keys (``SshCredentials``).

The inventory either holds the settings (``[ssh]`` key_file, known_hosts, ...) or names a
saved block (``[ssh] credentials = "homelab"``); either way the runner is made in one place.
Register the type with the Prefect server with ``python -m blocks register`` (both moxflow
block types) or ``prefect block register -m blocks.ssh``; then create one in the UI or::

    SshCredentials(private_key=Path("id_ed25519").read_text(),
                   known_hosts=Path("known_hosts").read_text()).save("homelab")
"""

from __future__ import annotations

import io

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from blocks.proxmox import load_block, private_file
from moxflow.errors import ConfigError
from moxflow.inventory import Inventory, SshTarget
from moxflow.ssh import SshRunner

__all__ = ["SshCredentials", "ssh_runner"]


def ssh_runner(inv: Inventory, host: str) -> SshRunner:
    """An SSH runner for one inventory host; close it after.

    With ``[ssh] credentials = "NAME"`` the saved ``SshCredentials`` block NAME, loaded from
    the Prefect server now, gives the key, known host keys, user and timeouts; the inventory
    gives the host's address and port, and its own user if ``[hosts.NAME]`` sets one.
    Otherwise the inventory's key file and known_hosts file are used.
    """
    block_name = inv.ssh.credentials
    if block_name is None:
        return _open(inv.ssh_target(host))
    settings = inv.host(host)  # an unknown host is refused before the server is asked
    block = load_block(SshCredentials, block_name, setting="ssh.credentials")
    return block.get_runner(host, settings.address, settings.port, user=settings.user)


def _open(
    target: SshTarget,
    *,
    pkey: paramiko.PKey | None = None,
    known_hosts_label: str | None = None,
) -> SshRunner:
    """The one place a runner is made: from the inventory's target, or from a block's (with
    its key in memory and its known_hosts in a private file)."""
    return SshRunner(
        target.name,
        target.address,
        target.port,
        user=target.user,
        key_file=target.key_file,
        pkey=pkey,
        known_hosts=target.known_hosts,
        known_hosts_label=known_hosts_label,
        strict_host_keys=target.strict_host_keys,
        connect_timeout=target.connect_timeout,
        command_timeout=target.command_timeout,
    )


class SshCredentials(Block):
    """Private key and known host keys for moxflow's SSH hosts; ``get_runner()`` builds runners.

    The private key is parsed in memory and never written to disk. Host keys are verified
    against ``known_hosts``; an unknown or changed key is refused unless
    ``strict_host_keys`` is off.

    The jobs use it when the inventory names it: ``[ssh] credentials = "homelab"``.

    Example:
        ```python
        from pathlib import Path

        from pydantic import SecretStr

        from blocks.ssh import SshCredentials

        SshCredentials(
            private_key=SecretStr(Path("id_ed25519").read_text()),
            known_hosts=Path("known_hosts").read_text(),
        ).save("homelab")

        runner = SshCredentials.load("homelab").get_runner("pve1", "192.168.1.10")
        print(runner.run(["zfs", "list", "-H"]).stdout)
        ```
    """

    _block_type_name = "moxflow SSH credentials"

    user: str = Field(default="root", description="User to log in as on every host.")
    private_key: SecretStr = Field(
        ...,
        description=(
            "Private key in OpenSSH or PEM format (the content of id_ed25519, not its path). "
            "Its public half must be in each host's authorized_keys."
        ),
    )
    private_key_passphrase: SecretStr | None = Field(
        default=None, description="Passphrase of the private key, if it has one."
    )
    known_hosts: str | None = Field(
        default=None,
        description=(
            "Trusted host keys in known_hosts format (lines like `[10.0.0.5]:22 ssh-ed25519 "
            "AAAA...`, e.g. from `ssh-keyscan` after verifying them). Empty: the worker "
            "user's ~/.ssh/known_hosts."
        ),
    )
    strict_host_keys: bool = Field(
        default=True,
        description="Refuse hosts whose key is not in known_hosts. Off allows a man in the middle.",
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a host to accept the connection."
    )
    command_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a command may run unless a task says otherwise."
    )

    @field_validator("known_hosts")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    def get_runner(
        self, name: str, address: str, port: int = 22, *, user: str | None = None
    ) -> SshRunner:
        """An ``SshRunner`` for one host, logging in as ``user`` (default: the block's); the
        private key is unwrapped and parsed only here."""
        pkey = self._load_key()
        known_hosts = private_file(self.known_hosts, ".known_hosts") if self.known_hosts else None
        target = SshTarget(
            name=name,
            address=address,
            port=port,
            user=user or self.user,
            key_file=None,
            known_hosts=known_hosts,
            strict_host_keys=self.strict_host_keys,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )
        label = f"the known_hosts of SSH credentials block {self._name()}"
        return _open(target, pkey=pkey, known_hosts_label=label if known_hosts else None)

    def _name(self) -> str:
        return repr(self._block_document_name) if self._block_document_name else "(unsaved)"

    def _load_key(self) -> paramiko.PKey:
        text = self.private_key.get_secret_value()
        data = text.encode()
        password = (
            self.private_key_passphrase.get_secret_value() if self.private_key_passphrase else None
        )
        secret = password.encode() if password else None
        loaded: object
        try:
            try:
                loaded = serialization.load_ssh_private_key(data, password=secret)
            except ValueError:
                loaded = serialization.load_pem_private_key(data, password=secret)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"the private key of SSH credentials block {self._name()} cannot be read: "
                f"{_describe(exc)}",
                setting="private_key",
                hint="paste the whole key file, BEGIN and END lines included",
            ) from None
        key_class: type[paramiko.PKey]
        if isinstance(loaded, ed25519.Ed25519PrivateKey):
            key_class = paramiko.Ed25519Key
        elif isinstance(loaded, rsa.RSAPrivateKey):
            key_class = paramiko.RSAKey
        elif isinstance(loaded, ec.EllipticCurvePrivateKey):
            key_class = paramiko.ECDSAKey
        else:
            raise ConfigError(
                f"unsupported key type {type(loaded).__name__}; use ed25519, ECDSA or RSA",
                setting="private_key",
            )
        return key_class.from_private_key(io.StringIO(text), password=password)


def _describe(exc: BaseException) -> str:
    # cryptography's messages never echo the key material; keep them short anyway.
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
