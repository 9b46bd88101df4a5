"""What ``python -m flows.windows_provision`` sets up inside a Windows VM, per
``[windows.vms.KEY]``: ``.steam`` (steamcmd and Steam apps by app id, anonymous where the app
allows it, else a Steam login whose password is a secret reference), ``.rust`` (rustup: the
default toolchain, extra toolchains, components) and ``[[.scheduled_tasks]]`` (a name and an
XML definition kept beside the inventory).

Every value here reaches the guest only as data (JSON on the script's stdin), never as code;
still, names and paths are held to what Windows, steamcmd and rustup take, so that a typo or
a hostile value is refused here, naming the setting. The XML files themselves are read and
checked when the provisioning job starts (``moxflow.windows_provision.read_task_xml``), so a
missing file stops only that job.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator

from moxflow.inventory.fields import Section, validation_error
from moxflow.inventory.secrets import SecretRef

__all__ = ["RustSettings", "SteamApp", "SteamSettings", "WindowsTask"]

WINDOWS_PATH_MAX = 240
"""The longest folder or file path a setting may name (MAX_PATH is 260, with room for what the
tools add below it, e.g. ``steamapps\\appmanifest_N.acf``)."""

_WINDOWS_PATH_RE = re.compile(r"[A-Za-z]:(\\[^\x00-\x1f\"<>|?*:\\/]+)+")
_WINDOWS_PATH_RULE = (
    "an absolute Windows path such as C:\\steamcmd\\steamcmd.exe: a drive letter, then "
    "names separated by single '\\', none holding a control character, '/', ':', '\"', '<', "
    "'>', '|', '?' or '*', no trailing '\\'"
)


def _check_windows_path(value: str) -> str:
    if len(value) > WINDOWS_PATH_MAX or not _WINDOWS_PATH_RE.fullmatch(value):
        raise ValueError(f"{ascii(value)[:80]} is not {_WINDOWS_PATH_RULE}")
    if any(part in (".", "..") or part.endswith((" ", ".")) for part in value[3:].split("\\")):
        raise ValueError(
            f"{ascii(value)[:80]}: no '.' or '..' parts, and no part ending in a space or '.'"
        )
    return value


WindowsPath = Annotated[str, AfterValidator(_check_windows_path)]
"""An absolute path in the Windows guest (a folder or a program)."""

_STEAM_USER_RE = re.compile(r"[A-Za-z0-9_]{2,64}", re.ASCII)
_TOOLCHAIN_RE = re.compile(
    r"(stable|beta|nightly|[0-9]+\.[0-9]+(\.[0-9]+)?)(-[0-9]{4}-[0-9]{2}-[0-9]{2})?"
    r"(-[a-z0-9_]+){0,4}",
    re.ASCII,
)
_COMPONENT_RE = re.compile(r"[a-z][a-z0-9_]*(-[a-z0-9_]+){0,6}", re.ASCII)
_TASK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.()-]{0,199}", re.ASCII)
_XML_PATH_RE = re.compile(r"[A-Za-z0-9_.() -]+(/[A-Za-z0-9_.() -]+)*", re.ASCII)


def _check_toolchain(value: str) -> str:
    if len(value) > 80 or not _TOOLCHAIN_RE.fullmatch(value):
        raise ValueError(
            f"{ascii(value)[:60]} is not a rustup toolchain name: stable, beta, nightly or a "
            "version (1.85.0), optionally with a date (nightly-2025-01-15) and a host triple "
            "(stable-x86_64-pc-windows-msvc)"
        )
    return value


def _check_component(value: str) -> str:
    if len(value) > 80 or not _COMPONENT_RE.fullmatch(value):
        raise ValueError(
            f"{ascii(value)[:60]} is not a rustup component name (lowercase letters, digits, "
            "'_' and '-', e.g. clippy, rustfmt, rust-src, llvm-tools-preview)"
        )
    return value


def _check_task_name(value: str) -> str:
    if not _TASK_NAME_RE.fullmatch(value) or value.endswith((" ", ".")):
        raise ValueError(
            f"{ascii(value)[:60]} is not a scheduled task name moxflow takes: 1-200 "
            "characters of letters, digits, spaces, '_', '.', '(', ')' and '-', starting with a "
            "letter or digit and not ending in a space or '.' (no folder, no wildcard, no "
            "quote or other character PowerShell or Task Scheduler read specially)"
        )
    return value


def _check_xml_path(value: str) -> str:
    parts = value.split("/")
    if (
        len(value) > 200
        or not _XML_PATH_RE.fullmatch(value)
        or any(p.strip() in ("", ".", "..") or p != p.strip() for p in parts)
        or not value.lower().endswith(".xml")
    ):
        raise ValueError(
            f"{ascii(value)[:80]} is not the path of a task's XML file beside the inventory: "
            "relative to the inventory's folder (no leading '/', no drive, no '..'), parts of "
            "letters, digits, spaces, '_', '.', '(', ')' and '-' separated by '/', ending in "
            '.xml, e.g. "tasks/backup-games.xml"'
        )
    return value


Toolchain = Annotated[str, AfterValidator(_check_toolchain)]
Component = Annotated[str, AfterValidator(_check_component)]
TaskName = Annotated[str, AfterValidator(_check_task_name)]
XmlPath = Annotated[str, AfterValidator(_check_xml_path)]


def _no_twice(values: list[str], what: str) -> list[str]:
    folded = [v.casefold() for v in values]
    twice = sorted({v for i, v in enumerate(values) if folded[i] in folded[:i]})
    if twice:
        raise ValueError(f"{what} listed twice: {', '.join(twice)}")
    return values


class SteamApp(Section):
    """One Steam app (a game, a dedicated server, a tool) installed through steamcmd."""

    app_id: int = Field(
        ge=1,
        le=0xFFFFFFFF,
        description=(
            "The app's id, as its store page or SteamDB shows it, e.g. 740 (the Counter-Strike "
            "2 dedicated server)."
        ),
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description='A name for the report, e.g. "CS2 server"; default: the app id alone.',
    )
    anonymous: bool = Field(
        default=True,
        description=(
            "Log in anonymously (free dedicated servers and tools); false for an app the "
            "account must own: then the steam table's username and password are used."
        ),
    )
    install_dir: WindowsPath | None = Field(
        default=None,
        description=(
            "The folder the app is installed into (steamcmd's force_install_dir); default: "
            "the steam table's library, then the app id, e.g. C:\\SteamApps\\740."
        ),
    )


class SteamSettings(Section):
    """steamcmd and the Steam apps of one Windows VM, and the login for apps it must own."""

    steamcmd: WindowsPath = Field(
        default="C:\\steamcmd\\steamcmd.exe",
        description=(
            "Where steamcmd.exe is, or goes: downloaded from Valve and unpacked into its "
            "folder when it is missing."
        ),
    )
    library: WindowsPath = Field(
        default="C:\\SteamApps",
        description="The folder under which each app gets its own folder, named by app id.",
    )
    username: str | None = Field(
        default=None,
        description=(
            "The Steam account that logs in for the apps with anonymous = false (its account "
            "name, not its e-mail address). Steam Guard must not ask for a code: see "
            "docs/operating.md."
        ),
    )
    # a string or left out: TOML has no null, so the schema says string (as for any SecretRef)
    password: Annotated[SecretRef | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        description=(
            "Where the Steam account's password is: env:NAME, file:PATH (relative to the "
            "inventory's folder) or block:NAME (a Prefect Secret block); never the password "
            "itself. Read at the last moment and sent to the VM only as data on the script's "
            "stdin, never on a command line or in a log."
        ),
    )
    apps: list[SteamApp] = Field(
        default_factory=list,
        max_length=256,
        description="The apps to install, each a [[windows.vms.KEY.steam.apps]] table.",
    )

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and not _STEAM_USER_RE.fullmatch(value):
            raise ValueError(
                f"{ascii(value)[:60]} is not a Steam account name (2-64 letters, digits and "
                "'_'; the account name, not the e-mail address)"
            )
        return value

    @model_validator(mode="after")
    def _logins(self) -> SteamSettings:
        problems: list[tuple[tuple[int | str, ...], str]] = []
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            problems.append(
                ((missing,), "a Steam login needs both username and password; add " + missing)
            )
        seen: dict[int, int] = {}
        for i, app in enumerate(self.apps):
            first = seen.setdefault(app.app_id, i)
            if first != i:
                problems.append(
                    (("apps", i, "app_id"), f"app {app.app_id} is already listed as apps[{first}]")
                )
            if not app.anonymous and self.username is None and self.password is None:
                problems.append(
                    (
                        ("apps", i, "anonymous"),
                        f"app {app.app_id} needs a Steam login: set username and password (a "
                        'secret reference, e.g. "env:STEAM_PASSWORD") in this steam table',
                    )
                )
        if problems:
            raise validation_error("SteamSettings", problems)
        return self

    def install_dir(self, app: SteamApp) -> str:
        """The folder ``app`` is installed into."""
        return app.install_dir or f"{self.library}\\{app.app_id}"


class RustSettings(Section):
    """The Rust toolchain of one Windows VM through rustup, machine-wide.

    The guest agent runs as SYSTEM: CARGO_HOME and RUSTUP_HOME are set for the machine, so
    the toolchains are not in SYSTEM's own profile."""

    default_toolchain: Toolchain = Field(
        default="stable",
        description=(
            "The default toolchain: installed with rustup (profile minimal, host "
            "x86_64-pc-windows-msvc) and made the default."
        ),
    )
    toolchains: Annotated[list[Toolchain], Field(max_length=32)] = Field(
        default_factory=list,
        description='More toolchains to install, e.g. ["nightly", "1.85.0"].',
    )
    components: Annotated[list[Component], Field(max_length=64)] = Field(
        default_factory=list,
        description=(
            'Components to add to the default toolchain, e.g. ["clippy", "rustfmt", "rust-src"].'
        ),
    )
    cargo_home: WindowsPath = Field(
        default="C:\\Rust\\cargo",
        description=(
            "CARGO_HOME, machine-wide (set for every user): rustup.exe and cargo.exe go to "
            "its bin folder. Not added to the PATH."
        ),
    )
    rustup_home: WindowsPath = Field(
        default="C:\\Rust\\rustup",
        description="RUSTUP_HOME, machine-wide: where the toolchains are installed.",
    )

    @field_validator("toolchains")
    @classmethod
    def _toolchains_once(cls, value: list[str]) -> list[str]:
        return _no_twice(value, "toolchains")

    @field_validator("components")
    @classmethod
    def _components_once(cls, value: list[str]) -> list[str]:
        return _no_twice(value, "components")


class WindowsTask(Section):
    """One scheduled task, registered from its XML definition kept beside the inventory."""

    name: TaskName = Field(
        description='The task\'s name in Task Scheduler (its root folder), e.g. "Backup games".'
    )
    xml: XmlPath = Field(
        description=(
            "The task's XML definition, a file beside the inventory: its path relative to the "
            'inventory\'s folder, e.g. "tasks/backup-games.xml". Export it from Task '
            "Scheduler (Export...) or with Export-ScheduledTask; UTF-8 or UTF-16. Read and "
            "checked (exists, readable, XML with a Task root) when the job starts."
        )
    )
