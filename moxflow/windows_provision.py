"""Provisioning a Windows VM through the QEMU guest agent (issue 14, point 2): pure parts.

What the inventory asks for in a VM (``[windows.vms.KEY]`` steam, rust, scheduled_tasks) is
compared with what ``provision-facts.ps1`` found there. The plan is a list of *units*, one
script call each (steamcmd, each Steam app, the Rust toolchain, each scheduled task), each
covering the items its script reports (``steam:740``, ``toolchain:nightly``,
``task:Backup games``, ...) with what each needs: ``install``, ``update``, or nothing
(``present``). Only the units with something to do run, after a ``pre-provision`` snapshot;
a VM with nothing to do gets neither. After the units, the facts are read again and planned
again: an item its script called done that still needs doing is failed (:func:`check_after`).

Also here: the scheduled tasks' XML files read and checked (:func:`read_task_xml`), the
facts parsed, and a unit's reported items merged with its plan. No I/O but reading those
files.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from moxflow.errors import ConfigError, ParseError
from moxflow.inventory import WindowsSettings, WindowsVm
from moxflow.windows import INPUT_DATA_MAX, ItemOutcome, SnapshotChoice

__all__ = [
    "FACTS_SCRIPT",
    "AppFact",
    "PlannedItem",
    "ProvisionFacts",
    "ProvisionPlan",
    "TaskFact",
    "Unit",
    "check_after",
    "facts_request",
    "merge_items",
    "parse_provision_facts",
    "password_problem",
    "plan_provision",
    "plan_units",
    "read_task_xml",
    "require_provisioning",
    "task_sha256",
]

FACTS_SCRIPT = "provision-facts.ps1"
HOST = "x86_64-pc-windows-msvc"
"""The host triple rustup installs for (``rustup.ps1``: ``--default-host``)."""
XML_FILE_MAX = 256 * 1024
"""The largest task XML file read (bytes); Task Scheduler's own exports are a few KiB."""
FULLY_INSTALLED = 4
"""An app manifest's ``StateFlags`` when the app is fully installed, nothing pending."""

Action = Literal["install", "update", "present"]


# --- the scheduled tasks' XML files -----------------------------------------------------------


TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _decode(raw: bytes) -> str | None:
    """The text of a task file: UTF-16 (with a BOM, as Task Scheduler exports it, or without
    one) or UTF-8; None when it is neither."""
    for bom, codec in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if raw.startswith(bom):
            raw, encoding = raw[len(bom) :], codec
            break
    else:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
        encoding = "utf-16-le" if raw[1:2] == b"\x00" else "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def read_task_xml(base_dir: Path, path: str, setting: str) -> str:
    """The text of a scheduled task's XML definition ``path`` (relative to ``base_dir``, the
    inventory's folder), checked: the file exists and can be read, is UTF-8 or UTF-16 text,
    well-formed XML without a DOCTYPE, whose root element is ``Task``, small enough to travel
    as exec input. ``ConfigError`` naming ``setting`` otherwise."""
    file = base_dir / path
    try:
        if not file.is_file():
            what = "is not a file" if file.exists() else "does not exist"
            raise ConfigError(f"the task definition {file} {what}", setting=setting)
        with file.open("rb") as f:
            raw = f.read(XML_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(
            f"the task definition {file} cannot be read: {exc.strerror or type(exc).__name__}",
            setting=setting,
        ) from None
    if len(raw) > XML_FILE_MAX:
        raise ConfigError(
            f"the task definition {file} is over {XML_FILE_MAX // 1024} KiB: not a task definition",
            setting=setting,
        )
    text = _decode(raw)
    if text is None:
        raise ConfigError(
            f"the task definition {file} is not UTF-8 or UTF-16 text", setting=setting
        )
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise ConfigError(
            f"the task definition {file} has a DOCTYPE; a task definition needs none "
            "(refused: its entities could expand)",
            setting=setting,
        )
    # without a DOCTYPE no entity can expand, and expat fetches nothing external; the
    # declaration may say UTF-16, which a str must not: the text is decoded already
    try:
        root = ET.fromstring(_XML_DECLARATION.sub("", text, count=1))  # noqa: S314 - as above
    except ET.ParseError as exc:
        raise ConfigError(
            f"the task definition {file} is not well-formed XML: {exc}", setting=setting
        ) from None
    name = root.tag.removeprefix(f"{{{TASK_NAMESPACE}}}")
    if name != "Task":
        raise ConfigError(
            f"the task definition {file} has the root element <{name}>, not <Task>",
            setting=setting,
            hint="export the task from Task Scheduler (Export...) or with Export-ScheduledTask",
        )
    size = len(json.dumps(text, ensure_ascii=False))
    if size > INPUT_DATA_MAX - 1024:
        raise ConfigError(
            f"the task definition {file} is {size} characters as JSON, more than the guest "
            "agent's 64 KiB of input leave for it",
            setting=setting,
        )
    return text


def task_sha256(xml: str) -> str:
    """The SHA-256 of a task's XML as ``scheduled-task.ps1`` records it: of its UTF-8 bytes,
    upper-case hex."""
    return hashlib.sha256(xml.encode("utf-8")).hexdigest().upper()


def require_provisioning(settings: WindowsSettings) -> list[str]:
    """The keys of the VMs with something to provision; ``ConfigError`` when there is none
    (said before any API call)."""
    keys = settings.provisioned_vms()
    if not keys:
        raise ConfigError(
            "no provisioning in [windows.vms]: no Windows VM has steam, rust or scheduled_tasks",
            setting="windows.vms",
            hint="add a [windows.vms.KEY.steam], [windows.vms.KEY.rust] or "
            "[[windows.vms.KEY.scheduled_tasks]] table to a Windows VM",
        )
    return keys


# --- facts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppFact:
    """A Steam app's manifest in its folder: there or not, and its ``StateFlags``."""

    installed: bool
    state_flags: int | None = None


@dataclass(frozen=True)
class TaskFact:
    """A scheduled task: whether it exists, and the SHA-256 of the XML moxflow registered it
    from (empty when moxflow never did)."""

    exists: bool
    sha256: str = ""


@dataclass(frozen=True)
class ProvisionFacts:
    """What ``provision-facts.ps1`` found in a VM; rustup's lines as it prints them."""

    steamcmd: bool = False
    apps: Mapping[int, AppFact] = field(default_factory=dict)
    rustup: bool = False
    toolchains: tuple[str, ...] = ()
    default: str = ""
    components: tuple[str, ...] = ()
    tasks: Mapping[str, TaskFact] = field(default_factory=dict)


def facts_request(vm: WindowsVm) -> dict[str, Any]:
    """``provision-facts.ps1``'s input for what ``vm`` asks for."""
    steam, rust = vm.steam, vm.rust
    apps = [] if steam is None else [(a.app_id, steam.install_dir(a)) for a in steam.apps]
    return {
        "steamcmd": steam.steamcmd if steam else "",
        "apps": [{"app_id": app_id, "install_dir": folder} for app_id, folder in apps],
        "cargo_home": rust.cargo_home if rust else "",
        "rustup_home": rust.rustup_home if rust else "",
        "toolchain": rust.default_toolchain if rust else "",
        "tasks": [t.name for t in vm.scheduled_tasks],
    }


def _lines(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(s for s in (str(v).strip() for v in value) if s)


def parse_provision_facts(out: Mapping[str, Any]) -> ProvisionFacts:
    """``provision-facts.ps1``'s output."""
    try:
        apps = {
            int(a["app_id"]): AppFact(
                bool(a.get("installed")),
                None if a.get("state_flags") is None else int(a["state_flags"]),
            )
            for a in out.get("apps") or ()
        }
        tasks = {
            str(t["name"]): TaskFact(bool(t.get("exists")), str(t.get("sha256") or "").upper())
            for t in out.get("tasks") or ()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"{FACTS_SCRIPT}: {exc!r}", source=FACTS_SCRIPT) from None
    return ProvisionFacts(
        steamcmd=bool(out.get("steamcmd")),
        apps=apps,
        rustup=bool(out.get("rustup")),
        toolchains=_lines(out.get("toolchains")),
        default=str(out.get("default") or "").strip(),
        components=_lines(out.get("components")),
        tasks=tasks,
    )


def _toolchain_listed(lines: Sequence[str], name: str) -> bool:
    """Whether ``rustup toolchain list`` (or ``rustup default``) names toolchain ``name``:
    ``stable`` is listed as ``stable-x86_64-pc-windows-msvc (default)``."""
    for line in lines:
        listed = line.split(" ")[0]
        if listed == name or listed == f"{name}-{HOST}":
            return True
    return False


def _component_listed(lines: Sequence[str], name: str) -> bool:
    """Whether ``rustup component list --installed`` names component ``name`` (listed with
    the host triple, e.g. ``clippy-x86_64-pc-windows-msvc``, or without, ``rust-src``)."""
    return any(line in (name, f"{name}-{HOST}") for line in lines)


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedItem:
    """One item and what it needs: ``install``, ``update``, or nothing (``present``)."""

    item: str
    action: Action
    why: str = ""
    name: str = ""  # a Steam app's name from the inventory, for people

    def describe(self) -> str:
        text = f"{self.action} {self.item}" + (f" ({self.name})" if self.name else "")
        return f"{text}: {self.why}" if self.why else text


@dataclass(frozen=True)
class Unit:
    """One script call of a VM's provisioning and the items it reports. ``data`` is the
    script's input without any secret: with ``login``, the Steam password is added by the
    task at the last moment."""

    name: str
    script: str
    data: Mapping[str, Any]
    items: tuple[PlannedItem, ...]
    login: bool = False

    @property
    def changes(self) -> bool:
        return any(i.action != "present" for i in self.items)


def _steam_units(vm: WindowsVm, facts: ProvisionFacts) -> list[Unit]:
    steam = vm.steam
    if steam is None:
        return []
    why = "" if facts.steamcmd else f"not found at {steam.steamcmd}"
    units = [
        Unit(
            "steamcmd",
            "steamcmd.ps1",
            {"steamcmd": steam.steamcmd},
            (PlannedItem("steamcmd", "present" if facts.steamcmd else "install", why),),
        )
    ]
    for app in steam.apps:
        folder = steam.install_dir(app)
        found = facts.apps.get(app.app_id, AppFact(False))
        action: Action = "present"
        why = ""
        if not found.installed:
            action, why = "install", f"not installed in {folder}"
        elif found.state_flags not in (None, FULLY_INSTALLED):
            action = "update"
            why = f"its manifest says StateFlags {found.state_flags}, not {FULLY_INSTALLED}"
        item = f"steam:{app.app_id}"
        data = {
            "steamcmd": steam.steamcmd,
            "install_dir": folder,
            "app_id": app.app_id,
            "username": None if app.anonymous else steam.username,
            "password": None,
        }
        planned = PlannedItem(item, action, why, app.name or "")
        units.append(Unit(item, "steam-app.ps1", data, (planned,), not app.anonymous))
    return units


def _rust_unit(vm: WindowsVm, facts: ProvisionFacts) -> list[Unit]:
    rust = vm.rust
    if rust is None:
        return []
    default = rust.default_toolchain
    items = [PlannedItem("rustup", "present" if facts.rustup else "install")]
    for t in dict.fromkeys([default, *rust.toolchains]):
        if _toolchain_listed(facts.toolchains, t):
            items.append(PlannedItem(f"toolchain:{t}", "present"))
        else:
            items.append(PlannedItem(f"toolchain:{t}", "install"))
    if not facts.rustup:
        items.append(PlannedItem(f"default:{default}", "install"))
    elif _toolchain_listed([facts.default], default):
        items.append(PlannedItem(f"default:{default}", "present"))
    else:
        now = facts.default.split(" ")[0] or "none"
        items.append(PlannedItem(f"default:{default}", "update", f"the default is {now}"))
    for c in rust.components:
        have = _component_listed(facts.components, c)
        items.append(PlannedItem(f"component:{c}", "present" if have else "install"))
    data = {
        "cargo_home": rust.cargo_home,
        "rustup_home": rust.rustup_home,
        "default_toolchain": default,
        "toolchains": list(rust.toolchains),
        "components": list(rust.components),
    }
    return [Unit("rust", "rustup.ps1", data, tuple(items))]


def _task_units(vm: WindowsVm, xml: Mapping[str, str], facts: ProvisionFacts) -> list[Unit]:
    units = []
    for task in vm.scheduled_tasks:
        text = xml[task.name]
        found = facts.tasks.get(task.name, TaskFact(False))
        action: Action = "present"
        why = ""
        if not found.exists:
            action = "install"
        elif not found.sha256:
            action, why = "update", "registered without moxflow: registered again from its XML"
        elif found.sha256 != task_sha256(text):
            action, why = "update", f"{task.xml} changed"
        item = f"task:{task.name}"
        data = {"name": task.name, "xml": text}
        units.append(Unit(item, "scheduled-task.ps1", data, (PlannedItem(item, action, why),)))
    return units


def plan_units(vm: WindowsVm, xml: Mapping[str, str], facts: ProvisionFacts) -> tuple[Unit, ...]:
    """Every unit of ``vm``'s provisioning, in order (steamcmd, the Steam apps, the Rust
    toolchain, the scheduled tasks), each item with what ``facts`` say it needs; ``xml``:
    each scheduled task's definition by task name."""
    return (
        *_steam_units(vm, facts),
        *_rust_unit(vm, facts),
        *_task_units(vm, xml, facts),
    )


@dataclass(frozen=True)
class ProvisionPlan:
    """What a run does to one VM: every unit with what each item needs, and the snapshot
    taken before the first change; ``skip`` says why nothing is done (then no snapshot)."""

    label: str
    os: str
    units: tuple[Unit, ...]
    snapshot: SnapshotChoice

    @property
    def todo(self) -> tuple[Unit, ...]:
        """The units with something to do, in order."""
        return tuple(u for u in self.units if u.changes)

    @property
    def items(self) -> tuple[PlannedItem, ...]:
        return tuple(i for u in self.units for i in u.items)

    @property
    def skip(self) -> str | None:
        if self.todo:
            return None
        return f"nothing to change: {len(self.items)} item(s) present"

    def describe(self) -> list[str]:
        """The plan, a line each: the VM, then each item with what it needs."""
        if self.skip:
            return [f"{self.label} ({self.os}): {self.skip}"]
        changing = [i for i in self.items if i.action != "present"]
        head = (
            f"{self.label} ({self.os}): {len(changing)} of {len(self.items)} item(s) to change; "
            f"snapshot first: {self.snapshot.reason}"
        )
        return [head, *(f"  {i.describe()}" for i in self.items)]


def plan_provision(
    label: str,
    os: str,
    vm: WindowsVm,
    xml: Mapping[str, str],
    facts: ProvisionFacts,
    snapshot: SnapshotChoice,
) -> ProvisionPlan:
    """The plan of one VM from its facts (see :func:`plan_units`)."""
    return ProvisionPlan(label, os, plan_units(vm, xml, facts), snapshot)


# --- after a unit, after the run -------------------------------------------------------------


def password_problem(password: str) -> str | None:
    """Why a Steam password cannot be sent (steamcmd's runscript takes it in quotes on one
    line), without ever saying the password; None when it can."""
    if any(c in password for c in '"\r\n'):
        return "the Steam password holds a '\"' or a line break, which steamcmd cannot take"
    return None


def merge_items(unit: Unit, reported: Sequence[ItemOutcome]) -> tuple[ItemOutcome, ...]:
    """Each planned item of ``unit`` with what its script reported; an item it did not report
    is failed (naming the item that failed before it, when one did); an item it reported
    that was not planned is kept as reported."""
    by_item = {r.item: r for r in reported}
    failed = next((r.item for r in reported if r.status == "failed"), None)
    merged: list[ItemOutcome] = []
    for planned in unit.items:
        found = by_item.pop(planned.item, None)
        if found is not None:
            merged.append(found)
        elif failed is not None:
            merged.append(ItemOutcome(planned.item, "failed", f"not done: {failed} failed"))
        else:
            merged.append(ItemOutcome(planned.item, "failed", f"{unit.script} did not report it"))
    merged.extend(by_item.values())
    return tuple(merged)


def check_after(outcomes: Sequence[ItemOutcome], after: Sequence[Unit]) -> tuple[ItemOutcome, ...]:
    """``outcomes`` held against a plan made from the facts read after the run (``after``):
    an item its script called done that still needs doing is failed, saying why."""
    left = {i.item: i for u in after for i in u.items if i.action != "present"}
    checked: list[ItemOutcome] = []
    for o in outcomes:
        still = left.get(o.item)
        if still is None or o.status == "failed":
            checked.append(o)
            continue
        why = f": {still.why}" if still.why else ""
        said = "present" if o.status == "present" else f"reported {o.status}"
        detail = f"{said}, but the check after finds it still to {still.action}{why}"
        checked.append(replace(o, status="failed", detail=detail))
    return tuple(checked)
