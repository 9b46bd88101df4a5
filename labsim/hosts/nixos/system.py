"""NixOS hosts as a system of the lab: their commands, timers, health and control operations.

A NixOS host may live in a Proxmox guest (``spec.vmid``): it is powered as the guest is,
snapshots of the guest keep its state and rollbacks restore it (``PveSystem.images``), and so
do ZFS snapshots and rollbacks of the guest's disk on its node (a ``ZfsSystem`` observer).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Any

from labsim.core import Arg, Cli, Command, ControlOp, Deferred, LabCore, Result, System
from labsim.hosts import nixos
from labsim.hosts.nixos import HostImage, NixosHost, NixosSpec
from labsim.hosts.zfs import ZfsState
from labsim.hosts.zfs.system import ZfsSystem
from labsim.pve.model import Image
from labsim.pve.system import PveSystem

# What the next build of a NixOS host does, set by the control op ``nixos``.
NIXOS_FIELDS = (
    "upstream", "build_fails", "failed_units", "health_broken", "cut_network",
    "deadman_broken", "build_seconds", "healthy",
)  # fmt: skip

_NIXOS_ARGS = (
    Arg("host", "the NixOS host (dns, media, ...; * = all)", required=True),
    Arg("upstream", "the new upstream nixpkgs revision (40 hex digits; any other text is "
        "turned into one)", field=True, metavar="REV"),
    Arg("healthy", "reset the next generation's behaviour first", flag=True, field=True),
    Arg("build_fails", "its build fails (exit 1)", flag=True, field=True),
    Arg("failed_units", "units that fail once it is active (switch exits 4, the system is "
        "degraded)", field=True, metavar="A,B"),
    Arg("health_broken", "the health endpoint answers 503 while it runs", flag=True,
        field=True),
    Arg("cut_network", "once active, the host drops SSH connections and its health endpoint "
        "answers nothing, until another generation runs or a snapshot is rolled back",
        flag=True, field=True),
    Arg("deadman_broken", "while it runs, reverting fails (the dead-man timer fires but cannot "
        "restore the host; only a snapshot rollback helps)", flag=True, field=True),
    Arg("build_seconds", "how long a build takes on this host, before the time scale",
        type="float", field=True, metavar="S"),
)  # fmt: skip


class NixosSystem(System):
    """The NixOS hosts of the lab (``hosts``, by name); needs the ``pve`` system before it."""

    name = "nixos"

    def __init__(self) -> None:
        self.hosts: dict[str, NixosHost] = {}
        # NixOS disk states kept by `zfs snapshot` of a guest disk: (ssh host, ds@snap) -> image
        self.zfs_images: dict[tuple[str, str], HostImage] = {}

    def attach(self, lab: LabCore) -> None:
        super().attach(lab)
        self.pve = lab.system(PveSystem)
        self.pve.images.append(self)
        with contextlib.suppress(KeyError):
            lab.system(ZfsSystem).observers.append(self)

    def specs(self) -> list[NixosSpec]:
        """The NixOS hosts of a lab: dns, media and builder in the default topology, plus
        ``options.nixos_hosts`` generated ones (``nixos-01``, ...) in either topology."""
        opts = self.lab.options
        specs = nixos.default_specs() if opts.nodes is None else []
        return specs + nixos.generated_specs(opts.nixos_hosts or 0)

    def build(self, now: float) -> None:
        self.hosts = {}
        self.zfs_images = {}
        mono = time.monotonic()
        root = self.lab.root
        for spec in self.specs():
            host = NixosHost(spec, root / "hosts" / spec.name if root is not None else None,
                             now, mono)  # fmt: skip
            host.write_all()
            self.lab.add_host(spec.name)
            self.hosts[spec.name] = host
            g = self.pve.guests.get(spec.vmid) if spec.vmid is not None else None
            if g is not None:
                for snap in g.snapshots.values():  # snapshots made before the lab started
                    snap.images[self.name] = nixos.old_image(host)
                if g.status != "running":
                    host.power_off()

    def durations(self) -> dict[str, float]:
        return {"boot": 10.0}  # a NixOS host from power-on (or reboot) until it answers

    def ctx(self, cwd: str | None = None) -> nixos.Ctx:
        lab = self.lab
        return nixos.Ctx(time.time(), time.monotonic(), lab.time_scale, lab.durations["boot"], cwd)

    # -- commands ------------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [Command(name, self._run, shim=name in nixos.SHIM_NAMES) for name in nixos.COMMANDS]

    def _run(
        self, host: str, argv: list[str], stdin: str | None, cwd: str | None
    ) -> Result | Deferred | None:
        h = self.hosts.get(host)
        if h is None:
            return None
        if not h.up(time.monotonic()):
            return 255, "", f"Connection to {host} closed by remote host.\n"
        result = nixos.run(h, argv, self.ctx(cwd))
        self.lab.settle()
        return self._later(host, result)

    def _later(self, host: str, result: nixos.Result | nixos.Deferred) -> Result | Deferred:
        """A command that goes on later goes on only while its host is up."""
        if not isinstance(result, nixos.Deferred):
            return result
        step = result

        def finish() -> Result | Deferred:
            h = self.hosts.get(host)
            if h is None or not h.up(time.monotonic()):
                return 255, "", f"Connection to {host} closed by remote host.\n"
            after = step.finish()
            self.lab.settle()
            return self._later(host, after)

        return Deferred(step.delay, finish)

    # -- the clock -----------------------------------------------------------------------------

    def after_tasks(self, mono: float) -> None:
        ctx = self.ctx()
        for host in self.hosts.values():
            host.tick(ctx)

    def settle(self) -> None:
        """Power NixOS hosts on or off as their guests are, and drop the SSH connections of
        hosts that went away (network cut, powered off, rebooting)."""
        ctx: nixos.Ctx | None = None
        for name, host in self.hosts.items():
            g = self.pve.guests.get(host.vmid) if host.vmid is not None else None
            if g is not None:
                running = g.status == "running"
                if running and not host.powered:
                    ctx = ctx or self.ctx()
                    host.boot(ctx)
                elif not running and host.powered:
                    host.power_off()
            if host.drop_now:
                host.drop_now = False
                if self.lab.on_unreachable is not None:
                    self.lab.on_unreachable(name)

    def ssh_refused(self, host: str) -> bool:
        """A NixOS host that is off, booting or has its network cut drops SSH connections."""
        h = self.hosts.get(host)
        if h is None:
            return False
        self.lab.tick()
        return not h.reachable(time.monotonic())

    def health(self, host: str) -> tuple[int, str] | None:
        """The lab's health endpoint for a host: (status, body), or None to answer nothing."""
        with self.lab.lock:
            self.lab.tick()
            h = self.hosts.get(host)
            if h is None:
                return 404, f"no NixOS host {host!r}\n"
            return h.health(time.monotonic())

    # -- what lives in guests and on their disks -----------------------------------------------

    def _in_guest(self, vmid: int) -> NixosHost | None:
        for host in self.hosts.values():
            if host.vmid == vmid:
                return host
        return None

    def capture(self, vmid: int) -> Image | None:
        host = self._in_guest(vmid)
        return host.capture() if host is not None else None

    def restore(self, vmid: int, image: Image, *, with_ram: bool) -> None:
        host = self._in_guest(vmid)
        if host is not None and isinstance(image, HostImage):
            host.restore(image, with_ram=with_ram)

    def _disks(self, ssh_host: str) -> dict[str, NixosHost]:
        """The ZFS datasets on ``ssh_host`` (a node) that hold a NixOS host's guest disk."""
        out: dict[str, NixosHost] = {}
        for host in self.hosts.values():
            g = self.pve.guests.get(host.vmid) if host.vmid is not None else None
            if g is not None and g.node == ssh_host and self.pve.zfs_backed(g):
                out[f"rpool/data/{g.volume}"] = host
        return out

    @staticmethod
    def _disk_snapshots(zfs: ZfsState, disks: dict[str, NixosHost]) -> set[str]:
        found: set[str] = set()
        for name in disks:
            ds = zfs.datasets.get(name)
            if ds is not None:
                found |= {f"{name}@{snap.name}" for snap in ds.snapshots}
        return found

    def before_zfs(self, host: str, zfs: ZfsState) -> Any:
        disks = self._disks(host)
        return disks, self._disk_snapshots(zfs, disks)

    def after_zfs(self, host: str, zfs: ZfsState, argv: list[str], before: Any) -> None:
        """``zfs snapshot`` of a NixOS guest's disk keeps the host's disk state;
        ``zfs rollback`` to it restores that state and reboots the host (its disk changed
        under it)."""
        disks, snaps = before
        if not disks:
            return
        for full in self._disk_snapshots(zfs, disks) - snaps:
            self.zfs_images[(host, full)] = disks[full.split("@", 1)[0]].capture()
        if len(argv) >= 3 and argv[1] == "rollback":
            target = argv[-1]
            image = self.zfs_images.get((host, target))
            nixos_host = disks.get(target.split("@", 1)[0])
            if image is not None and nixos_host is not None:
                powered = nixos_host.powered
                nixos_host.restore(image, with_ram=False)
                if powered:
                    nixos_host.boot(self.ctx())
                self.lab.settle()

    # -- control and state ---------------------------------------------------------------------

    def controls(self) -> list[ControlOp]:
        def configure(msg: dict[str, Any]) -> Any:
            fields = msg.get("fields") or {}
            if not isinstance(fields, dict):
                raise ValueError("nixos needs fields, an object")
            return self.configure(str(msg.get("host", "")), dict(fields))

        return [
            ControlOp(
                "nixos",
                configure,
                _NIXOS_ARGS,
                Cli(
                    "nixos",
                    "set what a NixOS host's next generation does",
                    "Change a NixOS host: its upstream nixpkgs revision (what 'nix flake "
                    "update' locks next), its build time, and how the next generation it "
                    "builds behaves. Flags not given keep their value; --healthy resets the "
                    "behaviour first. Prints the host's NixOS state as JSON.",
                ),
            ),
            ControlOp(
                "nixos_upstream",
                lambda msg: self.configure(str(msg.get("host", "")), {"upstream": msg["rev"]}),
            ),
            ControlOp("nixos_fields", lambda msg: list(NIXOS_FIELDS)),
        ]

    def configure(self, host: str, fields: dict[str, Any]) -> Any:
        """Control op ``nixos``: set a host's upstream revision, build time and what its next
        generation does. ``host`` ``*`` means every NixOS host. Fields: ``upstream`` (a
        revision; not 40 hex digits: one is derived from it), ``build_fails``,
        ``failed_units`` (list or comma-separated), ``health_broken``, ``cut_network``,
        ``deadman_broken``, ``build_seconds``, ``healthy`` (first reset the behaviour).
        Returns the host's ``nixos`` state (a dict by host name for ``*``)."""
        unknown = set(fields) - set(NIXOS_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown nixos field(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(NIXOS_FIELDS)
            )
        with self.lab.lock:
            self.lab.tick()
            hosts = self.hosts
            names = list(hosts) if host == "*" else [host]
            for name in names:
                if name not in hosts:
                    raise ValueError(f"no NixOS host {name!r}; known: {', '.join(hosts) or 'none'}")
            for name in names:
                _configure_one(hosts[name], fields)
            mono = time.monotonic()
            if host == "*":
                return {n: hosts[n].to_json(mono) for n in names}
            return hosts[host].to_json(mono)

    def host_fields(self) -> tuple[str, ...]:
        return ("nixos",)

    def host_json(self, host: str, mono: float) -> dict[str, Any]:
        h = self.hosts.get(host)
        return {"nixos": h.to_json(mono)} if h is not None else {}


def _configure_one(h: NixosHost, fields: dict[str, Any]) -> None:
    behaviour = nixos.Behaviour() if fields.get("healthy") else h.next
    changes: dict[str, Any] = {}
    for key in ("build_fails", "health_broken", "cut_network", "deadman_broken"):
        if fields.get(key) is not None:
            changes[key] = bool(fields[key])
    units = fields.get("failed_units")
    if units is not None:
        if isinstance(units, str):
            units = [u for u in re.split(r"[,\s]+", units) if u]
        changes["failed_units"] = tuple(nixos.unit_name(str(u)) for u in units)
    if changes:
        behaviour = nixos.Behaviour(**{**behaviour.__dict__, **changes})
    h.next = behaviour
    if fields.get("build_seconds") is not None:
        seconds = float(fields["build_seconds"])
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError("build_seconds must be a number >= 0")
        h.build_seconds = seconds
    upstream = fields.get("upstream")
    if upstream:
        rev = nixos.revision(str(upstream))
        if rev != h.upstream_rev:
            h.upstream_rev = rev
            h.upstream_modified = max(int(time.time()), h.upstream_modified + 1)
