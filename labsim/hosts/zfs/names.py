"""Dataset types and names, as ``zfs`` checks them (``zfs_namecheck.c``, ``libzfs_dataset.c``)."""

from __future__ import annotations

# Dataset type bits, as in libzfs (zfs_type_t).
_FS = 1
_SNAP = 2
_VOL = 4
_BOOKMARK = 8
_DATASET = _FS | _SNAP | _VOL
_FSVOL = _FS | _VOL

_MAX_NAME_LEN = 256  # ZFS_MAX_DATASET_NAME_LEN: names must be shorter than this
_MAX_TAG_LEN = 256  # MAXNAMELEN for hold tags


# --------------------------------------------------------------------------------------------
# Names (module/zcommon/zfs_namecheck.c, zfs_validate_name in libzfs_dataset.c)

_EMPTY_COMPONENT = "empty component or misplaced '@' or '#' delimiter in name"


def _valid_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "-_.: "


def _entity_namecheck(path: str) -> str | None:
    """The reason ``path`` is not a valid dataset/snapshot/bookmark name, or None."""
    if len(path.encode()) >= _MAX_NAME_LEN:
        return "name is too long"
    if path.startswith("/"):
        return "leading slash in name"
    if path == "":
        return _EMPTY_COMPONENT
    start = 0
    found_delim = False
    while True:
        end = start
        while end < len(path) and path[end] not in "/@#":
            end += 1
        at_end = end == len(path)
        if at_end and path[end - 1] == "/":
            return "trailing slash in name"
        for c in path[start:end]:
            if not _valid_char(c) and c != "%":
                return f"invalid character '{c}' in name"
        if at_end or path[end] == "/":
            if path[start:end] == ".":
                return "self reference, '.' is found in name"
            if path[start:end] == "..":
                return "parent reference, '..' is found in name"
        if not at_end and path[end] in "@#":
            if found_delim:
                return "multiple '@' and/or '#' delimiters in name"
            found_delim = True
        if start == end:
            return _EMPTY_COMPONENT
        if at_end:
            return None
        if path[end] == "/" and found_delim:
            return "trailing slash in name"
        start = end + 1


def _validate_name(path: str, types: int, modifying: bool) -> str | None:
    if not types & _SNAP and "@" in path:
        return "snapshot delimiter '@' is not expected here"
    if types == _SNAP and "@" not in path:
        return "missing '@' delimiter in snapshot name"
    if not types & _BOOKMARK and "#" in path:
        return "bookmark delimiter '#' is not expected here"
    if types == _BOOKMARK and "#" not in path:
        return "missing '#' delimiter in bookmark name"
    if modifying and "%" in path:
        return "invalid character % in name"
    return _entity_namecheck(path)


def _user_prop(name: str) -> bool:
    """zfs_prop_user: a user property has a colon and only [a-z0-9_.:-]."""
    ok = all(("a" <= c <= "z") or ("0" <= c <= "9") or c in "-_.:" for c in name)
    return ok and ":" in name
