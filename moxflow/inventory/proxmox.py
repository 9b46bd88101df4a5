"""``[proxmox]``: how moxflow reaches the Proxmox VE API, and where the API token's secret is."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from moxflow.inventory.fields import Address, Port, Seconds, Section
from moxflow.inventory.secrets import SecretRef

__all__ = ["ProxmoxSettings"]

_TOKEN_ID_RE = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+![A-Za-z][A-Za-z0-9_.-]+", re.ASCII)


class ProxmoxSettings(Section):
    """How to reach the Proxmox VE API."""

    host: Address = Field(
        description="Address of one Proxmox VE node (IP or DNS name); the API is on its port."
    )
    port: Port = Field(default=8006, description="HTTPS port of the Proxmox VE API.")
    token_id: str = Field(
        description=(
            "API token id as USER@REALM!TOKENID, e.g. root@pam!moxflow. Create it under "
            "Datacenter > Permissions > API Tokens."
        )
    )
    token_secret: SecretRef = Field(
        description=(
            "Where the API token's secret is: env:NAME (an environment variable), file:PATH "
            "(a file, relative to the inventory's folder) or block:NAME (a Prefect Secret "
            "block). Never the secret itself."
        )
    )
    ca_file: Path | None = Field(
        default=None,
        description=(
            "CA certificate to verify the API's TLS certificate against, usually a copy of "
            "the cluster's /etc/pve/pve-root-ca.pem. Relative to the inventory's folder."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description=(
            "Verify the API's TLS certificate. Leave on: set ca_file instead of turning this off."
        ),
    )
    timeout: Seconds = Field(
        default=30.0, description="Seconds to wait for one API request before giving up."
    )

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, value: str) -> str:
        if not _TOKEN_ID_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an API token id; write USER@REALM!TOKENID, e.g. root@pam!moxflow"
            )
        return value
