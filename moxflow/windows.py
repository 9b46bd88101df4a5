"""Windows guests through the QEMU guest agent: pure parts (issue 14).

moxflow runs only its own reviewed PowerShell files (``moxflow/windows_scripts/*.ps1``) in a
Windows VM, sent unchanged as ``-EncodedCommand`` (UTF-16LE, base64); every value travels as
JSON on the process's stdin (the exec call's ``input-data``), never inside the code. Here:
the exec request for a script, the parse of ``exec-status`` and of each script's JSON output
into typed results (and of PowerShell's CLIXML stderr into text), which of the inventory's
VMs a run covers, the plan of a VM and of each update round, the snapshot kind a VM can
have, and the verdict after an update. No I/O beyond reading the packaged scripts.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from moxflow.errors import ConfigError, ParseError
from moxflow.guests import Guest
from moxflow.naming import (
    FINISHED_STATES,
    description_run,
    description_state,
    owned_by_moxflow,
    parse_snapshot_name,
)
from moxflow.report import format_age, format_size

if TYPE_CHECKING:
    from moxflow.proxmox import GuestSnapshot

__all__ = [
    "EXIT_CODES",
    "INPUT_DATA_MAX",
    "LOG_TRIM",
    "POWERSHELL",
    "SCRIPTS",
    "SCRIPTS_DIR",
    "CheckResults",
    "ExecRequest",
    "ExecStatus",
    "InstallOutcome",
    "InstallRun",
    "ItemOutcome",
    "OsInfo",
    "PendingUpdate",
    "RebootState",
    "RoundPlan",
    "SnapshotChoice",
    "UpdateScan",
    "Verdict",
    "VmPlan",
    "agent_enabled",
    "choose_snapshot",
    "describe_update",
    "encode_command",
    "exec_request",
    "has_passthrough",
    "left_as_is",
    "newer_snapshots",
    "not_adopted",
    "parse_checks",
    "parse_exec_status",
    "parse_install",
    "parse_items",
    "parse_osinfo",
    "parse_reboot_pending",
    "parse_update_scan",
    "plan_round",
    "plan_vm",
    "readable_stderr",
    "require_vms",
    "script_output",
    "script_text",
    "select_vms",
    "snapshot_taken",
    "trim",
    "unfinished_candidate",
    "verdict",
]

SCRIPTS_DIR = Path(__file__).with_name("windows_scripts")
SCRIPTS: tuple[str, ...] = (
    "list-updates.ps1",
    "install-updates.ps1",
    "reboot-pending.ps1",
    "checks.ps1",
    "steamcmd.ps1",
    "steam-app.ps1",
    "rustup.ps1",
    "scheduled-task.ps1",
    "provision-facts.ps1",
)
"""Every script moxflow may run in a Windows guest, by file name."""

POWERSHELL = ("powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")
INPUT_DATA_MAX = 65536
"""PVE's limit of ``input-data`` (characters)."""
COMMAND_LINE_MAX = 32767
"""CreateProcess's limit of a whole command line."""
LOG_TRIM = 16384
"""How much of a stream a run's log keeps (characters, the end of it)."""

EXIT_CODES: Mapping[str, tuple[int, ...]] = {"install-updates.ps1": (0, 3, 4, 5)}
"""The exit codes a script may end with and still have answered (its JSON says why: 3 a
reboot comes first, 4 nothing to install, 5 the installer is busy); every other script: 0."""

# WU OperationResultCode
RESULT_CODES = {
    0: "not started",
    1: "in progress",
    2: "succeeded",
    3: "succeeded with errors",
    4: "failed",
    5: "aborted",
}
# IUpdate.InstallationBehavior.RebootBehavior
REBOOT_BEHAVIOUR = {0: "never", 1: "always", 2: "can-request"}


@cache
def script_text(name: str) -> str:
    """The text of one of moxflow's scripts, exactly as the repo holds it."""
    if name not in SCRIPTS:
        raise ValueError(f"{name!r} is not one of moxflow's Windows scripts")
    return (SCRIPTS_DIR / name).read_text(encoding="utf-8")


