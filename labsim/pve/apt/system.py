"""``AptSystem``: packages, kernels and reboots of the Proxmox nodes, HA maintenance and
guest migration (issue 13). See ``labsim.pve.apt`` for the parts."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labsim.core import ApiRoute, Arg, Cli, Command, ControlOp, System, Task
from labsim.core.system import Effect
from labsim.pve.apt import api, commands, ha, packages
from labsim.pve.model import Node
from labsim.pve.system import PveSystem

DURATIONS: dict[str, float] = {
    "aptupdate": 2.0,  # the aptupdate task
    "upgrade": 5.0,  # apt-get dist-upgrade
    "reboot_delay": 2.0,  # (sleep 2;/sbin/reboot)& : the node goes down after this
    "reboot": 8.0,  # down until it is back
    "migrate": 3.0,  # qmigrate / vzmigrate, and each HA relocation
    "maintenance": 2.0,  # the CRM applies a node-maintenance request after this
    "services": 4.0,  # after a boot (or an upgrade's restart) the PVE services activate
    "crm_failover": 20.0,  # a dead CRM master's lock expires; another node's CRM takes over
}

# the units a package's upgrade restarts (its postinst: reload-or-restart)
RESTARTS: dict[str, tuple[str, ...]] = {
    "pve-manager": ("pveproxy", "pvedaemon", "pvestatd"),
    "pve-ha-manager": ("pve-ha-lrm", "pve-ha-crm"),
    "pve-cluster": ("pve-cluster",),
}
# the units that activate late after a boot: all of them but these
EARLY_UNITS = frozenset({"pve-cluster", "corosync", "ssh", "sshd", "chrony", "cron", "zfs-zed"})


@dataclass
class NodeRun:
    """What happens to a node over time, and its injected conditions."""

    reboot_at: float | None = None  # monotonic: goes down then
    back_at: float | None = None  # monotonic: up again then
    enterprise_repo: bool = False  # apt-get update fails (401, exit code 100)
    break_upgrade: bool = False  # the next dist-upgrade fails half-way
    never_back: bool = False  # a reboot never ends
    upgrade_seconds: float | None = None  # the next dist-upgrade takes this long (scaled)
    linger: float = 0.0  # extra seconds (before the time scale) it answers after reboot
    restart: tuple[int, ...] = ()  # HA guests (frozen) to start again when it is back
    upgrading: bool = False  # dpkg's lock is taken
    late_unit: str | None = None  # after the next (re)start it stays activating (a fault)
    activating: dict[str, float] = field(default_factory=dict)  # unit -> monotonic active at
    stuck: set[str] = field(default_factory=set)  # units activating until the fault clears


class AptSystem(System):
    name = "apt"

    def __init__(self) -> None:
        self.run: dict[str, NodeRun] = {}
        self.ha = ha.HaState()

    @property
    def pve(self) -> PveSystem:
        return self.lab.system(PveSystem)

    def build(self, now: float) -> None:
        self.run = {}
        self.ha = ha.HaState()
        for i, (name, node) in enumerate(self.pve.nodes.items()):
            node.boot_id = str(uuid.uuid4())
            node.kernel_installed = packages.next_boot(node)
            self.run[name] = NodeRun()
            log = self.dpkg_log(name)
            if log is not None:  # its history: everything installed, days ago
                log.parent.mkdir(parents=True, exist_ok=True)
                (log.parent / "proxmox-update.json").unlink(missing_ok=True)  # a journal
                when = now - (packages.HISTORY_DAYS + i) * 86400
                changes = [(p, None, v) for p, v in sorted(node.installed.items())]
                log.write_text(packages.dpkg_log_lines(when, changes, len(changes)))

    def dpkg_log(self, node: str) -> Path | None:
        """The real file that is ``/var/log/dpkg.log`` on ``node`` (None: nothing on disk)."""
        return self.lab.root / "apt" / node / "dpkg.log" if self.lab.root is not None else None

    def inventory(self) -> list[str]:
        log = self.dpkg_log("NODE")
        if log is None:
            return []
        path = str(log).replace("/NODE/", "/{node}/")
        journal = path.replace("/dpkg.log", "/proxmox-update.json")
        return [
            "",
            "[proxmox_update]",
            f"dpkg_log = {json.dumps(path)}",
            f"journal = {json.dumps(journal)}",
        ]

    def durations(self) -> dict[str, float]:
        return dict(DURATIONS)

    def routes(self) -> list[ApiRoute]:
        return list(api.ROUTES)

    def commands(self) -> list[Command]:
        return commands.commands(self)

    def task_effects(self) -> dict[str, Effect]:
        return {
            "aptupdate": self._finish_aptupdate,
            "migrate": self._finish_migrate,
            "hamigrate": lambda task, ok: None,  # only queues the move (see ha.tick)
        }

    def node_of(self, host: str) -> Node | None:
        """The PVE node an SSH host is (None: not a node)."""
        return self.pve.nodes.get(host)

    # -- apt update and upgrades ---------------------------------------------------------------

    def _finish_aptupdate(self, task: Task, ok: bool) -> None:
        node = self.pve.nodes.get(task.node)
        if ok and node is not None:
            packages.refresh_pending(node)

    def upgraded(self, node: Node, versions: dict[str, str], configured: int) -> None:
        """Install ``versions`` (the first ``configured`` set up, the rest only unpacked), and
        say so in the node's dpkg log."""
        log = self.dpkg_log(node.name)
        if log is not None and versions:
            changes = [(p, node.installed.get(p), v) for p, v in versions.items()]
            with log.open("a", encoding="utf-8") as f:
                f.write(packages.dpkg_log_lines(time.time(), changes, configured))
        for i, (pkg, version) in enumerate(versions.items()):
            node.installed[pkg] = version
            if i >= configured:
                node.half_configured.append(pkg)
            abi = packages.kernel_of(pkg)
            if abi and abi not in node.kernels:
                node.kernels.append(abi)
        node.kernel_installed = packages.next_boot(node)
        packages.refresh_pending(node)  # dpkg's status is newer than the cache
        restarted = {u for p in versions for u in RESTARTS.get(p, ())}
        self._restart_units(node, restarted, time.monotonic())

    # -- services ------------------------------------------------------------------------------

    def _restart_units(self, node: Node, units: set[str], mono: float) -> None:
        """``units`` restart: activating for the ``services`` duration (for good, the
        node's ``late_unit`` among them)."""
        run = self.run[node.name]
        for unit in units:
            run.activating[unit] = mono + self.lab.duration("services")
            if unit == run.late_unit:
                run.stuck.add(unit)

    def unit_state(self, node: Node, unit: str) -> str:
        """``systemctl is-active``'s word for a unit of the node."""
        name = unit.removesuffix(".service")
        if name not in commands.UNITS:
            return "inactive"
        run = self.run[node.name]
        if name in run.stuck or run.activating.get(name, 0.0) > time.monotonic():
            return "activating"
        return "active"

    # -- reboots -------------------------------------------------------------------------------

    def request_reboot(self, node: Node) -> None:
        """``POST /nodes/{node}/status command=reboot``: down after the delay (+ linger)."""
        run = self.run[node.name]
        if run.reboot_at is None and run.back_at is None:
            delay = self.lab.duration("reboot_delay") + run.linger * self.lab.time_scale
            run.reboot_at = time.monotonic() + delay

    def _go_down(self, node: Node, mono: float) -> None:
        run = self.run[node.name]
        run.reboot_at = None
        run.back_at = None if run.never_back else mono + self.lab.duration("reboot")
        node.status = "offline"
        restart = []
        for g in self.pve.guests.values():
            if g.node != node.name or g.status != "running":
                continue
            if g.hastate:  # frozen (shutdown_policy=conditional): started again by HA
                restart.append(g.vmid)
                self.ha.frozen.add(g.vmid)
            g.status, g.started_at = "stopped", None
        run.restart = tuple(restart)
        if self.lab.on_unreachable is not None:
            self.lab.on_unreachable(node.name)

    def _come_back(self, node: Node) -> None:
        run = self.run[node.name]
        run.back_at = None
        node.status = "online"
        node.boot_time = time.time()
        node.boot_id = str(uuid.uuid4())
        node.reboots += 1
        node.kernel_running = packages.next_boot(node)
        node.kernel_next_boot = None  # --next-boot lasts one boot
        node.kernel_installed = packages.next_boot(node)
        late = {u for u in commands.UNITS if u not in EARLY_UNITS}
        run.activating.clear()
        self._restart_units(node, late, time.monotonic())
        # pve-guests at boot: startall starts every guest of the node with onboot=1, whether
        # or not it ran before the reboot (HA decides for its own guests)
        onboot = [
            g.vmid
            for g in self.pve.guests.values()
            if g.node == node.name
            and not g.hastate
            and not g.template
            and str(g.config.get("onboot", "0")) == "1"
        ]
        for vmid in (*run.restart, *onboot):
            g = self.pve.guests.get(vmid)
            if g is not None and g.node == node.name:
                g.status, g.started_at = "running", time.time()
                g.agent_ready_at = time.monotonic() + self.lab.duration("agent")
            self.ha.frozen.discard(vmid)
        run.restart = ()

    def after_tasks(self, mono: float) -> None:
        for name, run in self.run.items():
            node = self.pve.nodes.get(name)
            if node is None:
                continue
            if run.reboot_at is not None and run.reboot_at <= mono:
                self._go_down(node, mono)
            if run.back_at is not None and run.back_at <= mono:
                self._come_back(node)
        ha.tick(
            self.pve, self.ha, mono, self.lab.duration("migrate"), self.lab.duration("crm_failover")
        )

    def ssh_refused(self, host: str) -> bool:
        node = self.pve.nodes.get(host)
        return node is not None and node.status != "online"

    # -- migration -----------------------------------------------------------------------------

    def _finish_migrate(self, task: Task, ok: bool) -> None:
        g = self.pve.guests.get(task.args["vmid"])
        if g is None:
            return
        if g.lock == "migrate":
            g.lock = None
        if not ok:
            return
        g.node = task.args["target"]
        if task.args.get("restart"):
            g.status, g.started_at = "running", time.time()
        self.lab.settle()

    # -- controls and state --------------------------------------------------------------------

    def controls(self) -> list[ControlOp]:
        def pending(msg: dict[str, Any]) -> dict[str, Any]:
            with self.lab.lock:
                self.lab.tick()
                node = self._control_node(msg)
                if msg.get("clear"):
                    node.mirror = dict(node.installed)
                for item in (msg.get("packages") or "").split(","):
                    if item.strip():
                        pkg, _, ver = item.strip().partition("=")
                        if not ver:
                            raise ValueError(f"give a package as NAME=VERSION, not {item!r}")
                        node.mirror[pkg] = ver
                kernel = msg.get("kernel")
                if kernel:
                    abi, ver = str(kernel), str(kernel).removesuffix("-pve")
                    node.mirror[f"proxmox-kernel-{abi}-signed"] = ver
                    series = ".".join(abi.split(".")[:2])
                    node.mirror[f"proxmox-kernel-{series}"] = ver
                if msg.get("refresh"):
                    packages.refresh_pending(node)
                return self.node_json(node)

        def condition(msg: dict[str, Any]) -> dict[str, Any]:
            with self.lab.lock:
                self.lab.tick()
                node = self._control_node(msg)
                run = self.run[node.name]
                for key in ("enterprise_repo", "break_upgrade", "never_back"):
                    if msg.get(key) is not None:
                        setattr(run, key, msg[key] == "on")
                if msg.get("linger") is not None:
                    run.linger = float(msg["linger"])
                if msg.get("upgrade_seconds") is not None:
                    run.upgrade_seconds = float(msg["upgrade_seconds"])
                if msg.get("late_unit") is not None:
                    unit = str(msg["late_unit"]).removesuffix(".service")
                    if unit and unit not in commands.UNITS:
                        raise ValueError(f"no unit {unit} on a node")
                    run.late_unit = unit or None
                    if not unit:
                        run.stuck.clear()
                if msg.get("hold") and msg["hold"] not in node.held:
                    node.held.append(str(msg["hold"]))
                if msg.get("unhold") in node.held:
                    node.held.remove(str(msg["unhold"]))
                return self.node_json(node)

        def crm(msg: dict[str, Any]) -> dict[str, Any]:
            with self.lab.lock:
                self.lab.tick()
                self.ha.crm_stopped = msg["state"] == "stopped"
                self.lab.tick()
                state: dict[str, Any] = self.to_json()["ha"]
                return state

        def qdevice(msg: dict[str, Any]) -> dict[str, Any]:
            with self.lab.lock:
                self.lab.tick()
                self.pve.qdevice = msg["state"] == "present"
                return {"qdevice": self.pve.qdevice, "quorate": self.pve.quorate()}

        onoff = ("on", "off")
        node_arg = Arg("node", "the node (pve1, ...)", required=True)
        return [
            ControlOp(
                "apt_pending",
                pending,
                (
                    node_arg,
                    Arg("packages", "what the mirror offers: NAME=VERSION,..."),
                    Arg("kernel", "a new kernel ABI on the mirror (6.14.11-6-pve)"),
                    Arg("clear", "the mirror offers nothing newer first", flag=True),
                    Arg("refresh", "refresh the node's cached list at once", flag=True),
                ),
                Cli(
                    "apt-pending",
                    "set what a node has to upgrade",
                    "Set what the package mirror offers a node (a new kernel among it); "
                    "the node sees it after apt-get update (or --refresh).",
                ),
            ),
            ControlOp(
                "apt_node",
                condition,
                (
                    node_arg,
                    Arg("enterprise_repo", "apt-get update fails (401)", choices=onoff),
                    Arg("break_upgrade", "the next dist-upgrade fails half-way", choices=onoff),
                    Arg("never_back", "a reboot never ends", choices=onoff),
                    Arg("linger", "seconds it still answers after reboot", type="float"),
                    Arg("upgrade_seconds", "the next dist-upgrade takes this long", type="float"),
                    Arg(
                        "late_unit",
                        "this unit stays activating after the next boot or restart ('' clears)",
                    ),
                    Arg("hold", "apt-mark hold this package"),
                    Arg("unhold", "apt-mark unhold this package"),
                ),
                Cli(
                    "apt-node",
                    "set a node's update faults and held packages",
                    "Set a node's conditions: enterprise repo without subscription, a "
                    "dist-upgrade that breaks off, a reboot that never ends, a late "
                    "reboot, a service that does not come up, held packages.",
                ),
            ),
            ControlOp(
                "ha_crm",
                crm,
                (
                    Arg(
                        "state",
                        "running or stopped",
                        required=True,
                        choices=("running", "stopped"),
                    ),
                ),
                Cli(
                    "ha-crm",
                    "stop or start pve-ha-crm on every node",
                    "Stop (or start again) the HA cluster resource manager on every node: no "
                    "master acts on maintenance requests, and the manager status keeps what "
                    "the last master wrote, growing old.",
                ),
            ),
            ControlOp(
                "qdevice",
                qdevice,
                (Arg("state", "present or absent", required=True, choices=("present", "absent")),),
                Cli(
                    "qdevice",
                    "add or remove the cluster's QDevice vote",
                    "Add or remove the corosync QDevice (its vote keeps a 2-node cluster "
                    "quorate while one node reboots).",
                ),
            ),
        ]

    def _control_node(self, msg: dict[str, Any]) -> Node:
        node = self.pve.nodes.get(str(msg.get("node")))
        if node is None:
            raise ValueError(f"no node {msg.get('node')}")
        return node

    def node_json(self, node: Node) -> dict[str, Any]:
        run = self.run.get(node.name, NodeRun())
        mono = time.monotonic()
        return {
            "installed": dict(node.installed),
            "pending": dict(node.pending),
            "mirror": dict(node.mirror),
            "held": list(node.held),
            "half_configured": list(node.half_configured),
            "upgrading": run.upgrading,  # an apt-get upgrade holds dpkg's lock now
            "kernels": sorted(node.kernels, key=packages.version_key),
            "kernel_running": node.kernel_running,
            "kernel_next_boot": packages.next_boot(node),
            "kernel_pin": node.kernel_pin,
            "boot_id": node.boot_id,
            "reboots": node.reboots,
            "status": node.status,
            "rebooting": run.reboot_at is not None or run.back_at is not None,
            "down_in": None if run.reboot_at is None else max(0.0, run.reboot_at - mono),
            "maintenance": node.name in self.ha.maintenance,
            "dpkg_log": str(log) if (log := self.dpkg_log(node.name)) is not None else None,
            "faults": {
                "enterprise_repo": run.enterprise_repo,
                "break_upgrade": run.break_upgrade,
                "never_back": run.never_back,
                "linger": run.linger,
                "late_unit": run.late_unit,
            },
            "units": {u: self.unit_state(node, u) for u in commands.UNITS},
        }

    def host_fields(self) -> tuple[str, ...]:
        return ("apt",)

    def host_json(self, host: str, mono: float) -> dict[str, Any]:
        node = self.pve.nodes.get(host)
        return {"apt": self.node_json(node)} if node is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "ha": {
                "maintenance": sorted(self.ha.maintenance),
                "requests": [{"node": n, "action": a} for _, n, a in self.ha.requests],
                "moves": {str(v): m.target for v, m in self.ha.moves.items()},
                "status": _without_clocks(
                    ha.manager_status(self.pve, self.ha, self.lab.time_scale)
                ),
                "master": self.ha.master,
                "crm_stopped": self.ha.crm_stopped,
            }
        }


def _without_clocks(status: dict[str, Any]) -> dict[str, Any]:
    """The HA status for the lab's state: its timestamps (wall clock, moving every second
    while a CRM and the LRMs run) become whether the manager status is stale (over 30 s),
    so that two reads of an unchanged lab compare equal."""
    if not status:
        return status
    manager = dict(status["manager_status"])
    manager["stale"] = time.time() - manager.pop("timestamp") > 30
    lrm = {
        n: {k: v for k, v in e.items() if k != "timestamp"} for n, e in status["lrm_status"].items()
    }
    return {**status, "manager_status": manager, "lrm_status": lrm}
