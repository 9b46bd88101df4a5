"""How ``zfs`` prints values and columns: nicenum, times in UTC, the alignment of list/get."""

from __future__ import annotations

import time

# --------------------------------------------------------------------------------------------
# Formatting (lib/libzutil/zutil_nicenum.c, zfs_prop_get in libzfs_dataset.c)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _ctime(ts: int, hour_padded: bool = False) -> str:
    """strftime "%a %b %e %k:%M %Y" in UTC (with %H instead of %k if ``hour_padded``)."""
    t = time.gmtime(ts)
    hour = f"{t.tm_hour:02d}" if hour_padded else f"{t.tm_hour:2d}"
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
        f"{hour}:{t.tm_min:02d} {t.tm_year}"
    )


def nicenum(num: int, *, bytes_suffix: bool = False) -> str:
    """zfs_nicenum / zfs_nicebytes: 1024-based, at most five characters where possible."""
    units = ("B" if bytes_suffix else "", "K", "M", "G", "T", "P", "E")
    n = num
    index = 0
    while n >= 1024 and index < 6:
        n //= 1024
        index += 1
    if index == 0 or num % (1024**index) == 0:
        return f"{n}{units[index]}"
    text = ""
    for precision in (2, 1, 0):
        text = f"{num / 1024**index:.{precision}f}{units[index]}"
        if len(text) <= 5:
            break
    return text


def _align(text: str, width: int, right: bool, last: bool) -> str:
    if last and not right:
        return text
    return text.rjust(width) if right else text.ljust(width)


def _get_line(cells: list[str], columns: list[str], widths: dict[str, int], scripted: bool) -> str:
    parts = []
    for i, (cell, column) in enumerate(zip(cells, columns, strict=True)):
        if i == len(columns) - 1:
            parts.append(cell)
        elif scripted:
            parts.append(cell + "\t")
        else:
            parts.append(cell.ljust(widths[column]) + "  ")
    return "".join(parts)
