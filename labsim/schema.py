"""The Proxmox VE API schema subset: route a concrete path to its template and validate params.

The checks and their messages follow PVE's ``PVE::JSONSchema`` so that a request the lab
accepts is one a real node would accept, and a rejected one fails the same way (HTTP 400
"Parameter verification failed." with an ``errors`` object keyed by parameter).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

SUBSET_FILE = "pve-api-subset.json"

ParamValue = str | list[str]


@dataclass(frozen=True, slots=True)
class Route:
    """A concrete path matched to a schema template, with the values of its ``{params}``."""

    template: str
    path_params: dict[str, str]


@cache
def load_subset() -> dict[str, Any]:
    """The committed subset document (``{"source", "paths": {path: {METHOD: ...}}}``)."""
    text = resources.files("labsim").joinpath(SUBSET_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def paths() -> dict[str, dict[str, Any]]:
    """Template → method → endpoint definition."""
    result: dict[str, dict[str, Any]] = load_subset()["paths"]
    return result


@cache
def _compiled() -> list[tuple[re.Pattern[str], str, tuple[str, ...]]]:
    out: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = []
    for template in paths():
        names: list[str] = []
        parts: list[str] = []
        for seg in template.strip("/").split("/"):
            m = re.fullmatch(r"\{([^}]+)\}", seg)
            if m:
                names.append(m.group(1))
                parts.append("([^/]+)")
            else:
                parts.append(re.escape(seg))
        rx = re.compile("^/" + "/".join(parts) + "$")
        out.append((rx, template, tuple(names)))
    # Literal segments beat parameters: sort templates with fewer parameters first.
    out.sort(key=lambda item: (len(item[2]), item[1]))
    return out


def match_path(path: str) -> Route | None:
    """The template a concrete path (without ``/api2/json``) belongs to, or None."""
    path = "/" + path.strip("/") if path.strip("/") else "/"
    for rx, template, names in _compiled():
        m = rx.match(path)
        if m:
            return Route(template, dict(zip(names, m.groups(), strict=True)))
    return None


def methods(template: str) -> set[str]:
    """The HTTP methods the schema defines for a template."""
    return set(paths().get(template, {}))


def endpoint(method: str, template: str) -> dict[str, Any] | None:
    """The definition of one method of one template, or None."""
    entry: dict[str, Any] | None = paths().get(template, {}).get(method.upper())
    return entry


# --- formats (PVE::JSONSchema register_format) ----------------------------------------------

_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
_VMID_RE = re.compile(r"^[1-9][0-9]{2,8}$")
_CONFIGID_RE = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)
_STORAGE_RE = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.IGNORECASE)
_DNS_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"
_DNS_NAME_RE = re.compile(rf"^(?:{_DNS_LABEL}\.)*{_DNS_LABEL}$")
_TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.IGNORECASE)
_CONTENT_TYPES = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"}


def _check_node(v: str) -> str | None:
    return None if _NODE_RE.match(v) else "value does not look like a valid node name"


def _check_vmid(v: str) -> str | None:
    return None if _VMID_RE.match(v) else "value does not look like a valid VM ID"


def _check_configid(v: str) -> str | None:
    return None if _CONFIGID_RE.match(v) else f"invalid configuration ID '{v}'"


def _check_storage(v: str) -> str | None:
    return None if _STORAGE_RE.match(v) else f"storage ID '{v}' contains illegal characters"


def _check_vmid_list(v: str) -> str | None:
    for item in re.split(r"[,;\s]+", v.strip()):
        if item and not _VMID_RE.match(item):
            return f"value '{item}' does not look like a valid VM ID"
    return None


def _check_dns_name(v: str) -> str | None:
    return None if _DNS_NAME_RE.match(v) else "value does not look like a valid DNS name"


def _check_tag_list(v: str) -> str | None:
    for item in re.split(r"[;, ]", v):
        if item and not _TAG_RE.match(item):
            return "invalid characters in tag"
    return None


def _check_content(v: str) -> str | None:
    return None if v in _CONTENT_TYPES else f"invalid content type '{v}'"


def _check_content_list(v: str) -> str | None:
    for item in v.split(","):
        if item and item not in _CONTENT_TYPES:
            return f"invalid content type '{item}'"
    return None


# Formats not listed here are accepted as they are (the lab does not need them checked).
FORMATS: dict[str, Callable[[str], str | None]] = {
    "pve-node": _check_node,
    "pve-vmid": _check_vmid,
    "pve-configid": _check_configid,
    "pve-storage-id": _check_storage,
    "pve-vmid-list": _check_vmid_list,
    "pve-storage-content": _check_content,
    "pve-storage-content-list": _check_content_list,
    "dns-name": _check_dns_name,
    "pve-tag-list": _check_tag_list,
}

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _fmt_num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def check_value(prop: Mapping[str, Any], value: ParamValue) -> str | None:
    """The PVE error message for one parameter value, or None when it is valid."""
    ptype = prop.get("type", "string")
    if ptype == "array":
        items = prop.get("items") or {}
        for item in [value] if isinstance(value, str) else value:
            err = check_value(items, item)
            if err:
                return err
        return None
    if isinstance(value, list):
        if len(value) != 1:
            return f"type check ('{ptype}') failed - got multiple values"
        value = value[0]
    if ptype == "integer":
        if not _INT_RE.match(value):
            return f"type check ('integer') failed - got '{value}'"
        num: float = int(value)
    elif ptype == "number":
        if not _NUM_RE.match(value):
            return f"type check ('number') failed - got '{value}'"
        num = float(value)
    elif ptype == "boolean":
        if value not in ("0", "1"):
            return f"type check ('boolean') failed - got '{value}'"
        return None
    else:
        num = 0
    if ptype in ("integer", "number"):
        # the schema dump holds some bounds as strings ("16777216"): Perl compares numbers
        if "minimum" in prop and num < float(prop["minimum"]):
            return f"value must have a minimum value of {_fmt_num(prop['minimum'])}"
        if "maximum" in prop and num > float(prop["maximum"]):
            return f"value must have a maximum value of {_fmt_num(prop['maximum'])}"
    if ptype == "string":
        if "maxLength" in prop and len(value) > int(prop["maxLength"]):
            return f"value may only be {prop['maxLength']} characters long"
        if "minLength" in prop and len(value) < int(prop["minLength"]):
            return f"value must be at least {prop['minLength']} characters long"
    fmt = prop.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        err = FORMATS[fmt](value)
        if err:
            return f"invalid format - {err}"
    pattern = prop.get("pattern")
    if isinstance(pattern, str) and not re.fullmatch(pattern, value):
        return "value does not match the regex pattern"
    enum = prop.get("enum")
    if enum is not None and value not in [str(e) for e in enum]:
        return f"value '{value}' does not have a value in the enumeration '{', '.join(enum)}'"
    return None


def validate(method: str, template: str, params: Mapping[str, ParamValue]) -> dict[str, str]:
    """Errors by parameter for a request (path params included); empty when it is valid."""
    ep = endpoint(method, template)
    if ep is None:
        return {"": f"no schema for {method.upper()} {template}"}
    spec = ep.get("parameters") or {}
    props: dict[str, Any] = spec.get("properties") or {}
    additional = bool(spec.get("additionalProperties", 0))
    errors: dict[str, str] = {}
    for name, value in params.items():
        prop = props.get(name)
        if prop is None:
            if not additional:
                errors[name] = (
                    "property is not defined in schema and the schema does not allow "
                    "additional properties"
                )
            continue
        err = check_value(prop, value)
        if err:
            errors[name] = err
    for name, prop in props.items():
        if name not in params and not prop.get("optional"):
            errors[name] = "property is missing and it is not optional"
    return errors
