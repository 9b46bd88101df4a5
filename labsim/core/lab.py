"""The lab's core: the clock, tasks, faults, the command log and the systems plugged into it.

Everything is mutated under ``LabCore.lock``. Tasks finish lazily: ``LabCore.tick()`` (called
by every entry point before it reads or writes state) completes each task whose end time has
passed on the monotonic clock and applies its kind's effect, so no task needs a thread of its
own.
Durations are ``durations[kind] * time_scale`` seconds; wall-clock time is used only for what
the simulated systems report. What is simulated lives in the systems (``labsim.core.system``):
the core knows none of them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from labsim.core.faults import Fault, fault_matches, parse_fault
from labsim.core.system import ApiRoute, Command, ControlOp, Deferred, Effect, Result, System
from labsim.core.tasks import Task

S = TypeVar("S", bound=System)

DEFAULT_SNAPSHOT_SECONDS = 2.0  # a guest snapshot, snapshot deletion or rollback task


@dataclass
class LabOptions:
    """How a lab is built: the default topology, or a generated one for benchmarks."""

    nodes: int | None = None  # None: the default topology
    guests_per_node: int = 10
    time_scale: float = 1.0
    snapshot_seconds: float = DEFAULT_SNAPSHOT_SECONDS
    nixos_hosts: int = 0  # generated NixOS hosts (nixos-01, ...) besides the topology's own

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "guests_per_node": self.guests_per_node,
            "time_scale": self.time_scale,
            "snapshot_seconds": self.snapshot_seconds,
            "nixos_hosts": self.nixos_hosts,
        }


@dataclass
class SshHost:
    """A machine reachable over SSH; what runs on it is the systems' (see ``System.commands``)."""

    name: str
    port: int = 0


def wall(mono: float) -> float:
    """The wall-clock time of a point on the monotonic clock."""
    return time.time() - (time.monotonic() - mono)


