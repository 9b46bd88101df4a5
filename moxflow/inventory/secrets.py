"""Secret references: where a secret lives, never the secret, and how it is read at the last moment.

A setting such as ``proxmox.token_secret`` holds a :class:`SecretRef`: ``env:NAME`` (an
environment variable), ``file:PATH`` (a file, relative to the inventory's folder) or
``block:NAME`` (a Prefect Secret block). ``env:`` and ``file:`` are read here. The core never
imports Prefect, so ``block:`` is read by the resolver registered with
:func:`register_block_resolver`: ``blocks/`` (moxflow's Prefect layer) registers it when it is
imported, and every flow and task imports it to get its clients.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler, SecretStr, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

from moxflow.errors import SecretError

__all__ = [
    "BlockResolver",
    "SecretRef",
    "SecretScheme",
    "register_block_resolver",
    "resolve_path",
]

SecretScheme = Literal["env", "file", "block"]
SECRET_SCHEMES: tuple[SecretScheme, ...] = ("env", "file", "block")
BLOCK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*", re.ASCII)
"""A Prefect block document name as moxflow accepts it."""
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)

BlockResolver = Callable[[str, str], SecretStr]
"""Reads a ``block:NAME`` secret: ``resolver(name, setting)``; raises ``SecretError``."""

_block_resolver: BlockResolver | None = None


def register_block_resolver(resolver: BlockResolver | None) -> BlockResolver | None:
    """Make ``resolver`` read every ``block:`` reference (``None``: none); returns the old one."""
    global _block_resolver
    previous, _block_resolver = _block_resolver, resolver
    return previous


def resolve_path(path: Path, base_dir: Path) -> Path:
    """``path`` with ``~`` expanded; a relative one is taken relative to ``base_dir``."""
    path = path.expanduser()
    return path if path.is_absolute() else base_dir / path


class SecretRef(str):
    """Where a secret lives: ``env:NAME``, ``file:PATH`` or ``block:NAME``; never the secret.

    ``resolve()`` reads the secret at the last moment and returns it as a ``SecretStr``.
    """

    __slots__ = ()

    @property
    def scheme(self) -> SecretScheme:
        """``env``, ``file`` or ``block``."""
        scheme = self.partition(":")[0]
        for known in SECRET_SCHEMES:
            if scheme == known:
                return known
        raise SecretError(f"{self!r} is not a secret reference")  # pragma: no cover

    @property
    def target(self) -> str:
        """The variable name, file path or block name after the scheme."""
        return self.partition(":")[2]

    @classmethod
    def check(cls, value: str, field: str = "token_secret") -> SecretRef:
        """Validate a reference without ever echoing it; raises ``ValueError``."""
        scheme, colon, target = value.partition(":")
        if not colon or scheme not in SECRET_SCHEMES:
            raise ValueError(
                f"looks like a plain secret; store it in the environment and write "
                f'{field} = "env:PVE_TOKEN" (or file:PATH, or block:NAME for a Prefect '
                f"Secret block)"
            )
        if scheme == "env" and not _ENV_NAME_RE.fullmatch(target):
            raise ValueError(
                "env: needs an environment variable name of A-Z, a-z, 0-9 and '_', "
                f'e.g. {field} = "env:PVE_TOKEN"'
            )
        if scheme == "file" and not target.strip():
            raise ValueError(f'file: needs a path, e.g. {field} = "file:pve-token"')
        if scheme == "block" and not BLOCK_NAME_RE.fullmatch(target):
            raise ValueError(
                "block: needs a Prefect block name of a-z, 0-9 and '-', "
                f'e.g. {field} = "block:pve-token"'
            )
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: str, info: ValidationInfo) -> SecretRef:
            try:
                return cls.check(value, info.field_name or "secret")
            except ValueError as exc:
                raise PydanticCustomError("secret_ref", str(exc)) from None

        return core_schema.with_info_after_validator_function(
            validate,
            core_schema.str_schema(strict=True),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    def resolve(self, base_dir: Path | None = None, *, setting: str = "secret") -> SecretStr:
        """Read the secret now; ``file:`` paths are relative to ``base_dir`` (the inventory's)."""
        match self.scheme:
            case "env":
                return self._from_env(setting)
            case "file":
                return self._from_file(base_dir or Path.cwd(), setting)
            case "block":
                return self._from_block(setting)

    def _from_env(self, setting: str) -> SecretStr:
        value = os.environ.get(self.target)
        if value is None:
            raise SecretError(
                f"environment variable {self.target} is not set",
                setting=setting,
                hint=f"set {self.target} in the environment of the process running moxflow",
            )
        if not value:
            raise SecretError(f"environment variable {self.target} is empty", setting=setting)
        return SecretStr(value)

    def _from_file(self, base_dir: Path, setting: str) -> SecretStr:
        path = resolve_path(Path(self.target), base_dir)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SecretError(f"secret file {path} not found", setting=setting) from None
        except OSError as exc:
            raise SecretError(
                f"secret file {path} cannot be read: {exc.strerror or type(exc).__name__}",
                setting=setting,
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret file {path} is not UTF-8 text", setting=setting) from None
        value = text.removesuffix("\n").removesuffix("\r")
        if not value.strip():
            raise SecretError(f"secret file {path} is empty", setting=setting)
        return SecretStr(value)

    def _from_block(self, setting: str) -> SecretStr:
        resolver = _block_resolver
        if resolver is None:
            raise SecretError(
                f"Prefect Secret block {self.target!r} cannot be loaded: moxflow's Prefect "
                "layer (the blocks package) is not loaded in this process",
                setting=setting,
                hint="run moxflow's flows, or import blocks first; or use env:NAME or file:PATH",
            )
        return resolver(self.target, setting)
