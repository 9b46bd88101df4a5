"""The SSH tools of a Proxmox node: ``apt-get``/``apt``, ``dpkg``, ``apt-mark``,
``pveversion``, ``proxmox-boot-tool``, ``systemctl`` and ``ha-manager``.

Each returns None on a host that is not a node (another system's tool of that name, such
as a NixOS host's ``systemctl``, answers there)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from labsim.core import Command, Deferred, Result
from labsim.pve.apt import ha, packages
from labsim.pve.model import Node

if TYPE_CHECKING:
    from labsim.pve.apt.system import AptSystem

Tool = Callable[["AptSystem", Node, list[str]], "Result | Deferred"]

LOCKED = (
    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)\n"
    "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another "
    "process using it?\n"
)
INTERRUPTED = (
    "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the "
    "problem. \n"
)
UNITS = (
    "pve-cluster",
    "pveproxy",
    "pvedaemon",
    "pvestatd",
    "pve-ha-lrm",
    "pve-ha-crm",
    "pve-firewall",
    "corosync",
    "watchdog-mux",
    "ssh",
    "sshd",
    "zfs-zed",
    "chrony",
    "cron",
)


def apt_get(system: AptSystem, node: Node, argv: list[str]) -> Result | Deferred:
    yes = simulate = False
    quiet = 0
    words: list[str] = []
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-y", "--yes", "--assume-yes"):
            yes = True
        elif a in ("-s", "--simulate", "--dry-run", "--just-print", "--no-act"):
            simulate = True
        elif a in ("-q", "--quiet"):
            quiet += 1
        elif a == "-qq":
            quiet += 2
        elif a == "-o":
            i += 1
        elif a.startswith("-"):
            pass  # --allow-..., -o=..., --no-install-recommends ...
        else:
            words.append(a)
        i += 1
    verb = words[0] if words else ""
    run = system.run[node.name]
    if verb == "update":
        if run.upgrading:
            return 100, "", LOCKED.replace("lock-frontend", "lists/lock", 1)
        rc, out, err = packages.apt_update_output(node, run.enterprise_repo)
        if rc == 0:
            packages.refresh_pending(node)
        return rc, out if quiet < 2 else "", err
    if verb in ("upgrade", "dist-upgrade", "full-upgrade"):
        dist = verb != "upgrade"
        if simulate:
            return 0, packages.simulate(node, dist=dist, quiet=quiet), ""
        if run.upgrading:
            return 100, "", LOCKED
        if node.half_configured:
            return 100, "", INTERRUPTED
        plan, _ = packages.upgrade_plan(node, dist=dist)
        summary = packages.simulate(node, dist=dist, quiet=0).split("Inst ", 1)[0]
        if not plan:
            return 0, summary, ""
        if not yes:
            return 1, summary + "Do you want to continue? [Y/n] Abort.\n", ""
        return _upgrade(system, node, plan, summary)
    if verb in ("autoremove", "autoclean", "clean"):
        if run.upgrading:
            return 100, "", LOCKED
        out = (
            "Reading package lists...\nBuilding dependency tree...\nReading state information...\n"
        )
        if verb == "autoremove":
            kept = len(node.pending)
            out += f"0 upgraded, 0 newly installed, 0 to remove and {kept} not upgraded.\n"
        return 0, out, ""
    return 100, "", f"E: Invalid operation {verb}\n" if verb else "E: No command given\n"


def _upgrade(system: AptSystem, node: Node, plan: list[str], summary: str) -> Deferred:
    """A dist-upgrade: takes the ``upgrade`` duration, then unpacks and sets up every package
    (a broken one sets up half of them and fails). Killed with its SSH session meanwhile,
    it leaves every package unpacked and unconfigured (``dpkg --configure -a`` finishes)."""
    run = system.run[node.name]
    run.upgrading = True
    versions = {p: node.pending[p] for p in plan}

    def finish() -> Result:
        run.upgrading = False
        out = summary.splitlines()
        out += [
            f"Get:{i} http://download.proxmox.com/debian/pve trixie/pve-no-subscription "
            f"amd64 {p} amd64 {v} [1,024 kB]"
            for i, (p, v) in enumerate(versions.items(), 1)
        ]
        out.append(f"Fetched {len(versions) * 1024} kB in 1s (8,192 kB/s)")
        for p, v in versions.items():
            out += packages.unpack_lines(node, p, v)
        configured = len(plan)
        if run.break_upgrade:
            run.break_upgrade = False
            configured = len(plan) // 2
        for p in plan[:configured]:
            out += packages.setup_lines(p, versions[p])
        system.upgraded(node, versions, configured)
        text = "\n".join(out) + "\n"
        if configured < len(plan):
            bad = plan[configured]
            err = (
                f"dpkg: error processing package {bad} (--configure):\n"
                " installed post-installation script subprocess returned error exit status 1\n"
                "Errors were encountered while processing:\n"
                f" {bad}\n"
                "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
            )
            return 100, text, err
        return 0, text, ""

    def hangup() -> Result:
        """Its SSH session closed half-way (the client killed): apt-get dies by SIGHUP,
        every package unpacked, none configured; dpkg --audit names them."""
        run.upgrading = False
        system.upgraded(node, versions, 0)
        return 129, "", ""

    delay = system.lab.duration("upgrade")
    if run.upgrade_seconds is not None:
        delay, run.upgrade_seconds = run.upgrade_seconds * system.lab.time_scale, None
    return Deferred(delay, finish, hangup)


def dpkg(system: AptSystem, node: Node, argv: list[str]) -> Result:
    args = [a for a in argv[1:] if not a.startswith("--force-")]
    if args[:1] in (["--audit"], ["-C"]):
        return 0, packages.audit(node), ""
    if args[:2] == ["--configure", "-a"] or args[:2] == ["--configure", "--pending"]:
        if system.run[node.name].upgrading:
            return 2, "", "dpkg: error: dpkg frontend lock was locked by another process\n"
        out = "".join(
            "\n".join(packages.setup_lines(p, node.installed[p])) + "\n"
            for p in node.half_configured
        )
        node.half_configured.clear()
        return 0, out, ""
    if args[:1] == ["-l"]:
        out = "".join(
            f"ii  {p:<40} {v:<20} amd64        {p}\n" for p, v in sorted(node.installed.items())
        )
        return 0, out, ""
    return 2, "", f"dpkg: error: unknown option {' '.join(args)}\n"


def apt_mark(system: AptSystem, node: Node, argv: list[str]) -> Result:
    args = argv[1:]
    verb = args[0] if args else ""
    if verb == "showhold":
        return 0, "".join(p + "\n" for p in sorted(node.held)), ""
    if verb in ("hold", "unhold"):
        out = []
        for pkg in args[1:]:
            if pkg not in node.installed:
                return 100, "", f"E: Unable to locate package {pkg}\n"
            if verb == "hold" and pkg not in node.held:
                node.held.append(pkg)
                out.append(f"{pkg} set on hold.")
            elif verb == "unhold" and pkg in node.held:
                node.held.remove(pkg)
                out.append(f"Canceled hold on {pkg}.")
            else:
                out.append(
                    f"{pkg} was already {'set on hold' if verb == 'hold' else 'not on hold'}."
                )
        return 0, "".join(line + "\n" for line in out), ""
    return 100, "", f"E: Invalid operation {verb}\n"


def pveversion(system: AptSystem, node: Node, argv: list[str]) -> Result:
    verbose = any(a in ("-v", "--verbose") for a in argv[1:])
    return 0, packages.pveversion(node, verbose), ""


def boot_tool(system: AptSystem, node: Node, argv: list[str]) -> Result:
    args = argv[1:]
    if args[:2] == ["kernel", "list"]:
        return 0, packages.boot_tool_list(node), ""
    if args[:2] == ["kernel", "pin"] and len(args) >= 3:
        abi, next_only = args[2], "--next-boot" in args[3:]
        if abi not in node.kernels:
            return 1, "", f"E: no kernel image found in /boot for '{abi}', not setting default.\n"
        if next_only:
            node.kernel_next_boot = abi
            where = "/etc/kernel/next-boot-pin"
        else:
            node.kernel_pin = abi
            where = "/etc/kernel/proxmox-boot-pin"
        node.kernel_installed = packages.next_boot(node)
        return 0, f"Set kernel '{abi}' in {where}.\n", ""
    if args[:2] == ["kernel", "unpin"]:
        if "--next-boot" in args[2:]:
            node.kernel_next_boot = None
        else:
            node.kernel_pin = node.kernel_next_boot = None
        node.kernel_installed = packages.next_boot(node)
        return 0, "", ""
    if args[:1] == ["refresh"]:
        out = "Running hook script 'proxmox-auto-removal'..\n"
        out += "Running hook script 'zz-proxmox-boot'..\n"
        out += "Copying and configuring kernels on /dev/disk/by-uuid/5A1C-2B3D\n"
        for abi in packages.auto_kernels(node):
            out += f"\tCopying kernel and creating boot-entry for {abi}\n"
        return 0, out, ""
    if args[:1] == ["status"]:
        kernels = ", ".join(packages.auto_kernels(node))
        out = "System currently booted with uefi\n"
        return 0, out + f"5A1C-2B3D is configured with: uefi (versions: {kernels})\n", ""
    return 2, "", "USAGE: proxmox-boot-tool <commands> [ARGS]\n"


def systemctl(system: AptSystem, node: Node, argv: list[str]) -> Result:
    args = [a for a in argv[1:] if not a.startswith("-")]
    verb = args[0] if args else "list-units"
    if verb == "is-active":
        states = [system.unit_state(node, u) for u in args[1:]]
        quiet = "-q" in argv or "--quiet" in argv
        rc = 0 if states and all(s == "active" for s in states) else 3
        return rc, "" if quiet else "".join(s + "\n" for s in states), ""
    if verb == "list-units":
        if any(a == "--failed" or (a.startswith("--state=") and "failed" in a) for a in argv):
            return 0, "", ""
        out = ""
        for u in UNITS:
            state = system.unit_state(node, u)
            sub = "running" if state == "active" else "start"
            out += f"{u}.service loaded {state} {sub} {u}\n"
        return 0, out, ""
    if verb == "is-failed":
        return 1, "".join("active\n" for _ in args[1:]), ""
    return 1, "", f"Unknown command verb {verb}.\n"


def ha_manager(system: AptSystem, node: Node, argv: list[str]) -> Result:
    args = argv[1:]
    if args[:1] == ["status"]:
        return 0, ha.status_text(system.pve, system.ha, system.lab.time_scale), ""
    if args[:2] == ["crm-command", "node-maintenance"] and len(args) == 4:
        action, target = args[2], args[3]
        if action not in ("enable", "disable"):
            return (
                255,
                "",
                "400 Parameter verification failed.\n"
                f"action: value '{action}' does not have a value in the enumeration "
                "'enable, disable'\n",
            )
        if target not in system.pve.nodes:
            return 255, "", f"no such cluster node '{target}'\n"
        at = time.monotonic() + system.lab.duration("maintenance")
        system.ha.requests.append((at, target, action))
        return 0, "", ""
    return 255, "", "ERROR: unknown command 'ha-manager " + " ".join(args) + "'\n"


TOOLS: dict[str, Tool] = {
    "apt-get": apt_get,
    "apt": apt_get,
    "dpkg": dpkg,
    "apt-mark": apt_mark,
    "pveversion": pveversion,
    "proxmox-boot-tool": boot_tool,
    "systemctl": systemctl,
    "ha-manager": ha_manager,
}


def commands(system: AptSystem) -> list[Command]:
    def make(
        tool: Tool,
    ) -> Callable[[str, list[str], str | None, str | None], Result | Deferred | None]:
        def fn(
            host: str, argv: list[str], stdin: str | None, cwd: str | None
        ) -> Result | Deferred | None:
            node = system.node_of(host)
            return None if node is None else tool(system, node, argv)

        return fn

    return [Command(name, make(tool)) for name, tool in TOOLS.items()]