class LabCore:
    """The core of a lab: state shared by every system, and the systems themselves, in order.

    ``root`` is the lab folder (systems keep real files below it); None: nothing on disk.
    """

    def __init__(
        self,
        systems: Iterable[System],
        options: LabOptions | None = None,
        root: Path | None = None,
    ) -> None:
        self.options = options or LabOptions()
        self.root = root
        self.lock = threading.RLock()
        self.release = threading.Event()  # set to let hanging requests go (reset, shutdown)
        self.interrupt = threading.Event()  # set to end sleeping commands (reset, shutdown)
        self.epoch = 0  # counts resets: a command that slept across one is void
        # Called (under the lock) with a host name when its SSH connections must go.
        self.on_unreachable: Callable[[str], None] | None = None
        self.on_reset: list[Callable[[], None]] = []  # after the control op reset (logs)
        self._fault_ids = itertools.count(1)
        self._order = itertools.count()
        self._pids = itertools.count(2_000_000 + int(time.time()) % 1_000_000)
        self.hosts: dict[str, SshHost] = {}
        self.systems: list[System] = []
        self._effects: dict[str, Effect] = {"fail": lambda task, ok: None}
        self._commands: dict[str, list[Command]] = {}
        for system in systems:
            self._plug(system)
        self._build()

    def _plug(self, system: System) -> None:
        if any(s.name == system.name for s in self.systems):
            raise ValueError(f"two systems named {system.name!r}")
        system.attach(self)
        self.systems.append(system)
        self._effects.update(system.task_effects())
        for cmd in system.commands():
            self._commands.setdefault(cmd.name, []).append(cmd)

    def system(self, cls: type[S]) -> S:
        """The system of class ``cls`` (a KeyError when the lab has none)."""
        for s in self.systems:
            if isinstance(s, cls):
                return s
        raise KeyError(f"this lab has no {cls.__name__}")

    def commands_with_shims(self) -> list[str]:
        """The programs SSH hosts find in ``DIR/bin``."""
        return [name for name, cmds in self._commands.items() if any(c.shim for c in cmds)]

    def controls(self) -> list[ControlOp]:
        """The control operations of the core and of every system, in that order."""
        from labsim.core.controls import core_controls

        ops = core_controls(self)
        for s in self.systems:
            ops += s.controls()
        return ops

    def routes(self) -> list[ApiRoute]:
        """Every system's API routes."""
        return [r for s in self.systems for r in s.routes()]

    # -- building and resetting ---------------------------------------------------------------

    def _build(self) -> None:
        now = time.time()
        self.tasks: dict[str, Task] = {}
        self._due: list[tuple[float, int, str]] = []  # (end_at, order, upid) of running tasks
        self.faults: list[Fault] = []
        self.commands: list[dict[str, Any]] = []  # every command the SSH hosts were asked to run
        self.time_scale = self.options.time_scale
        self.durations: dict[str, float] = {}
        for s in self.systems:
            self.durations.update(s.durations())
        self._ports = {name: h.port for name, h in self.hosts.items()}
        self.hosts = {}
        for s in self.systems:
            s.build(now)

    def add_host(self, name: str) -> SshHost:
        """An SSH host of the lab (a system's build adds its own; ports survive a reset)."""
        host = SshHost(name, self._ports.get(name, 0))
        self.hosts[name] = host
        return host

    def record_command(self, host: str, command: str) -> None:
        """Remember a command an SSH host was asked to run (for tests: what ran, in order)."""
        with self.lock:
            self.commands.append({"host": host, "command": command, "time": time.time()})

    def reset(self) -> None:
        """Back to the initial state (same ports and keys); faults and tasks cleared."""
        with self.lock:
            self.release_waiters()
            self.interrupt_waits()
            self.epoch += 1
            self._build()
            self.settle()

    def interrupt_waits(self) -> None:
        """End every command sleeping outside the lock (a build): reset, shutdown."""
        with self.lock:
            self.interrupt.set()
            self.interrupt = threading.Event()

    def release_waiters(self) -> None:
        """Wake every request held by a ``hang`` or ``slow`` fault."""
        with self.lock:
            self.release.set()
            self.release = threading.Event()

    def set_time_scale(self, scale: float) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"time scale must be a positive number, not {scale!r}")
        with self.lock:
            self.tick()
            now = time.monotonic()
            for s in self.systems:
                s.time_scale_changing(now)
            self.time_scale = scale
            for s in self.systems:
                s.time_scale_changed(now)

    def duration(self, kind: str) -> float:
        return self.durations.get(kind, 1.0) * self.time_scale

    def settle(self) -> None:
        """Let every system make its derived state agree again."""
        for s in self.systems:
            s.settle()

    # -- faults --------------------------------------------------------------------------------

    def add_fault(self, spec: dict[str, Any]) -> int:
        """Validate and register a fault spec; returns its id."""
        spec, times = parse_fault(spec)
        with self.lock:
            fault = Fault(next(self._fault_ids), spec, times)
            self.faults.append(fault)
            return fault.fault_id

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.release_waiters()

    def take_fault(self, target: str, **attrs: str | None) -> dict[str, Any] | None:
        """The first fault matching an event (counted down), or None.

        api: ``method``, ``path``; command: ``host``, ``command``; connect: ``host``;
        task: ``type``, ``id``, ``node``.
        """
        with self.lock:
            for fault in self.faults:
                if fault.spec["target"] != target or not fault_matches(fault.spec, attrs):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                return dict(fault.spec, fault_id=fault.fault_id)
            return None

    # -- tasks ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Finish every task whose time has come, earliest end first; fire the timers."""
        now = time.monotonic()
        with self.lock:
            heap = self._due
            for s in self.systems:
                s.before_tasks(now)
            while heap and heap[0][0] <= now:
                _, _, upid = heapq.heappop(heap)
                task = self.tasks.get(upid)
                if task is not None and task.status == "running" and task.end_at <= now:
                    self._complete(task)
            for s in self.systems:
                s.after_tasks(now)
            self.settle()

    def _complete(self, task: Task) -> None:
        ok = task.fail_with is None
        task.status = "stopped"
        task.exitstatus = "OK" if ok else task.fail_with
        now = time.time()
        task.ended = min(now, wall(task.end_at)) if math.isfinite(task.end_at) else now
        task.endtime = max(task.starttime, int(task.ended))
        if not ok and task.fail_with and (not task.log or task.log[-1] != task.fail_with):
            task.log.append(str(task.fail_with))
        task.log.append("TASK OK" if ok else f"TASK ERROR: {task.fail_with}")
        self._effects[task.kind](task, ok)

    def new_task(
        self,
        node: str,
        boot_time: float,
        ttype: str,
        tid: str,
        user: str,
        *,
        kind: str,
        duration: float,
        args: dict[str, Any] | None = None,
        log: Iterable[str] = (),
        fail_now: str | None = None,
        faults: bool = True,
    ) -> Task:
        """Start a worker task on ``node`` (up since ``boot_time``, wall clock); ``fail_now``
        makes it fail at once with that exit status."""
        mono = time.monotonic()
        wall_now = time.time()
        pid = next(self._pids) % 0x400000 + 1000
        pstart = int((wall_now - boot_time) * 100) & 0xFFFFFFFF
        starttime = int(wall_now)
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, pid, pstart, starttime, ttype, tid, user, mono, mono, kind)
        task.begun = wall_now
        task.args = dict(args or {})
        task.log.extend(log)
        if fail_now is not None:
            task.kind = "fail"
            task.fail_with = fail_now
            task.log.append(fail_now)
        else:
            task.end_at = mono + duration
            fault = self.take_fault("task", type=ttype, id=tid, node=node) if faults else None
            if fault is not None:
                _apply_task_fault(task, fault)
        self.tasks[upid] = task
        if task.end_at <= mono:
            self._complete(task)
        elif math.isfinite(task.end_at):
            heapq.heappush(self._due, (task.end_at, next(self._order), upid))
        return task

    def task(self, upid: str) -> Task | None:
        return self.tasks.get(upid)

    def stop_task(self, node: str, upid: str) -> None:
        """A running task ends 'interrupted by signal' (unless a system ends it itself)."""
        task = self.tasks.get(upid)
        if task is None or task.node != node or task.status != "running":
            return
        now = time.monotonic()
        handled = False
        for s in self.systems:
            handled = s.stop_task(task, now) or handled
        if handled:
            return
        task.fail_with = "interrupted by signal"
        self._complete(task)

    # -- SSH hosts -----------------------------------------------------------------------------

    def ssh_refused(self, host: str) -> bool:
        """Whether ``host`` drops SSH connections now (a NixOS host that is off, ...)."""
        with self.lock:
            if host not in self.hosts:
                return False
            return any(s.ssh_refused(host) for s in self.systems)

    def exec(
        self,
        host: str,
        argv: list[str],
        stdin: str | None = None,
        cwd: str | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> Result:
        """Run one simulated command on a host; (exit code, stdout, stderr).

        A command that takes time (a build) sleeps here without the lab's lock, so that
        commands on other hosts (and other builds) go on meanwhile. ``gone`` tells whether
        the client went away (its SSH session closed): a command with a ``hangup`` then
        stops there, as a process does on SIGHUP."""
        if not argv:
            return 2, "", "labsim: empty command\n"
        with self.lock:
            self.tick()
            if host not in self.hosts:
                return 255, "", f"labsim: no such host {host!r}\n"
            prog = argv[0].rsplit("/", 1)[-1]
            result: Result | Deferred | None = None
            for cmd in self._commands.get(prog, []):
                result = cmd.fn(host, argv, stdin, cwd)
                if result is not None:
                    break
            if result is None:
                return 127, "", f"sh: 1: {prog}: not found\n"
            epoch, interrupt = self.epoch, self.interrupt
        while isinstance(result, Deferred):
            interrupted = _sleep(interrupt, result.delay, gone if result.hangup else None)
            if interrupted is None and result.hangup is not None:
                with self.lock:
                    self.tick()
                    return result.hangup()
            with self.lock:
                self.tick()
                if interrupted or epoch != self.epoch:
                    return 130, "", "error: interrupted by the user\n"
                result = result.finish()
        return result

    # -- views ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state, for ``python -m labsim state`` and ``LabClient.state()``."""
        with self.lock:
            self.tick()
            mono = time.monotonic()
            out: dict[str, Any] = {
                "options": self.options.to_json(),
                "time_scale": self.time_scale,
                "durations": dict(self.durations),
                "tasks": [t.to_json() for t in self.tasks.values()],
                "hosts": {h: self._host_json(h, mono) for h in self.hosts},
                "faults": [f.to_json() for f in self.faults],
            }
            for s in self.systems:
                out.update(s.to_json())
            return out

    def _host_json(self, name: str, mono: float) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "port": self.hosts[name].port}
        for s in self.systems:
            out.update(dict.fromkeys(s.host_fields()))
            out.update(s.host_json(name, mono))
        return out


def _sleep(
    interrupt: threading.Event, delay: float, gone: Callable[[], bool] | None
) -> bool | None:
    """Wait ``delay`` seconds: True when ``interrupt`` was set, None when ``gone()`` came
    true first (the client went away), False when the time ran out."""
    if gone is None:
        return interrupt.wait(delay)
    end = time.monotonic() + delay
    while (left := end - time.monotonic()) > 0:
        if interrupt.wait(min(left, 0.1)):
            return True
        if gone():
            return None
    return False


def _apply_task_fault(task: Task, fault: dict[str, Any]) -> None:
    action = fault["action"]
    if action == "error":
        task.fail_with = str(fault.get("exitstatus") or fault.get("message") or "failed")
    elif action == "hang":
        task.end_at = math.inf
    elif action == "slow":
        task.end_at += float(fault.get("delay", 0.0))
    elif action == "drop":  # the worker dies without a proper status
        task.fail_with = "unexpected status"
