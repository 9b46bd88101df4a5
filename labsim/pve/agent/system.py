"""``AgentSystem``: the QEMU guest agent of every VM and the Windows guests behind it.

It takes over ``agent/ping`` and serves ``get-osinfo``, ``exec``, ``exec-status`` and
``status/reboot`` (a ``qmreboot`` task). An exec runs one of moxflow's scripts against the
guest's ``WindowsState`` for a while (``win_exec``, ``win_install`` per update); its final
status is answered once, then forgotten. A process goes on whether anyone asks for it or not
(the program that started it may be gone): an install left running finishes and installs.
While one install runs, another finds the Windows Update installer busy (exit 5) and changes
nothing, as ``IUpdateInstaller.IsBusy`` makes ``install-updates.ps1`` do. A reboot takes the
agent away (``win_boot``) and empties the process table. The Windows state joins
``PveSystem.images``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from labsim.core import ApiRoute, Arg, Cli, ControlOp, System, Task
from labsim.core.lab import LabCore
from labsim.core.system import Effect
from labsim.pve.agent import api, scripts
from labsim.pve.agent.model import Update, WindowsState
from labsim.pve.model import Guest, Image, PveError
from labsim.pve.system import PveSystem

DURATIONS: dict[str, float] = {
    "win_exec": 0.5,  # a script that only looks
    "win_install": 2.0,  # install-updates.ps1, per update
    "guest_reboot": 1.0,  # the qmreboot task
    "win_boot": 5.0,  # Windows applying updates and booting: no agent meanwhile
}
OUTPUT_MAX = 16 * 2**20  # qemu-ga's cap per stream


@dataclass
class Proc:
    pid: int
    script: str | None
    data: dict[str, Any]
    done_at: float
    result: tuple[int, str, str] | None = None  # set when it ends
    busy: bool = False  # an install started while another ran: it finds the installer busy
    record: dict[str, Any] | None = None  # its entry in AgentRun.execs (gets its exit code)


@dataclass
class AgentRun:
    """A VM's agent processes and injected conditions (not kept by snapshots)."""

    procs: dict[int, Proc] = field(default_factory=dict)
    next_pid: int = 4000
    fails: dict[str, int] = field(default_factory=dict)  # KB -> HResult; app:ID; toolchain:X
    never_back: bool = False
    agent_off: bool = False
    hang: bool = False
    truncate: int = OUTPUT_MAX
    busy: int = 0  # the next N install-updates.ps1 find the installer busy (exit 5)
    install_seconds: float | None = None  # per update, before the time scale (win_install)
    boot_seconds: float | None = None  # a boot after a reboot, before the scale (win_boot)
    execs: list[dict[str, Any]] = field(default_factory=list)

    def installing(self) -> list[Proc]:
        """The install-updates.ps1 processes at work (not ended, not finding it busy)."""
        return [
            p
            for p in self.procs.values()
            if p.script == "install-updates.ps1" and p.result is None and not p.busy
        ]


