"""Loading the inventory file, and turning pydantic's errors into one ``ConfigError``.

``load_inventory()`` reads the file through the :class:`~moxflow.inventory.model.Inventory`
model (init kwargs > environment > file) and reports every problem at once, each as
``dotted.setting: what is wrong and what to write``, never echoing the value (it may be a
secret). pydantic's ``ValidationError`` never escapes.
"""

from __future__ import annotations

import os
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from moxflow.errors import ConfigError
from moxflow.inventory.model import Inventory, reading

__all__ = ["DEFAULT_INVENTORY", "ENV_INVENTORY", "inventory_path", "load_inventory"]

ENV_INVENTORY = "MOXFLOW_INVENTORY"
"""Environment variable naming the inventory file when no path is passed."""

DEFAULT_INVENTORY = Path("inventory.toml")
"""The inventory file used when neither a path nor ``MOXFLOW_INVENTORY`` is given."""


def inventory_path(path: Path | str | None = None) -> Path:
    """The inventory file to read: ``path``, else ``$MOXFLOW_INVENTORY``, else ./inventory.toml."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV_INVENTORY) or DEFAULT_INVENTORY
    return Path(path).expanduser().absolute()


def load_inventory(path: Path | str | None = None, **overrides: Any) -> Inventory:
    """Read and validate the inventory; every problem becomes one ``ConfigError``.

    ``overrides`` (keyword settings, e.g. ``timezone="UTC"``) beat the environment and file.
    """
    file = inventory_path(path)
    data = _read_toml(file)
    try:
        with reading(file, data):
            inv = Inventory(**overrides)
    except SettingsError as exc:
        raise ConfigError(f"inventory file {file}: {exc}", hint=_env_hint()) from None
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        problems = [_describe_error(err) for err in errors]
        if len(problems) == 1:
            setting = _dotted(_walk(tuple(errors[0]["loc"]))[0]) or None
            text = problems[0]
        else:
            setting = None
            text = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise ConfigError(
            f"inventory file {file} has {len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}: {text}",
            setting=setting,
            hint=_env_hint(),
        ) from None
    if inv.proxmox is None and not inv.hosts:
        what = "is empty" if not data else "has neither a [proxmox] section nor [hosts] tables"
        raise ConfigError(
            f"inventory file {file} {what}: moxflow has nothing to work on",
            setting="proxmox",
            hint=_EMPTY_HINT,
        )
    return inv


MAX_DEPTH = 32
"""How deeply tables and arrays may nest in the inventory file (the settings need about 6)."""

_EMPTY_HINT = (
    "add a [proxmox] section (host, token_id, token_secret) for the Proxmox jobs and a "
    "[hosts.NAME] table (address) for each host moxflow reaches over SSH; docs/inventory.md "
    "describes every setting"
)


def _read_toml(file: Path) -> dict[str, Any]:
    """The inventory file's tables; ``ConfigError`` naming the file for anything unreadable."""
    if not file.is_file():
        raise ConfigError(
            f"inventory file {file} not found; pass --inventory FILE or set {ENV_INVENTORY}"
        )
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"inventory file {file} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"inventory file {file} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"inventory file {file} is not valid TOML: {exc}") from None
    except RecursionError:
        data = None
    where = _too_deep(data) if data is not None else ""
    if data is None or where:
        at = f" (at {where})" if where else ""
        raise ConfigError(
            f"inventory file {file} nests tables or arrays more than {MAX_DEPTH} levels deep{at}",
            hint="no setting nests that deeply: check the file for a runaway [ or {",
        )
    return data


def _too_deep(data: dict[str, Any]) -> str:
    """The dotted place where ``data`` nests deeper than ``MAX_DEPTH``, or ``""``."""
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            return _dotted(loc[:MAX_DEPTH])
        if isinstance(value, dict):
            stack.extend((v, (*loc, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(value))
    return ""


def _env_hint() -> str | None:
    """Name the ``MOXFLOW_`` variables in effect, since their settings are not in the file."""
    names = sorted(
        k for k in os.environ if k.upper().startswith("MOXFLOW_") and k.upper() != ENV_INVENTORY
    )
    return f"also read from the environment: {', '.join(names)}" if names else None


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_PREFIXES = ("Value error, ", "Assertion failed, ")

# What to write when a required setting is missing, by the setting's name.
_MISSING_HELP = {
    "snapshot": (
        'say how to snapshot the host before an update: snapshot = { method = "proxmox", '
        'vmid = N }, { method = "zfs", host = "...", dataset = "..." } or { method = "none" }'
    )
}


def _describe_error(err: Any) -> str:
    """``dotted.setting: message`` for one pydantic error, never including the input."""
    raw: tuple[int | str, ...] = tuple(err["loc"])
    loc, at = _walk(raw)
    kind: str = err["type"]
    message: str = err["msg"]
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    if kind == "extra_forbidden":
        known = _known_settings(raw[:-1])
        message = "unknown setting (a typo?)"
        if known:
            message += f"; known here: {', '.join(known)}"
    elif kind == "finite_number":
        message = "inf and nan are not allowed here; write a plain number such as 30"
    elif kind == "missing":
        message = "required setting is missing"
        if loc and str(loc[-1]) in _MISSING_HELP:
            message += f"; {_MISSING_HELP[str(loc[-1])]}"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        key = str(err.get("ctx", {}).get("discriminator", "")).strip("'") or "method"
        names = [f'"{t}"' for t in _union_tags(at)]
        tags = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
        if kind == "union_tag_invalid":
            message = f"unknown {key} {err['ctx']['tag']!r}; use {tags}"
        elif tags:
            message = f"needs a {key}: {tags}"
    where = _dotted(loc)
    if not where or message.startswith((f"{where}.", f"{where}[")):
        return message
    return f"{where}: {message}"


def _unwrap(annotation: Any) -> Any:
    """Drop ``None`` from ``X | None`` and the metadata from ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _union_tags(annotation: Any) -> dict[str, type[BaseModel]]:
    """For a union of sections told apart by a ``method`` literal: each tag and its section."""
    tags: dict[str, type[BaseModel]] = {}
    if get_origin(annotation) not in (Union, types.UnionType):
        return tags
    for member in get_args(annotation):
        field = member.model_fields.get("method") if _is_model(member) else None
        if field is not None and get_origin(field.annotation) is Literal:
            tags.update(dict.fromkeys(map(str, get_args(field.annotation)), member))
    return tags


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], Any]:
    """``loc`` without the tags pydantic inserts for tagged unions, and the type found there.

    The type is ``None`` when ``loc`` leads outside the models (e.g. into a dict key).
    """
    current: Any = Inventory
    clean: list[int | str] = []
    for part in loc:
        current = _unwrap(current)
        tags = _union_tags(current)
        if str(part) in tags:
            current = tags[str(part)]
            continue
        clean.append(part)
        if _is_model(current):
            field = current.model_fields.get(str(part))
            current = None if field is None else field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            current = None
    return tuple(clean), None if current is None else _unwrap(current)


def _known_settings(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the section at ``loc`` (for 'unknown setting' errors)."""
    current = _walk(loc)[1]
    return list(current.model_fields) if _is_model(current) else []
