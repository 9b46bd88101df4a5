"""``systemctl`` (unit and timer states, list-units, list-timers, start/stop/status) and
``reboot``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from labsim.hosts.nixos.machine import NixosMachine
from labsim.hosts.nixos.model import STATIC_TIMERS, SYSTEMD_VERSION, Ctx, Result, unit_name

_SYSTEMCTL_IGNORED = (
    "--no-pager", "--plain", "--no-legend", "--no-block", "--wait", "--all", "-a", "--full",
    "-l", "--system", "--now", "--no-ask-password",
)  # fmt: skip


def _cmd_systemctl(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    words: list[str] = []
    output = "short"
    failed_only = False
    quiet = False
    types: set[str] = set()
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "--output"):
            output = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        elif a.startswith("--output="):
            output = a.split("=", 1)[1]
        elif a == "--failed":
            failed_only = True
        elif a.startswith("--state="):
            failed_only = failed_only or "failed" in a.split("=", 1)[1].split(",")
        elif a in ("-t", "--type"):
            types.add(args[i + 1] if i + 1 < len(args) else "")
            i += 1
        elif a.startswith("--type="):
            types.update(a.split("=", 1)[1].split(","))
        elif a in ("-q", "--quiet"):
            quiet = True
        elif a == "--user":
            return 1, "", "Failed to connect to user scope bus via local transport: No such file\n"
        elif a in _SYSTEMCTL_IGNORED:
            pass
        elif a.startswith("-"):
            return 1, "", f"systemctl: unrecognized option '{a}'\n"
        else:
            words.append(a)
        i += 1
    if output not in ("short", "json", "json-pretty", "cat", "verbose"):
        return 1, "", f"Unknown output '{output}'.\n"
    verb = words[0] if words else "list-units"
    units = [unit_name(u) for u in words[1:]]
    as_json = output.startswith("json")
    if verb == "is-system-running":
        state = host.system_state()
        return (0 if state == "running" else 1), "" if quiet else state + "\n", ""
    if verb in ("is-active", "is-failed"):
        if not units:
            return 1, "", "Too few arguments.\n"
        states = [_unit_state(host, u) for u in units]
        out = "" if quiet else "".join(s + "\n" for s in states)
        wanted = "active" if verb == "is-active" else "failed"
        return (0 if wanted in states else (3 if verb == "is-active" else 1)), out, ""
    if verb == "list-units":
        return _list_units(host, failed_only, types, as_json, output)
    if verb == "list-timers":
        return _list_timers(host, ctx, as_json, output)
    if verb in ("stop", "start", "restart", "reset-failed", "status"):
        return _unit_verb(host, verb, units, ctx)
    if verb in ("reboot", "kexec"):
        return _reboot(host, ctx)
    if verb == "daemon-reload":
        return 0, "", ""
    if verb == "--version":
        return 0, f"systemd {SYSTEMD_VERSION}\n", ""
    return 1, "", f"Unknown command verb '{verb}'.\n"


def _json(rows: list[dict[str, Any]], output: str) -> str:
    """systemctl's JSON: compact for ``json``, indented for ``json-pretty``."""
    if output == "json-pretty":
        return json.dumps(rows, indent=2)
    return json.dumps(rows, separators=(",", ":"))


def _unit_state(host: NixosMachine, unit: str) -> str:
    if unit.endswith(".timer"):
        base = unit.removesuffix(".timer")
        if base in host.timers or unit in STATIC_TIMERS:
            return "active"
        return "inactive"
    return host.all_units().get(unit, "inactive")


def _list_units(
    host: NixosMachine, failed_only: bool, types: set[str], as_json: bool, output: str
) -> Result:
    rows: list[dict[str, str]] = []
    for unit, state in sorted(host.all_units().items()):
        sub = {"active": "running", "failed": "failed", "inactive": "dead"}[state]
        rows.append(
            {
                "unit": unit,
                "load": "loaded",
                "active": state,
                "sub": sub,
                "description": host.description(unit),
            }
        )
    for timer in host.timers.values():
        rows.append(
            {
                "unit": f"{timer.unit}.timer",
                "load": "loaded",
                "active": "active",
                "sub": "waiting",
                "description": f"/bin/sh -c {timer.unit}"
                if not timer.description
                else timer.description,
            }
        )
    rows.sort(key=lambda r: r["unit"])
    if failed_only:
        rows = [r for r in rows if r["active"] == "failed"]
    else:
        rows = [r for r in rows if r["active"] != "inactive"]
    if types:
        rows = [r for r in rows if r["unit"].rsplit(".", 1)[-1] in types]
    if as_json:
        return 0, _json(rows, output) + "\n", ""
    if not rows:
        return 0, "  UNIT LOAD ACTIVE SUB DESCRIPTION\n\n0 loaded units listed.\n", ""
    width = max(len(r["unit"]) for r in rows)
    lines = [f"  {'UNIT':<{width}} LOAD   ACTIVE SUB     DESCRIPTION"]
    for r in rows:
        mark = "●" if r["active"] == "failed" else " "
        lines.append(
            f"{mark} {r['unit']:<{width}} {r['load']:<6} {r['active']:<6} {r['sub']:<7} "
            f"{r['description']}"
        )
    lines += [
        "",
        "Legend: LOAD   → Reflects whether the unit definition was properly loaded.",
        "        ACTIVE → The high-level unit activation state, i.e. generalization of SUB.",
        "        SUB    → The low-level unit activation state, values depend on unit type.",
        "",
        f"{len(rows)} loaded units listed.",
    ]
    return 0, "\n".join(lines) + "\n", ""


