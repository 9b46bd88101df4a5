"""Keep policies and the prune planner, with the semantics of Proxmox VE's and PBS's prune.

Items are sorted newest first (ties: by name, descending). The rules run in the fixed order
keep-last, keep-hourly, keep-daily, keep-weekly (ISO week), keep-monthly, keep-yearly, with
buckets computed in the given time zone. A rule keeping N walks the items not yet decided
and keeps the newest item of each of its first N buckets; a bucket that already holds an item
kept by an earlier rule is skipped and not counted; older items of a bucket the rule just
kept are removed for good (later rules do not reconsider them, as in PVE and PBS). Protected
items are never removed and never seen by the rules. Everything else is removed. A policy
without a positive count keeps everything (``keep-all=1``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from types import MappingProxyType

from moxflow.errors import RetentionPolicyError

__all__ = ["RULES", "KeepPolicy", "PrunePlan", "RetentionItem", "plan_prune"]

#: The counting rules, in the order they are applied: (policy key, KeepPolicy field).
RULES: tuple[tuple[str, str], ...] = (
    ("keep-last", "last"),
    ("keep-hourly", "hourly"),
    ("keep-daily", "daily"),
    ("keep-weekly", "weekly"),
    ("keep-monthly", "monthly"),
    ("keep-yearly", "yearly"),
)
_KEEP_ALL = "keep-all"
_FIELD_BY_KEY = dict(RULES)
_VALID_KEYS = ", ".join([_KEEP_ALL, *_FIELD_BY_KEY])
_COUNT_RE = re.compile(r"-?[0-9]+")


def _policy_error(message: str, setting: str | None) -> RetentionPolicyError:
    return RetentionPolicyError(message, setting=setting, hint=f"valid keys: {_VALID_KEYS}")


@dataclass(frozen=True, slots=True, eq=False)
class KeepPolicy:
    """How many items to keep per rule; written ``keep-last=3,keep-daily=7``.

    A policy without a positive count keeps everything, like ``keep-all=1``; policies that
    behave the same compare equal, so ``KeepPolicy.parse(str(p)) == p`` for every ``p``.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    all_: bool = False

    def __post_init__(self) -> None:
        counts = self.counts()
        for key, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int):
                raise _policy_error(f"{key} must be an integer, got {count!r}", None)
            if count < 0:
                raise _policy_error(f"{key} must not be negative, got {count}", None)
        if self.all_ and any(counts.values()):
            raise _policy_error(f"{_KEEP_ALL}=1 cannot be combined with other counts", None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeepPolicy):
            return NotImplemented
        return self._canonical() == other._canonical()

    def __hash__(self) -> int:
        return hash(self._canonical())

    def _canonical(self) -> tuple[int, ...]:
        return () if self.keeps_everything else tuple(self.counts().values())

    @classmethod
    def parse(cls, text: str, *, setting: str | None = None) -> KeepPolicy:
        """Parse ``keep-last=3, keep-daily=7`` (``setting`` names the config key in errors).

        Raises ``RetentionPolicyError`` for unknown or repeated keys, negative or non-integer
        counts, empty items, and ``keep-all=1`` together with a positive count.
        """
        values: dict[str, int] = {}
        keep_all = False
        seen: set[str] = set()
        if not text.strip():
            raise _policy_error("empty keep policy; write keep-all=1 to keep everything", setting)
        for raw in text.split(","):
            item = raw.strip()
            key, sep, value = (part.strip() for part in item.partition("="))
            if not item or not sep or not key:
                raise _policy_error(
                    f"bad item {item!r} in keep policy {text!r}; expected KEY=COUNT", setting
                )
            if key != _KEEP_ALL and key not in _FIELD_BY_KEY:
                raise _policy_error(f"unknown key {key!r} in keep policy {text!r}", setting)
            if key in seen:
                raise _policy_error(f"{key} is given twice in keep policy {text!r}", setting)
            seen.add(key)
            if not _COUNT_RE.fullmatch(value):
                raise _policy_error(
                    f"{key} needs a whole number, got {value!r} in keep policy {text!r}", setting
                )
            count = int(value)
            if count < 0:
                raise _policy_error(
                    f"{key} must not be negative, got {count} in keep policy {text!r}", setting
                )
            if key == _KEEP_ALL:
                if count > 1:
                    raise _policy_error(f"{_KEEP_ALL} takes 0 or 1, got {count}", setting)
                keep_all = count == 1
            else:
                values[_FIELD_BY_KEY[key]] = count
        if keep_all and any(values.values()):
            raise _policy_error(
                f"{_KEEP_ALL}=1 cannot be combined with other counts in keep policy {text!r}",
                setting,
            )
        return cls(**values, all_=keep_all)

    def counts(self) -> dict[str, int]:
        """The rule counts by policy key, in the order the rules are applied."""
        return {key: getattr(self, name) for key, name in RULES}

    @property
    def keeps_everything(self) -> bool:
        """Whether pruning with this policy removes nothing."""
        return self.all_ or not any(self.counts().values())

    def __str__(self) -> str:
        if self.keeps_everything:
            return f"{_KEEP_ALL}=1"
        return ",".join(f"{key}={count}" for key, count in self.counts().items() if count > 0)


