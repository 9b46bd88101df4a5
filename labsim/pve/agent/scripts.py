"""The lab's interpretation of moxflow's PowerShell scripts.

``decode`` turns an exec's argv back into a script: only ``powershell.exe ...
-EncodedCommand B64`` whose decoded text is byte for byte one of the repo's
``moxflow/windows_scripts/*.ps1`` is accepted; then ``run`` acts on the decoded JSON data
the way the script would on a real Windows guest, and answers what it would print.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from labsim.pve.agent.model import WindowsState

SCRIPTS_DIR = Path(__file__).resolve().parents[3] / "moxflow" / "windows_scripts"
Outcome = tuple[int, str, str]  # exit code, stdout, stderr


@cache
def known_scripts() -> dict[str, str]:
    """The repo's scripts: text -> file name."""
    return {p.read_text(encoding="utf-8"): p.name for p in sorted(SCRIPTS_DIR.glob("*.ps1"))}


def decode(command: list[str]) -> tuple[str | None, str]:
    """(file name, '') for an accepted script; (None, why) for anything else."""
    if not command or not command[0].lower().endswith("powershell.exe"):
        return None, f"labsim runs only moxflow's PowerShell scripts, not {command[:1]}"
    args = [a.lower() for a in command]
    if "-encodedcommand" not in args:
        return None, "labsim: no -EncodedCommand"
    i = args.index("-encodedcommand")
    if i + 2 != len(command):
        return None, "labsim: -EncodedCommand must be the last option, with one argument"
    try:
        text = base64.b64decode(command[i + 1], validate=True).decode("utf-16-le")
    except (binascii.Error, UnicodeDecodeError):
        return None, "labsim: -EncodedCommand is not base64 of UTF-16LE text"
    name = known_scripts().get(text)
    if name is None:
        return None, "labsim: the decoded script is not byte for byte one of moxflow's .ps1 files"
    return name, ""


def _out(value: dict[str, Any], code: int = 0) -> Outcome:
    return code, json.dumps(value, separators=(",", ":")) + "\r\n", ""


