"""A node's packages and kernels: version order, what boots next, what apt and dpkg print."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from labsim.pve.model import DEBIAN_PACKAGES, PVE_REPOID, Node

KERNEL_PACKAGE = re.compile(r"^(?:proxmox|pve)-kernel-(\d+\.\d+\.\d+-\d+-pve)(?:-signed)?$")
KERNEL_ANY = re.compile(r"^(?:pve|proxmox)-kernel-")
ENTERPRISE = "https://enterprise.proxmox.com/debian/pve"
MIRRORS = (
    "http://deb.debian.org/debian trixie",
    "http://deb.debian.org/debian trixie-updates",
    "http://security.debian.org/debian-security trixie-security",
    "http://download.proxmox.com/debian/pve trixie",
)
TITLES = {
    "proxmox-ve": "Proxmox Virtual Environment",
    "pve-manager": "Proxmox Virtual Environment Management Tools",
    "pve-ha-manager": "Proxmox VE HA Manager",
    "qemu-server": "Qemu Server Tools",
    "pve-qemu-kvm": "Full virtualization on x86 hardware",
    "pve-container": "Proxmox VE Container management tool",
    "libpve-common-perl": "Proxmox VE base library",
    "openssl": "Secure Sockets Layer toolkit - cryptographic utility",
    "tzdata": "time zone and daylight-saving time data",
}


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key close to dpkg's order: numbers numerically, ``~`` before anything."""
    out: list[tuple[int, int | str]] = []
    for part in re.findall(r"\d+|[A-Za-z]+|~|[^\dA-Za-z~]", version):
        if part.isdigit():
            out.append((2, int(part)))
        elif part == "~":
            out.append((0, 0))
        else:
            out.append((1, part))
    return tuple(out)


def newer(candidate: str, installed: str | None) -> bool:
    return installed is None or version_key(candidate) > version_key(installed)


def kernel_of(package: str) -> str | None:
    """The kernel ABI a ``proxmox-kernel-<abi>-signed`` package installs."""
    m = KERNEL_PACKAGE.match(package)
    return m.group(1) if m else None


def next_boot(node: Node) -> str:
    """The kernel the node boots next: a one-time pin, a pin, else the newest installed."""
    for pin in (node.kernel_next_boot, node.kernel_pin):
        if pin and pin in node.kernels:
            return pin
    return max(node.kernels, key=version_key)


def auto_kernels(node: Node) -> list[str]:
    """proxmox-boot-tool's automatic set: the two newest, plus the newest of the series
    before the newest one's, plus the running one."""
    ordered = sorted(node.kernels, key=version_key)
    chosen = set(ordered[-2:])
    if ordered:
        series = ".".join(ordered[-1].split(".")[:2])
        older = [k for k in ordered if not k.startswith(series + ".")]
        if older:
            chosen.add(older[-1])
    if node.kernel_running in node.kernels:
        chosen.add(node.kernel_running)
    return sorted(chosen, key=version_key)


def refresh_pending(node: Node) -> None:
    """What ``apt-get update`` leaves in the cache: every newer mirror package."""
    node.pending = {p: v for p, v in node.mirror.items() if newer(v, node.installed.get(p))}


def upgrade_plan(node: Node, *, dist: bool) -> tuple[list[str], list[str]]:
    """(packages to install, packages kept back). Plain ``upgrade`` installs nothing new,
    so a new kernel (and the meta package that needs it) is kept back."""
    plan, kept = [], []
    new_pkgs = [p for p in node.pending if p not in node.installed]
    for pkg in sorted(node.pending):
        if pkg in node.held:
            kept.append(pkg)
        elif not dist and (pkg in new_pkgs or (new_pkgs and KERNEL_ANY.match(pkg))):
            if pkg in node.installed:
                kept.append(pkg)
        else:
            plan.append(pkg)
    return plan, kept


def _origin(pkg: str) -> str:
    return "Debian" if pkg in DEBIAN_PACKAGES else "Proxmox"


def _release(pkg: str) -> str:
    return "Debian:13.2/stable" if pkg in DEBIAN_PACKAGES else "Proxmox:9.1/trixie"


