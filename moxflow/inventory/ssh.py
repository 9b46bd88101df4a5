"""``[ssh]``: the defaults of every SSH connection (or the name of a Prefect block holding
them), and :class:`SshTarget`, one host's connection with those defaults filled in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from moxflow.inventory.fields import BlockName, Login, Seconds, Section
from moxflow.inventory.proxmox import credentials_exclusive

__all__ = ["SshSettings", "SshTarget"]


class SshSettings(Section):
    """Defaults for every SSH connection, or a credentials block; a host may override user."""

    user: Login = Field(default="root", description="Login name on the hosts.")
    key_file: Path | None = Field(
        default=None,
        description=(
            "Private key to log in with (e.g. an ed25519 key), relative to the inventory's "
            "folder. Only this key is offered; no agent and no key search."
        ),
    )
    known_hosts: Path | None = Field(
        default=None,
        description=(
            "known_hosts file with the hosts' public keys, relative to the inventory's folder."
        ),
    )
    strict_host_keys: bool = Field(
        default=True,
        description=(
            "Refuse hosts whose key is unknown or changed. Turning this off allows "
            "man-in-the-middle attacks."
        ),
    )
    connect_timeout: Seconds = Field(
        default=10.0, description="Seconds to wait for an SSH connection to be established."
    )
    command_timeout: Seconds = Field(
        default=300.0, description="Seconds one remote command may run before it is abandoned."
    )
    credentials: BlockName | None = Field(
        default=None,
        description=(
            "Name of a saved 'moxflow SSH credentials' Prefect block holding the private key, "
            "known host keys, login name, host key checking and timeouts; then leave out every "
            "other setting of this section, and key_file of every host (a host's user still "
            "wins). Create the block in the Prefect UI after python -m blocks register."
        ),
    )

    @model_validator(mode="after")
    def _credentials_or_settings(self) -> Self:
        credentials_exclusive(
            self,
            self.credentials,
            "moxflow SSH credentials",
            (
                "user",
                "key_file",
                "known_hosts",
                "strict_host_keys",
                "connect_timeout",
                "command_timeout",
            ),
        )
        return self


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Everything needed to open an SSH connection to one inventory host."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path | None
    strict_host_keys: bool
    connect_timeout: float
    command_timeout: float
