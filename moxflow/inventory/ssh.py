"""``[ssh]``: the defaults of every SSH connection, and :class:`SshTarget`, one host's
connection with those defaults filled in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from moxflow.inventory.fields import Login, Seconds, Section

__all__ = ["SshSettings", "SshTarget"]


class SshSettings(Section):
    """Defaults for every SSH connection; a host may override user and key_file."""

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