def simulate(node: Node, *, dist: bool, quiet: int) -> str:
    """``apt-get -s [dist-]upgrade``: ``Inst``/``Conf`` lines (and the summary unless -qq)."""
    plan, kept = upgrade_plan(node, dist=dist)
    lines: list[str] = []
    if quiet < 2:
        lines += [
            "Reading package lists...",
            "Building dependency tree...",
            "Reading state information...",
            "Calculating upgrade...",
        ]
        new = [p for p in plan if p not in node.installed]
        if new:
            lines += ["The following NEW packages will be installed:", "  " + " ".join(new)]
        if kept:
            lines += ["The following packages have been kept back:", "  " + " ".join(kept)]
        upgraded = [p for p in plan if p in node.installed]
        if upgraded:
            lines += ["The following packages will be upgraded:", "  " + " ".join(upgraded)]
        lines.append(
            f"{len(upgraded)} upgraded, {len(new)} newly installed, 0 to remove and "
            f"{len(kept)} not upgraded."
        )
    for pkg in plan:
        old = node.installed.get(pkg)
        old_part = f" [{old}]" if old else ""
        lines.append(f"Inst {pkg}{old_part} ({node.pending[pkg]} {_release(pkg)} [amd64])")
    for pkg in plan:
        lines.append(f"Conf {pkg} ({node.pending[pkg]} {_release(pkg)} [amd64])")
    return "".join(line + "\n" for line in lines)


def unpack_lines(node: Node, pkg: str, version: str) -> list[str]:
    old = node.installed.get(pkg)
    deb = f".../{pkg}_{version}_amd64.deb"
    if old is None:
        return [
            f"Selecting previously unselected package {pkg}.",
            f"Preparing to unpack {deb} ...",
            f"Unpacking {pkg} ({version}) ...",
        ]
    return [f"Preparing to unpack {deb} ...", f"Unpacking {pkg} ({version}) over ({old}) ..."]


def setup_lines(pkg: str, version: str) -> list[str]:
    lines = [f"Setting up {pkg} ({version}) ..."]
    abi = kernel_of(pkg)
    if abi:
        lines += [
            "Examining /etc/kernel/postinst.d.",
            f"run-parts: executing /etc/kernel/postinst.d/proxmox-auto-removal {abi} "
            f"/boot/vmlinuz-{abi}",
            f"run-parts: executing /etc/kernel/postinst.d/zz-proxmox-boot {abi} "
            f"/boot/vmlinuz-{abi}",
            "Re-executing '/etc/kernel/postinst.d/zz-proxmox-boot' in new private mount "
            "namespace..",
            "Copying and configuring kernels on /dev/disk/by-uuid/5A1C-2B3D",
            f"\tCopying kernel and creating boot-entry for {abi}",
        ]
    return lines


def audit(node: Node) -> str:
    """``dpkg --audit``: nothing when every package is configured."""
    if not node.half_configured:
        return ""
    head = (
        "The following packages are only half configured, probably due to problems\n"
        "configuring them the first time.  The configuration should be retried using\n"
        "dpkg --configure <package> or the configure menu option in dselect:\n"
    )
    return head + "".join(f" {p:<20} {TITLES.get(p, p)}\n" for p in sorted(node.half_configured))


def apt_update_output(node: Node, enterprise: bool) -> tuple[int, str, str]:
    """``apt-get update`` (exit 100 when the enterprise repo has no subscription)."""
    out = [f"Hit:{i} {m} InRelease" for i, m in enumerate(MIRRORS, start=1)]
    if enterprise:
        n = len(MIRRORS) + 1
        out += [
            f"Err:{n} {ENTERPRISE} trixie InRelease",
            "  401  Unauthorized [IP: 51.91.38.34 443]",
            "Reading package lists...",
        ]
        err = (
            f"E: Failed to fetch {ENTERPRISE}/dists/trixie/InRelease  401  Unauthorized "
            "[IP: 51.91.38.34 443]\n"
            f"E: The repository '{ENTERPRISE} trixie InRelease' is not signed.\n"
            "N: Updating from such a repository can't be done securely, and is therefore "
            "disabled by default.\n"
        )
        return 100, "\n".join(out) + "\n", err
    out.append("Reading package lists...")
    return 0, "\n".join(out) + "\n", ""


