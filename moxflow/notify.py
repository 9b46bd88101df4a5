"""Notifications: what to say about a run or an event, as a short message (pure, no I/O).

A :class:`Message` has a title, a body of a few lines and a severity. It is built from a
finished :class:`~moxflow.report.RunReport` for the direct webhook (``tasks/notify.py``); the
Prefect automations made by ``python -m deployments.notifications`` say the same things
through the Jinja templates here, for failed runs and for the ``moxflow.*`` events.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from moxflow.errors import WebhookError
from moxflow.report import Outcome, RunReport

__all__ = [
    "EVENT_KINDS",
    "AutomationSpec",
    "Kind",
    "Message",
    "Severity",
    "WebhookError",
    "automation_names",
    "automation_specs",
    "kinds_of",
    "message_for_report",
]

MAX_TARGETS = 10
"""At most this many failing targets are listed in a message; the rest are counted."""
MAX_DETAIL = 160
"""A target's detail is cut to this many characters in a message."""


class Kind(StrEnum):
    """What a notification is about; the values are those of ``notifications.on``."""

    FAILED = "failed"
    ROLLBACK = "rollback"
    NEEDS_ATTENTION = "needs-attention"


class Severity(StrEnum):
    """How urgent a message is: ``warning`` (undone, look later) to ``critical`` (act now)."""

    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


EVENT_KINDS: Mapping[str, Kind] = {
    "moxflow.rollback": Kind.ROLLBACK,
    "moxflow.needs-attention": Kind.NEEDS_ATTENTION,
}
"""The Prefect events moxflow emits, and what each is about."""

_SEVERITY = {Kind.ROLLBACK: Severity.WARNING, Kind.FAILED: Severity.ERROR}
_SEVERITY[Kind.NEEDS_ATTENTION] = Severity.CRITICAL
_RANK = [Severity.WARNING, Severity.ERROR, Severity.CRITICAL]


