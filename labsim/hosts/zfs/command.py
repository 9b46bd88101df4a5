"""A simulated OpenZFS ``zfs`` command acting on one host's in-memory datasets and snapshots.

Output formats, messages, exit codes and option parsing follow ``cmd/zfs`` and ``lib/libzfs`` of
OpenZFS 2.2.7 (what Proxmox VE 8 and NixOS 24.11 ship); the only version-dependent message is the
one for destroying a held snapshot, which changed in 2.3.3 and follows ``ZfsState.version``.
Simulated subcommands: list, get, snapshot, destroy, rollback, hold, holds, release, version.
Times are printed in UTC (the simulated hosts run with ``TZ`` unset).
"""

from __future__ import annotations

from collections.abc import Callable

from labsim.hosts.zfs.args import _UsageError
from labsim.hosts.zfs.datasets import ZfsState
from labsim.hosts.zfs.list_get import _ListGet
from labsim.hosts.zfs.properties import _NATIVE_PROPS
from labsim.hosts.zfs.rollback_hold import _RollbackHold
from labsim.hosts.zfs.snapshot_destroy import _SnapshotDestroy
from labsim.hosts.zfs.usage import _COMMANDS, _USAGE, _USAGE_PROPERTY_TRAILER

# --------------------------------------------------------------------------------------------
# The command


class _Zfs(_ListGet, _SnapshotDestroy, _RollbackHold):
    """One invocation of `zfs`: parses argv, acts on the state, collects stdout and stderr."""

    def usage_text(self) -> str:
        if self.command is None:
            text = "usage: zfs command args ...\nwhere 'command' is one of the following:\n\n"
            text += "".join("\n" if entry is None else entry[1] for entry in _COMMANDS)
            text += "\nEach dataset is of the form: pool/[dataset/]*dataset[@name]\n"
        else:
            text = "usage:\n" + _USAGE[self.command]
        if self.command in ("set", "get", "inherit", "list"):
            text += "\nThe following properties are supported:\n"
            text += "\n\t{:<14} {}  {}   {}\n\n".format("PROPERTY", "EDIT", "INHERIT", "VALUES")
            for name, _column, edit, inherit, values in _NATIVE_PROPS:
                text += "\t{:<15} {}{}{}\n".format(
                    name,
                    "YES    " if edit else " NO    ",
                    "  YES   " if inherit else "   NO   ",
                    values,
                )
            text += _USAGE_PROPERTY_TRAILER
        else:
            text += (
                "\nFor the property list, run: zfs set|get\n"
                "\nFor the delegated permission list, run: zfs allow|unallow\n"
                "\nFor further help on a command or topic, run: zfs help [<topic>]\n"
            )
        return text

    # ---- zfs version

    def do_version(self, args: list[str]) -> int:
        self.print(f"zfs-{self.state.version}")
        self.print(f"zfs-kmod-{self.state.version}")
        return 0

    # ---- dispatch

    def run(self, argv: list[str]) -> int:
        try:
            return self._run(argv)
        except _UsageError:
            self.err.append(self.usage_text())
            return 2

    def _run(self, argv: list[str]) -> int:
        if len(argv) < 2:
            self.error("missing command")
            raise _UsageError
        name = _ALIASES.get(argv[1], argv[1])
        if name in ("-?", "--help"):
            self.out.append(self.usage_text())
            return 0
        if name in ("-V", "--version"):
            return self.do_version([])
        if name == "help":
            self.err.append("couldn't run man program: No such file or directory")
            return 255
        if name not in _USAGE:
            if "=" in name:
                name = "set"
            else:
                self.error(f"unrecognized command '{name}'")
                raise _UsageError
        self.command = name
        handler: Callable[[list[str]], int] | None = getattr(
            self, "do_" + name.replace("-", "_"), None
        )
        if handler is None:
            self.error(f"zfs {name}: not simulated by labsim")
            return 1
        return handler(argv[2:])


def run_zfs(state: ZfsState, argv: list[str], now: float) -> tuple[int, str, str]:
    """Run ``zfs`` with ``argv`` (``argv[0] == "zfs"``) against ``state`` at epoch ``now``.

    Returns (exit code, stdout, stderr). Mutating subcommands change ``state`` in place.
    """
    cmd = _Zfs(state, now)
    rc = cmd.run(list(argv))
    return rc, "".join(cmd.out), "".join(cmd.err)


_ALIASES = {"umount": "unmount", "recv": "receive", "snap": "snapshot"}