def _info(node: Node, pkg: str) -> dict[str, Any]:
    installed = node.installed.get(pkg)
    state = "Installed"
    if installed is None:
        state = "NotInstalled"
    elif pkg in node.half_configured:
        state = "HalfConfigured"
    item: dict[str, Any] = {
        "Package": pkg,
        "Title": TITLES.get(pkg, pkg),
        "Description": TITLES.get(pkg, pkg),
        "Version": node.pending.get(pkg, installed),
        "CurrentState": state,
        "Origin": _origin(pkg),
        "Priority": "optional",
        "Section": "admin",
        "Arch": "amd64",
    }
    if installed is not None:
        item["OldVersion"] = installed
    return item


def versions(node: Node) -> list[dict[str, Any]]:
    """``GET /nodes/{node}/apt/versions``: proxmox-ve, pve-manager, the kernel packages
    newest first, then the rest by name."""
    out = []
    for pkg in ("proxmox-ve", "pve-manager"):
        if pkg in node.installed:
            out.append(_info(node, pkg))
    if out and out[0]["Package"] == "proxmox-ve":
        out[0]["RunningKernel"] = node.kernel_running
    for item in out:
        if item["Package"] == "pve-manager":
            item["ManagerVersion"] = node.installed["pve-manager"]
    kernels = [p for p in node.installed if KERNEL_ANY.match(p)]
    kernels.sort(key=lambda p: version_key(node.installed[p]), reverse=True)
    out += [_info(node, p) for p in kernels]
    rest = sorted(
        p for p in node.installed if p not in kernels and p not in ("proxmox-ve", "pve-manager")
    )
    out += [_info(node, p) for p in rest]
    return out


def pveversion(node: Node, verbose: bool) -> str:
    manager = node.installed.get("pve-manager", "")
    if not verbose:
        return f"pve-manager/{manager}/{PVE_REPOID} (running kernel: {node.kernel_running})\n"
    lines = []
    for item in versions(node):
        pkg, ver = item["Package"], item.get("OldVersion", "not correctly installed")
        if pkg == "proxmox-ve":
            lines.append(f"{pkg}: {ver} (running kernel: {node.kernel_running})")
        elif pkg == "pve-manager":
            lines.append(f"{pkg}: {ver} (running version: {manager}/{PVE_REPOID})")
        else:
            lines.append(f"{pkg}: {ver}")
    return "\n".join(lines) + "\n"


def boot_tool_list(node: Node) -> str:
    """``proxmox-boot-tool kernel list``."""
    text = "Manually selected kernels:\nNone.\n\nAutomatically selected kernels:\n"
    text += "".join(k + "\n" for k in auto_kernels(node))
    if node.kernel_pin:
        text += f"\nPinned kernel:\n{node.kernel_pin}\n"
    if node.kernel_next_boot:
        text += f"\nKernel pinned on next-boot:\n{node.kernel_next_boot}\n"
    return text


HISTORY_DAYS = 9.0
"""How long before the lab starts its first node last upgraded (each next node a day
earlier): the initial history of every node's dpkg log."""


def dpkg_log_lines(
    when: float, changes: Sequence[tuple[str, str | None, str]], configured: int
) -> str:
    """dpkg's log (``/var/log/dpkg.log``, the host's local time, UTC in the lab) of one run
    that unpacked ``changes`` (package, old version or None, new version) and set up the
    first ``configured`` of them."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
    lines = [f"{stamp} startup archives unpack"]
    for pkg, old, new in changes:
        action = "upgrade" if old else "install"
        lines += [
            f"{stamp} {action} {pkg}:amd64 {old or '<none>'} {new}",
            f"{stamp} status half-installed {pkg}:amd64 {old or new}",
            f"{stamp} status unpacked {pkg}:amd64 {new}",
        ]
    lines.append(f"{stamp} startup packages configure")
    for pkg, _, new in changes[:configured]:
        lines += [
            f"{stamp} configure {pkg}:amd64 {new} <none>",
            f"{stamp} status half-configured {pkg}:amd64 {new}",
            f"{stamp} status installed {pkg}:amd64 {new}",
        ]
    return "".join(line + "\n" for line in lines)