class AgentSystem(System):
    name = "windows"

    def __init__(self) -> None:
        self.windows: dict[int, WindowsState] = {}
        self.run: dict[int, AgentRun] = {}

    def attach(self, lab: LabCore) -> None:
        super().attach(lab)
        lab.system(PveSystem).images.append(self)

    @property
    def pve(self) -> PveSystem:
        return self.lab.system(PveSystem)

    def build(self, now: float) -> None:
        self.run = {}
        self.windows = {
            g.vmid: WindowsState()
            for g in self.pve.guests.values()
            if g.type == "qemu" and str(g.ostype or "").startswith("win") and not g.template
        }

    def durations(self) -> dict[str, float]:
        return dict(DURATIONS)

    def routes(self) -> list[ApiRoute]:
        return list(api.ROUTES)

    def task_effects(self) -> dict[str, Effect]:
        return {"guest_reboot": self._finish_reboot}

    def agent_run(self, vmid: int) -> AgentRun:
        return self.run.setdefault(vmid, AgentRun())

    # -- the agent -----------------------------------------------------------------------------

    def ready(self, node: str, vmid: int, command: str) -> Guest:
        """PVE's checks before any agent command (all HTTP 500)."""
        self.pve.require_node(node)
        g = self.pve.load_guest(node, "qemu", vmid)
        if not g.agent:
            raise PveError(500, "No QEMU guest agent configured")
        if g.status != "running":
            raise PveError(500, f"VM {vmid} is not running")
        run = self.agent_run(vmid)
        if run.hang:
            raise PveError(500, f"VM {vmid} qga command '{command}' failed - got timeout")
        if run.agent_off or time.monotonic() < g.agent_ready_at:
            raise PveError(500, "QEMU guest agent is not running")
        return g

    def osinfo(self, vmid: int) -> dict[str, Any]:
        win = self.windows.get(vmid)
        if win is None:
            return {
                "id": "debian",
                "name": "Debian GNU/Linux",
                "pretty-name": "Debian GNU/Linux 13 (trixie)",
                "version-id": "13",
                "kernel-release": "6.12.41+deb13-amd64",
                "machine": "x86_64",
            }
        version = "11" if win.build >= 22000 else "10"
        return {
            "id": "mswindows",
            "name": "Microsoft Windows",
            "pretty-name": "Windows 10 Pro",  # the registry's ProductName, even on 11
            "version": f"Microsoft Windows {version}",
            "version-id": version,
            "kernel-version": "10.0",
            "kernel-release": str(win.build),
            "machine": "x86_64",
            "variant": win.variant,
            "variant-id": win.variant,
        }

    def start(self, vmid: int, command: list[str], input_data: str | None) -> int:
        """``guest-exec``: record what was sent and start the process."""
        run = self.agent_run(vmid)
        name, why = scripts.decode(command)
        data: Any = {}
        try:
            data = json.loads(input_data or "{}")
        except ValueError:
            why = why or "labsim: input-data is not JSON"
        if not isinstance(data, dict):
            data, why = {}, why or "labsim: input-data is not a JSON object"
        run.next_pid += 4
        pid = run.next_pid
        record = {
            "pid": pid,
            "script": name,
            "data": _redacted(data),
            "rejected": why or None,
            "input_sha256": hashlib.sha256((input_data or "").encode()).hexdigest(),
            "exitcode": None,  # when it ends
        }
        run.execs.append(record)
        mono = time.monotonic()
        if name is None or why:
            record["exitcode"] = 1
            run.procs[pid] = Proc(pid, None, data, mono, (1, "", why + "\r\n"), record=record)
            return pid
        seconds = self.lab.duration("win_exec")
        win = self.windows.get(vmid)
        busy = False
        if name == "install-updates.ps1" and win is not None:
            busy = bool(run.installing())  # IsBusy: it answers at once, installs nothing
            ids = set(map(str, data.get("ids") or []))
            per = (
                self.lab.duration("win_install")
                if run.install_seconds is None
                else run.install_seconds * self.lab.time_scale
            )
            if not busy:
                seconds += per * sum(1 for u in win.visible() if u.id in ids)
        run.procs[pid] = Proc(pid, name, data, mono + seconds, busy=busy, record=record)
        return pid

    def _finish(self, vmid: int, proc: Proc) -> None:
        win = self.windows.get(vmid)
        if win is None or proc.script is None:
            proc.result = proc.result or (1, "", "labsim: not a Windows guest\r\n")
            return
        run = self.agent_run(vmid)
        if proc.script == "install-updates.ps1" and (
            proc.busy or (run.busy > 0 and not win.reboot_pending)
        ):
            if not proc.busy:
                run.busy -= 1  # Windows installs by itself: the script changes nothing
            proc.result = (5, '{"error":"installer-busy","updates":[]}\r\n', "")
            return
        proc.result = scripts.run(proc.script, proc.data, win, run.fails)

    def after_tasks(self, mono: float) -> None:
        for vmid, run in self.run.items():
            # in the order they end: an install ending frees the installer for a later one
            for proc in sorted(run.procs.values(), key=lambda p: (p.done_at, p.pid)):
                if proc.result is None and proc.done_at <= mono:
                    self._finish(vmid, proc)
                    if proc.record is not None and proc.result is not None:
                        proc.record["exitcode"] = proc.result[0]

    def status(self, vmid: int, pid: int) -> dict[str, Any]:
        """``guest-exec-status``: running, or the end once (then the pid is forgotten)."""
        run = self.agent_run(vmid)
        proc = run.procs.get(pid)
        if proc is None:
            raise PveError(500, "Agent error: Invalid parameter 'pid'")
        if proc.result is None:
            return {"exited": 0}
        del run.procs[pid]
        code, out, err = proc.result
        answer: dict[str, Any] = {"exited": 1, "exitcode": code}
        for key, text in (("out", out), ("err", err)):
            raw = text.encode()
            if raw:
                answer[f"{key}-data"] = raw[: run.truncate].decode(errors="replace")
            if len(raw) > run.truncate:
                answer[f"{key}-truncated"] = 1
        return answer

    # -- reboots -------------------------------------------------------------------------------

    def read_file(self, vmid: int, path: str) -> bytes:
        """A file in the guest, as ``guest-file-open`` finds it (Windows paths: any case)."""
        win = self.windows.get(vmid)
        data = None if win is None else win.files.get(path.casefold())
        if data is None:
            raise PveError(
                500,
                f"VM {vmid} qga command 'guest-file-open' failed - failed to open file "
                f"'{path}' (error: The system cannot find the file specified.)",
            )
        return data

    def write_file(self, vmid: int, path: str, data: bytes) -> None:
        """``guest-file-open`` with mode ``wb``, then one write: the file is replaced."""
        win = self.windows.get(vmid)
        if win is None:
            raise PveError(500, f"VM {vmid} qga command 'guest-file-open' failed - not simulated")
        win.files[path.casefold()] = data

    def reboot(self, node: str, vmid: int, user: str) -> Task:
        """``POST .../status/reboot``: a qmreboot task; the guest restarts at its end."""
        self.pve.require_node(node)
        g = self.pve.load_guest(node, "qemu", vmid)
        fail = None
        if g.lock:
            fail = f"VM is locked ({g.lock})"
        elif g.status != "running":
            fail = f"VM {vmid} not running"
        return self.pve.new_task(
            node,
            "qmreboot",
            str(vmid),
            user,
            kind="fail" if fail else "guest_reboot",
            duration=0 if fail else self.lab.duration("guest_reboot"),
            args={"vmid": vmid},
            fail_now=fail,
        )

    def _finish_reboot(self, task: Task, ok: bool) -> None:
        g = self.pve.guests.get(task.args["vmid"])
        if g is None or not ok or g.status != "running":
            return
        run = self.agent_run(g.vmid)
        run.procs.clear()
        g.started_at = time.time()
        boot = self.lab.duration("win_boot" if g.vmid in self.windows else "agent")
        if g.vmid in self.windows and run.boot_seconds is not None:
            boot = run.boot_seconds * self.lab.time_scale
        g.agent_ready_at = math.inf if run.never_back else time.monotonic() + boot
        win = self.windows.get(g.vmid)
        if win is not None and not run.never_back:
            win.reboot_pending = False
            win.last_boot = time.time()

    # -- snapshots (PveSystem.images) ----------------------------------------------------------

    def capture(self, vmid: int) -> Image | None:
        win = self.windows.get(vmid)
        return None if win is None else win.copy()

    def restore(self, vmid: int, image: Image, *, with_ram: bool) -> None:
        assert isinstance(image, WindowsState)
        self.windows[vmid] = image.copy()
        run = self.agent_run(vmid)
        run.procs.clear()
        run.never_back = False  # the stuck boot is gone with the disk state it came from
        g = self.pve.guests.get(vmid)
        if g is not None:
            g.agent_ready_at = time.monotonic() + self.lab.duration("win_boot")

    # -- controls and state --------------------------------------------------------------------

    def controls(self) -> list[ControlOp]:
        def windows(msg: dict[str, Any]) -> dict[str, Any]:
            with self.lab.lock:
                self.lab.tick()
                vmid = int(msg["vmid"])
                win = self.windows.get(vmid)
                if win is None:
                    raise ValueError(f"guest {vmid} is not a Windows VM of the lab")
                run = self.agent_run(vmid)
                if msg.get("clear"):
                    win.pending = []
                for n, spec in enumerate((msg.get("pending") or "").split(",")):
                    if spec.strip():
                        win.pending.append(_update(spec.strip(), n))
                if msg.get("fail"):
                    kb, _, code = str(msg["fail"]).partition("=")
                    run.fails[kb] = int(code or "0x80240022", 16)
                for key in ("never_back", "agent_off", "hang"):
                    if msg.get(key) is not None:
                        setattr(run, key, msg[key] == "on")
                if msg.get("truncate") is not None:
                    run.truncate = int(msg["truncate"])
                if msg.get("busy") is not None:
                    run.busy = int(msg["busy"])
                for key in ("install_seconds", "boot_seconds"):
                    if msg.get(key) is not None:
                        seconds = float(msg[key])
                        if not seconds >= 0:
                            raise ValueError(f"{key} must be a number >= 0")
                        setattr(run, key, seconds)
                if msg.get("reset_faults"):
                    run.fails.clear()
                    run.never_back = run.agent_off = run.hang = False
                    run.truncate = OUTPUT_MAX
                    run.busy = 0
                    run.install_seconds = run.boot_seconds = None
                return self.vm_json(vmid)

        onoff = ("on", "off")
        return [
            ControlOp(
                "windows",
                windows,
                (
                    Arg("vmid", "the Windows VM", type="int", required=True),
                    Arg(
                        "pending",
                        "updates offered: KB:CATEGORY[:reboot][:after=KB][:age=DAYS],...",
                    ),
                    Arg("clear", "offer nothing else first", flag=True),
                    Arg("fail", "installing KB fails: KB=0xHRESULT (also app:ID, toolchain:NAME)"),
                    Arg(
                        "never_back", "after its next reboot the agent never answers", choices=onoff
                    ),
                    Arg("agent_off", "the guest agent does not answer", choices=onoff),
                    Arg("hang", "every agent command times out", choices=onoff),
                    Arg("truncate", "cut exec output past this many bytes", type="int"),
                    Arg("busy", "the next N installs find the installer busy", type="int"),
                    Arg(
                        "install_seconds",
                        "how long installing one update takes, before the time scale",
                        type="float",
                    ),
                    Arg(
                        "boot_seconds",
                        "how long a boot after a reboot takes, before the time scale",
                        type="float",
                    ),
                    Arg("reset_faults", "clear every fault", flag=True),
                ),
                Cli(
                    "windows",
                    "set a Windows VM's updates and agent faults",
                    "Set what Windows Update offers a Windows VM, make an update (or a Steam "
                    "app, a toolchain) fail, a reboot never come back, the agent be off or "
                    "hang, exec output be truncated, the update installer be busy, installs "
                    "and boots take longer.",
                ),
            )
        ]

    def vm_json(self, vmid: int) -> dict[str, Any]:
        run = self.agent_run(vmid)
        win = self.windows[vmid]
        ids = {str(i) for p in run.installing() for i in p.data.get("ids") or []}
        return win.to_json() | {
            "execs": list(run.execs),
            "running": sorted(p.pid for p in run.procs.values() if p.result is None),
            "installing": [u.kb for u in win.visible() if u.id in ids],
            "faults": {
                "fail": {k: f"0x{v & 0xFFFFFFFF:08X}" for k, v in run.fails.items()},
                "never_back": run.never_back,
                "agent_off": run.agent_off,
                "hang": run.hang,
                "truncate": run.truncate,
                "busy": run.busy,
                "install_seconds": run.install_seconds,
                "boot_seconds": run.boot_seconds,
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {"windows": {str(v): self.vm_json(v) for v in sorted(self.windows)}}


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    """The data as recorded: a password only as its length."""
    return {
        k: (f"<{len(str(v))} characters>" if k == "password" and v else v) for k, v in data.items()
    }


def _update(spec: str, n: int) -> Update:
    """``KB:CATEGORY[:reboot][:after=KB][:age=DAYS]`` from the control."""
    kb, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    category = parts[0] if parts else "Updates"
    after = next((p.removeprefix("after=") for p in parts if p.startswith("after=")), None)
    age = next((float(p.removeprefix("age=")) for p in parts if p.startswith("age=")), 0.0)
    uid = hashlib.sha256(kb.encode()).hexdigest()
    uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}"
    return Update(
        uid,
        kb,
        f"{category}: {kb} (lab)",
        (50 + n) * 2**20,
        category,
        reboot=1 if "reboot" in parts else 0,
        after=after,
        released=time.time() - age * 86400,
    )
