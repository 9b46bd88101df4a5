"""What a system of the lab is: the parts it plugs into the core (``labsim.core.lab``).

A system simulates one thing (the Proxmox API, the ``zfs`` tool, NixOS hosts, ...). It brings
its API routes, the commands its SSH hosts run, the effects of its task kinds, its control
operations (the daemon dispatches them, ``python -m labsim`` and ``LabClient`` speak them)
and its part of the JSON state. Every hook has a do-nothing default: override what you need.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labsim.core.lab import LabCore
    from labsim.core.tasks import Task

Result = tuple[int, str, str]  # exit code, stdout, stderr
Effect = Callable[["Task", bool], None]  # applied when a task of its kind ends (ok or not)


@dataclass
class Deferred:
    """A command that goes on after ``delay`` real seconds; the lab sleeps outside its lock,
    then calls ``finish`` under it."""

    delay: float
    finish: Callable[[], Result | Deferred]
    hangup: Callable[[], Result] | None = None
    """What is left when the client goes away meanwhile (its SSH session closed: the
    command dies by SIGHUP); None: it runs on to ``finish`` regardless."""


# what a command returns: None when the host does not have it (``sh: 1: X: not found``)
CommandFn = Callable[[str, list[str], str | None, str | None], "Result | Deferred | None"]


@dataclass(frozen=True)
class Command:
    """A simulated program on SSH hosts, run as ``fn(host, argv, stdin, cwd)``.

    ``shim``: a script of that name goes into ``DIR/bin`` (off for what runs by path only)."""

    name: str
    fn: CommandFn
    shim: bool = True


@dataclass(frozen=True)
class ApiRoute:
    """An API handler for ``method`` on ``template`` (a path below ``/api2/json``).

    ``in_schema``: the template is in PVE's schema subset and requests are validated against
    it; a lab-only route (False) is matched by its own template and gets its parameters as
    sent."""

    method: str
    template: str
    handler: Callable[[Any], Any]  # takes a labsim.pve.api.server.Request
    in_schema: bool = True


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


# argument types a control operation can declare (names, so that specs travel as JSON)
ARG_TYPES: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "positive_int": positive_int,
    "positive_float": positive_float,
}


@dataclass(frozen=True)
class Arg:
    """One argument of a control operation: the request key ``name``; on the command line
    ``--name-with-dashes`` (or positional as ``metavar``). ``field``: sent inside the
    request's ``fields`` object. ``flag``: a switch (true when given, else absent)."""

    name: str
    help: str
    type: str = "str"
    required: bool = False
    flag: bool = False
    field: bool = False
    positional: bool = False
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.positional:
            parser.add_argument(
                self.name, type=ARG_TYPES[self.type], metavar=self.metavar, help=self.help
            )
            return
        opt = "--" + self.name.replace("_", "-")
        if self.flag:
            parser.add_argument(opt, dest=self.name, action="store_true", default=None,
                                help=self.help)  # fmt: skip
            return
        parser.add_argument(
            opt,
            dest=self.name,
            type=ARG_TYPES[self.type],
            required=self.required,
            metavar=self.metavar,
            choices=list(self.choices) if self.choices else None,
            help=self.help,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "choices"} | {
            "choices": list(self.choices) if self.choices else None
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Arg:
        choices = data.get("choices")
        return cls(**{**data, "choices": tuple(choices) if choices else None})


@dataclass(frozen=True)
class Cli:
    """How a control operation looks as ``python -m labsim COMMAND --dir DIR ...``.

    ``done``: what to print afterwards (``str.format`` with the request's arguments); None
    prints the result as JSON. ``run`` replaces the generic behaviour (built-in operations
    only: it does not travel to a CLI that learns the operation from a running lab)."""

    command: str
    help: str
    description: str
    done: str | None = None
    run: Callable[[Callable[..., Any], argparse.Namespace], int] | None = None


@dataclass(frozen=True)
class ControlOp:
    """A control operation: ``handler(request)`` answers ``{"op": name, ...args}``; its
    return value is the reply's ``result`` (``raw``: the handler's dict is the reply)."""

    name: str
    handler: Callable[[dict[str, Any]], Any] | None
    args: tuple[Arg, ...] = ()
    cli: Cli | None = None
    raw: bool = False

    def to_json(self) -> dict[str, Any]:
        """The operation as the ``controls`` request lists it (no handler, no ``cli.run``)."""
        cli = None
        if self.cli is not None:
            cli = {k: v for k, v in self.cli.__dict__.items() if k != "run"}
        return {"name": self.name, "args": [a.to_json() for a in self.args], "cli": cli}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ControlOp:
        cli = Cli(**data["cli"]) if data.get("cli") else None
        return cls(data["name"], None, tuple(Arg.from_json(a) for a in data["args"]), cli)

    def request(self, ns: argparse.Namespace) -> dict[str, Any]:
        """The request's arguments from parsed command-line arguments."""
        msg: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        for arg in self.args:
            value = getattr(ns, arg.name, None)
            if value is not None:
                (fields if arg.field else msg)[arg.name] = value
        if any(a.field for a in self.args):
            msg["fields"] = fields
        return msg


class System:
    """A part of the simulated lab. Subclasses set ``name`` and override the hooks they need.

    Life cycle: ``attach(lab)`` once; ``build(now)`` at start and at every reset, in the
    lab's order of systems (a system may read what the ones before it built)."""

    name = "system"
    lab: LabCore

    def attach(self, lab: LabCore) -> None:
        """Join ``lab`` (called once, before the first ``build``)."""
        self.lab = lab

    def build(self, now: float) -> None:
        """(Re)build this system's initial state; ``now`` is the wall clock."""

    def durations(self) -> dict[str, float]:
        """Task and event durations (seconds before the time scale) this system adds."""
        return {}

    def routes(self) -> list[ApiRoute]:
        return []

    def commands(self) -> list[Command]:
        return []

    def task_effects(self) -> dict[str, Effect]:
        """What happens when a task of each kind this system starts ends."""
        return {}

    def controls(self) -> list[ControlOp]:
        return []

    def to_json(self) -> dict[str, Any]:
        """This system's top-level keys of the state JSON."""
        return {}

    def inventory(self) -> list[str]:
        """Lines this system adds at the end of the lab's ``inventory.toml`` (its own TOML
        sections, for the jobs that use it), written once every host has its port."""
        return []

    def host_fields(self) -> tuple[str, ...]:
        """Keys this system adds to every SSH host of the state JSON (None where unset)."""
        return ()

    def host_json(self, host: str, mono: float) -> dict[str, Any]:
        """This system's keys of one SSH host in the state JSON (those it has for it)."""
        return {}

    # -- the clock -----------------------------------------------------------------------------

    def before_tasks(self, mono: float) -> None:
        """At each tick, before due tasks end (engines that move on their own)."""

    def after_tasks(self, mono: float) -> None:
        """At each tick, after due tasks ended (timers)."""

    def settle(self) -> None:
        """Make derived state agree again (called after anything changed, under the lock)."""

    def time_scale_changing(self, mono: float) -> None:
        """The time scale is about to change at ``mono``."""

    def time_scale_changed(self, mono: float) -> None:
        """The time scale changed at ``mono``."""

    def stop_task(self, task: Task, mono: float) -> bool:
        """A running task is stopped; True when this system ended it itself."""
        return False

    def ssh_refused(self, host: str) -> bool:
        """True when ``host`` drops SSH connections right now."""
        return False