def _list_updates(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    updates = [
        {
            "id": u.id,
            "kb": [u.kb],
            "title": u.title,
            "size": u.size,
            "categories": [u.category],
            "reboot": u.reboot,
            "downloaded": False,
            "released": datetime.fromtimestamp(u.released, UTC).isoformat(),
        }
        for u in win.visible()
    ]
    return _out({"reboot_required": win.reboot_pending, "updates": updates})


def _install(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    if win.reboot_pending:
        return _out({"error": "reboot-pending", "updates": []}, 3)
    ids = [str(i) for i in data.get("ids") or []]
    batch = [u for u in win.visible() if u.id in ids]
    if not batch:
        return _out({"error": "nothing-to-install", "updates": []}, 4)
    done, reboot = [], False
    for u in batch:
        hresult = fails.get(u.kb)
        if hresult is None:
            win.pending.remove(u)
            win.installed.append(u.kb)
            reboot = reboot or u.reboot != 0
        done.append(
            {
                "id": u.id,
                "kb": [u.kb],
                "title": u.title,
                "result_code": 2 if hresult is None else 4,
                "hresult": f"0x{(hresult or 0) & 0xFFFFFFFF:08X}",
                "reboot_required": hresult is None and u.reboot != 0,
            }
        )
    failed = [d for d in done if d["result_code"] == 4]
    code = 2 if not failed else 4 if len(failed) == len(done) else 3
    win.reboot_pending = win.reboot_pending or reboot
    first_fail = failed[0]["hresult"] if failed else "0x00000000"
    win.last_result = {
        "time": time.time(),
        "result_code": code,
        "installed": [u.kb for u in batch if u.kb not in fails],
        "failed": {u.kb: f"0x{fails[u.kb] & 0xFFFFFFFF:08X}" for u in batch if u.kb in fails},
    }
    return _out(
        {"result_code": code, "hresult": first_fail, "reboot_required": reboot, "updates": done}
    )


def _reboot_pending(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    boot = datetime.fromtimestamp(win.last_boot, UTC).isoformat()
    reasons = ["component-based-servicing", "windows-update"] if win.reboot_pending else []
    return _out({"reboot_pending": win.reboot_pending, "reasons": reasons, "last_boot": boot})


def _checks(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    services = [
        {"name": str(n), "status": win.services.get(str(n), "Missing")}
        for n in data.get("services") or []
    ]
    ports = [{"port": int(p), "listening": int(p) in win.ports} for p in data.get("ports") or []]
    return _out({"services": services, "ports": ports})


def _items(*items: tuple[str, str, str]) -> Outcome:
    return _out({"items": [{"item": i, "status": s, "detail": d} for i, s, d in items]})


def _steamcmd(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    status = "present" if win.steamcmd else "installed"
    win.steamcmd = True
    return _items(("steamcmd", status, ""))


def _steam_app(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    app = int(data["app_id"])
    item = f"steam:{app}"
    if not win.steamcmd:
        return 1, "", f"The term '{data.get('steamcmd')}' is not recognized\r\n"
    if f"app:{app}" in fails:
        return _items(
            (
                item,
                "failed",
                f"steamcmd exit 8: ERROR! Failed to install app '{app}' (No subscription)",
            )
        )
    folder = str(data.get("install_dir", ""))
    if win.apps.get(app) == folder:
        return _items((item, "present", ""))
    win.apps[app] = folder  # a manifest in another folder is another install
    return _items((item, "installed", ""))


def _rustup(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    items: list[tuple[str, str, str]] = []
    default = str(data["default_toolchain"])
    fresh = not win.rustup  # rustup-init installs the default toolchain and makes it the default
    items.append(("rustup", "installed" if fresh else "present", ""))
    if fresh:
        win.rustup, win.default_toolchain = True, default
        win.toolchains.setdefault(default, ["cargo", "rust-std", "rustc"])
    for t in dict.fromkeys([default, *[str(t) for t in data.get("toolchains") or []]]):
        if t in win.toolchains:
            with_rustup = fresh and t == default
            status = "installed" if with_rustup else "present"
            items.append((f"toolchain:{t}", status, "with rustup" if with_rustup else ""))
        elif f"toolchain:{t}" in fails:
            items.append((f"toolchain:{t}", "failed", f"error: invalid toolchain name: '{t}'"))
        else:
            win.toolchains[t] = ["cargo", "rust-std", "rustc"]
            items.append((f"toolchain:{t}", "installed", ""))
    if win.default_toolchain == default:
        items.append(
            (f"default:{default}", "installed", "with rustup")
            if fresh
            else (f"default:{default}", "present", "")
        )
    else:
        before, win.default_toolchain = win.default_toolchain, default
        items.append((f"default:{default}", "updated", _triple(before or "")))
    have = win.toolchains.setdefault(default, [])
    for c in [str(c) for c in data.get("components") or []]:
        if c in have:
            items.append((f"component:{c}", "present", ""))
        else:
            have.append(c)
            items.append((f"component:{c}", "installed", ""))
    return _items(*items)


HOST = "x86_64-pc-windows-msvc"


def _triple(toolchain: str) -> str:
    """How rustup lists a toolchain: with its host triple."""
    return f"{toolchain}-{HOST}" if toolchain else ""


def _provision_facts(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    apps = []
    for a in data.get("apps") or []:
        app = int(a["app_id"])
        installed = win.apps.get(app) == str(a["install_dir"])
        apps.append(
            {"app_id": app, "installed": installed, "state_flags": 4 if installed else None}
        )
    rustup = win.rustup and bool(data.get("cargo_home"))
    toolchains, default, components = [], "", []
    if rustup:
        default = (
            f"{_triple(win.default_toolchain or '')} (default)" if win.default_toolchain else ""
        )
        toolchains = [
            _triple(t) + (" (default)" if t == win.default_toolchain else "")
            for t in sorted(win.toolchains)
        ]
        wanted = str(data.get("toolchain") or "")
        components = [  # rust-src is the same for every host: rustup lists it without one
            c if c == "rust-src" else _triple(c) for c in win.toolchains.get(wanted, [])
        ]
    tasks = [
        {"name": str(n), "exists": str(n) in win.tasks, "sha256": win.tasks.get(str(n), "")}
        for n in data.get("tasks") or []
    ]
    return _out(
        {
            "steamcmd": win.steamcmd,
            "apps": apps,
            "rustup": rustup,
            "toolchains": toolchains,
            "default": default,
            "components": components,
            "tasks": tasks,
        }
    )


def _task(win: WindowsState, data: dict[str, Any], fails: dict[str, int]) -> Outcome:
    name, xml = str(data["name"]), str(data["xml"])
    sha = hashlib.sha256(xml.encode()).hexdigest().upper()
    if not xml.lstrip("\ufeff").lstrip().startswith("<"):
        return _items((f"task:{name}", "failed", "The task XML is malformed. (1,1)::ERROR"))
    before = win.tasks.get(name)
    if before == sha:
        return _items((f"task:{name}", "present", ""))
    win.tasks[name] = sha
    return _items((f"task:{name}", "installed" if before is None else "updated", ""))


RUNNERS: dict[str, Callable[[WindowsState, dict[str, Any], dict[str, int]], Outcome]] = {
    "list-updates.ps1": _list_updates,
    "install-updates.ps1": _install,
    "reboot-pending.ps1": _reboot_pending,
    "checks.ps1": _checks,
    "steamcmd.ps1": _steamcmd,
    "steam-app.ps1": _steam_app,
    "rustup.ps1": _rustup,
    "scheduled-task.ps1": _task,
    "provision-facts.ps1": _provision_facts,
}


def run(name: str, data: dict[str, Any], win: WindowsState, fails: dict[str, int]) -> Outcome:
    """What script ``name`` does to ``win`` with ``data`` (``fails``: injected failures:
    a KB's HResult, ``app:ID``, ``toolchain:NAME``)."""
    try:
        return RUNNERS[name](win, data, fails)
    except (KeyError, TypeError, ValueError) as exc:
        return 1, "", f"labsim: {name}: bad input data: {exc!r}\r\n"
