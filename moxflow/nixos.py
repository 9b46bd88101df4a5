"""NixOS facts and plans, without I/O: argv builders, parsers of ``nixos-rebuild``,
``systemctl`` and ``flake.lock`` output, the wave planner, the post-switch verdict and the
crash-recovery journal.

An update of one host is: lock, snapshot, ``nix flake update``, build, arm a dead-man timer
that switches back to the old generation unless disarmed, switch, verify, disarm (confirm),
unlock; a host that fails verification walks the recovery ladder (:func:`next_recovery_step`).
Every builder validates its paths and names and returns an argument list; the SSH runner
quotes it once with ``shlex.join``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from moxflow.errors import ConfigError, ParseError
from moxflow.health import HealthResult
from moxflow.health import describe as describe_check
from moxflow.inventory import Inventory
from moxflow.inventory.fields import validate_attr, validate_remote_path
from moxflow.inventory.nixos import find_cycle
from moxflow.report import format_age

__all__ = [
    "DEADMAN_TIMER",
    "DEADMAN_UNIT",
    "JOURNAL_PHASES",
    "SYSTEM_STATES",
    "Generation",
    "HostFacts",
    "HostPlan",
    "Journal",
    "JournalPhase",
    "LockChange",
    "NixosHostSpec",
    "RecoveryState",
    "RecoveryStep",
    "UpdatePlan",
    "Verdict",
    "arm_deadman_argv",
    "build_argv",
    "checked_path",
    "clear_journal_argv",
    "current_generation",
    "deadman_armed_argv",
    "deadman_service_active_argv",
    "disarm_deadman_argv",
    "evaluate",
    "failed_units_argv",
    "find_cycle",
    "flake_update_argv",
    "generation_text",
    "generations_argv",
    "journal_path",
    "lock_argv",
    "lock_changes",
    "lock_orphaned_argv",
    "lock_path",
    "locked_input",
    "new_failures",
    "next_generation",
    "next_recovery_step",
    "parse_checked",
    "parse_failed_units",
    "parse_flake_lock",
    "parse_generations",
    "parse_system_state",
    "plan_update",
    "plan_waves",
    "prepare_state_dir_argv",
    "read_checked_argv",
    "read_journal_argv",
    "revert_argvs",
    "switch_argv",
    "system_state_argv",
    "unlock_argv",
    "update_stands",
    "validate_attr",
    "validate_remote_path",
    "write_checked_argv",
    "write_journal_argv",
]

DEADMAN_UNIT = "moxflow-deadman"
"""The transient systemd unit of the dead-man timer (``systemd-run --unit``)."""

DEADMAN_TIMER = f"{DEADMAN_UNIT}.timer"
"""The timer that reverts the host unless moxflow stops it."""

SYSTEM_STATES = frozenset(
    {"initializing", "starting", "running", "degraded", "maintenance", "stopping", "offline"}
    | {"unknown"}
)
"""What ``systemctl is-system-running`` can print."""


def _generation(number: int) -> int:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"a generation number is a whole number from 1, not {number!r}")
    return number


def _seconds(seconds: float) -> str:
    """``120s`` for whole seconds, ``2.5s`` otherwise (systemd time span syntax)."""
    if isinstance(seconds, bool) or not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"a timer needs a positive number of seconds, not {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{float(seconds):.3f}".rstrip("0") + "s"


# --- commands ------------------------------------------------------------------------------


def flake_update_argv(flake: str, commit: bool = False) -> list[str]:
    """``nix flake update --flake DIR [--commit-lock-file]``: lock every input to its newest."""
    argv = ["nix", "flake", "update", "--flake", validate_remote_path(flake)]
    return [*argv, "--commit-lock-file"] if commit else argv


def _flake_ref(flake: str, attr: str) -> str:
    return f"{validate_remote_path(flake)}#{validate_attr(attr)}"


def build_argv(flake: str, attr: str) -> list[str]:
    """``nixos-rebuild build --flake DIR#ATTR``: build the new system without activating it."""
    return ["nixos-rebuild", "build", "--flake", _flake_ref(flake, attr)]


