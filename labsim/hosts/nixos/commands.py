"""The commands of a NixOS host by name and how they run: one command, one to its end, or the
script of a transient service; and ``systemd-run``, which runs such scripts now or arms a timer."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from labsim.hosts.nixos.machine import NixosMachine
from labsim.hosts.nixos.model import Ctx, Deferred, Result, Timer, _hash32
from labsim.hosts.nixos.nix import _cmd_nix
from labsim.hosts.nixos.rebuild import (
    _cmd_nix_env,
    _cmd_nixos_rebuild,
    _cmd_switch_to_configuration,
)
from labsim.hosts.nixos.systemctl import _cmd_reboot, _cmd_systemctl

CommandFn = Callable[[NixosMachine, list[str], Ctx], "Result | Deferred"]


def run(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result | Deferred:
    """Run one NixOS command; ``argv[0]`` may be a path (``switch-to-configuration``)."""
    prog = argv[0].rsplit("/", 1)[-1]
    impl = COMMANDS.get(prog)
    if impl is None:
        return 127, "", f"sh: 1: {prog}: not found\n"
    return impl(host, argv, ctx)


def run_now(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    """Run a command to its end without sleeping (timers: the lab runs them itself)."""
    result = run(host, argv, ctx)
    while isinstance(result, Deferred):
        result = result.finish()
    return result


def run_script(host: NixosMachine, command: list[str], ctx: Ctx) -> Result:
    """Run what a transient service runs: one command, or ``sh -c`` with ``&&``/``||``/``;``."""
    internal = Ctx(ctx.wall, ctx.mono, ctx.time_scale, ctx.boot_seconds, None, internal=True)
    if (
        len(command) >= 3
        and command[0].rsplit("/", 1)[-1] in ("sh", "bash")
        and (command[1] == "-c")
    ):
        script = command[2]
    else:
        script = shlex.join(command)
    try:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as exc:
        return 2, "", f"/bin/sh: syntax error: {exc}\n"
    rc, out, err = 0, "", ""
    words: list[str] = []
    pending_op = ";"
    for token in [*tokens, ";"]:
        if token not in (";", "&&", "||"):
            words.append(token)
            continue
        if words:
            run_it = (
                pending_op == ";"
                or (pending_op == "&&" and rc == 0)
                or (pending_op == "||" and rc != 0)
            )
            if run_it:
                if words[0] in ("true", ":"):
                    rc = 0
                elif words[0] == "false":
                    rc = 1
                else:
                    rc, o, e = run_now(host, words, internal)
                    out += o
                    err += e
        words = []
        pending_op = token
    return rc, out, err


def _time_span(text: str) -> float | None:
    """Seconds in a systemd time span (``120s``, ``2min``, ``1h 30min``, ``90``), or None."""
    factors = {
        "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
        "secs": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0,
        "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
        "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0,
        "week": 604800.0, "weeks": 604800.0,
    }  # fmt: skip
    text = text.strip()
    if not re.fullmatch(r"(\d+(\.\d+)?\s*[a-z]*\s*)+", text):
        return None
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        if unit not in factors:
            return None
        total += float(number) * factors[unit]
    return total


def _cmd_systemd_run(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    unit: str | None = None
    description = ""
    on_active: float | None = None
    collect = False
    quiet = False
    command: list[str] = []
    value_options = (
        "--unit", "-u", "--description", "--on-active", "--timer-property", "--property", "-p",
        "--setenv", "-E", "--uid", "--gid", "--working-directory", "--service-type",
        "--slice", "--nice", "--on-boot", "--on-startup", "--on-unit-active",
        "--on-unit-inactive", "--on-calendar",
    )  # fmt: skip
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            command = args[i + 1 :]
            break
        if not a.startswith("-"):
            command = args[i:]
            break
        name, eq, inline = a.partition("=")
        if name in value_options:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    return 1, "", f"systemd-run: option '{name}' requires an argument\n"
                value = args[i + 1]
                i += 1
            if name in ("--unit", "-u"):
                unit = value
            elif name == "--description":
                description = value
            elif name == "--on-active":
                on_active = _time_span(value)
                if on_active is None:
                    return 1, "", f"Failed to parse timer value: {value}\n"
            elif name in ("--on-boot", "--on-startup", "--on-unit-active", "--on-calendar"):
                return 1, "", f"labsim: systemd-run {name} is not simulated\n"
        elif a in ("--collect", "-G"):
            collect = True
        elif a in ("--quiet", "-q"):
            quiet = True
        elif a in ("--no-block", "--remain-after-exit", "-r", "--no-ask-password", "--system"):
            pass
        elif a == "--user":
            return 1, "", "Failed to connect to bus: No medium found\n"
        else:
            return 1, "", f"systemd-run: unrecognized option '{a}'\n"
        i += 1
    if not command:
        return 1, "", "Command line to execute required.\n"
    if unit is None:
        unit = f"run-r{_hash32(ctx.wall, command)[:32]}"
    for suffix in (".service", ".timer"):
        unit = unit.removesuffix(suffix)
    if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+", unit):
        return 1, "", f"Failed to mangle unit name: Invalid argument\n{unit}\n"
    for taken in (f"{unit}.timer", f"{unit}.service"):
        if unit in host.timers or taken in host.all_units():
            kind = "timer" if on_active is not None else "service"
            return (
                1,
                "",
                (
                    f"Failed to start transient {kind} unit: Unit {taken} was already loaded "
                    "or has a fragment file.\n"
                ),
            )
    if on_active is None:
        rc, _out, _err = run_script(host, command, ctx)
        if rc != 0 and not collect:
            host.transient_units[f"{unit}.service"] = "failed"
        return 0, "", "" if quiet else f"Running as unit: {unit}.service\n"
    seconds = on_active * ctx.time_scale
    host.timers[unit] = Timer(
        unit,
        description,
        list(command),
        ctx.mono + seconds,
        ctx.wall + seconds,
        ctx.wall,
        collect,
    )
    if quiet:
        return 0, "", ""
    return 0, "", f"Running timer as unit: {unit}.timer\nWill run service as unit: {unit}.service\n"


COMMANDS: dict[str, CommandFn] = {
    "nix": _cmd_nix,
    "nixos-rebuild": _cmd_nixos_rebuild,
    "nix-env": _cmd_nix_env,
    "systemctl": _cmd_systemctl,
    "systemd-run": _cmd_systemd_run,
    "reboot": _cmd_reboot,
    "switch-to-configuration": _cmd_switch_to_configuration,
}
