"""The Proxmox VE API client: built from the inventory (``proxmox_client``) or from a Prefect
block holding the same credentials (``ProxmoxCredentials``).

Register the type with the Prefect server with ``python -m blocks register`` (both moxflow
block types) or ``prefect block register -m blocks.proxmox``; then create one in the UI or::

    ProxmoxCredentials(host="pve1.lan", token_id="root@pam!moxflow", token_secret="...",
                       ca_pem=Path("pve-root-ca.pem").read_text()).save("homelab")
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory
from moxflow.proxmox import ProxmoxClient

__all__ = ["ProxmoxCredentials", "proxmox_client"]


def proxmox_client(inv: Inventory, *, max_connections: int = 10) -> ProxmoxClient:
    """A client for the inventory's cluster (safe to share between threads; close it after).

    The token secret is resolved here, at the last moment: ``env:``, ``file:`` or ``block:``.
    """
    pve = inv.proxmox
    if pve is None:
        raise ConfigError(
            "the inventory has no [proxmox] section; add host, token_id and token_secret",
            setting="proxmox",
        )
    return ProxmoxClient(
        pve.host,
        pve.port,
        token_id=pve.token_id,
        token_secret=inv.proxmox_secret(),
        ca_file=pve.ca_file,
        verify_tls=pve.verify_tls,
        timeout=pve.timeout,
        max_connections=max_connections,
    )


class ProxmoxCredentials(Block):
    """API token and TLS trust for a Proxmox VE cluster; ``get_client()`` builds the client.

    Example:
        ```python
        from blocks.proxmox import ProxmoxCredentials

        client = ProxmoxCredentials.load("homelab").get_client()
        guests = client.resources()
        ```
    """

    _block_type_name = "moxflow Proxmox credentials"

    host: str = Field(
        ...,
        description="Address or name of any node of the cluster, as its certificate names it.",
    )
    port: int = Field(default=8006, ge=1, le=65535, description="Port of the API (pveproxy).")
    token_id: str = Field(
        ...,
        description="API token id, USER@REALM!TOKENID, e.g. root@pam!moxflow.",
        examples=["root@pam!moxflow"],
    )
    token_secret: SecretStr = Field(
        ...,
        description="The API token's secret (a UUID shown once when the token is created).",
    )
    ca_pem: str | None = Field(
        default=None,
        description=(
            "PEM text of the cluster CA, /etc/pve/pve-root-ca.pem of any node. The API's "
            "certificate is verified against it; leave empty to use the system's CAs."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description="Verify the API's certificate. Turning this off exposes the token.",
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for one API request to answer."
    )

    @field_validator("ca_pem")
    @classmethod
    def _looks_like_pem(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("ca_pem must be the PEM text of a CA certificate (BEGIN CERTIFICATE)")
        return value

    def get_client(self) -> ProxmoxClient:
        """A ``ProxmoxClient`` for this cluster; the token secret is unwrapped only here."""
        ca_file = private_file(self.ca_pem, ".pem") if self.ca_pem else None
        return ProxmoxClient(
            self.host,
            self.port,
            token_id=self.token_id,
            token_secret=self.token_secret,
            ca_file=ca_file,
            verify_tls=self.verify_tls,
            timeout=self.timeout,
        )


_dir_lock = threading.Lock()
_private_dir: Path | None = None


def private_file(text: str, suffix: str) -> Path:
    """Write ``text`` to a file named by its hash in this process's private (0700) folder.

    A private folder, rewritten every time, so nobody else can plant a CA or known_hosts
    file under a predictable name; removed when the process exits.
    """
    global _private_dir
    with _dir_lock:
        if _private_dir is None or not _private_dir.is_dir():
            _private_dir = Path(tempfile.mkdtemp(prefix="moxflow-blocks-"))
            atexit.register(shutil.rmtree, _private_dir, ignore_errors=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        path = _private_dir / f"{digest}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=_private_dir, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return path