@dataclass(frozen=True, slots=True)
class RetentionItem:
    """One snapshot or backup to consider: a unique name and an aware creation time."""

    name: str
    created: datetime
    protected: bool = False

    def __post_init__(self) -> None:
        if self.created.tzinfo is None or self.created.utcoffset() is None:
            raise ValueError(f"{self.name}: created must be timezone-aware, got {self.created}")


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """Names to keep, remove and leave alone as protected, each newest first.

    ``reasons`` says why each kept or protected item stays, e.g. ``keep-daily 2026-11-25``.
    """

    keep: tuple[str, ...]
    remove: tuple[str, ...]
    protected: tuple[str, ...]
    reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


# Bucket keys are ints computed from the local datetime; labels are only built for kept items.
_BucketKey = Callable[[datetime], int]


def _hour_key(d: datetime) -> int:
    return d.toordinal() * 24 + d.hour


def _day_key(d: datetime) -> int:
    return d.toordinal()


def _week_key(d: datetime) -> int:
    # The ordinal of the ISO week's Monday is unique per ISO week.
    return d.toordinal() - d.weekday()


def _month_key(d: datetime) -> int:
    return d.year * 12 + d.month


def _year_key(d: datetime) -> int:
    return d.year


def _week_label(d: datetime) -> str:
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


_BUCKETS: dict[str, tuple[_BucketKey, Callable[[datetime], str]]] = {
    "hourly": (_hour_key, lambda d: d.strftime("%Y-%m-%d %H:00")),
    "daily": (_day_key, lambda d: d.strftime("%Y-%m-%d")),
    "weekly": (_week_key, _week_label),
    "monthly": (_month_key, lambda d: d.strftime("%Y-%m")),
    "yearly": (_year_key, lambda d: f"{d.year}"),
}

_KEEP, _REMOVE = 1, 2


def plan_prune(items: Iterable[RetentionItem], policy: KeepPolicy, tz: tzinfo) -> PrunePlan:
    """Decide which items ``policy`` keeps, with buckets (day, week, ...) in time zone ``tz``.

    Pure; raises ``ValueError`` when two items share a name.
    """
    # Compare in UTC: aware datetimes in different zones never compare equal when one of them
    # falls in a DST fold (PEP 495), which would break the tie on the name.
    ordered = sorted(items, key=lambda it: (it.created.astimezone(UTC), it.name), reverse=True)
    if len({it.name for it in ordered}) != len(ordered):
        dupes = sorted(n for n, c in Counter(it.name for it in ordered).items() if c > 1)
        raise ValueError(f"duplicate item names: {', '.join(dupes)}")

    protected = tuple(it.name for it in ordered if it.protected)
    reasons = dict.fromkeys(protected, "protected")
    candidates = [it for it in ordered if not it.protected]

    if policy.keeps_everything:
        reasons.update(dict.fromkeys((it.name for it in candidates), _KEEP_ALL))
        return PrunePlan(
            keep=tuple(it.name for it in candidates),
            remove=(),
            protected=protected,
            reasons=MappingProxyType(reasons),
        )

    local = [it.created.astimezone(tz) for it in candidates]
    marks = [0] * len(candidates)
    kept: list[int] = []
    for key, name in RULES:
        count: int = getattr(policy, name)
        if count <= 0:
            continue
        if name == "last":
            # Always the first rule, so nothing is decided yet: the newest ``count`` items.
            new = list(range(min(count, len(candidates))))
            for rank, i in enumerate(new, start=1):
                marks[i] = _KEEP
                reasons[candidates[i].name] = f"{key} #{rank}"
        else:
            bucket_key, label = _BUCKETS[name]
            new = _mark_rule(marks, local, bucket_key, count, kept)
            for i in new:
                reasons[candidates[i].name] = f"{key} {label(local[i])}"
        kept.extend(new)

    return PrunePlan(
        keep=tuple(it.name for it, m in zip(candidates, marks, strict=True) if m == _KEEP),
        remove=tuple(it.name for it, m in zip(candidates, marks, strict=True) if m != _KEEP),
        protected=protected,
        reasons=MappingProxyType(reasons),
    )


def _mark_rule(
    marks: list[int], local: list[datetime], bucket_key: _BucketKey, count: int, kept: list[int]
) -> list[int]:
    """Apply one rule to ``marks`` in place; return the indices it keeps.

    Walks undecided items newest first; skips buckets holding an item kept by an earlier rule
    (``kept``), keeps the first item of each new bucket and removes the rest of that bucket,
    and stops at the first item of bucket ``count + 1``.
    """
    already = {bucket_key(local[i]) for i in kept}
    included: set[int] = set()
    new: list[int] = []
    for i, d in enumerate(local):
        if marks[i]:
            continue
        k = bucket_key(d)
        if k in already:
            continue
        if k in included:
            marks[i] = _REMOVE
        elif len(included) >= count:
            break
        else:
            included.add(k)
            marks[i] = _KEEP
            new.append(i)
    return new