def _list_timers(host: NixosMachine, ctx: Ctx, as_json: bool, output: str) -> Result:
    rows: list[dict[str, Any]] = []
    for timer in host.timers.values():
        left = max(0.0, timer.due - ctx.mono)
        rows.append(
            {
                "next": int(timer.due_wall * 1_000_000),
                "left": int(left * 1_000_000),
                "last": None,
                "passed": None,
                "unit": f"{timer.unit}.timer",
                "activates": f"{timer.unit}.service",
            }
        )
    day = 86400.0
    for n, (unit, service) in enumerate(sorted(STATIC_TIMERS.items())):
        nxt = (ctx.wall // day) * day + 3600 * (n + 1)
        if nxt <= ctx.wall:
            nxt += day
        rows.append(
            {
                "next": int(nxt * 1_000_000),
                "left": int((nxt - ctx.wall) * 1_000_000),
                "last": int((nxt - day) * 1_000_000),
                "passed": int((ctx.wall - nxt + day) * 1_000_000),
                "unit": unit,
                "activates": service,
            }
        )
    rows.sort(key=lambda r: r["next"])
    if as_json:
        return 0, _json(rows, output) + "\n", ""

    def stamp(usec: int | None) -> str:
        if usec is None:
            return "-"
        when = dt.datetime.fromtimestamp(usec / 1e6, dt.UTC)
        return when.strftime("%a %Y-%m-%d %H:%M:%S UTC")

    lines = ["NEXT                        LEFT LAST                        PASSED UNIT ACTIVATES"]
    for r in rows:
        lines.append(
            f"{stamp(r['next'])} {r['left'] // 1_000_000}s {stamp(r['last'])} "
            f"{'-' if r['passed'] is None else str(r['passed'] // 1_000_000) + 's'} "
            f"{r['unit']} {r['activates']}"
        )
    lines += ["", f"{len(rows)} timers listed."]
    return 0, "\n".join(lines) + "\n", ""


def _unit_verb(host: NixosMachine, verb: str, units: list[str], ctx: Ctx) -> Result:
    if verb == "reset-failed":
        for unit in units or list(host.all_units()):
            if host.transient_units.get(unit) == "failed":
                del host.transient_units[unit]
            elif host.units.get(unit) == "failed":
                host.units[unit] = "inactive"
        return 0, "", ""
    if not units:
        return 1, "", "Too few arguments.\n"
    rc = 0
    out = ""
    err = ""
    for unit in units:
        base = unit.rsplit(".", 1)[0]
        known = unit in host.all_units() or (unit.endswith(".timer") and base in host.timers)
        if verb == "status":
            if not known:
                err += f"Unit {unit} could not be found.\n"
                rc = max(rc, 4)
                continue
            state = _unit_state(host, unit)
            out += f"● {unit} - {host.description(unit)}\n     Active: {state}\n"
            rc = max(rc, 0 if state == "active" else 3)
            continue
        if verb == "stop":
            if unit.endswith(".timer") and base in host.timers:
                del host.timers[base]
            elif unit in host.units:
                if host.units[unit] == "active":
                    host.units[unit] = "inactive"
            elif unit in host.transient_units:
                pass  # a failed transient unit stays failed until reset-failed
            else:
                err += f"Failed to stop {unit}: Unit {unit} not loaded.\n"
                rc = 5
            continue
        # start / restart
        if unit in host.units:
            broken = host.running.behaviour.failed_units if host.running else ()
            failing = {unit_name(u) for u in broken}
            if unit in failing:
                err += (
                    f"Job for {unit} failed because the control process exited with error code.\n"
                    f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.\n'
                )
                host.units[unit] = "failed"
                rc = 1
            else:
                host.units[unit] = "active"
        else:
            err += f"Failed to {verb} {unit}: Unit {unit} not found.\n"
            rc = 5
    return rc, out, err


def _reboot(host: NixosMachine, ctx: Ctx) -> Result:
    host.boot(ctx)
    # the command itself still answers; the connections go a moment later
    host.drop_now = False
    host.drop_at = ctx.mono + 0.2
    return 0, "", ""


def _cmd_reboot(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    for a in argv[1:]:
        if a not in ("-f", "--force", "--no-wall", "-h", "now"):
            return 1, "", f"reboot: unrecognized option '{a}'\n"
    return _reboot(host, ctx)