def encode_command(text: str) -> str:
    """PowerShell's ``-EncodedCommand`` form of ``text``: base64 of its UTF-16LE bytes."""
    return base64.b64encode(text.encode("utf-16-le")).decode("ascii")


@dataclass(frozen=True)
class ExecRequest:
    """What ``POST .../agent/exec`` gets: ``command`` (one argument per element) and
    ``input_data`` (the JSON the script reads from stdin)."""

    script: str
    command: tuple[str, ...]
    input_data: str

    def params(self) -> dict[str, Any]:
        """The API call's parameters."""
        return {"command": list(self.command), "input-data": self.input_data}


def exec_request(script: str, data: Mapping[str, Any] | None = None) -> ExecRequest:
    """The exec request running ``script`` with ``data`` on its stdin as JSON.

    The script goes unchanged as ``-EncodedCommand``; ``data`` never touches the code."""
    command = (*POWERSHELL, "-EncodedCommand", encode_command(script_text(script)))
    length = sum(len(a) + 3 for a in command)
    if length > COMMAND_LINE_MAX:
        raise ValueError(f"{script}: its command line would be {length} characters")
    payload = json.dumps(dict(data or {}), ensure_ascii=False, separators=(",", ":"))
    if len(payload) > INPUT_DATA_MAX:
        raise ValueError(f"{script}: its input data is {len(payload)} characters, over 64 KiB")
    return ExecRequest(script, command, payload)


