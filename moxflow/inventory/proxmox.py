"""``[proxmox]``: how moxflow reaches the Proxmox VE API, and where the API token's secret is:
in the inventory, or in a Prefect block the inventory names (``credentials``).

:func:`credentials_exclusive` serves ``[ssh] credentials`` too. The core
holds only the block's name; ``blocks/`` loads the block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from moxflow.inventory.fields import Address, BlockName, Port, Seconds, Section, validation_error
from moxflow.inventory.secrets import SecretRef

__all__ = ["ProxmoxSettings", "credentials_exclusive"]

_TOKEN_ID_RE = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+![A-Za-z][A-Za-z0-9_.-]+", re.ASCII)


def credentials_exclusive(
    section: BaseModel, name: str | None, block_type: str, held: tuple[str, ...]
) -> None:
    """Refuse the settings in ``held`` that are given next to ``credentials = name``.

    The block ``name`` holds those values, so a value given in the inventory too would be
    silently ignored; one place or the other. Raises a ``ValidationError`` naming each.
    """
    if name is None:
        return
    given = [field for field in held if field in section.model_fields_set]
    if given:
        raise validation_error(
            type(section).__name__,
            [
                (
                    (field,),
                    f"not allowed with credentials = {name!r}: the {block_type} block "
                    f"{name!r} holds it; remove {field}, or remove credentials to keep "
                    "the settings in the inventory (one or the other)",
                )
                for field in given
            ],
        )


class ProxmoxSettings(Section):
    """How to reach the Proxmox VE API: these settings, or a credentials block's name."""

    host: Address | None = Field(
        default=None,
        description=(
            "Address of one Proxmox VE node (IP or DNS name); the API is on its port. "
            "Required unless credentials is set."
        ),
    )
    port: Port = Field(default=8006, description="HTTPS port of the Proxmox VE API.")
    token_id: str | None = Field(
        default=None,
        description=(
            "API token id as USER@REALM!TOKENID, e.g. root@pam!moxflow. Create it under "
            "Datacenter > Permissions > API Tokens. Required unless credentials is set."
        ),
    )
    # a string or left out: TOML has no null, so the schema says string (as for any SecretRef)
    token_secret: Annotated[SecretRef | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        description=(
            "Where the API token's secret is: env:NAME (an environment variable), file:PATH "
            "(a file, relative to the inventory's folder) or block:NAME (a Prefect Secret "
            "block). Never the secret itself. Required unless credentials is set."
        ),
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
    credentials: BlockName | None = Field(
        default=None,
        description=(
            "Name of a saved 'moxflow Proxmox credentials' Prefect block holding the cluster's "
            "address, port, API token and CA; then leave out every other setting of this "
            "section. Create the block in the Prefect UI after python -m blocks register."
        ),
    )

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN_ID_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an API token id; write USER@REALM!TOKENID, e.g. root@pam!moxflow"
            )
        return value

    @model_validator(mode="after")
    def _credentials_or_settings(self) -> Self:
        credentials_exclusive(
            self,
            self.credentials,
            "moxflow Proxmox credentials",
            ("host", "port", "token_id", "token_secret", "ca_file", "verify_tls", "timeout"),
        )
        if self.credentials is None:
            missing = [f for f in ("host", "token_id", "token_secret") if getattr(self, f) is None]
            if missing:
                raise validation_error(
                    type(self).__name__,
                    [
                        (
                            (field,),
                            "required setting is missing (or name a moxflow Proxmox "
                            "credentials block in credentials instead)",
                        )
                        for field in missing
                    ],
                )
        return self
