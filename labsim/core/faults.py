"""Injected failures: what a fault spec may say, and which event it hits.

Targets: ``api`` (``method``, ``path``), ``command`` (``host``, ``command``), ``connect``
(``host``) and ``task`` (``type``, ``id``, ``node``); actions: error, hang, slow, drop and
drop-after (a command fault). ``times`` counts the events a fault hits (None: until cleared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FAULT_TARGETS = ("api", "command", "connect", "task")
FAULT_ACTIONS = ("error", "hang", "slow", "drop", "drop-after")


@dataclass
class Fault:
    """An injected failure; ``remaining`` counts down (None: until cleared)."""

    fault_id: int
    spec: dict[str, Any]
    remaining: int | None

    def to_json(self) -> dict[str, Any]:
        return {"fault_id": self.fault_id, **self.spec, "remaining": self.remaining}


def parse_fault(spec: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """A validated fault spec and its ``times``; ValueError says what is wrong."""
    spec = {k: v for k, v in spec.items() if v is not None}
    target = spec.get("target")
    action = spec.get("action")
    if target not in FAULT_TARGETS:
        raise ValueError(f"fault target must be one of {', '.join(FAULT_TARGETS)}")
    if action not in FAULT_ACTIONS:
        raise ValueError(f"fault action must be one of {', '.join(FAULT_ACTIONS)}")
    for key in ("path", "command", "type", "id"):
        if key in spec:
            spec[key] = str(spec[key])
            try:
                re.compile(spec[key])
            except re.error as exc:
                raise ValueError(f"fault {key} is not a valid regex: {exc}") from exc
    times = spec.pop("times", None)
    if times is not None:
        times = int(times)
        if times < 1:
            raise ValueError("fault times must be at least 1")
    if "delay" in spec:
        spec["delay"] = float(spec["delay"])
    if action == "slow" and "delay" not in spec:
        raise ValueError("a slow fault needs a delay (seconds)")
    if action == "drop-after" and target != "command":
        raise ValueError(
            "drop-after is a command fault: the command runs, then the "
            "connection drops before its result is sent"
        )
    return spec, times


def fault_matches(spec: dict[str, Any], attrs: dict[str, str | None]) -> bool:
    """Whether a fault spec hits an event of its target with these attributes."""
    target = spec["target"]
    if target == "api":
        if "method" in spec and str(spec["method"]).upper() != (attrs.get("method") or ""):
            return False
        return "path" not in spec or re.search(spec["path"], attrs.get("path") or "") is not None
    if target in ("command", "connect"):
        if "host" in spec and spec["host"] != attrs.get("host"):
            return False
        if target == "command" and "command" in spec:
            return re.search(spec["command"], attrs.get("command") or "") is not None
        return True
    # task
    for key in ("type", "id"):
        if key in spec and re.fullmatch(spec[key], attrs.get(key) or "") is None:
            return False
    return "node" not in spec or spec["node"] == attrs.get("node")