@dataclass(frozen=True, slots=True)
class Message:
    """One notification: a title line, a short body and a severity."""

    title: str
    body: str
    severity: Severity
    kinds: tuple[Kind, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Machine-readable details (job, label, targets...) for the webhook's JSON."""

    def payload(self) -> dict[str, Any]:
        """The JSON the direct webhook POSTs."""
        return {
            "source": "moxflow",
            "title": self.title,
            "body": self.body,
            "severity": self.severity.value,
            "kinds": [k.value for k in self.kinds],
            **self.fields,
        }


def kinds_of(report: RunReport) -> list[Kind]:
    """What a finished run is worth a notification for (empty for a run that is ok)."""
    if report.ok:
        return []
    kinds = [Kind.FAILED]
    outcomes = {r.outcome for r in report.rows}
    if Outcome.ROLLED_BACK in outcomes:
        kinds.append(Kind.ROLLBACK)
    if Outcome.NEEDS_ATTENTION in outcomes:
        kinds.append(Kind.NEEDS_ATTENTION)
    return kinds


def _worst(kinds: Collection[Kind]) -> Severity:
    return max((_SEVERITY[k] for k in kinds), key=_RANK.index, default=Severity.ERROR)


def _cut(text: str, limit: int = MAX_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message_for_report(
    report: RunReport, on: Collection[str], *, run_url: str | None = None
) -> Message | None:
    """The message about a finished run, or ``None`` when ``on`` asks for none of its kinds.

    A run that needs attention is ``critical``, a plain failure ``error``; a run whose only
    failures were rolled back cleanly is still a failed run (``error``), listing them; so is
    a run with busy targets (another run held them: they were not done), listed too.
    """
    wanted = {Kind(k) for k in on}
    kinds = kinds_of(report)
    if not wanted.intersection(kinds):
        return None
    severity = _worst(kinds)
    failing = report.not_ok_rows
    attention = [r.target for r in failing if r.outcome is Outcome.NEEDS_ATTENTION]
    busy = any(r.outcome is Outcome.BUSY for r in failing)
    head = "needs attention" if attention else report.verdict.lower()
    title = f"moxflow {report.job} [{report.label}] {head}: {len(failing)} of {len(report.rows)}"
    lines = [
        f"- {r.target}: {r.outcome.value}" + (f": {_cut(r.detail)}" if r.detail else "")
        for r in failing[:MAX_TARGETS]
    ]
    if len(failing) > MAX_TARGETS:
        lines.append(f"- … and {len(failing) - MAX_TARGETS} more")
    if attention:
        lines.append("Needs attention: the pre-update snapshot is kept; see docs/operating.md.")
    if busy:
        lines.append("Busy: another run or operation holds the target; see docs/operating.md.")
    lines.append(report.summary())
    if run_url:
        lines.append(run_url)
    return Message(
        title=title,
        body="\n".join(lines),
        severity=severity,
        kinds=tuple(kinds),
        fields={
            "job": report.job,
            "label": report.label,
            "targets": {r.target: r.outcome.value for r in failing},
            **({"run_url": run_url} if run_url else {}),
        },
    )


# --- the automations' templates --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AutomationSpec:
    """One Prefect automation that ``deployments.notifications`` keeps in step, as plain data."""

    PREFIX: ClassVar[str] = "moxflow: "

    kind: Kind
    name: str
    description: str
    expect: tuple[str, ...]
    match: Mapping[str, str]
    match_related: Mapping[str, str]
    subject: str
    body: str


_RUN_SUBJECT = "moxflow {{ flow.name }} {{ flow_run.state.name | lower }}: {{ flow_run.name }}"
_RUN_BODY = """\
Flow run {{ flow_run.name }} of {{ flow.name }}{% if deployment %} \
(deployment {{ deployment.name }}){% endif %} entered {{ flow_run.state.name }}.
{{ flow_run.state.message }}
{{ flow_run | ui_url }}"""
_EVENT_SUBJECT = {
    Kind.ROLLBACK: "moxflow: {{ event.payload.host }} rolled back",
    Kind.NEEDS_ATTENTION: "moxflow: {{ event.payload.host }} needs attention",
}
_EVENT_BODY = {
    Kind.ROLLBACK: (
        "The update of {{ event.payload.host }} failed verification and was undone"
        "{% if event.payload.how %} ({{ event.payload.how }}){% endif %}.\n"
        "Generation before the update: {{ event.payload.generation }}"
    ),
    Kind.NEEDS_ATTENTION: (
        "The update of {{ event.payload.host }} failed and could not be undone automatically.\n"
        "{% if event.payload.snapshot %}Pre-update snapshot kept: "
        "{{ event.payload.snapshot }}\n{% endif %}"
        "Generation before the update: {{ event.payload.generation }}"
    ),
}


def automation_specs(on: Collection[str], tag: str = "moxflow") -> list[AutomationSpec]:
    """The automations for ``notifications.on``; every name starts with ``moxflow: ``."""
    wanted = {Kind(k) for k in on}
    specs = [
        AutomationSpec(
            kind=Kind.FAILED,
            name=AutomationSpec.PREFIX + "run failed",
            description=(
                f"A flow run of a deployment tagged {tag!r} entered Failed or Crashed "
                "(made by python -m deployments.notifications)."
            ),
            expect=("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{tag}",
            },
            subject=_RUN_SUBJECT,
            body=_RUN_BODY,
        ),
        *(
            AutomationSpec(
                kind=kind,
                name=AutomationSpec.PREFIX + kind.value.replace("-", " "),
                description=(
                    f"moxflow emitted {event} (made by python -m deployments.notifications)."
                ),
                expect=(event,),
                match={"prefect.resource.id": "moxflow.host.*"},
                match_related={},
                subject=_EVENT_SUBJECT[kind],
                body=_EVENT_BODY[kind],
            )
            for event, kind in EVENT_KINDS.items()
        ),
    ]
    return [s for s in specs if s.kind in wanted]


def automation_names() -> list[str]:
    """The names of every automation moxflow may make, wanted or not."""
    return [s.name for s in automation_specs([k.value for k in Kind])]
