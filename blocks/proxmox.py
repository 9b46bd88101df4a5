"""The Proxmox VE API client every job uses, ``proxmox_client(inv)``, and the Prefect block
that can hold the cluster's credentials (``ProxmoxCredentials``).

The inventory either holds the settings (``[proxmox]`` host, token_id, token_secret, ...) or
names a saved block (``[proxmox] credentials = "homelab"``); either way the client is built
by the block, in one place. Register the type with the Prefect server with
``python -m blocks register`` (both moxflow block types) or
``prefect block register -m blocks.proxmox``; then create one in the UI or::

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
from typing import Any, TypeVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, ValidationError, field_validator

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory
from moxflow.proxmox import ProxmoxClient

__all__ = ["ProxmoxCredentials", "proxmox_client"]


def proxmox_client(inv: Inventory, *, max_connections: int = 10) -> ProxmoxClient:
    """A client for the inventory's cluster (safe to share between threads; close it after).

    With ``[proxmox] credentials = "NAME"`` the saved ``ProxmoxCredentials`` block NAME,
    loaded from the Prefect server now, gives the address, token and CA. Otherwise the
    inventory's settings do, and the token secret is resolved here, at the last moment:
    ``env:``, ``file:`` or ``block:``.
    """
    pve = inv.proxmox
    if pve is None:
        raise ConfigError(
            "the inventory has no [proxmox] section",
            setting="proxmox",
            hint="add [proxmox] with host, token_id and token_secret, or with credentials = "
            "the name of a moxflow Proxmox credentials block",
        )
    if pve.credentials is not None:
        block = load_block(ProxmoxCredentials, pve.credentials, setting="proxmox.credentials")
        return block.get_client(max_connections=max_connections)
    if pve.host is None or pve.token_id is None:  # pragma: no cover - the inventory refuses it
        raise ConfigError("proxmox.host and proxmox.token_id are missing", setting="proxmox")
    unsaved = ProxmoxCredentials(
        host=pve.host,
        port=pve.port,
        token_id=pve.token_id,
        token_secret=inv.proxmox_secret(),
        verify_tls=pve.verify_tls,
        timeout=pve.timeout,
    )
    return unsaved._connect(pve.ca_file, max_connections)


class ProxmoxCredentials(Block):
    """API token and TLS trust for a Proxmox VE cluster; ``get_client()`` builds the client.

    The jobs use it when the inventory names it: ``[proxmox] credentials = "homelab"``.

    Example:
        ```python
        from pathlib import Path

        from pydantic import SecretStr

        from blocks.proxmox import ProxmoxCredentials

        ProxmoxCredentials(
            host="pve1.lan",
            token_id="root@pam!moxflow",
            token_secret=SecretStr("..."),
            ca_pem=Path("pve-root-ca.pem").read_text(),
        ).save("homelab")

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

    def get_client(self, *, max_connections: int = 10) -> ProxmoxClient:
        """A ``ProxmoxClient`` for this cluster, keeping up to ``max_connections`` connections
        (one per thread that shares it); the token secret is unwrapped only by the client."""
        ca_file = private_file(self.ca_pem, ".pem") if self.ca_pem else None
        return self._connect(ca_file, max_connections)

    def _connect(self, ca_file: Path | None, max_connections: int) -> ProxmoxClient:
        # The one place a client is built: for a saved block (its CA written to a private
        # file) and for the inventory's settings (an unsaved block and the inventory's CA file).
        return ProxmoxClient(
            self.host,
            self.port,
            token_id=self.token_id,
            token_secret=self.token_secret,
            ca_file=ca_file,
            verify_tls=self.verify_tls,
            timeout=self.timeout,
            max_connections=max_connections,
        )


B = TypeVar("B", bound=Block)


def load_block(block_type: type[B], name: str, *, setting: str) -> B:
    """The saved block ``name`` of ``block_type``, read from the Prefect server now.

    A block that is missing, or that cannot be read, is a ``ConfigError`` naming ``setting``
    (the inventory setting that names it) and what to do; never a traceback.
    """
    kind = block_type.get_block_type_name()
    try:
        load: Any = block_type.load  # dispatches to async in a running loop unless _sync=True
        block = load(name, _sync=True)
    except Exception as exc:
        if isinstance(exc, ValueError) and "Unable to find block document" in str(exc):
            raise ConfigError(
                f"there is no {kind} block named {name!r} on the Prefect server",
                setting=setting,
                hint=(
                    "run `python -m blocks register`, then create a "
                    f"{kind} block named {name!r} in the Prefect UI (Blocks), or save one in "
                    f"Python as the docstring of {block_type.__module__}."
                    f"{block_type.__name__} shows"
                ),
            ) from None
        raise ConfigError(
            f"the {kind} block {name!r} cannot be loaded: {_describe(exc)}",
            setting=setting,
            hint=(
                "check that the Prefect server at PREFECT_API_URL answers, and run "
                "`python -m blocks register` after upgrading moxflow"
            ),
        ) from None
    if not isinstance(block, block_type):  # pragma: no cover - Prefect returns the class
        raise ConfigError(f"{name!r} is not a {kind} block", setting=setting)
    return block


def _describe(exc: BaseException) -> str:
    """One short line about ``exc``; a validation error shows where, never the values."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'block'}: {e['msg']}" for e in exc.errors()
        )
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
