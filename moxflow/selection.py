"""The guest selection language: ``100,101:110,@tag-media,-@tag-nosnap,media-vm``.

Comma-separated tokens select guests by id, inclusive id range, ``@all``, ``@tag-X``,
``@pool-X``, ``@node-X`` or name; a leading ``-`` excludes. Only exclusions means ``@all``
minus them. Tags match case-insensitively (as Proxmox treats them); everything else exactly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from moxflow.errors import SelectionError
from moxflow.guests import Guest

TermKind = Literal["all", "vmid", "range", "tag", "pool", "node", "name"]

SYNTAX = (
    "comma-separated tokens: 100 (id), 100:110 (id range), @all, @tag-X, @pool-X, @node-X, "
    "or a guest name; a leading '-' excludes (-105, -@tag-nosnap, -media-vm)"
)

_ID_RE = re.compile(r"[0-9]+", re.ASCII)
_RANGE_RE = re.compile(r"([0-9]+):([0-9]+)", re.ASCII)
_KEYWORD_RE = re.compile(r"@(tag|pool|node)-(.+)", re.ASCII)
_VALUE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)
_KEYWORD_KINDS: dict[str, TermKind] = {"tag": "tag", "pool": "pool", "node": "node"}


@dataclass(frozen=True, slots=True)
class Term:
    """One token of a selection, without its ``-``: what it matches."""

    kind: TermKind
    value: str = ""
    low: int = 0
    high: int = 0

    def matches(self, guest: Guest) -> bool:
        """Whether this term selects ``guest``."""
        match self.kind:
            case "all":
                return True
            case "vmid" | "range":
                return self.low <= guest.vmid <= self.high
            case "tag":
                return self.value.lower() in (t.lower() for t in guest.tags)
            case "pool":
                return guest.pool == self.value
            case "node":
                return guest.node == self.value
            case "name":
                return guest.name == self.value
        return False  # pragma: no cover - exhaustive above

    def __str__(self) -> str:
        match self.kind:
            case "all":
                return "@all"
            case "vmid":
                return str(self.low)
            case "range":
                return f"{self.low}:{self.high}"
            case "tag" | "pool" | "node":
                return f"@{self.kind}-{self.value}"
        return self.value

    def describe(self) -> str:
        """The term in words, for reports and dry runs."""
        match self.kind:
            case "all":
                return "all guests"
            case "vmid":
                return f"guest {self.low}"
            case "range":
                return f"guests {self.low} to {self.high}"
            case "tag":
                return f"guests tagged {self.value}"
            case "pool":
                return f"guests in pool {self.value}"
            case "node":
                return f"guests on node {self.value}"
        return f"guest named {self.value}"


@dataclass(frozen=True, slots=True)
class Selection:
    """A parsed selection: guests matching any include term and no exclude term."""

    include: tuple[Term, ...]
    exclude: tuple[Term, ...] = ()

    def matches(self, guest: Guest) -> bool:
        """Whether ``guest`` is selected."""
        included = not self.include or any(t.matches(guest) for t in self.include)
        return included and not any(t.matches(guest) for t in self.exclude)

    def select(self, guests: Sequence[Guest]) -> list[Guest]:
        """The selected guests, each once, sorted by vmid."""
        chosen = {g.vmid: g for g in guests if self.matches(g)}
        return [chosen[vmid] for vmid in sorted(chosen)]

    def __str__(self) -> str:
        parts = [str(t) for t in self.include] + [f"-{t}" for t in self.exclude]
        return ",".join(parts)


def _parse_term(item: str, text: str) -> Term:
    if item == "@all":
        return Term("all")
    if _ID_RE.fullmatch(item):
        vmid = int(item)
        return Term("vmid", low=vmid, high=vmid)
    if match := _RANGE_RE.fullmatch(item):
        low, high = int(match[1]), int(match[2])
        if low > high:
            raise SelectionError(
                f"range {item!r} in selection {text!r} runs backwards; write {high}:{low}",
                hint=SYNTAX,
            )
        return Term("range", low=low, high=high)
    if item.startswith("@"):
        match = _KEYWORD_RE.fullmatch(item)
        if match is None:
            raise SelectionError(f"unknown keyword {item!r} in selection {text!r}", hint=SYNTAX)
        if not _VALUE_RE.fullmatch(match[2]):
            raise SelectionError(
                f"bad {match[1]} {match[2]!r} in token {item!r} of selection {text!r}",
                hint=SYNTAX,
            )
        return Term(_KEYWORD_KINDS[match[1]], value=match[2])
    if _NAME_RE.fullmatch(item):
        return Term("name", value=item)
    raise SelectionError(f"bad token {item!r} in selection {text!r}", hint=SYNTAX)


def parse_selection(expr: str) -> Selection:
    """Parse a selection expression; raises ``SelectionError`` naming the bad token."""
    if not isinstance(expr, str) or not expr.strip():
        raise SelectionError(f"empty guest selection {expr!r}", hint=SYNTAX)
    include: list[Term] = []
    exclude: list[Term] = []
    for raw in expr.split(","):
        token = raw.strip()
        if not token:
            raise SelectionError(f"empty token in selection {expr!r}", hint=SYNTAX)
        negate = token.startswith("-")
        body = token[1:] if negate else token
        if not body:
            raise SelectionError(f"bad token {token!r} in selection {expr!r}", hint=SYNTAX)
        term = _parse_term(body, expr)
        (exclude if negate else include).append(term)
    return Selection(include=tuple(include), exclude=tuple(exclude))


def select_guests(expr: str | Selection, guests: Sequence[Guest]) -> list[Guest]:
    """The guests an expression selects, sorted by vmid."""
    selection = expr if isinstance(expr, Selection) else parse_selection(expr)
    return selection.select(guests)


def unmatched(selection: str | Selection, guests: Sequence[Guest]) -> list[str]:
    """Tokens (other than ``@all``) that match no guest, so the flow can warn about them."""
    parsed = selection if isinstance(selection, Selection) else parse_selection(selection)
    missing: list[str] = []
    for prefix, terms in (("", parsed.include), ("-", parsed.exclude)):
        for term in terms:
            if term.kind != "all" and not any(term.matches(g) for g in guests):
                missing.append(f"{prefix}{term}")
    return missing


def require_matches(selection: str | Selection, guests: Sequence[Guest]) -> None:
    """Refuse a selection that names a guest that is not there (a typo, a removed guest).

    Every included token other than ``@all`` must match some guest; an exclusion that matches
    nothing is fine (``-@tag-nosnap`` with no such tag is the usual case). The error names
    each such token, with the closest guest name where one is near.
    """
    parsed = selection if isinstance(selection, Selection) else parse_selection(selection)
    missing = [
        t for t in parsed.include if t.kind != "all" and not any(t.matches(g) for g in guests)
    ]
    if not missing:
        return
    names = sorted({g.name for g in guests if g.name})
    parts = []
    for term in missing:
        near = difflib.get_close_matches(term.value, names, n=1) if term.kind == "name" else []
        parts.append(f"{str(term)!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    shown = ", ".join(f"{g.vmid} {g.name}".strip() for g in sorted(guests, key=lambda g: g.vmid))
    raise SelectionError(
        f"selection {str(parsed)!r}: {', '.join(parts)} matches no guest; nothing was changed",
        hint=f"the guests are: {shown or 'none'}",
    )


def describe(selection: str | Selection) -> str:
    """The selection in words, e.g. ``guests tagged media, guest 105 except guests in pool x``."""
    parsed = selection if isinstance(selection, Selection) else parse_selection(selection)
    if not parsed.include or any(t.kind == "all" for t in parsed.include):
        text = "all guests"
    else:
        text = ", ".join(t.describe() for t in parsed.include)
    if parsed.exclude:
        text += " except " + ", ".join(t.describe() for t in parsed.exclude)
    return text
