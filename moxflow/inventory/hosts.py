"""``[hosts.NAME]``: every machine moxflow reaches over SSH."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from moxflow.inventory.fields import Address, Login, Port, Section

__all__ = ["HostSettings"]


class HostSettings(Section):
    """One machine moxflow reaches over SSH (a Proxmox node, a NixOS host, a NAS)."""

    address: Address = Field(description="IP address or DNS name to connect to.")
    port: Port = Field(default=22, description="Port the host's SSH server listens on.")
    user: Login | None = Field(default=None, description="Login name; default: ssh.user.")
    key_file: Path | None = Field(
        default=None,
        description="Private key for this host, relative to the inventory's folder; "
        "default: ssh.key_file.",
    )