def trim(text: str, limit: int = LOG_TRIM) -> str:
    """``text`` for a log: its last ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut]\n" + text[-limit:]


_CLIXML_ERROR = re.compile(r'<S S="Error">(.*?)</S>', re.DOTALL)
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def readable_stderr(text: str) -> str:
    """A script's stderr for a person: PowerShell with redirected output writes its errors
    as ``#< CLIXML`` (``<S S="Error">`` lines, line breaks as ``_x000D__x000A_``); their
    text, else ``text`` as it is."""
    if not text.lstrip().startswith("#< CLIXML"):
        return text
    parts = _CLIXML_ERROR.findall(text)
    if not parts:
        return text
    joined = "".join(html.unescape(p) for p in parts)
    return _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), joined).strip()


# --- exec-status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecStatus:
    """One ``GET .../agent/exec-status`` answer (PVE has already decoded the streams)."""

    exited: bool
    exitcode: int | None = None
    signal: int | None = None  # on Windows: an NTSTATUS crash code, with no exitcode
    out: str = ""
    err: str = ""
    out_truncated: bool = False
    err_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exited and self.exitcode == 0 and self.signal is None

    def describe(self) -> str:
        """How it ended, for a message: ``exit code 3`` or ``signal 0xC0000005``."""
        if not self.exited:
            return "still running"
        if self.signal is not None:
            return f"signal 0x{self.signal & 0xFFFFFFFF:08X}"
        return f"exit code {self.exitcode}"


def _flag(value: Any) -> bool:
    return value in (1, True, "1", "true")


def parse_exec_status(raw: Any) -> ExecStatus:
    """The typed status; read the final one once (the agent forgets an exited process)."""
    if not isinstance(raw, Mapping) or "exited" not in raw:
        raise ParseError(
            "exec-status answered without 'exited'",
            source="agent/exec-status",
            text=repr(raw)[:200],
        )

    def num(key: str) -> int | None:
        v = raw.get(key)
        return None if v is None else int(v)

    return ExecStatus(
        exited=_flag(raw["exited"]),
        exitcode=num("exitcode"),
        signal=num("signal"),
        out=str(raw.get("out-data") or ""),
        err=str(raw.get("err-data") or ""),
        out_truncated=_flag(raw.get("out-truncated")),
        err_truncated=_flag(raw.get("err-truncated")),
    )


def script_output(status: ExecStatus, script: str) -> dict[str, Any]:
    """The JSON object a script wrote last on stdout (earlier lines are noise)."""
    if not status.exited:
        raise ParseError(f"{script} has not exited yet", source=script)
    if status.out_truncated:
        raise ParseError(
            f"{script}: its output was truncated by the agent",
            source=script,
            text=trim(status.out, 400),
        )
    for line in reversed(status.out.splitlines()):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            break
        if isinstance(value, dict):
            return value
        break
    raise ParseError(
        f"{script} ({status.describe()}) wrote no JSON object",
        source=script,
        text=trim(status.out + status.err, 400),
    )


# --- get-osinfo -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OsInfo:
    """``GET .../agent/get-osinfo``, decided on ``kernel-release`` (build) and ``variant``."""

    id: str
    pretty_name: str
    build: int | None
    variant: str

    @property
    def is_windows(self) -> bool:
        return self.id == "mswindows"

    @property
    def version(self) -> str:
        """``Windows 11``, ``Windows 10``, ``Windows Server 2022``, ... from the build (the
        agent's own ``version`` lags behind new releases)."""
        b = self.build or 0
        if self.variant == "server":
            for floor, name in ((26100, "2025"), (20344, "2022"), (17763, "2019"), (14393, "2016")):
                if b >= floor:
                    return f"Windows Server {name}"
            return "Windows Server"
        return "Windows 11" if b >= 22000 else "Windows 10" if b >= 10240 else "Windows"


def parse_osinfo(raw: Any) -> OsInfo:
    result = raw.get("result", raw) if isinstance(raw, Mapping) else None
    if not isinstance(result, Mapping):
        raise ParseError("get-osinfo answered no object", source="agent/get-osinfo")
    release = str(result.get("kernel-release", ""))
    return OsInfo(
        id=str(result.get("id", "")),
        pretty_name=str(result.get("pretty-name", "")),
        build=int(release) if release.isdigit() else None,
        variant=str(result.get("variant-id") or result.get("variant") or ""),
    )


# --- the scripts' outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class PendingUpdate:
    """An update Windows Update offers (``list-updates.ps1``)."""

    id: str
    kbs: tuple[str, ...]
    title: str
    size: int
    categories: tuple[str, ...]
    reboot: str  # never | always | can-request
    released: datetime | None = None  # LastDeploymentChangeTime, UTC

    @property
    def kb(self) -> str:
        """The first KB, or the update ID when it has none (definition updates may not)."""
        return self.kbs[0] if self.kbs else self.id


@dataclass(frozen=True)
class UpdateScan:
    reboot_required: bool
    updates: tuple[PendingUpdate, ...]


def _strs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _utc(text: Any) -> datetime | None:
    """An ISO 8601 time from a script (``ToString('o')``), as aware UTC; None when absent
    or Windows' zero date (year 1)."""
    if not text:
        return None
    # .NET writes seven fractional digits; Python 3.11 reads at most six
    value = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", str(text)).replace("Z", "+00:00"))
    if value.year < 1970:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_update_scan(out: Mapping[str, Any]) -> UpdateScan:
    """``list-updates.ps1``'s output."""
    try:
        updates = tuple(
            PendingUpdate(
                id=str(u["id"]),
                kbs=_strs(u.get("kb")),
                title=str(u.get("title", "")),
                size=int(u.get("size") or 0),
                categories=_strs(u.get("categories")),
                reboot=REBOOT_BEHAVIOUR.get(int(u.get("reboot") or 0), "can-request"),
                released=_utc(u.get("released")),
            )
            for u in out.get("updates") or ()
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"list-updates.ps1: {exc}", source="list-updates.ps1") from None
    return UpdateScan(bool(out.get("reboot_required")), updates)


@dataclass(frozen=True)
class InstallOutcome:
    """One update's result from ``install-updates.ps1``."""

    id: str
    kb: str
    title: str
    result_code: int
    hresult: str
    reboot_required: bool

    @property
    def result(self) -> str:
        return RESULT_CODES.get(self.result_code, f"code {self.result_code}")

    @property
    def failed(self) -> bool:
        return self.result_code not in (2, 3)


@dataclass(frozen=True)
class InstallRun:
    """The whole install: the overall code, per update outcomes, or why nothing ran
    (``error``: reboot-pending, nothing-to-install, installer-busy)."""

    result_code: int | None
    hresult: str | None
    reboot_required: bool
    updates: tuple[InstallOutcome, ...]
    error: str | None = None

    @property
    def failed(self) -> tuple[InstallOutcome, ...]:
        return tuple(u for u in self.updates if u.failed)


def parse_install(out: Mapping[str, Any]) -> InstallRun:
    """``install-updates.ps1``'s output (also the short answer of exit 3, 4 or 5)."""
    try:
        updates = tuple(
            InstallOutcome(
                id=str(u["id"]),
                kb=(_strs(u.get("kb")) or (str(u["id"]),))[0],
                title=str(u.get("title", "")),
                result_code=int(u["result_code"]),
                hresult=str(u.get("hresult", "")),
                reboot_required=bool(u.get("reboot_required")),
            )
            for u in out.get("updates") or ()
        )
        code = out.get("result_code")
        return InstallRun(
            result_code=None if code is None else int(code),
            hresult=None if out.get("hresult") is None else str(out["hresult"]),
            reboot_required=bool(out.get("reboot_required")),
            updates=updates,
            error=None if out.get("error") is None else str(out["error"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"install-updates.ps1: {exc}", source="install-updates.ps1") from None


@dataclass(frozen=True)
class RebootState:
    pending: bool
    reasons: tuple[str, ...]
    last_boot: str


def parse_reboot_pending(out: Mapping[str, Any]) -> RebootState:
    """``reboot-pending.ps1``'s output."""
    return RebootState(
        bool(out.get("reboot_pending")), _strs(out.get("reasons")), str(out.get("last_boot", ""))
    )


ItemStatus = Literal["installed", "present", "updated", "failed"]
ITEM_STATUSES: tuple[str, ...] = ("installed", "present", "updated", "failed")


@dataclass(frozen=True)
class ItemOutcome:
    """One provisioning item: ``steam:730``, ``toolchain:stable``, ``task:Backup``, ..."""

    item: str
    status: ItemStatus
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.status in ("installed", "updated")


def parse_items(out: Mapping[str, Any], script: str) -> tuple[ItemOutcome, ...]:
    """The ``items`` a provisioning script reports."""
    found: list[ItemOutcome] = []
    for raw in out.get("items") or ():
        status = str(raw.get("status", ""))
        if status not in ITEM_STATUSES or not raw.get("item"):
            raise ParseError(
                f"{script}: an item without a known status: {raw!r}"[:300], source=script
            )
        found.append(ItemOutcome(str(raw["item"]), status, str(raw.get("detail") or "")))  # type: ignore[arg-type]
    return tuple(found)


@dataclass(frozen=True)
class CheckResults:
    """``checks.ps1``'s output: each service's status, each port's listening."""

    services: dict[str, str] = field(default_factory=dict)
    ports: dict[int, bool] = field(default_factory=dict)


def parse_checks(out: Mapping[str, Any]) -> CheckResults:
    return CheckResults(
        {str(s["name"]): str(s["status"]) for s in out.get("services") or ()},
        {int(p["port"]): bool(p["listening"]) for p in out.get("ports") or ()},
    )


# --- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundPlan:
    """One update round: what to install, what is left out and why; ``reason`` when nothing."""

    round: int
    install: tuple[PendingUpdate, ...]
    skipped: tuple[tuple[PendingUpdate, str], ...] = ()
    reason: str | None = None


def plan_round(
    scan: UpdateScan,
    *,
    round_no: int,
    max_rounds: int,
    categories: Sequence[str] = (),
    failed_before: Sequence[str] = (),
) -> RoundPlan:
    """What round ``round_no`` (from 1) installs: the pending updates of the chosen
    ``categories`` (empty: all), never one that failed in an earlier round of this run."""
    wanted = {c.casefold() for c in categories}
    install: list[PendingUpdate] = []
    skipped: list[tuple[PendingUpdate, str]] = []
    for u in scan.updates:
        if wanted and not wanted & {c.casefold() for c in u.categories}:
            skipped.append((u, f"category {', '.join(u.categories) or 'none'} not chosen"))
        elif u.id in failed_before:
            skipped.append((u, "failed in an earlier round"))
        else:
            install.append(u)
    reason: str | None = None
    if scan.reboot_required:
        reason = "a reboot is pending: reboot before installing"
        install = []
    elif not install:
        reason = "nothing applicable is pending"
    elif round_no > max_rounds:
        reason = f"max rounds ({max_rounds}) reached with {len(install)} update(s) pending"
        install = []
    return RoundPlan(round_no, tuple(install), tuple(skipped), reason)


def describe_update(u: PendingUpdate) -> str:
    """One line for a plan and a log: KB, title, size, categories, reboot behaviour."""
    cats = ", ".join(u.categories) or "no category"
    name = u.title if u.kb in u.title else f"{u.kb} {u.title}".strip()
    return f"{name} ({format_size(u.size)}, {cats}, reboot: {u.reboot})"


def agent_enabled(config: Mapping[str, Any]) -> bool:
    """Whether a VM config enables the QEMU guest agent (``agent: 1``, ``enabled=1,...``)."""
    for part in str(config.get("agent", "0")).split(","):
        key, eq, value = part.strip().partition("=")
        if not eq:
            return key in ("1", "on", "yes", "true")
        if key == "enabled":
            return value.strip() in ("1", "on", "yes", "true")
    return False


def require_vms(keys: Sequence[str]) -> None:
    """``ConfigError`` when the inventory names no Windows VM (said before any API call)."""
    if not keys:
        raise ConfigError(
            "no [windows.vms] in the inventory: no Windows VM to update",
            setting="windows.vms",
            hint="add a [windows.vms.VMID] or [windows.vms.NAME] table for each Windows VM",
        )


def select_vms(
    keys: Sequence[str],
    guests: Sequence[Guest],
    only: Sequence[str] | None = None,
    *,
    verb: str = "update",
) -> list[tuple[str, Guest]]:
    """The Windows VMs a run covers, in the inventory's order: each [windows.vms] key (a
    VMID or a guest name) with its guest, cut by ``only`` (VMIDs or names, of those keys).
    ``ConfigError`` for a key no VM answers to, a name several guests carry, a container or a
    template, two keys for one VM, and an ``only`` that is not one of them (what the job does
    to them: ``verb``)."""
    require_vms(keys)
    chosen: list[tuple[str, Guest]] = []
    problems: list[str] = []
    for key in keys:
        found = [g for g in guests if (str(g.vmid) == key if key.isdigit() else g.name == key)]
        if not found:
            problems.append(f"{key}: no guest with this {'VMID' if key.isdigit() else 'name'}")
        elif len(found) > 1:
            problems.append(
                f"{key}: {len(found)} guests carry this name ("
                + ", ".join(str(g.vmid) for g in found)
                + "); use the VMID as the key"
            )
        elif found[0].type != "qemu" or found[0].template:
            what = "a template" if found[0].template else "a container"
            problems.append(f"{key}: guest {found[0].label} is {what}, not a Windows VM")
        else:
            twice = next((k for k, g in chosen if g.vmid == found[0].vmid), None)
            if twice is not None:
                problems.append(f"{key}: guest {found[0].label} is listed as {twice} already")
            else:
                chosen.append((key, found[0]))
    if problems:
        raise ConfigError("; ".join(problems), setting="windows.vms")
    if only:
        names = {n: [k for k, g in chosen if n in (k, str(g.vmid), g.name)] for n in only}
        unknown = [n for n, hits in names.items() if not hits]
        if unknown:
            raise ConfigError(
                f"--only names VMs this job does not {verb}: {', '.join(unknown)}; it "
                f"{verb}s: " + ", ".join(g.label for _, g in chosen),
                setting="only",
            )
        wanted = {k for hits in names.values() for k in hits}
        chosen = [(k, g) for k, g in chosen if k in wanted]
    return chosen


def has_passthrough(config: Mapping[str, Any]) -> bool:
    """Whether a VM config passes a PCI device through (``hostpci0``...)."""
    return any(str(k).startswith("hostpci") for k in config)


SnapshotKind = Literal["ram", "disk-live", "disk-shutdown"]


@dataclass(frozen=True)
class SnapshotChoice:
    """How to snapshot a Windows VM: ``vmstate`` (RAM), whether to shut it down first."""

    kind: SnapshotKind
    vmstate: bool
    shutdown: bool
    reason: str


def choose_snapshot(
    config: Mapping[str, Any], *, ram: bool, consistent: bool, running: bool = True
) -> SnapshotChoice:
    """The snapshot a VM gets. RAM state only where asked and possible (a passthrough device
    cannot be saved); ``consistent`` shuts it down cleanly for a disk-only snapshot."""
    passthrough = has_passthrough(config)
    if ram and running and not passthrough:
        return SnapshotChoice("ram", True, False, "with RAM state, as configured")
    why = "PCI passthrough: no RAM state; " if ram and passthrough else ""
    if consistent and running:
        return SnapshotChoice(
            "disk-shutdown", False, True, why + "disk only, the VM shut down cleanly first"
        )
    return SnapshotChoice(
        "disk-live", False, False, why + "disk only, file systems frozen through the agent (VSS)"
    )


@dataclass(frozen=True)
class VmPlan:
    """What a run does to one Windows VM, from its pre-flight facts: the updates the first
    round installs (and those left out), whether a reboot comes first, the snapshot it gets;
    ``skip`` says why nothing is done (then no snapshot is taken)."""

    label: str
    os: str
    scan: UpdateScan
    first: RoundPlan
    snapshot: SnapshotChoice
    reboot_first: bool
    max_rounds: int
    categories: tuple[str, ...] = ()
    skip: str | None = None

    @property
    def install(self) -> tuple[PendingUpdate, ...]:
        return self.first.install

    def describe(self) -> list[str]:
        """The plan, a line each: the VM, then each update to install or left out."""
        if self.skip:
            return [f"{self.label} ({self.os}): {self.skip}"]
        head = f"{self.label} ({self.os}): {len(self.install)} update(s) to install"
        if self.reboot_first:
            head += ", a reboot first (one is pending)"
        head += f", at most {self.max_rounds} round(s); snapshot: {self.snapshot.reason}"
        lines = [head]
        lines += [f"  install {describe_update(u)}" for u in self.install]
        lines += [f"  leave {describe_update(u)}: {why}" for u, why in self.first.skipped]
        return lines


def plan_vm(
    label: str,
    os: str,
    scan: UpdateScan,
    config: Mapping[str, Any],
    *,
    reboot_pending: bool,
    ram: bool,
    consistent: bool,
    categories: Sequence[str] = (),
    max_rounds: int = 3,
) -> VmPlan:
    """The plan of one VM: round 1 of ``scan`` (as :func:`plan_round` would install it once
    any pending reboot is done), a reboot first when one is pending, the snapshot
    :func:`choose_snapshot` gives; nothing at all when nothing applicable is pending and no
    reboot is."""
    reboot_first = scan.reboot_required or reboot_pending
    ready = replace(scan, reboot_required=False)
    first = plan_round(ready, round_no=1, max_rounds=max_rounds, categories=categories)
    snapshot = choose_snapshot(config, ram=ram, consistent=consistent)
    skip = None
    if not first.install and not reboot_first:
        skip = first.reason or "nothing applicable is pending"
        if first.skipped:
            skip += f" ({len(first.skipped)} update(s) left out)"
    return VmPlan(
        label, os, scan, first, snapshot, reboot_first, max_rounds, tuple(categories), skip
    )


def unfinished_candidate(
    snapshots: Sequence[GuestSnapshot], label: str, this_run: str
) -> GuestSnapshot | None:
    """The snapshot an earlier run may have left unfinished: the VM's newest whole moxflow
    snapshot of ``label`` (``snapshots`` oldest first, as listed), when its description
    names a run other than ``this_run`` and does not say that the change it guards was
    committed or rolled back. Whether that run is over (one that says ``in progress``), or
    finished with it (one written before descriptions said so), is the Prefect server's to
    say. None when there is no such snapshot, or the newest one names no run (taken by hand,
    or by a moxflow that did not write it), or says it is done with."""
    ours = [s for s in snapshots if s.complete and owned_by_moxflow(s.name, label)]
    if not ours:
        return None
    newest = ours[-1]
    owner = description_run(newest.description)
    if description_state(newest.description) in FINISHED_STATES:
        return None
    return newest if owner and owner != this_run else None


def snapshot_taken(snap: GuestSnapshot) -> datetime | None:
    """When a moxflow snapshot was taken: the time of the run its name carries (the clock
    of the runs that judge it), else the node's ``snaptime``."""
    parsed = parse_snapshot_name(snap.name)
    return parsed.created if parsed is not None else snap.snaptime


def newer_snapshots(snapshots: Sequence[GuestSnapshot], snap: GuestSnapshot) -> list[str]:
    """The names of the snapshots (of any name, whole or not) listed after ``snap``: taken
    after it (``snapshots`` oldest first, as listed)."""
    names = [s.name for s in snapshots]
    return names[names.index(snap.name) + 1 :] if snap.name in names else []


def left_as_is(vmid: int, snapshot: str, newer: Sequence[str]) -> str:
    """What a person does with an interrupted update's snapshot that moxflow leaves alone:
    nothing was changed; look at the VM, then undo that update or keep the VM as it is
    (either way the snapshot goes, so that the next run starts anew), then run again."""
    undo = f"qm rollback {vmid} {snapshot}, then qm delsnapshot {vmid} {snapshot}"
    if newer:
        dels = "; ".join(f"qm delsnapshot {vmid} {n}" for n in newer)
        undo = (
            f"first delete the newer snapshot(s) if you can do without them ({dels}: on ZFS "
            f"PVE rolls back only to the newest snapshot), then {undo}"
        )
    return (
        "nothing was changed and the snapshot is kept. Look at the VM: to undo that run's "
        f"update, {undo}; to keep the VM as it is, qm delsnapshot {vmid} {snapshot}; then "
        "run again"
    )


def not_adopted(
    vmid: int,
    snapshots: Sequence[GuestSnapshot],
    found: GuestSnapshot,
    run: str,
    now: datetime,
    max_age_hours: float,
) -> str | None:
    """Why the interrupted run ``run``'s snapshot ``found`` must not be adopted as the next
    run's rollback point, and what to do instead; None when it may. A rollback to it
    undoes everything since it was taken: not when a snapshot was taken after it (the VM's
    history since then is kept in it, and on ZFS PVE refuses that rollback), nor when it is
    older than ``max_age_hours`` ([windows] adopt_max_age_hours)."""
    taken = snapshot_taken(found)
    newer = newer_snapshots(snapshots, found)
    if newer:
        why = (
            f"a newer snapshot exists ({', '.join(newer)}): a rollback to it would undo "
            "that one's state too, and on ZFS PVE refuses it"
        )
    elif taken is None or now - taken > timedelta(hours=max_age_hours):
        why = (
            f"it is older than [windows] adopt_max_age_hours ({max_age_hours:g} h): a "
            "rollback to it would undo everything since"
        )
    else:
        return None
    return (
        f"snapshot {found.name} of the interrupted run {run} (taken {format_age(now, taken)}) "
        f"is not adopted: {why}; {left_as_is(vmid, found.name, newer)}"
    )


# --- verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...]


def verdict(
    *,
    agent_ok: bool,
    installs: Sequence[InstallRun],
    reboot: RebootState | None,
    checks: CheckResults | None = None,
    services: Sequence[str] = (),
    ports: Sequence[int] = (),
    commands: Mapping[str, ExecStatus] | None = None,
    expect: Mapping[str, int] | None = None,
) -> Verdict:
    """Whether an updated VM is healthy: the agent answers, no update failed, no reboot is
    pending, every service runs, every port listens, every command exited with its code in
    ``expect`` (0 when it has none)."""
    problems: list[str] = []
    if not agent_ok:
        problems.append("the guest agent does not answer")
    for run in installs:
        for u in run.failed:
            problems.append(f"{u.kb} {u.result} (result code {u.result_code}, {u.hresult})")
    if reboot is not None and reboot.pending:
        problems.append(f"a reboot is still pending ({', '.join(reboot.reasons)})")
    if checks is not None:
        for name in services:
            status = checks.services.get(name, "Missing")
            if status != "Running":
                problems.append(f"service {name} is {status}")
        problems += [f"nothing listens on TCP {p}" for p in ports if not checks.ports.get(p)]
    for name, ended in (commands or {}).items():
        wanted = (expect or {}).get(name, 0)
        if not (ended.exited and ended.signal is None and ended.exitcode == wanted):
            problems.append(f"command {name}: {ended.describe()}, not exit code {wanted}")
    return Verdict(not problems, tuple(problems))
