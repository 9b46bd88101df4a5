"""Field types shared by the inventory's sections: checked names, addresses, paths, policies.

Each type is an ``Annotated`` string or number whose validator raises ``ValueError`` (or a
:class:`~moxflow.errors.ConfigError` that is one) with a message naming what to write instead;
the loader turns those into one ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from moxflow.errors import UnsafeNameError
from moxflow.inventory.secrets import BLOCK_NAME_RE
from moxflow.naming import validate_dataset, validate_host_name, validate_label
from moxflow.retention import KeepPolicy
from moxflow.selection import parse_selection

__all__ = [
    "POLICIES_HELP",
    "REMOTE_PATH_MAX",
    "SECONDS_MAX",
    "Address",
    "DatasetName",
    "Days",
    "HostName",
    "Hours",
    "Label",
    "Login",
    "NodePath",
    "Policies",
    "PolicyText",
    "Port",
    "RemotePath",
    "Seconds",
    "Section",
    "StorageName",
    "check_address",
    "check_selection",
    "validate_attr",
    "validate_remote_path",
    "validation_error",
]

_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}", re.ASCII)
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    re.ASCII,
)

REMOTE_PATH_MAX = 4095
_REMOTE_PATH_RE = re.compile(r"/[A-Za-z0-9_./+@:-]*", re.ASCII)
_ATTR_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", re.ASCII)
_REMOTE_PATH_RULE = (
    "a path on the host is absolute and made of A-Z, a-z, 0-9, '_', '.', '/', '+', '-', '@' "
    "and ':' only (no spaces, quotes or shell metacharacters), without a trailing '/'"
)
_ATTR_RULE = (
    "a nixosConfigurations attribute is 1-63 characters of A-Z, a-z, 0-9, '_', '.' and '-', "
    "starting with a letter, digit or '_'"
)


def validate_remote_path(path: str) -> str:
    """Check an absolute path on a host (flake folder, profile, state folder); returns it."""
    if (
        not isinstance(path, str)
        or len(path) > REMOTE_PATH_MAX
        or not _REMOTE_PATH_RE.fullmatch(path)
        or (len(path) > 1 and path.endswith("/"))
    ):
        raise UnsafeNameError(f"invalid path {ascii(path)[:120]}", hint=_REMOTE_PATH_RULE)
    return path


def validate_attr(name: str) -> str:
    """Check a ``nixosConfigurations`` attribute name (the part after ``#``); returns it."""
    if not isinstance(name, str) or not _ATTR_RE.fullmatch(name):
        raise UnsafeNameError(
            f"invalid nixosConfigurations attribute {ascii(name)[:120]}", hint=_ATTR_RULE
        )
    return name


def check_address(value: str) -> str:
    """An IP address or a DNS name; ``ValueError`` otherwise."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOSTNAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is neither an IP address nor a DNS name "
                "(letters, digits, '-' and '.', not starting with '-')"
            ) from None
    return value


def _check_user(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a login name (a-z, 0-9, '_', '.', '-', starting with a letter "
            "or '_', at most 32 characters)"
        )
    return value


def _check_policy(value: str) -> str:
    KeepPolicy.parse(value)
    return value


def _check_block_name(value: str) -> str:
    if not BLOCK_NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Prefect block name (a-z, 0-9 and '-', starting with a "
            "letter or digit), e.g. homelab"
        )
    return value


def check_selection(value: str) -> str:
    """A guest selection expression that parses; ``SelectionError`` otherwise."""
    parse_selection(value)
    return value


Address = Annotated[str, AfterValidator(check_address)]
BlockName = Annotated[str, AfterValidator(_check_block_name)]
"""The name of a saved Prefect block (``credentials = "homelab"``); ``blocks/`` loads it."""
Login = Annotated[str, AfterValidator(_check_user)]
Label = Annotated[str, AfterValidator(validate_label)]
PolicyText = Annotated[str, AfterValidator(_check_policy)]
HostName = Annotated[str, AfterValidator(validate_host_name)]
DatasetName = Annotated[str, AfterValidator(validate_dataset)]
RemotePath = Annotated[str, AfterValidator(validate_remote_path)]


def _check_node_path(value: str) -> str:
    # ``{node}`` stands for the node's name (a node-local storage, a per-node log)
    validate_remote_path(value.replace("{node}", "node"))
    return value


NodePath = Annotated[str, AfterValidator(_check_node_path)]
"""An absolute path on a Proxmox node in which ``{node}`` stands for the node's name."""
StorageName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
SECONDS_MAX = 366 * 86400.0
"""The longest wait or timeout a setting may ask for (a year), so that none overflows a clock."""
Seconds = Annotated[float, Field(gt=0, le=SECONDS_MAX)]
HOURS_MAX = 366 * 24.0
"""The longest age a setting in hours may allow (a year): a longer one overflows the clock."""
Hours = Annotated[float, Field(gt=0, le=HOURS_MAX)]
Days = Annotated[float, Field(gt=0, le=HOURS_MAX / 24)]
Policies = dict[Label, PolicyText]

POLICIES_HELP = (
    'Keep policy per snapshot label, e.g. hourly = "keep-hourly=24". Keys are labels '
    "(lowercase, up to 16 characters); values are comma-separated keep-last, keep-hourly, "
    "keep-daily, keep-weekly, keep-monthly, keep-yearly counts, or keep-all=1."
)


class Section(BaseModel):
    """Base of every inventory section: an unknown key is an error, not silently ignored, and
    so is ``inf`` or ``nan`` in a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def validation_error(title: str, found: list[tuple[tuple[int | str, ...], str]]) -> ValidationError:
    """One validation error per problem, each at its own setting (relative to the model)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("inventory", "{problem}", {"problem": text}),
                loc=loc,
                input=None,
            )
            for loc, text in found
        ],
    )
