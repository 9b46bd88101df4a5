"""The ``zfs`` command's option parsing: glibc getopt as ``zfs`` uses it, and strtol."""

from __future__ import annotations

import re


class _UsageError(Exception):
    """Raised by a subcommand to print its usage text and exit 2, as usage(B_FALSE) does."""


# --------------------------------------------------------------------------------------------
# Option parsing: glibc getopt with argument permutation and opterr = 0, as zfs uses it.


def _getopt(args: list[str], spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Options as (char, argument) or ('?'|':', optopt) for errors, and the operands."""
    colon = spec.startswith(":")
    body = spec.lstrip(":")
    takes: dict[str, bool] = {}
    for i, c in enumerate(body):
        if c != ":":
            takes[c] = i + 1 < len(body) and body[i + 1] == ":"
    opts: list[tuple[str, str]] = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1 :])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            i += 1
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            if c not in takes:
                opts.append(("?", c))
            elif takes[c]:
                if j + 1 < len(arg):
                    opts.append((c, arg[j + 1 :]))
                elif i + 1 < len(args):
                    i += 1
                    opts.append((c, args[i]))
                else:
                    opts.append((":" if colon else "?", c))
                break
            else:
                opts.append((c, ""))
            j += 1
        i += 1
    return opts, operands


def _strtol(text: str) -> int | None:
    """strtol(text, &end, 0) that must consume the whole string; None otherwise."""
    if text == "":
        return 0
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value
