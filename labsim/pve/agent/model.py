"""A simulated Windows guest: what Windows Update offers, what is installed, what waits for a
reboot, and the programs provisioning manages. A snapshot keeps a deep copy of it."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Update:
    """One update Windows Update offers; ``after``: shown only once that KB is installed
    and the guest rebooted (a servicing stack before its cumulative update)."""

    id: str
    kb: str
    title: str
    size: int
    category: str
    reboot: int = 0  # RebootBehavior: 0 never, 1 always, 2 can request
    after: str | None = None
    released: float = field(default_factory=time.time)  # LastDeploymentChangeTime

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_updates() -> list[Update]:
    """What the default Windows guest has pending: a cumulative update (reboot), the
    malicious software removal tool, a Defender definition update, and a .NET update that
    appears only after the cumulative one; released 20 days ago, the definition 1 day ago."""
    day = 86400.0
    month_ago, yesterday = time.time() - 20 * day, time.time() - day
    return [
        Update(
            "6f1c0a1e-0001-4c6b-9d10-000000000001",
            "KB5048685",
            "2025-01 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems "
            "(KB5048685)",
            812 * 2**20,
            "Security Updates",
            reboot=1,
            released=month_ago,
        ),
        Update(
            "6f1c0a1e-0002-4c6b-9d10-000000000002",
            "KB890830",
            "Windows Malicious Software Removal Tool x64 - v5.131 (KB890830)",
            74 * 2**20,
            "Update Rollups",
            released=month_ago,
        ),
        Update(
            "6f1c0a1e-0003-4c6b-9d10-000000000003",
            "KB2267602",
            "Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 "
            "(Version 1.421.123.0)",
            96 * 2**20,
            "Definition Updates",
            released=yesterday,
        ),
        Update(
            "6f1c0a1e-0004-4c6b-9d10-000000000004",
            "KB5049624",
            "2025-01 Cumulative Update for .NET Framework 3.5 and 4.8.1 for Windows 11 (KB5049624)",
            71 * 2**20,
            "Updates",
            reboot=2,
            after="KB5048685",
            released=month_ago,
        ),
    ]


@dataclass
class WindowsState:
    """What lives inside one Windows guest (kept by its snapshots)."""

    build: int = 22631
    variant: str = "client"
    pending: list[Update] = field(default_factory=default_updates)
    installed: list[str] = field(default_factory=list)  # KBs, in order
    reboot_pending: bool = False
    last_boot: float = field(default_factory=time.time)
    last_result: dict[str, Any] | None = None
    steamcmd: bool = False
    apps: dict[int, str] = field(default_factory=dict)  # app id -> install dir
    rustup: bool = False
    default_toolchain: str | None = None
    toolchains: dict[str, list[str]] = field(default_factory=dict)  # -> components
    tasks: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 of its XML
    services: dict[str, str] = field(
        default_factory=lambda: {"QEMU-GA": "Running", "Spooler": "Running", "sshd": "Stopped"}
    )
    ports: list[int] = field(default_factory=lambda: [3389])
    files: dict[str, bytes] = field(default_factory=dict)  # path (case-folded) -> content

    def visible(self) -> list[Update]:
        """The pending updates Windows Update shows now."""
        return [
            u
            for u in self.pending
            if u.after is None or (u.after in self.installed and not self.reboot_pending)
        ]

    def copy(self) -> WindowsState:
        return copy.deepcopy(self)

    def summary(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "pending": [u.kb for u in self.pending],
            "installed": list(self.installed),
            "reboot_pending": self.reboot_pending,
            "apps": sorted(self.apps),
            "toolchains": sorted(self.toolchains),
            "tasks": sorted(self.tasks),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "variant": self.variant,
            "pending": [u.to_json() for u in self.pending],
            "visible": [u.kb for u in self.visible()],
            "installed": list(self.installed),
            "reboot_pending": self.reboot_pending,
            "last_boot": self.last_boot,
            "last_result": self.last_result,
            "steamcmd": self.steamcmd,
            "apps": {str(k): v for k, v in sorted(self.apps.items())},
            "rustup": self.rustup,
            "default_toolchain": self.default_toolchain,
            "toolchains": {k: list(v) for k, v in sorted(self.toolchains.items())},
            "tasks": dict(sorted(self.tasks.items())),
            "services": dict(self.services),
            "ports": list(self.ports),
        }
