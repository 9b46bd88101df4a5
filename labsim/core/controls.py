"""The core's control operations: the state, faults, the time scale, the command log, exec.

The daemon adds its own (``ping``, ``info``, ``stop``, ``controls``, the API request log) and
every system its (``System.controls``); ``python -m labsim`` and ``LabClient`` speak them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labsim.core.faults import FAULT_ACTIONS, FAULT_TARGETS
from labsim.core.system import Arg, Cli, ControlOp

if TYPE_CHECKING:
    from labsim.core.lab import LabCore

FAULT_ARGS = (
    Arg("target", "what the fault hits", choices=FAULT_TARGETS),
    Arg(
        "action",
        "error: fail with --status/--message (api), --exit/--stderr (command) or "
        "--exitstatus (task); hang: never answer (or until --delay); slow: wait --delay "
        "seconds, then behave normally; drop: close the connection; drop-after (command): run "
        "the command, then close the connection before its result is sent",
        choices=FAULT_ACTIONS,
    ),
    Arg("method", "api: HTTP method to match (GET, POST, PUT, DELETE)"),
    Arg("path", "api: regex matched against the request path"),
    Arg("host", "command/connect: the SSH host name (pve1, nas, ...)"),
    Arg("command", "command: regex matched against the command line"),
    Arg("type", "task: the task type, e.g. qmsnapshot, vzdelsnapshot"),
    Arg("id", "task: the task id, usually the VMID"),
    Arg("node", "task: only tasks on this node"),
    Arg("status", "api error: the HTTP status (default 500)", type="int"),
    Arg("message", "api error: the reason phrase (default 'internal error')"),
    Arg("exit", "command error: the exit code (default 1)", type="int"),
    Arg("stderr", "command error: what the command prints on stderr"),
    Arg("exitstatus", "task error: the task's exit status text"),
    Arg("delay", "slow: seconds to wait; hang: give up after this long", type="float",
        metavar="SECONDS"),
    Arg("times", "affect only this many events (default: until cleared)", type="positive_int"),
)  # fmt: skip


def _fault_cli(call: Callable[..., Any], ns: argparse.Namespace) -> int:
    if ns.clear:
        call("clear_faults")
        print("faults cleared")
        return 0
    if not ns.target or not ns.action:
        print("labsim: fault needs --target and --action (or --clear)", file=sys.stderr)
        return 2
    spec = {a.name: getattr(ns, a.name) for a in FAULT_ARGS if getattr(ns, a.name) is not None}
    print(f"fault {call('fault', spec=spec)} added")
    return 0


def _argv(msg: dict[str, Any]) -> list[str]:
    argv = msg.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("exec needs argv, a list of strings")
    return argv


def _spec(msg: dict[str, Any]) -> dict[str, Any]:
    spec = msg.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("fault needs spec, an object")
    return spec


def core_controls(lab: LabCore) -> list[ControlOp]:
    def exec_(msg: dict[str, Any]) -> dict[str, Any]:
        cwd = msg.get("cwd")
        rc, out, err = lab.exec(
            str(msg.get("host", "")),
            _argv(msg),
            msg.get("stdin"),
            cwd if isinstance(cwd, str) else None,
            gone=msg.get("_gone") if callable(msg.get("_gone")) else None,
        )
        return {"ok": True, "rc": rc, "stdout": out, "stderr": err}

    def reset(msg: dict[str, Any]) -> None:
        lab.reset()
        for hook in lab.on_reset:
            hook()

    def commands(msg: dict[str, Any]) -> list[dict[str, Any]]:
        with lab.lock:
            return list(lab.commands)

    return [
        ControlOp("exec", exec_, raw=True),
        ControlOp(
            "state",
            lambda msg: lab.to_json(),
            cli=Cli(
                "state",
                "print the whole state as JSON",
                "Print the whole lab state as JSON: nodes, guests with snapshots and "
                "locks, storages, tasks, SSH hosts with their ZFS datasets, snapshots and holds "
                "and NixOS state (generations, units, timers, network, flake revisions), and "
                "the active faults.",
            ),
        ),
        ControlOp(
            "fault",
            lambda msg: lab.add_fault(_spec(msg)),
            (Arg("clear", "remove every fault and exit", flag=True), *FAULT_ARGS),
            Cli(
                "fault",
                "inject a fault, or clear them all",
                "Inject a fault. Targets: api (match --method and --path, a regex on the "
                "path without /api2/json), command (--host and --command, a regex on the "
                "command line), connect (--host: SSH connections), task (--type and --id of a "
                "Proxmox task, e.g. qmsnapshot 101). Actions: error, hang, slow (--delay), "
                "drop, drop-after.",
                run=_fault_cli,
            ),
        ),
        ControlOp("clear_faults", lambda msg: lab.clear_faults()),
        ControlOp(
            "reset",
            reset,
            cli=Cli(
                "reset",
                "back to the initial state",
                "Put the lab back to its initial state (same ports and keys): guests, "
                "snapshots, ZFS datasets and NixOS hosts (their folders rewritten) rebuilt, "
                "tasks, faults and the API request log cleared.",
                done="lab reset to its initial state",
            ),
        ),
        ControlOp(
            "time_scale",
            lambda msg: lab.set_time_scale(float(msg["value"])),
            (
                Arg(
                    "value",
                    "the new time scale",
                    type="positive_float",
                    positional=True,
                    metavar="F",
                ),
            ),
            Cli(
                "time-scale",
                "change the time scale of a running lab",
                "Multiply every simulated duration from now on by F.",
                done="time scale is now {value:g}",
            ),
        ),
        ControlOp("commands", commands),
    ]
