"""Snapshot names moxflow makes, and validation of every name that reaches a command line.

A moxflow snapshot is named ``moxflow-{label}-{YYYYMMDD}-{HHMMSS}`` (UTC), which is valid both
as a ZFS snapshot name and as a Proxmox VE snapname (at most 40 characters). Validators return
the name unchanged or raise :class:`~moxflow.errors.UnsafeNameError` naming the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from moxflow.errors import UnsafeNameError

PREFIX = "moxflow-"
"""Every snapshot moxflow makes starts with this."""

MOXFLOW_MARKER = "moxflow:"
"""Guest snapshot descriptions written by moxflow start with this."""

LABEL_MAX = 16
GUEST_SNAPNAME_MAX = 40
DATASET_MAX = 255
HOST_NAME_MAX = 63
RESERVED_GUEST_SNAPNAMES = frozenset({"current", "pending", "vzdump"})

_TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
_LABEL_RE = re.compile(rf"[a-z][a-z0-9_-]{{0,{LABEL_MAX - 2}}}[a-z0-9]|[a-z]", re.ASCII)
_SNAPSHOT_RE = re.compile(r"moxflow-(?P<label>[a-z0-9_-]+)-(?P<ts>[0-9]{8}-[0-9]{6})", re.ASCII)
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.:-]+", re.ASCII)
_HOST_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{HOST_NAME_MAX - 1}}}", re.ASCII)
_GUEST_SNAPNAME_RE = re.compile(r"[a-z][a-z0-9_-]+", re.ASCII)

_LABEL_RULE = (
    "a label is 1-16 characters of a-z, 0-9, '_' and '-', starting with a letter "
    "and ending with a letter or digit"
)
_DATASET_RULE = (
    "a ZFS dataset name is components of A-Z, a-z, 0-9, '_', '.', ':' and '-' joined by '/', "
    "the pool name starting with a letter, no component starting with '-', "
    "no empty component, no '..', no '@', at most 255 characters"
)
_ZFS_SNAPNAME_RULE = (
    "a ZFS snapshot name is 1-255 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-', "
    "not starting with '-' and without '..'"
)
_HOST_RULE = (
    "a host name is 1-63 characters of A-Z, a-z, 0-9, '_', '.' and '-', "
    "starting with a letter or digit"
)
_GUEST_SNAPNAME_RULE = (
    "a Proxmox snapshot name is 2-40 characters of a-z, 0-9, '_' and '-', starting with a "
    "letter, and not 'current', 'pending' or 'vzdump'"
)


@dataclass(frozen=True, slots=True)
class ParsedName:
    """The label and creation time (aware, UTC) encoded in a moxflow snapshot name."""

    label: str
    created: datetime


def _show(value: object) -> str:
    """The value as a quoted Python literal, non-ASCII escaped so lookalikes stand out."""
    text = ascii(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _reject(kind: str, value: object, rule: str) -> UnsafeNameError:
    return UnsafeNameError(f"invalid {kind} {_show(value)}", hint=rule)


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise UnsafeNameError(
            f"cannot name a snapshot after the naive time {when.isoformat()}",
            hint="pass a timezone-aware datetime such as datetime.now(UTC)",
        )
    return when.astimezone(UTC)


def validate_label(label: str) -> str:
    """Check a snapshot label such as ``hourly`` or ``pre-update``."""
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise _reject("snapshot label", label, _LABEL_RULE)
    return label


def snapshot_name(label: str, when: datetime) -> str:
    """The name of a moxflow snapshot with ``label`` taken at ``when`` (aware; stored as UTC)."""
    validate_label(label)
    return f"{PREFIX}{label}-{_utc(when).strftime(_TIMESTAMP_FORMAT)}"


def parse_snapshot_name(name: str) -> ParsedName | None:
    """Label and time of a moxflow snapshot name, or ``None`` for names moxflow did not make."""
    match = _SNAPSHOT_RE.fullmatch(name)
    if match is None or not _LABEL_RE.fullmatch(match["label"]):
        return None
    try:
        created = datetime.strptime(match["ts"], _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ParsedName(label=match["label"], created=created)


def owned_by_moxflow(name: str, label: str) -> bool:
    """Whether ``name`` is a snapshot moxflow made with exactly this label."""
    parsed = parse_snapshot_name(name)
    return parsed is not None and parsed.label == label


def validate_dataset(name: str) -> str:
    """Check a ZFS dataset name (``rpool/data``) so it is safe as a single command argument."""
    if not isinstance(name, str) or not name or len(name) > DATASET_MAX:
        raise _reject("ZFS dataset name", name, _DATASET_RULE)
    components = name.split("/")
    for component in components:
        if (
            not _COMPONENT_RE.fullmatch(component)
            or component.startswith("-")
            or ".." in component
            or component == "."
        ):
            raise _reject("ZFS dataset name", name, _DATASET_RULE)
    if not components[0][0].isalpha():
        raise _reject("ZFS dataset name", name, _DATASET_RULE)
    return name


def validate_zfs_snapname(name: str) -> str:
    """Check the part after ``@`` of a ZFS snapshot so it is safe as part of an argument."""
    if (
        not isinstance(name, str)
        or len(name) > DATASET_MAX
        or not _COMPONENT_RE.fullmatch(name)
        or name.startswith("-")
        or ".." in name
    ):
        raise _reject("ZFS snapshot name", name, _ZFS_SNAPNAME_RULE)
    return name


def validate_host_name(name: str) -> str:
    """Check the name of a host in the inventory (``pve1``, ``nas.lan``)."""
    if not isinstance(name, str) or not _HOST_RE.fullmatch(name):
        raise _reject("host name", name, _HOST_RULE)
    return name


def validate_guest_snapname(name: str) -> str:
    """Check a Proxmox VE guest snapshot name (``^[a-z][a-z0-9_-]+$``, at most 40 characters)."""
    if (
        not isinstance(name, str)
        or len(name) > GUEST_SNAPNAME_MAX
        or not _GUEST_SNAPNAME_RE.fullmatch(name)
        or name in RESERVED_GUEST_SNAPNAMES
    ):
        raise _reject("Proxmox snapshot name", name, _GUEST_SNAPNAME_RULE)
    return name


_RUN_ID_RE = re.compile(r"[0-9A-Za-z-]{1,64}", re.ASCII)
_BY_RUN_RE = re.compile(r" by run ([0-9A-Za-z-]{1,64})(?=[ ;(]|$)", re.ASCII)


SNAPSHOT_STATES = ("in progress", "committed", "rolled back")
"""What a description can say of the change its snapshot guards: still under way (the run
that took it, or adopted it, has not finished with it), kept, or undone."""
FINISHED_STATES = frozenset({"committed", "rolled back"})
_STATE_RE = re.compile(r" \[(in progress|committed|rolled back)\](?= \(|$)")


def snapshot_description(
    label: str, created: datetime, run: str = "", adopted_from: str = "", state: str = ""
) -> str:
    """The description moxflow writes on a guest snapshot, starting with the marker; with
    ``run``, the flow run that takes it (so that a run racing another one for the same name
    can tell its snapshot from the other's: :func:`description_run`), or that adopted it
    from the interrupted run ``adopted_from`` (which took it) and is now responsible for it;
    with ``state`` (one of :data:`SNAPSHOT_STATES`), how the change it guards stands
    (:func:`description_state`)."""
    validate_label(label)
    if state and state not in SNAPSHOT_STATES:
        raise ValueError(f"unknown snapshot state {state!r}")
    stamp = _utc(created).strftime("%Y-%m-%dT%H:%M:%SZ")
    by = f" by run {run}" if run and _RUN_ID_RE.fullmatch(run) else ""
    if by and adopted_from and _RUN_ID_RE.fullmatch(adopted_from):
        by = f" by the interrupted run {adopted_from}, adopted{by}"
    mark = f" [{state}]" if state else ""
    return (
        f"{MOXFLOW_MARKER} {label} snapshot taken {stamp}{by}{mark} "
        "(do not rename; pruned by moxflow)"
    )


def description_state(description: str | None) -> str | None:
    """How the change a snapshot guards stands, as its moxflow description says (one of
    :data:`SNAPSHOT_STATES`); ``None`` when it does not say (not moxflow's, or written by a
    moxflow that did not write states: judge such a snapshot some other way)."""
    if not is_moxflow_description(description):
        return None
    found = _STATE_RE.search(str(description).rstrip())
    return found.group(1) if found else None


def description_run(description: str | None) -> str | None:
    """The flow run a description moxflow wrote names (``... by run ID ...``: the run that
    took a snapshot, that made a scratch guest); ``None`` when it does not say (written by
    hand, or by a moxflow that did not write it)."""
    if not is_moxflow_description(description):
        return None
    found = _BY_RUN_RE.search(str(description))
    return found.group(1) if found else None


def is_moxflow_description(description: str | None) -> bool:
    """Whether a guest snapshot description was written by moxflow."""
    return bool(description) and str(description).lstrip().startswith(MOXFLOW_MARKER)