def switch_argv(flake: str, attr: str) -> list[str]:
    """``nixos-rebuild switch --flake DIR#ATTR`` (exit 4: units failed, generation active)."""
    return ["nixos-rebuild", "switch", "--flake", _flake_ref(flake, attr)]


def generations_argv() -> list[str]:
    """``nixos-rebuild list-generations --json``; parse with :func:`parse_generations`."""
    return ["nixos-rebuild", "list-generations", "--json"]


def failed_units_argv() -> list[str]:
    """``systemctl list-units --failed --output=json``; parse with :func:`parse_failed_units`."""
    return ["systemctl", "list-units", "--failed", "--output=json"]


def system_state_argv() -> list[str]:
    """``systemctl is-system-running`` (exit 0 only when running: run it without check);
    parse with :func:`parse_system_state`."""
    return ["systemctl", "is-system-running"]


def _deadman_command(profile: str, generation: str) -> str:
    """The shell line the dead-man timer runs: switch the profile and the system back."""
    validate_remote_path(profile)
    link = f"{profile}-{generation}-link/bin/switch-to-configuration"
    return (
        f"nix-env --profile {shlex.quote(profile)} --switch-generation {generation} && "
        f"{shlex.quote(link)} switch"
    )


def _deadman_argv(profile: str, generation: str, seconds: float) -> list[str]:
    return [
        "systemd-run",
        "--unit",
        DEADMAN_UNIT,
        "--collect",  # unloaded when done, even failed: the next run can arm it again
        "--on-active",
        _seconds(seconds),
        "--description",
        f"moxflow: revert to generation {generation} unless the update is confirmed",
        "/bin/sh",
        "-c",
        _deadman_command(profile, generation),
    ]


def arm_deadman_argv(profile: str, generation: int, seconds: float) -> list[str]:
    """A transient timer that reverts to ``generation`` after ``seconds`` unless disarmed.

    It runs on the host itself, so it fires even when the switch cut the host off the network.
    """
    return _deadman_argv(profile, str(_generation(generation)), seconds)


def disarm_deadman_argv() -> list[str]:
    """``systemctl stop moxflow-deadman.timer``: confirm the update."""
    return ["systemctl", "stop", DEADMAN_TIMER]


def deadman_service_active_argv() -> list[str]:
    """``systemctl is-active moxflow-deadman.service`` (exit 0: the timer fired and its
    revert is running right now; stopping the timer does not stop it)."""
    return ["systemctl", "is-active", f"{DEADMAN_UNIT}.service"]


def deadman_armed_argv() -> list[str]:
    """``systemctl is-active moxflow-deadman.timer`` (exit 0: armed, 3: not)."""
    return ["systemctl", "is-active", DEADMAN_TIMER]


def revert_argvs(profile: str, generation: int) -> list[list[str]]:
    """The two commands the dead-man timer would run, to revert by hand right now."""
    validate_remote_path(profile)
    number = _generation(generation)
    return [
        ["nix-env", "--profile", profile, "--switch-generation", str(number)],
        [f"{profile}-{number}-link/bin/switch-to-configuration", "switch"],
    ]


# --- lock and journal on the host ----------------------------------------------------------


def lock_path(state_dir: str) -> str:
    """The lock folder: whoever creates it owns the host's updates."""
    return f"{validate_remote_path(state_dir)}/update.lock"


def journal_path(state_dir: str) -> str:
    """The journal file: how far the running (or crashed) update of the host got."""
    return f"{validate_remote_path(state_dir)}/journal.json"


def prepare_state_dir_argv(state_dir: str) -> list[str]:
    """``mkdir -p STATE_DIR``, so the lock can be taken on a host that never had one."""
    return ["mkdir", "-p", validate_remote_path(state_dir)]


def lock_argv(state_dir: str) -> list[str]:
    """``mkdir STATE_DIR/update.lock``: atomic, fails when another run holds the lock."""
    return ["mkdir", lock_path(state_dir)]


LOCK_ORPHAN_MINUTES = 2
"""A lock without a journal this old is a run that died between taking it and writing its
journal; a younger one belongs to a run writing its journal right now."""


