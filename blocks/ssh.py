"""SSH runners: for an inventory host (``ssh_runner``), or from a Prefect block holding the
identity and trusted host keys (``SshCredentials``).

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

from blocks.proxmox import private_file
from moxflow.errors import ConfigError
from moxflow.inventory import Inventory
from moxflow.ssh import SshRunner

__all__ = ["SshCredentials", "ssh_runner"]


def ssh_runner(inv: Inventory, host: str) -> SshRunner:
    """An SSH runner for one inventory host, with its key and known_hosts; close it after."""
    t = inv.ssh_target(host)
    return SshRunner(
        host,
        t.address,
        t.port,
        user=t.user,
        key_file=t.key_file,
        known_hosts=t.known_hosts,
        strict_host_keys=t.strict_host_keys,
        connect_timeout=t.connect_timeout,
        command_timeout=t.command_timeout,
    )


class SshCredentials(Block):
    """Private key and known host keys for moxflow's SSH hosts; ``get_runner()`` builds runners.

    The private key is parsed in memory and never written to disk. Host keys are verified
    against ``known_hosts``; an unknown or changed key is refused unless
    ``strict_host_keys`` is off.

    Example:
        ```python
        from blocks.ssh import SshCredentials

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

    def get_runner(self, name: str, address: str, port: int = 22) -> SshRunner:
        """An ``SshRunner`` for one host; the private key is unwrapped and parsed only here."""
        known_hosts = private_file(self.known_hosts, ".known_hosts") if self.known_hosts else None
        label = f"the known_hosts of SSH credentials block {self._name()}"
        return SshRunner(
            name,
            address,
            port,
            user=self.user,
            pkey=self._load_key(),
            known_hosts=known_hosts,
            known_hosts_label=label if known_hosts else None,
            strict_host_keys=self.strict_host_keys,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )

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
