"""``[schedules]``: when each deployment runs, as a cron expression in the inventory's time zone.

cronsim (a maintained cron parser) decides whether an expression is valid, so a schedule the
deployment would refuse is refused at load time. The messages only point at the part of the
expression cronsim refused: the field, and within it the value, range or step.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from cronsim import CronSim, CronSimError
from pydantic import AfterValidator

__all__ = ["DeploymentName", "Schedule"]

_DEPLOYMENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*$")

# The five fields of a cron expression: name and range, for messages.
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_ANCHOR = datetime(2000, 1, 1)  # cronsim needs a start; any will do to parse
# cronsim also takes these; croniter, which Prefect schedules with, does not
_NOT_IN_PREFECT = {2: "w", 4: "l"}


def _accepts(fields: list[str]) -> bool:
    try:
        CronSim(" ".join(fields), _ANCHOR)
    except CronSimError:
        return False
    return True


def _alone(index: int, text: str) -> bool:
    """Whether cronsim takes ``text`` as field ``index`` with every other field ``*``."""
    fields = ["*"] * len(_FIELDS)
    fields[index] = text
    return _accepts(fields)


def _a(what: str) -> str:
    return f"an {what}" if what == "hour" else f"a {what}"


def _why(index: int, field: str) -> str:
    """What is wrong in field ``index``, which cronsim refuses on its own."""
    what, lo, hi = _FIELDS[index]
    for item in field.split(","):
        if _alone(index, item):
            continue
        span, slash, _ = item.partition("/")
        if slash and _alone(index, span):
            return f"{item!r} is not {_a(what)}"  # the step
        first, dash, last = span.partition("-")
        for value in (first, last) if dash else (span,):
            if not _alone(index, value):
                if not value or value == "*":
                    return f"{item!r} is not {_a(what)}"
                return f"{value!r} is not a valid {what} ({lo}-{hi})"
        return f"{item!r} runs backwards"
    return f"{field!r} is not {_a(what)}"


def _check_schedule(value: str) -> str:
    text = " ".join(value.lower().split())
    if text == "off":
        return text
    usage = (
        f"{value!r} is not a cron schedule: write five fields, minute hour day month "
        'weekday, e.g. "0 1 * * *" (01:00 every day), or "off"'
    )
    fields = text.split(" ")
    if len(fields) != len(_FIELDS):
        raise ValueError(usage)
    if not _accepts(fields):
        for index, field in enumerate(fields):
            if not _alone(index, field):
                raise ValueError(f"{usage}; {_why(index, field)}")
        raise ValueError(f"{usage}; day {fields[2]!r} never comes in month {fields[3]!r}")
    for index, letter in _NOT_IN_PREFECT.items():
        if letter in fields[index]:
            what = _FIELDS[index][0]
            raise ValueError(
                f"{usage}; {fields[index]!r}: Prefect's scheduler takes no "
                f"{letter.upper()} in the {what}"
            )
    return text


def _check_deployment_name(value: str) -> str:
    if not _DEPLOYMENT_RE.fullmatch(value):
        raise ValueError(
            f'{value!r} is not a deployment name: write flow/name, e.g. "vzdump-backup/nightly"'
        )
    return value


Schedule = Annotated[str, AfterValidator(_check_schedule)]
DeploymentName = Annotated[str, AfterValidator(_check_deployment_name)]
