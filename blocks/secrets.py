"""``block:NAME`` secret references: read a Prefect Secret block for the inventory.

The core (:mod:`moxflow.inventory.secrets`) reads ``env:`` and ``file:`` itself and imports no
Prefect; importing the ``blocks`` package registers :func:`read_secret_block` as its reader of
``block:`` references. Prefect is imported when a block is read, not before.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from moxflow.errors import SecretError
from moxflow.inventory.secrets import register_block_resolver

__all__ = ["read_secret_block"]


def read_secret_block(name: str, setting: str) -> SecretStr:
    """The value of the Prefect Secret block ``name`` (JSON text unless it is a string)."""
    try:
        from prefect.blocks.system import Secret

        load: Any = Secret.load  # dispatches to async in a running loop unless _sync=True
        value: Any = load(name, _sync=True).get()
    except Exception as exc:
        raise SecretError(
            f"Prefect Secret block {name!r} cannot be loaded: {type(exc).__name__}: {exc}",
            setting=setting,
            hint=f"create it with Secret(value=...).save({name!r})",
        ) from None
    text = value if isinstance(value, str) else json.dumps(value)
    if not text:
        raise SecretError(f"Prefect Secret block {name!r} is empty", setting=setting)
    return SecretStr(text)


register_block_resolver(read_secret_block)