def lock_orphaned_argv(state_dir: str) -> list[str]:
    """``find LOCK -maxdepth 0 -mmin +N``: prints the lock's path when it was taken more than
    :data:`LOCK_ORPHAN_MINUTES` minutes ago, nothing when it is younger."""
    return ["find", lock_path(state_dir), "-maxdepth", "0", "-mmin", f"+{LOCK_ORPHAN_MINUTES}"]


def update_stands(journal: Journal | None) -> bool:
    """Whether an interrupted run's update stands: it got as far as ``confirmed`` (verified,
    its dead-man timer stopped), so the run that cleans up after it keeps its generation and
    its flake.lock. Any earlier phase is undone: the generation it may have activated was
    never verified."""
    return journal is not None and journal.phase == "confirmed"


BUSY_HINT = (
    "if that run is gone (no worker runs it any more), cancel it in the Prefect UI or with "
    "`prefect flow-run cancel ID`, and the next run cleans up; see docs/operating.md"
)


def lock_holder(host: str, journal: Journal | None, now: datetime) -> str:
    """Why ``host`` is busy, for its report row: which run holds its update lock, since when
    and how far it got (its ``journal``; ``None``: one that took the lock moments ago and has
    not written its journal yet), and what to do about it."""
    if journal is None:
        return (
            f"another run, which took the lock moments ago, is updating {host}; "
            "not updated this time: run again once it is done"
        )
    started = datetime.fromisoformat(journal.started)
    started = started if started.tzinfo else started.replace(tzinfo=UTC)
    since = started.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    age = format_age(now, started)
    return (
        f"another run (flow run {journal.flow_run_id}) is updating {host}, since {since} "
        f"({age}), phase {journal.phase}; not updated this time: {BUSY_HINT}"
    )


def next_generation(generations: Iterable[Generation]) -> int:
    """The number the next ``nixos-rebuild switch`` gives its generation: one more than the
    highest there is (not the current one's: after a rollback the current is not the
    newest)."""
    return max((g.number for g in generations), default=0) + 1


def unlock_argv(state_dir: str) -> list[str]:
    """``rm -rf STATE_DIR/update.lock``."""
    return ["rm", "-rf", lock_path(state_dir)]


def write_journal_argv(state_dir: str) -> list[str]:
    """Replace the journal atomically with what arrives on stdin (write a copy, then rename)."""
    path = journal_path(state_dir)
    tmp = shlex.quote(f"{path}.tmp")
    return ["/bin/sh", "-c", f"cat > {tmp} && mv {tmp} {shlex.quote(path)}"]


def read_journal_argv(state_dir: str) -> list[str]:
    """``cat STATE_DIR/journal.json`` (fails when there is none: no unfinished update)."""
    return ["cat", journal_path(state_dir)]


def clear_journal_argv(state_dir: str) -> list[str]:
    """``rm -f STATE_DIR/journal.json``: the update finished, one way or the other."""
    return ["rm", "-f", journal_path(state_dir)]


def checked_path(state_dir: str) -> str:
    """When an update run last found the host up to date (or updated it): ISO time, UTC."""
    return f"{validate_remote_path(state_dir)}/last-check"


def write_checked_argv(state_dir: str) -> list[str]:
    """Write the time on stdin to ``STATE_DIR/last-check``."""
    return ["sh", "-c", 'cat > "$1"', "sh", checked_path(state_dir)]


def read_checked_argv(state_dir: str) -> list[str]:
    """``cat STATE_DIR/last-check`` (fails when no run has finished on the host yet)."""
    return ["cat", checked_path(state_dir)]


def parse_checked(text: str) -> datetime | None:
    """The time in ``last-check``; None when it is missing or not a time."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


JournalPhase = Literal["started", "snapshotted", "built", "armed", "switched", "confirmed"]
JOURNAL_PHASES: tuple[JournalPhase, ...] = get_args(JournalPhase)
"""The phases of one host's update, in order."""


@dataclass(frozen=True, slots=True)
class Journal:
    """What a host's update has done so far, kept on the host so a crashed run can be undone.

    ``snapshot`` is the name of the snapshot taken first (``None`` without one); ``started``
    is an ISO 8601 time; ``new_generation`` is known once switched.
    """

    run_id: str
    flow_run_id: str | None
    host: str
    phase: JournalPhase
    old_generation: int
    new_generation: int | None
    snapshot: str | None
    started: str

    def advance(self, phase: JournalPhase, **changes: Any) -> Journal:
        """This journal at a later ``phase``, with other fields changed as given."""
        if JOURNAL_PHASES.index(phase) < JOURNAL_PHASES.index(self.phase):
            raise ValueError(f"journal of {self.host} cannot go back from {self.phase} to {phase}")
        return replace(self, phase=phase, **changes)

    def to_json(self) -> str:
        """One line of JSON, written to the host with :func:`write_journal_argv`."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "flow_run_id": self.flow_run_id,
                "host": self.host,
                "phase": self.phase,
                "old_generation": self.old_generation,
                "new_generation": self.new_generation,
                "snapshot": self.snapshot,
                "started": self.started,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Journal:
        """Read a journal back; ``ParseError`` when it is not one (truncated, edited, foreign)."""
        source = "moxflow journal"
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ParseError(f"{source} is not JSON: {exc}", source=source, text=text) from None
        if not isinstance(data, dict):
            raise ParseError(f"{source} is not a JSON object", source=source, text=text)

        def need(key: str, kind: type, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
                raise ParseError(
                    f"{source}: {key} should be {kind.__name__}, got {value!r}",
                    source=source,
                    text=text,
                )
            return value

        phase = need("phase", str)
        if phase not in JOURNAL_PHASES:
            raise ParseError(f"{source}: unknown phase {phase!r}", source=source, text=text)
        started = need("started", str)
        try:
            datetime.fromisoformat(started)
        except ValueError:
            raise ParseError(
                f"{source}: started {started!r} is not an ISO 8601 time", source=source, text=text
            ) from None
        old = need("old_generation", int)
        new = need("new_generation", int, optional=True)
        if old < 1 or (new is not None and new < 1):
            raise ParseError(f"{source}: generation numbers start at 1", source=source, text=text)
        return cls(
            run_id=need("run_id", str),
            flow_run_id=need("flow_run_id", str, optional=True),
            host=need("host", str),
            phase=phase,
            old_generation=old,
            new_generation=new,
            snapshot=need("snapshot", str, optional=True),
            started=started,
        )


# --- parsers -------------------------------------------------------------------------------


def _json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParseError(f"{source}: output is not JSON: {exc}", source=source, text=text) from None


@dataclass(frozen=True, slots=True)
class Generation:
    """One system generation from ``nixos-rebuild list-generations --json``.

    ``date`` is the host's local time as printed (naive), ``None`` if not a date we know.
    """

    number: int
    date: datetime | None
    nixos_version: str
    kernel_version: str
    configuration_revision: str
    current: bool
    specialisations: tuple[str, ...] = ()


def _parse_date(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def parse_generations(json_text: str) -> list[Generation]:
    """Parse ``nixos-rebuild list-generations --json``, in output order (newest first)."""
    source = "nixos-rebuild list-generations"
    data = _json(json_text, source)
    if not isinstance(data, list):
        raise ParseError(f"{source}: expected a JSON list", source=source, text=json_text)
    generations: list[Generation] = []
    seen: set[int] = set()
    for i, entry in enumerate(data):

        def bad(problem: str, i: int = i) -> ParseError:
            return ParseError(f"{source}: entry {i}: {problem}", source=source, text=json_text)

        if not isinstance(entry, dict):
            raise bad("not an object")
        number = entry.get("generation")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise bad(f"generation should be a whole number from 1, got {number!r}")
        if number in seen:
            raise bad(f"generation {number} is listed twice")
        seen.add(number)
        current = entry.get("current")
        if not isinstance(current, bool):
            raise bad(f"current should be true or false, got {current!r}")
        texts: dict[str, str] = {}
        for key in ("date", "nixosVersion", "kernelVersion", "configurationRevision"):
            value = entry.get(key, "")
            if not isinstance(value, str):
                raise bad(f"{key} should be text, got {value!r}")
            texts[key] = value
        specs = entry.get("specialisations", [])
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise bad("specialisations should be a list of names")
        generations.append(
            Generation(
                number=number,
                date=_parse_date(texts["date"]),
                nixos_version=texts["nixosVersion"],
                kernel_version=texts["kernelVersion"],
                configuration_revision=texts["configurationRevision"],
                current=current,
                specialisations=tuple(specs),
            )
        )
    return generations


def current_generation(generations: Iterable[Generation]) -> Generation:
    """The generation marked current; ``ParseError`` unless exactly one is."""
    current = [g for g in generations if g.current]
    if len(current) != 1:
        numbers = ", ".join(str(g.number) for g in current) or "none"
        raise ParseError(
            f"nixos-rebuild list-generations: expected one current generation, found {numbers}",
            source="nixos-rebuild list-generations",
        )
    return current[0]


def generation_text(before: int | None, after: int | str | None = None) -> str:
    """A host's generation for the report: ``"41 → 42"`` when an update changed it, ``"41"``
    when it did not (or the update did not get that far), ``"41 → ?"`` when it is not known
    what the host runs now; empty when even the first is unknown."""
    if before is None:
        return ""
    return str(before) if after is None or after == before else f"{before} → {after}"


def parse_failed_units(json_text: str) -> frozenset[str]:
    """Names of the failed units from ``systemctl list-units --failed --output=json``."""
    source = "systemctl list-units --failed"
    if not json_text.strip():
        return frozenset()
    data = _json(json_text, source)
    if not isinstance(data, list):
        raise ParseError(f"{source}: expected a JSON list", source=source, text=json_text)
    units: set[str] = set()
    for entry in data:
        unit = entry.get("unit") if isinstance(entry, dict) else None
        if not isinstance(unit, str) or not unit:
            raise ParseError(
                f"{source}: expected objects with a unit name, got {entry!r}",
                source=source,
                text=json_text,
            )
        units.add(unit)
    return frozenset(units)


def new_failures(baseline: Iterable[str], now: Iterable[str]) -> frozenset[str]:
    """Units failed now that had not failed before the change."""
    return frozenset(now) - frozenset(baseline)


def parse_system_state(stdout: str) -> str:
    """The word ``systemctl is-system-running`` printed (``running``, ``degraded``, ...)."""
    state = stdout.strip()
    if state not in SYSTEM_STATES:
        raise ParseError(
            f"systemctl is-system-running: unknown state {state!r}",
            source="systemctl is-system-running",
            text=stdout,
        )
    return state


def parse_flake_lock(json_text: str) -> dict[str, str]:
    """Input name → locked revision (``rev``, else ``narHash``) from a ``flake.lock``.

    Keys are the lock's node names (``nixpkgs``, ``nixpkgs_2``, ...), without the root node.
    """
    source = "flake.lock"
    data = _json(json_text, source)
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict):
        raise ParseError(f"{source}: no nodes object", source=source, text=json_text)
    root = data.get("root", "root")
    locked: dict[str, str] = {}
    for name, node in nodes.items():
        if name == root:
            continue
        lock = node.get("locked") if isinstance(node, dict) else None
        if not isinstance(lock, dict):
            raise ParseError(f"{source}: input {name!r} is not locked", source=source)
        rev = lock.get("rev") or lock.get("narHash")
        if not isinstance(rev, str) or not rev:
            raise ParseError(f"{source}: input {name!r} has neither rev nor narHash", source=source)
        locked[name] = rev
    return dict(sorted(locked.items()))


def locked_input(json_text: str, name: str) -> Mapping[str, Any]:
    """The ``locked`` attributes of the root flake's input ``name`` in a ``flake.lock``.

    Found the way nix finds it: the root node's ``inputs`` map the name to a node key, which
    need not be the name (``nixpkgs_2`` when another input's own nixpkgs was written first),
    or to a ``follows`` path, a list of input names walked from the root.
    """
    source = "flake.lock"
    data = _json(json_text, source)
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict):
        raise ParseError(f"{source}: no nodes object", source=source, text=json_text)
    root = data.get("root", "root")
    key = _follow_inputs(nodes, str(root), [name], set())
    node = nodes.get(key)
    lock = node.get("locked") if isinstance(node, dict) else None
    if not isinstance(lock, dict):
        raise ParseError(f"{source}: input {name!r} (node {key!r}) is not locked", source=source)
    return lock


def _follow_inputs(
    nodes: Mapping[str, Any], root: str, path: Sequence[str], seen: set[tuple[str, ...]]
) -> str:
    """The key of the node ``path`` (input names from the root) leads to."""
    source = "flake.lock"
    if tuple(path) in seen:
        raise ParseError(f"{source}: follows cycle at {'/'.join(path)!r}", source=source)
    seen.add(tuple(path))
    key = root
    for elem in path:
        node = nodes.get(key)
        inputs = node.get("inputs") if isinstance(node, dict) else None
        edge = inputs.get(elem) if isinstance(inputs, dict) else None
        if isinstance(edge, str):
            key = edge
        elif isinstance(edge, list) and all(isinstance(e, str) for e in edge):
            key = _follow_inputs(nodes, root, edge, seen)
        else:
            raise ParseError(f"{source}: no input {'/'.join(path)!r}", source=source)
    return key


@dataclass(frozen=True, slots=True)
class LockChange:
    """One flake input whose locked revision changed (``None``: added or removed)."""

    input: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        def short(rev: str | None) -> str:
            if rev is None:
                return "(none)"
            return rev[:12] if re.fullmatch(r"[0-9a-f]{13,}", rev) else rev

        return f"{self.input}: {short(self.before)} → {short(self.after)}"


def lock_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[LockChange]:
    """The inputs whose revision differs between two :func:`parse_flake_lock` results."""
    return [
        LockChange(name, before.get(name), after.get(name))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


# --- verdict after a switch ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What a host says about itself: active generation, system state, failed units."""

    generation: int
    system_state: str
    failed_units: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a switched host is healthy; ``reasons`` say why not (or note what was let go)."""

    ok: bool
    reasons: tuple[str, ...] = ()
    new_failures: frozenset[str] = frozenset()

    def __str__(self) -> str:
        head = "healthy" if self.ok else "unhealthy"
        return f"{head}: {'; '.join(self.reasons)}" if self.reasons else head


def evaluate(
    baseline: HostFacts,
    facts: HostFacts,
    expected_generation: int,
    health: Iterable[HealthResult] = (),
) -> Verdict:
    """Judge a host after a switch against its state before it.

    Healthy when the expected generation is active, the system is ``running`` (or
    ``degraded`` only by units that had already failed before), no unit failed anew and
    every health check in ``health`` passed.
    """
    problems: list[str] = []
    notes: list[str] = []
    if facts.generation != expected_generation:
        problems.append(f"generation {facts.generation} is active, expected {expected_generation}")
    fresh = new_failures(baseline.failed_units, facts.failed_units)
    if fresh:
        problems.append(f"units failed since the switch: {', '.join(sorted(fresh))}")
    if facts.system_state == "degraded":
        if not fresh:
            old = sorted(facts.failed_units & baseline.failed_units)
            notes.append(
                "degraded only by units that had failed before: " + (", ".join(old) or "none")
            )
    elif facts.system_state != "running":
        problems.append(f"system state is {facts.system_state}, not running")
    problems.extend(f"health check failed: {r.check} ({r.detail})" for r in health if not r.ok)
    if problems:
        return Verdict(False, tuple(problems), fresh)
    return Verdict(True, tuple(notes), fresh)


# --- the recovery ladder after a failed verification -------------------------------------

RecoveryStep = Literal[
    "switch-back", "wait-for-dead-man", "snapshot-rollback", "rolled-back", "needs-attention"
]
"""What to do next for a host whose new generation failed: a step to take (the first three),
or the end of the ladder."""


@dataclass(frozen=True, slots=True)
class RecoveryState:
    """Where a host's recovery stands.

    ``generation`` is the active generation as last seen (``None``: the host did not answer);
    ``tried`` the recovery steps taken so far, in order; ``healthy`` whether the host passed
    verification on ``old_generation`` after the last of them; ``has_snapshot`` whether a
    pre-update snapshot exists to roll back to.
    """

    old_generation: int
    generation: int | None
    has_snapshot: bool
    tried: tuple[RecoveryStep, ...] = ()
    healthy: bool = False

    def after(self, step: RecoveryStep, healthy: bool, generation: int | None) -> RecoveryState:
        """This state once ``step`` was taken and the host verified (or not) after it."""
        return replace(self, tried=(*self.tried, step), healthy=healthy, generation=generation)


def next_recovery_step(state: RecoveryState) -> RecoveryStep:
    """The next rung of the ladder.

    1. Back on the old generation already (the dead-man timer fired): wait for it to settle
       and verify. 2. Reachable on the new generation: switch back ourselves. 3. Unreachable:
       wait, bounded, for the dead-man timer to revert it. Then, while still unhealthy, 4. roll
       the snapshot back (once, if there is one); 5. else a human is needed.
    """
    if not state.tried:
        if state.generation is None or state.generation == state.old_generation:
            return "wait-for-dead-man"
        return "switch-back"
    if state.healthy:
        return "rolled-back"
    if state.has_snapshot and "snapshot-rollback" not in state.tried:
        return "snapshot-rollback"
    return "needs-attention"


# --- waves ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NixosHostSpec:
    """What the wave planner needs to know of a host: its name, canary flag and ``after``."""

    name: str
    canary: bool = False
    after: tuple[str, ...] = ()


def plan_waves(hosts: Sequence[NixosHostSpec], max_parallel: int) -> list[list[str]]:
    """Order hosts into waves updated one after the other; hosts of a wave run together.

    The canaries come first in a wave of their own (or the first host that waits for no
    other, when none is marked). Then waves of at most ``max_parallel`` hosts, in inventory
    order, each host only after every host of its ``after`` is in an earlier wave. ``after``
    names not among ``hosts`` (filtered out by ``--only``) are ignored. A cycle, or a canary
    waiting for a host that is not one, is a ``ConfigError``.
    """
    if isinstance(max_parallel, bool) or max_parallel < 1:
        raise ConfigError(
            f"max_parallel must be at least 1, not {max_parallel!r}", setting="nixos.max_parallel"
        )
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"hosts listed twice: {', '.join(twice)}", setting="nixos.hosts")
    chosen = set(names)
    deps = {h.name: tuple(dict.fromkeys(a for a in h.after if a in chosen)) for h in hosts}
    cycle = find_cycle(deps)
    if cycle:
        raise ConfigError(
            f"dependency cycle: {' → '.join(cycle)}",
            setting=f"nixos.hosts.{cycle[0]}.after",
            hint="remove one of these names from an after list",
        )
    canaries = [h.name for h in hosts if h.canary]
    for name in canaries:
        late = [d for d in deps[name] if d not in canaries]
        if late:
            raise ConfigError(
                f"canary {name} waits for {', '.join(late)}, which is not a canary",
                setting=f"nixos.hosts.{name}.after",
                hint="canaries go first: make those canaries too, or drop them from after",
            )

    waves: list[list[str]] = []
    done: set[str] = set()

    def next_wave(candidates: Sequence[str], limit: int | None) -> list[str]:
        wave: list[str] = []
        for name in candidates:
            if limit is not None and len(wave) >= limit:
                break
            if name not in done and all(d in done for d in deps[name]):
                wave.append(name)
        return wave

    if canaries:
        while not set(canaries) <= done:
            wave = next_wave(canaries, None)
            waves.append(wave)
            done.update(wave)
    elif names:
        first = next_wave(names, 1)
        waves.append(first)
        done.update(first)
    while len(done) < len(names):
        wave = next_wave(names, max_parallel)
        waves.append(wave)
        done.update(wave)
    return waves


# --- the plan of a run ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPlan:
    """What an update does to one host, for ``--dry-run``: its wave and its commands.

    ``commands`` are shell-quoted lines in run order; the dead-man timer's generation is
    only known at run time and shows as ``N``. ``health`` describes the host's checks.
    """

    host: str
    wave: int
    canary: bool
    target: str
    snapshot: str
    commands: tuple[str, ...]
    health: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: target, snapshot and health checks."""
        role = "canary, " if self.canary else ""
        checks = f"{len(self.health)} health check{'s' if len(self.health) != 1 else ''}"
        return f"{role}{self.target}, snapshot: {self.snapshot}, {checks}"


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """The hosts of a NixOS update run in waves (1-based in :class:`HostPlan`)."""

    waves: list[list[str]]
    hosts: dict[str, HostPlan]
    max_parallel: int = 1

    def describe(self) -> list[str]:
        """The plan as lines for the terminal: waves, then each host's commands."""
        count = sum(len(w) for w in self.waves)
        lines = [
            f"NixOS update: {count} host{'s' if count != 1 else ''} in {len(self.waves)} "
            f"wave{'s' if len(self.waves) != 1 else ''}, at most {self.max_parallel} at a time "
            "after the canaries"
        ]
        for number, wave in enumerate(self.waves, 1):
            kind = " (canary)" if self.hosts[wave[0]].canary else ""
            lines.append(f"wave {number}{kind}: {', '.join(wave)}")
            for name in wave:
                plan = self.hosts[name]
                lines.append(f"  {name}: {plan.target}; snapshot: {plan.snapshot}")
                lines.extend(f"    $ {line}" for line in plan.commands)
                lines.extend(f"    health: {check}" for check in plan.health)
        return lines


def _host_commands(inv: Inventory, name: str) -> tuple[str, ...]:
    host = inv.nixos_host(name)
    attr = inv.nixos_attr(name)
    profile = inv.nixos_profile(name)
    state_dir = inv.nixos_state_dir(name)
    argvs = [
        prepare_state_dir_argv(state_dir),
        lock_argv(state_dir),
        flake_update_argv(host.flake, host.commit_lock_file),
        build_argv(host.flake, attr),
        _deadman_argv(profile, "N", inv.nixos.confirm_timeout),
        switch_argv(host.flake, attr),
        system_state_argv(),
        failed_units_argv(),
        disarm_deadman_argv(),
        clear_journal_argv(state_dir),
        unlock_argv(state_dir),
    ]
    return tuple(shlex.join(argv) for argv in argvs)


def plan_update(
    inv: Inventory, only: Sequence[str] | None = None, *, max_parallel: int | None = None
) -> UpdatePlan:
    """Plan a NixOS update of the ``[nixos.hosts]`` named in ``only`` (none or empty: all).

    No NixOS host, or an unknown name in ``only``, is a ``ConfigError``; ``after`` names
    outside ``only`` are ignored.
    ``max_parallel`` overrides ``nixos.max_parallel``.
    """
    parallel = inv.nixos.max_parallel if max_parallel is None else max_parallel
    for name in only or ():
        inv.nixos_host(name)  # ConfigError naming the known hosts
    if not inv.nixos.hosts:
        raise ConfigError(
            "the inventory has no [nixos.hosts] tables: no NixOS host to update",
            setting="nixos.hosts",
            hint="add a [nixos.hosts.NAME] table (flake, snapshot) for each NixOS host, next "
            "to its [hosts.NAME] table; docs/inventory.md describes the settings",
        )
    names = [n for n in inv.nixos.hosts if not only or n in set(only)]
    specs = [
        NixosHostSpec(n, inv.nixos.hosts[n].canary, tuple(inv.nixos.hosts[n].after)) for n in names
    ]
    waves = plan_waves(specs, parallel)
    canaries = any(s.canary for s in specs)
    plans: dict[str, HostPlan] = {}
    for number, wave in enumerate(waves, 1):
        for name in wave:
            host = inv.nixos_host(name)
            plans[name] = HostPlan(
                host=name,
                wave=number,
                canary=host.canary if canaries else number == 1,
                target=f"{host.flake}#{inv.nixos_attr(name)}",
                snapshot=host.snapshot.describe(),
                commands=_host_commands(inv, name),
                health=tuple(describe_check(c) for c in host.health),
            )
    return UpdatePlan(waves, plans, parallel)
