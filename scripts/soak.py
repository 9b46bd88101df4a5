"""`make soak`: the chaos soak. The nightly pipeline, again and again, against a lab that breaks.

Starts a simulated lab (its clock sped up, so an iteration takes seconds) and a Prefect server
(`prefect server start`, which sweeps expired leases), then for each iteration, from the seed:
guest snapshots, backups with their offsite copy, a restore test, NixOS updates and now and
then the Proxmox host update and the Windows VM's update, each on a random part of the lab,
with random faults injected: API errors and hangs, SSH drops, slow and failing Proxmox
tasks, failed builds, unhealthy switches, corrupted offsite copies, a failing Windows update,
a busy installer, a Windows VM that does not come back from its reboot, and kills (one job of
the iteration runs as
``python -m flows.<job>`` and is SIGKILLed at a random moment; the soak then marks its flow
run Crashed, as a process worker does when its child dies). After each job and each
iteration it checks the invariants of docs/reliability.md against the lab's state.

It prints the iterations, the faults by kind, the recoveries (an interrupted NixOS run found
and cleaned up, a leftover scratch guest destroyed, ...) and every violation with its
iteration and the command that replays it; it exits 1 on any violation.

    python -m scripts.soak [--iterations 200] [--seed 1] [--kill-rate 0.12] [--verbose]

Each iteration's plan depends only on the seed and its number; the lab's state depends on the
iterations before it, so a replay runs from iteration 0 up to the one that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

TIME_SCALE = 0.025
"""The lab's clock: a 2 s snapshot task takes 0.05 s, a 200 s dead-man timer 5 s."""

REPOSSESSOR_SECONDS = 2.0
"""How often the soak's Prefect server sweeps expired leases (Prefect's default: 15 s)."""

SNAPSHOT_GUESTS = (100, 101, 102, 104, 105)  # the lab's guest_snapshots select: -@tag-nosnap
BACKUP_GUESTS = (100, 101, 102, 103, 104, 105)  # not the template
NIXOS_HOSTS = ("dns", "media", "builder")
NODES = ("pve1", "pve2")
SCRATCH = range(9900, 10000)  # [restore_test] scratch_vmids by default
JOBS = (
    "guest_snapshot",
    "vzdump_backup",
    "restore_test",
    "nixos_update",
    "proxmox_update",
    "windows_update",
)
WINDOWS_VM, WINDOWS_NAME = 103, "win11-gaming"  # the lab's Windows VM (GPU passed through)
WINDOWS_RATE = 0.35
"""The share of iterations with the Windows update (its own RNG: the other draws of an
iteration are those of a soak without it)."""
WINDOWS_KILL_POINTS = ("after its snapshot", "during an install", "after its reboot request")
"""Where a killed Windows run is killed (the iteration's kill_after picks one): the soak
watches the lab for it, as tests/flows/test_crash_recovery_windows.py does."""
WINDOWS_PASS_LIMIT = 3
"""Windows runs in a row that may fail or be busy before adopting a killed run's snapshot
(a fault of the iteration, the VM not back yet); one more is a violation."""
WINDOWS_FAULTS = ("update-fails", "installer-busy", "never-back")
"""Faults of the Windows VM (lab controls, not counted as hits): an update of the iteration
fails (the run rolls back), the installer is busy once or twice (the run waits), the VM does
not come back from its reboot (the run rolls back once its agent_timeout is over)."""

FAULT_KINDS = (
    "api-error",
    "api-hang",
    "ssh-drop",
    "ssh-drop-after",
    "slow-task",
    "failing-task",
    "build-fails",
    "unhealthy-switch",
    "corrupted-copy",
)
KILL = "kill"
UNCOUNTED = (KILL, "build-fails", "unhealthy-switch", *WINDOWS_FAULTS)  # no count of hits

RECOVERY_MARKS = {
    "found an interrupted run": "NixOS: an interrupted run found and cleaned up",
    "reverted its unverified generation": "NixOS: a dead run's unverified generation reverted",
    "leftover scratch guest": "restore test: a leftover scratch guest destroyed",
    "earlier run": "an earlier run's task adopted",
    "arrived corrupted": "offsite: a corrupted copy detected and redone",
    "recovered: adopted snapshot": "Windows: an interrupted run's snapshot adopted",
    "it was not started again": "Windows: an interrupted run's install waited for",
    "for the agent, silent after": "Windows: the agent waited for after an interrupted run",
}


# --- the plan of an iteration ----------------------------------------------------------------


@dataclass
class Plan:
    """What one iteration runs and breaks; a function of the seed and the iteration alone."""

    snapshot: list[int]
    backup: list[int]
    nixos: list[str]
    proxmox: str | None
    faults: list[tuple[str, dict[str, Any]]]  # (kind, lab fault spec)
    nixos_faults: dict[str, dict[str, Any]]  # host -> lab.nixos fields
    windows: str | None  # the updates offered to the Windows VM (the lab's spec), or no run
    windows_fault: tuple[str, dict[str, Any]] | None  # (kind, fields of the windows control)
    kill: str | None  # the job run in a subprocess and killed
    kill_after: float  # as a share of the job's usual duration
    rng: random.Random


def plan_iteration(seed: int, i: int, kill_rate: float) -> Plan:
    rng = random.Random(f"moxflow-soak/{seed}/{i}")
    snapshot = sorted(rng.sample(SNAPSHOT_GUESTS, rng.randint(1, 2)))
    backup = sorted(rng.sample(BACKUP_GUESTS, rng.randint(1, 2)))
    nixos = sorted(rng.sample(NIXOS_HOSTS, rng.randint(1, 2)))
    proxmox = rng.choice(NODES) if rng.random() < 0.15 else None
    count = rng.choices((0, 1, 2, 3), weights=(2, 4, 3, 1))[0]
    faults: list[tuple[str, dict[str, Any]]] = []
    nixos_faults: dict[str, dict[str, Any]] = {}
    for kind in rng.sample(FAULT_KINDS, count):
        if kind == "build-fails":
            nixos_faults.setdefault(rng.choice(nixos), {})["build_fails"] = True
        elif kind == "unhealthy-switch":
            how = rng.choice(
                ({"failed_units": ["nginx"]}, {"health_broken": True}, {"cut_network": True})
            )
            nixos_faults.setdefault(rng.choice(nixos), {}).update(how)
        else:
            faults.append((kind, _fault_spec(kind, rng, nixos)))
    windows, windows_fault = _plan_windows(seed, i)
    jobs = ["guest_snapshot", "vzdump_backup", "restore_test", "nixos_update"]
    if proxmox:
        jobs.append("proxmox_update")
    if windows:
        jobs.append("windows_update")
    kill = rng.choice(jobs) if rng.random() < kill_rate else None
    return Plan(
        snapshot,
        backup,
        nixos,
        proxmox,
        faults,
        nixos_faults,
        windows,
        windows_fault,
        kill,
        rng.uniform(0.1, 1.0),
        rng,
    )


def _plan_windows(seed: int, i: int) -> tuple[str | None, tuple[str, dict[str, Any]] | None]:
    """Whether iteration ``i`` updates the Windows VM: the updates it is offered (new KBs
    each time: a cumulative one asking for a reboot, maybe a second one that shows only
    after it) and at most one fault."""
    rng = random.Random(f"moxflow-soak/{seed}/{i}/windows")
    if rng.random() >= WINDOWS_RATE:
        return None, None
    first, second = f"KB{6000000 + 10 * i}", f"KB{6000000 + 10 * i + 1}"
    pending = f"{first}:Security Updates:reboot"
    if rng.random() < 0.5:
        pending += f",{second}:Updates:after={first}"
    fault: tuple[str, dict[str, Any]] | None = None
    if rng.random() < 0.5:
        kind = rng.choice(WINDOWS_FAULTS)
        fields: dict[str, Any] = {
            "update-fails": {"fail": f"{first}=0x80240022"},
            "installer-busy": {"busy": rng.randint(1, 2)},
            "never-back": {"never_back": "on"},
        }[kind]
        fault = (kind, fields)
    return pending, fault


def _fault_spec(kind: str, rng: random.Random, hosts: list[str]) -> dict[str, Any]:
    times = rng.randint(1, 2)
    if kind == "api-error":
        path = rng.choice(
            (
                r"/snapshot$",
                r"/snapshot/[^/]+$",
                r"/vzdump$",
                r"/tasks/[^/]+/status$",
                r"/storage/[^/]+/content$",
                r"/(qemu|lxc)$",
                r"/status/(start|current)$",
                r"/apt/update$",
            )
        )
        status = rng.choice((500, 500, 596))
        return {"target": "api", "path": path, "action": "error", "status": status,
                "message": "soak: injected", "times": times}  # fmt: skip
    if kind == "api-hang":
        path = rng.choice((r"/tasks/[^/]+/status$", r"/(qemu|lxc)$", r"/storage/[^/]+/content$"))
        return {"target": "api", "method": "GET", "path": path, "action": "hang", "times": 1}
    if kind == "ssh-drop":
        host = rng.choice([*hosts, "offsite", "pve1", "pve2"])
        return {"target": "connect", "host": host, "action": "drop", "times": times}
    if kind == "ssh-drop-after":
        host, command = rng.choice(
            [(h, r"^(nixos-rebuild|nix |systemctl)") for h in hosts]
            + [("offsite", r"^(sh|sha256sum|mv)"), ("pve1", r"^(sh|sha256sum)")]
        )
        return {"target": "command", "host": host, "command": command, "action": "drop-after",
                "times": 1}  # fmt: skip
    if kind == "slow-task":
        ttype = rng.choice(("qmsnapshot", "vzsnapshot", "vzdump", "qmrestore", "vzrestore"))
        return {"target": "task", "type": ttype, "action": "slow",
                "delay": round(rng.uniform(0.5, 3.0), 2), "times": times}  # fmt: skip
    if kind == "failing-task":
        ttype = rng.choice(
            ("qmsnapshot", "vzsnapshot", "qmdelsnapshot", "vzdump", "qmrestore", "vzrestore")
        )
        return {"target": "task", "type": ttype, "action": "error",
                "exitstatus": "soak: injected failure", "times": times}  # fmt: skip
    if kind == "corrupted-copy":
        return {"target": "command", "host": "offsite", "command": "^sha256sum", "action": "error",
                "exit": 0, "stdout": "0" * 64 + "  x.part\n", "times": times}  # fmt: skip
    raise ValueError(kind)


# --- what the soak found ---------------------------------------------------------------------


@dataclass
class Violation:
    iteration: int
    invariant: str
    detail: str

    def line(self, seed: int) -> str:
        return (
            f"iteration {self.iteration} [{self.invariant}] {self.detail}  "
            f"(replay: python -m scripts.soak --seed {seed} --iterations {self.iteration + 1})"
        )


@dataclass
class Summary:
    seed: int
    iterations: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    recoveries: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)  # "job ok" / "job not ok" / ...
    violations: list[Violation] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"soak: seed {self.seed}, {self.iterations} iterations in {self.seconds:.0f} s "
            f"({self.seconds / max(1, self.iterations):.1f} s each)",
            "faults injected (fired): "
            + (
                ", ".join(
                    f"{k} {n} ({self.fired[k]})" if k not in UNCOUNTED else f"{k} {n}"
                    for k, n in sorted(self.faults.items())
                )
                or "none"
            ),
            "recoveries: "
            + (", ".join(f"{k}: {n}" for k, n in sorted(self.recoveries.items())) or "none"),
            "runs: " + ", ".join(f"{k} {n}" for k, n in sorted(self.runs.items())),
            f"violations: {len(self.violations)}",
        ]
        lines += [f"  {v.line(self.seed)}" for v in self.violations]
        return "\n".join(lines) + "\n"


# --- the soak --------------------------------------------------------------------------------


def soak_inventory(lab_dir: Path) -> Path:
    """The lab's inventory with the soak's timeouts: an API that hangs is given up after 5 s,
    a dead-man timer of 200 s fires after 5 s of the lab's clock."""
    text = (lab_dir / "inventory.toml").read_text()
    for pattern, new in (
        (r"(?m)^confirm_timeout = .*$", "confirm_timeout = 200.0"),
        (r"(?m)^health_grace = .*$", "health_grace = 2.0"),
        (r"(?m)^timeout = 30\.0$", "timeout = 5.0"),
        (r"(?m)^command_timeout = .*$", "command_timeout = 60.0"),
    ):
        text = re.sub(pattern, new, text)
    # the Windows VM: bounded waits (a boot takes 0.125 s of the lab's clock; one that never
    # comes back is given up after 5 s, then rolled back)
    text += (
        f"\n[windows]\nagent_timeout = 5.0\nverify_grace = 0.5\nscript_timeout = 30.0\n"
        f"\n[windows.vms.{WINDOWS_NAME}]\n"
    )
    dst = lab_dir / "soak-inventory.toml"
    dst.write_text(text)
    return dst


class Soak:
    """The driver: runs iterations against ``lab`` with the Prefect API at ``api_url``."""

    def __init__(
        self,
        lab: Any,
        api_url: str,
        seed: int,
        *,
        kill_rate: float = 0.12,
        log: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.lab = lab
        self.api_url = api_url
        self.seed = seed
        self.kill_rate = kill_rate
        self.inventory = soak_inventory(lab.dir)
        self.log = log
        self.say = say
        self.summary = Summary(seed)
        self.durations: dict[str, list[float]] = {j: [] for j in JOBS}
        lab.set_guest(WINDOWS_VM, status="running")  # stopped in a fresh lab
        state = lab.state()
        # what moxflow did not make, at the start: it must stay as it is
        self.foreign_guest_snaps = {
            (int(vmid), name): snap.get("snaptime")
            for vmid, g in state["guests"].items()
            for name, snap in g["snapshots"].items()
            if not name.startswith("moxflow-")
        }
        self.foreign_zfs_snaps = {
            f"{host}:{ds}@{s['name']}": s["guid"]
            for host, h in state["hosts"].items()
            if h.get("zfs")
            for ds, d in h["zfs"]["datasets"].items()
            for s in d["snapshots"]
            if not s["name"].startswith("moxflow-")
        }
        self.protected = {
            a["volid"]
            for st in state["storages"].values()
            for a in st["archives"]
            if a["protected"]
        }
        # each guest's last good backup: the newest archive at the start, then the newest
        # one a report called OK
        self.good: dict[int, dict[str, Any]] = {}
        for a in self._archives(state):
            newest = self.good.get(a["vmid"])
            newer = newest is None or a["ctime"] > newest["ctime"]
            if a["vmid"] in BACKUP_GUESTS and a["size"] > 0 and newer:
                self.good[a["vmid"]] = a
        self.killed_last: str | None = None
        self.interrupted_hosts: set[str] = set()  # a killed NixOS run's, not run on since
        # the Windows VM: the pre-update snapshot a killed run left (the next run must adopt
        # it), the KBs installed at the next run's rollback point, the snapshots before a run
        self.windows_left: str | None = None
        self.windows_base: list[str] = list(state["windows"][str(WINDOWS_VM)]["installed"])
        self.windows_snaps: set[str] = set()
        self.windows_passed_by = 0  # Windows runs in a row that left a killed run's alone
        # the Proxmox nodes: where the guests were before the update of a node (its
        # journal's placement when an interrupted update is on it), and the nodes an update
        # left unfinished (killed, or its row not OK) and no update has finished since
        self.pve_expected: dict[str, tuple[str, str]] = {}
        self.pve_open: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _archives(state: dict[str, Any]) -> list[dict[str, Any]]:
        return list(state["storages"]["nas-backup"]["archives"])

    def _note(self, text: str) -> None:
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(text.rstrip("\n") + "\n")

    def _violate(self, i: int, invariant: str, detail: str) -> None:
        v = Violation(i, invariant, detail)
        self.summary.violations.append(v)
        self.say(f"  VIOLATION {v.line(self.seed)}")
        self._note(f"VIOLATION {v.line(self.seed)}")

    def _params(self, job: str, plan: Plan) -> dict[str, Any]:
        if job == "guest_snapshot":
            return {"label": "daily", "select": _ids(plan.snapshot), "lock_timeout": 15.0}
        if job == "vzdump_backup":
            return {"select": _ids(plan.backup), "lock_timeout": 15.0}
        if job == "restore_test":
            with_backup = [v for v in plan.backup if v in self.good] or sorted(self.good)[:1]
            return {"select": _ids(with_backup[:1])}
        if job == "nixos_update":
            return {"only": plan.nixos}
        if job == "windows_update":
            return {}  # the soak's inventory lists the one Windows VM
        return {"only": [plan.proxmox]}

    # -- one iteration ----------------------------------------------------------------------

    def iteration(self, i: int) -> None:
        plan = plan_iteration(self.seed, i, self.kill_rate)
        lab = self.lab
        # the NixOS hosts' next generation: healthy unless broken below; something to update
        for host in NIXOS_HOSTS:
            lab.nixos(host, healthy=True)
        for host in plan.nixos:
            lab.nixos(host, upstream=f"soak-{self.seed}-{i}-{host}")
        for host, fields in plan.nixos_faults.items():
            lab.nixos(host, **fields)
            for key in fields:
                kind = "build-fails" if key == "build_fails" else "unhealthy-switch"
                self.summary.faults[kind] += 1
        if plan.proxmox:
            lab.control(
                "apt_pending",
                node=plan.proxmox,
                packages=f"pve-manager=9.1.{i + 3},openssl=3.5.{i + 2}-1",
                refresh=True,
            )
        if plan.windows:
            lab.control("windows", vmid=WINDOWS_VM, pending=plan.windows)
        if plan.windows_fault:
            kind, fields = plan.windows_fault
            lab.control("windows", vmid=WINDOWS_VM, **fields)
            self.summary.faults[kind] += 1
        ids: dict[int, str] = {}
        for kind, spec in plan.faults:
            ids[lab.fault(**spec)] = kind
            self.summary.faults[kind] += 1
        if plan.kill:
            self.summary.faults[KILL] += 1
        jobs = [
            j
            for j in JOBS
            if (j != "proxmox_update" or plan.proxmox) and (j != "windows_update" or plan.windows)
        ]
        windows_faults = [plan.windows_fault[0]] if plan.windows_fault else []
        self.say(
            f"[{i}] snap {_ids(plan.snapshot)} backup {_ids(plan.backup)} nixos "
            f"{','.join(plan.nixos)}{' pve ' + plan.proxmox if plan.proxmox else ''}"
            f"{' win ' + plan.windows if plan.windows else ''}; faults "
            f"{[k for k, _ in plan.faults] + sorted(_nixos_kinds(plan)) + windows_faults}"
            + (f"; kill {plan.kill}" if plan.kill else "")
        )
        reports: dict[str, Any] = {}
        for job in jobs:
            if job == "windows_update":
                self._before_windows()
            if job == "proxmox_update" and plan.proxmox:
                self._before_proxmox(plan.proxmox)
            if job == plan.kill:
                self._run_killed(i, job, plan)
                continue
            report = self._run(i, job, self._params(job, plan))
            reports[job] = report
            if report is not None:
                self._check_job(i, job, report)
        # faults that did not fire go now; count the ones that did
        state = lab.state()
        left = {f["fault_id"]: f.get("remaining") for f in state["faults"]}
        for fid, kind in ids.items():
            spec = dict(plan.faults[list(ids).index(fid)][1])
            times = spec.get("times") or 1
            if fid not in left or (left[fid] is not None and left[fid] < times):
                self.summary.fired[kind] += 1
        lab.clear_faults()
        lab.control("windows", vmid=WINDOWS_VM, reset_faults=True)
        for host in NIXOS_HOSTS:
            lab.nixos(host, healthy=True)
        if plan.kill:
            self._after_kill(i)
        self._settle()
        if plan.kill == "windows_update":  # killed, or it ended first: no report seen
            self._after_windows_subprocess()
        self._check_iteration(i, plan, reports)
        self.killed_last = plan.kill
        self.summary.iterations += 1

    def _settle(self) -> None:
        """Wait (bounded) until the lab has no task running: an iteration ends when the
        Proxmox tasks its runs started have ended, as a night ends before the next one."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = self.lab.state()["tasks"]
            if not any(t.get("status") == "running" for t in tasks):
                return
            time.sleep(0.2)

    def _run(self, i: int, job: str, params: dict[str, Any]) -> Any:
        """Run a job in this process; its report (None: it ended without one)."""
        import importlib

        from prefect.settings import PREFECT_API_URL, temporary_settings

        from moxflow.errors import MoxflowError, RunFailed
        from moxflow.report import RunReport

        flow = getattr(importlib.import_module(f"flows.jobs.{job}"), job)
        t0 = time.monotonic()
        report: Any = None
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            try:
                report = flow(inventory=str(self.inventory), **params)
            except RunFailed as exc:
                report = exc.report
            except MoxflowError as exc:
                self.summary.runs[f"{job} error"] += 1
                self._note(f"[{i}] {job} {params}: error: {exc}")
                return None
            except Exception:
                self._violate(i, "no traceback", f"{job} {params}: {traceback.format_exc(-3)}")
                return None
        took = time.monotonic() - t0
        self.durations[job].append(took)
        if isinstance(report, RunReport):
            self.summary.runs[f"{job} {'ok' if report.ok else 'not ok'}"] += 1
            self._note(f"[{i}] {job} {params} ({took:.1f} s)\n{report.to_text()}")
            self._count_recoveries(" ".join([r.detail for r in report.rows] + list(report.notes)))
        return report

    def _count_recoveries(self, text: str) -> None:
        for mark, what in RECOVERY_MARKS.items():
            if mark in text:
                self.summary.recoveries[what] += text.count(mark)

    def _child_argv(self, job: str, params: dict[str, Any]) -> list[str]:
        argv = [sys.executable, "-m", f"flows.{job}"]
        argv += ["--inventory", str(self.inventory)]
        for key, value in params.items():
            if key == "label":
                argv += ["--label", value]
            elif key == "only":
                for v in value:
                    argv += ["--only", v]
            else:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def _run_killed(self, i: int, job: str, plan: Plan) -> bool:
        """Run a job as ``python -m flows.<job>`` and SIGKILL it at a random moment; whether
        it was killed (it may end first)."""
        usual = statistics.median(self.durations[job]) if self.durations[job] else 6.0
        after = 1.0 + plan.kill_after * usual
        env = {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_LOGGING_LEVEL": "CRITICAL",
            "PYTHONPATH": str(ROOT),
        }
        argv = self._child_argv(job, self._params(job, plan))
        out = self.log.with_suffix(f".{i}.{job}.out") if self.log else Path(os.devnull)
        point = ""
        if job == "windows_update":  # at one of its dangerous points, not at a random time
            point = WINDOWS_KILL_POINTS[min(int(plan.kill_after * 3), 2)]
            after = 60.0 + 3 * usual  # a bound: the point comes well before
            # installs and boots slow enough to be seen (reset with the iteration's faults)
            self.lab.control("windows", vmid=WINDOWS_VM, install_seconds=40, boot_seconds=40)
        with out.open("wb") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=sink)
        started = time.monotonic()
        try:
            if point:
                self._wait_windows_point(proc, point, started + after)
            proc.wait(timeout=max(0.0, started + after - time.monotonic()))
            self._note(f"[{i}] {job}: ended (status {proc.returncode}) before its kill")
            self.summary.runs[f"{job} ended before its kill"] += 1
            if self.log is not None:  # its report, as the command line printed it
                self._count_recoveries(out.read_text(errors="replace"))
            return False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            took = time.monotonic() - started
            self._note(f"[{i}] {job}: SIGKILLed after {took:.1f} s{' ' + point if point else ''}")
            self.summary.runs[f"{job} killed"] += 1
            return True

    def _wait_windows_point(self, proc: subprocess.Popen[bytes], point: str, until: float) -> None:
        """Return once the Windows run is at ``point`` (raising TimeoutExpired: kill it now),
        or once it ended or ``until`` passed (then the caller waits for it)."""
        before = {t["upid"] for t in self.lab.state()["tasks"] if t["type"] == "qmreboot"}
        while proc.poll() is None and time.monotonic() < until:
            state = self.lab.state()
            win = state["windows"][str(WINDOWS_VM)]
            snaps = state["guests"][str(WINDOWS_VM)]["snapshots"]
            at = {
                "after its snapshot": any(
                    n.startswith("moxflow-pre-update-")
                    and n not in self.windows_snaps
                    and not s.get("snapstate")
                    for n, s in snaps.items()
                ),
                "during an install": bool(win["installing"]),
                "after its reboot request": any(
                    t["type"] == "qmreboot" and t["upid"] not in before for t in state["tasks"]
                ),
            }[point]
            if at:
                raise subprocess.TimeoutExpired(proc.args, 0)
            time.sleep(0.05)

    def _after_kill(self, i: int) -> None:
        """What a process worker does when its child dies: the run goes Crashed. Then the
        killed run's slots must come free once their lease runs out."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
        from prefect.client.schemas.filters import FlowRunFilterStateType as StateType
        from prefect.client.schemas.objects import StateType as T
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.states import Crashed

        from tasks.targets import LEASE_SECONDS

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                live = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=StateType(any_=[T.RUNNING, T.PENDING, T.SCHEDULED])
                        )
                    )
                )
                for run in live:
                    client.set_flow_run_state(
                        run.id, Crashed(message="the soak SIGKILLed its process"), force=True
                    )
            bound = LEASE_SECONDS + REPOSSESSOR_SECONDS + 15
            deadline = time.monotonic() + bound
            while (held := self._held_slots()) and time.monotonic() < deadline:
                time.sleep(0.5)
        if held:
            self._violate(
                i, "no lock outlives its holder", f"slots {held} still held {bound:g} s after kill"
            )

    def _held_slots(self) -> list[str]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            limits = client.read_global_concurrency_limits(limit=200)
        return sorted(
            f"{lim.name}={lim.active_slots}"
            for lim in limits
            if lim.name.startswith("moxflow-") and lim.active_slots
        )

    # -- the invariants ---------------------------------------------------------------------

    def _check_job(self, i: int, job: str, report: Any) -> None:
        """Nothing half-written counts as done: an OK row's artifact is in the lab."""
        from moxflow.report import Outcome

        state = self.lab.state()
        for row in report.rows:
            if row.outcome is not Outcome.OK:
                continue
            if job == "guest_snapshot" and row.taken:
                vmid = int(row.target.split()[0])
                snap = state["guests"][str(vmid)]["snapshots"].get(row.taken)
                if snap is None or snap.get("snapstate"):
                    self._violate(
                        i,
                        "nothing half-written counts as done",
                        f"guest_snapshot OK for {row.target} but snapshot {row.taken} is "
                        f"{'missing' if snap is None else snap.get('snapstate')}",
                    )
            elif job == "vzdump_backup" and row.taken and not row.target.endswith(" offsite"):
                vmid = int(row.target.split()[0])
                found = [a for a in self._archives(state) if a["filename"] == row.taken]
                if not found or found[0]["size"] <= 0 or not Path(found[0]["path"]).is_file():
                    self._violate(
                        i,
                        "nothing half-written counts as done",
                        f"vzdump OK for {row.target} but archive {row.taken} is "
                        f"{'missing' if not found else 'empty'}",
                    )
                else:
                    self.good[vmid] = found[0]
            elif job == "vzdump_backup" and row.target.endswith(" offsite"):
                vmid = int(row.target.split()[0])
                good = self.good.get(vmid)
                if good is None:
                    continue
                copy = self._offsite_dir() / good["filename"]
                if not copy.is_file() or _sha256(copy) != good["sha256"]:
                    self._violate(
                        i,
                        "nothing half-written counts as done",
                        f"offsite OK for {row.target} but the copy of {good['filename']} is "
                        f"{'missing' if not copy.is_file() else 'not the archive (sha256)'}",
                    )
            elif job == "nixos_update":
                host = row.target
                st = state["hosts"][host]["nixos"]
                why = _broken(st) or ("a dead-man timer armed" if st["timers"] else "")
                if why or self._lock_dir(host).exists():
                    self._violate(
                        i,
                        "nothing half-written counts as done",
                        f"nixos OK for {host} but {why or 'its lock is still there'}",
                    )
        if job == "windows_update":
            self._check_windows(i, report)
        if job == "proxmox_update":
            self._check_proxmox(i, report)
        if job == "restore_test":
            left = [g for g in state["guests"] if int(g) in SCRATCH]
            if left:
                self._violate(
                    i,
                    "no lock outlives its holder",
                    f"scratch guest(s) {left} after a restore test",
                )

    # -- the Proxmox nodes -------------------------------------------------------------------

    def _journal(self, node: str) -> dict[str, Any] | None:
        """The journal an update left on ``node`` (the lab's file), None when there is none."""
        path = self.lab.dir / "apt" / node / "proxmox-update.json"
        try:
            found: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return found

    def _before_proxmox(self, node: str) -> None:
        """Where the node's guests must be once its update is OK: as they are now, or as the
        journal of an interrupted update says they were before it."""
        guests = self.lab.state()["guests"]
        journal = self._journal(node)
        if journal is not None:
            self.pve_expected = {
                str(g["vmid"]): (g["node"], g["status"]) for g in journal["guests"]
            }
        else:
            self.pve_expected = {
                v: (g["node"], g["status"]) for v, g in guests.items() if g["node"] == node
            }

    def _check_proxmox(self, i: int, report: Any) -> None:
        """A node's update OK leaves it updated (nothing pending, nothing half configured),
        online, out of HA maintenance, without a journal, and every guest of it where it was
        before (before the interrupted update it recovered), running as it was."""
        from moxflow.report import NOT_OK, Outcome

        state = self.lab.state()
        for row in report.rows:
            node = row.target
            if node not in state["hosts"] or "apt" not in state["hosts"][node]:
                continue  # the cluster's row
            if row.outcome in NOT_OK:
                self.pve_open.add(node)
            if row.outcome is not Outcome.OK:
                continue
            self.pve_open.discard(node)
            a = state["hosts"][node]["apt"]
            problems = [
                *(["packages pending"] if a["pending"] else []),
                *([f"half configured {a['half_configured']}"] if a["half_configured"] else []),
                *(["in HA maintenance"] if a["maintenance"] else []),
                *([f"status {a['status']}"] if a["status"] != "online" else []),
                *(["its journal is still there"] if self._journal(node) is not None else []),
            ]
            for vmid, want in sorted(self.pve_expected.items()):
                g = state["guests"].get(vmid)
                now = (g["node"], g["status"]) if g else ("gone", "")
                onboot = g is not None and str((g["config"] or {}).get("onboot")) == "1"
                if now != want and not (onboot and now == (want[0], "running")):
                    problems.append(f"guest {vmid} {now}, was {want}")
            if problems:
                self._violate(
                    i,
                    "a node's update OK leaves it updated, its guests back",
                    f"proxmox_update OK for {node} but {'; '.join(problems)}",
                )

    # -- the Windows VM ---------------------------------------------------------------------

    def _windows_pre_update(self) -> dict[str, dict[str, Any]]:
        snaps = self.lab.state()["guests"][str(WINDOWS_VM)]["snapshots"]
        return {n: s for n, s in snaps.items() if n.startswith("moxflow-pre-update-")}

    def _before_windows(self) -> None:
        """Before a Windows run: its snapshots, and (unless a killed run's snapshot is to be
        adopted: that one is the rollback point) what is installed now."""
        self.windows_snaps = set(self._windows_pre_update())
        if self.windows_left is None:
            self.windows_base = list(self.lab.state()["windows"][str(WINDOWS_VM)]["installed"])

    def _after_windows_subprocess(self) -> None:
        """After the Windows run the soak ran as a process (killed, or it ended first): the
        VM's newest pre-update snapshot, whole (once its task ended), whose description
        names a run and does not say that its update was committed or rolled back (it says
        ``[in progress]`` until then) is the one the next Windows run must adopt, or leave
        alone, changing nothing (needs attention: too old, a newer snapshot)."""
        from moxflow.naming import FINISHED_STATES, description_run, description_state

        whole = {n: s for n, s in self._windows_pre_update().items() if not s.get("snapstate")}
        self.windows_left = None
        if not whole:
            return
        name = max(whole)
        text = whole[name].get("description")
        if description_run(text) is not None and description_state(text) not in FINISHED_STATES:
            self.windows_left = name

    def _check_windows(self, i: int, report: Any) -> None:
        """The Windows VM after its run: a killed run's snapshot is this run's rollback point
        (never a new snapshot of a VM it may have half-updated), or the run changed nothing
        (refused in pre-flight, busy, or leaving that snapshot alone with a needs-attention
        row naming it); an OK row leaves the VM running, nothing installing, no reboot
        pending, its snapshot whole; a rolled-back row leaves it as it was at the rollback
        point."""
        from moxflow.report import EMPTY, Outcome

        state = self.lab.state()
        vm = state["guests"][str(WINDOWS_VM)]
        win = state["windows"][str(WINDOWS_VM)]
        snaps = self._windows_pre_update()
        for row in report.rows:
            cell = "" if row.cell("snapshot") == EMPTY else row.cell("snapshot")
            name = cell.split(" ")[0] if cell else ""
            left = self.windows_left
            adopted = left is not None and name == left and "adopted" in cell
            untouched = not cell and set(snaps) == self.windows_snaps
            left_alone = untouched and (
                row.outcome in (Outcome.FAILED, Outcome.BUSY)
                or (
                    row.outcome is Outcome.NEEDS_ATTENTION
                    and left is not None
                    and left in row.detail
                    and "nothing was changed" in row.detail
                )
            )
            if left and not adopted and not left_alone:
                self._violate(
                    i,
                    "a killed run's snapshot is the next run's rollback point",
                    f"windows_update {row.outcome.value} with snapshot {cell or 'none'}; the "
                    f"killed run's {left} was neither adopted nor left alone",
                )
            # failed or busy before its snapshot step: the next run adopts it; not for ever
            passed_by = (
                left is not None and left_alone and row.outcome is not Outcome.NEEDS_ATTENTION
            )
            self.windows_passed_by = self.windows_passed_by + 1 if passed_by else 0
            if self.windows_passed_by >= WINDOWS_PASS_LIMIT:
                self._violate(
                    i,
                    "a killed run's snapshot is the next run's rollback point",
                    f"the killed run's {left} left alone by {self.windows_passed_by} runs in a "
                    f"row (failed or busy, never a needs-attention row naming it): "
                    f"{row.outcome.value}: {row.detail}",
                )
            whole = name in snaps and not snaps[name].get("snapstate")
            problems: list[str] = []
            if row.outcome in (Outcome.OK, Outcome.ROLLED_BACK):
                if vm["status"] != "running":
                    problems.append(f"the VM is {vm['status']}")
                if win["installing"]:
                    problems.append(f"still installing {win['installing']}")
                if not whole:
                    problems.append(f"its snapshot {name or '(none)'} is not there whole")
            if row.outcome is Outcome.OK and win["reboot_pending"]:
                problems.append("a reboot is pending")
            if row.outcome is Outcome.ROLLED_BACK and win["installed"] != self.windows_base:
                problems.append(
                    f"rolled back, but installed {win['installed']}, not {self.windows_base}"
                )
            if problems:
                self._violate(
                    i,
                    "nothing half-written counts as done",
                    f"windows_update {row.outcome.value}: " + "; ".join(problems),
                )
            if cell:  # adopted, or (a violation above) a snapshot of its own taken
                self.windows_left = None

    def _offsite_dir(self) -> Path:
        return Path(self.lab.dir) / "hosts" / "offsite" / "backups"

    def _lock_dir(self, host: str) -> Path:
        return Path(self.lab.dir) / "hosts" / host / "var" / "lib" / "moxflow" / "update.lock"

    def _check_iteration(self, i: int, plan: Plan, reports: dict[str, Any]) -> None:
        from moxflow.report import Outcome

        state = self.lab.state()
        # no snapshot moxflow did not make was touched
        for (vmid, name), snaptime in self.foreign_guest_snaps.items():
            snap = state["guests"].get(str(vmid), {}).get("snapshots", {}).get(name)
            if snap is None or snap.get("snaptime") != snaptime:
                self._violate(i, "foreign snapshots untouched", f"guest {vmid} snapshot {name}")
        now_zfs = {
            f"{host}:{ds}@{s['name']}": s["guid"]
            for host, h in state["hosts"].items()
            if h.get("zfs")
            for ds, d in h["zfs"]["datasets"].items()
            for s in d["snapshots"]
        }
        for name, guid in self.foreign_zfs_snaps.items():
            if now_zfs.get(name) != guid:
                self._violate(i, "foreign snapshots untouched", f"ZFS snapshot {name}")
        archives = {a["volid"]: a for a in self._archives(state)}
        for volid in self.protected - set(archives):
            self._violate(i, "foreign snapshots untouched", f"protected archive {volid} removed")
        # every guest keeps its last good backup
        for vmid, good in sorted(self.good.items()):
            if good["volid"] not in archives:
                self._violate(
                    i,
                    "every guest keeps its last good backup",
                    f"guest {vmid}: {good['filename']} is gone",
                )
        # an offsite copy under its final name is the archive it names
        folder = self._offsite_dir()
        by_name = {a["filename"]: a for a in archives.values()}
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            a = by_name.get(path.name)
            if a is not None and _sha256(path) != a["sha256"]:
                self._violate(
                    i, "nothing half-written counts as done", f"offsite {path.name}: wrong sha256"
                )
        # no NixOS host on a broken generation without a "needs attention" row
        nixos = reports.get("nixos_update")
        attention = {
            r.target
            for r in (nixos.rows if nixos is not None else ())
            if r.outcome is Outcome.NEEDS_ATTENTION
        }
        for host in NIXOS_HOSTS:
            st = state["hosts"][host]["nixos"]
            why = _broken(st)
            if why and host not in attention:
                in_flight = plan.kill == "nixos_update" and st["timers"]
                if not in_flight:
                    self._violate(
                        i, "no broken host without a needs-attention row", f"{host}: {why}"
                    )
        # no lock outlives its holder (no run is live now): a killed NixOS run's lock waits
        # for the next NixOS run on its host, which recovers it
        if plan.kill == "nixos_update":
            self.interrupted_hosts |= set(plan.nixos)
        else:
            self.interrupted_hosts -= set(plan.nixos)
        for host in NIXOS_HOSTS:
            if self._lock_dir(host).exists() and host not in self.interrupted_hosts:
                self._violate(i, "no lock outlives its holder", f"NixOS lock on {host}")
        # no Windows VM left half-updated (reboot pending, an install at work) unless a killed
        # run left it so (its next run finishes it) or a report says it needs attention
        windows = reports.get("windows_update")
        if plan.windows and plan.kill != "windows_update" and self.windows_left is None:
            win = state["windows"][str(WINDOWS_VM)]
            attention = windows is not None and any(
                r.outcome is Outcome.NEEDS_ATTENTION for r in windows.rows
            )
            if (win["reboot_pending"] or win["installing"]) and not attention:
                self._violate(
                    i,
                    "no Windows VM half-updated without a needs-attention row",
                    f"reboot pending {win['reboot_pending']}, installing {win['installing']}",
                )
        # no node left mid-update (its journal, HA maintenance) unless a killed update left
        # it or a report says its update did not end well
        if plan.kill == "proxmox_update" and plan.proxmox:
            self.pve_open.add(plan.proxmox)
        for node in NODES:
            a = state["hosts"][node]["apt"]
            left = [
                *(["a journal"] if self._journal(node) is not None else []),
                *(["HA maintenance"] if a["maintenance"] else []),
            ]
            if left and node not in self.pve_open:
                self._violate(
                    i,
                    "no node left mid-update without a report saying so",
                    f"{node}: {' and '.join(left)}",
                )
        scratch = [g for g in state["guests"] if int(g) in SCRATCH]
        if scratch and plan.kill != "restore_test":
            self._violate(i, "no lock outlives its holder", f"scratch guest(s) {scratch}")
        held = self._held_slots_now()
        if held:
            self._violate(i, "no lock outlives its holder", f"Prefect slots held: {held}")

    def _held_slots_now(self) -> list[str]:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            return self._held_slots()

    def run(self, iterations: int) -> Summary:
        t0 = time.monotonic()
        for i in range(iterations):
            self.iteration(i)
        self.summary.seconds = time.monotonic() - t0
        return self.summary


def _ids(vmids: list[int]) -> str:
    return ",".join(str(v) for v in vmids)


def _nixos_kinds(plan: Plan) -> set[str]:
    return {
        "build-fails" if k == "build_fails" else "unhealthy-switch"
        for fields in plan.nixos_faults.values()
        for k in fields
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _broken(st: dict[str, Any]) -> str:
    """Why a NixOS host's running system is broken ('' when it is not)."""
    running = (st.get("running") or {}).get("behaviour") or {}
    if st["failed_units"]:
        return f"failed units {st['failed_units']} (generation {st['current']})"
    if st["network_cut"] or running.get("cut_network"):
        return f"network cut (generation {st['current']})"
    if st["health_broken"] or running.get("health_broken"):
        return f"health check broken (generation {st['current']})"
    return ""


# --- the command line ------------------------------------------------------------------------


@contextlib.contextmanager
def soak_stack(work: Path) -> Iterator[tuple[Any, str]]:
    """A lab and a `prefect server start` (sweeping leases every 2 s) under ``work``."""
    from labsim.client import start_lab
    from scripts.prefect_server import start_server, stop_server

    env = dict(os.environ)
    env["PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS"] = str(REPOSSESSOR_SECONDS)
    server = start_server(work / "prefect", env)
    try:
        lab = start_lab(work / "lab", time_scale=TIME_SCALE)
        try:
            yield lab, env["PREFECT_API_URL"]
        finally:
            lab.stop()
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-rate", type=float, default=0.12, help="share of iterations")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", action="store_true", help="show the runs' logs")
    ns = parser.parse_args(args)
    if not ns.verbose:  # before Prefect is imported
        os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    work = Path(tempfile.mkdtemp(prefix="moxflow-soak-"))
    log = work / "soak.log"
    print(f"soak: seed {ns.seed}, {ns.iterations} iterations; reports in {log}", flush=True)
    try:
        with soak_stack(work) as (lab, url):
            soak = Soak(
                lab,
                url,
                ns.seed,
                kill_rate=ns.kill_rate,
                log=log,
                say=lambda s: print(s, flush=True),
            )
            summary = soak.run(ns.iterations)
    finally:
        if not ns.keep:
            kept = work.parent / f"{work.name}.log"
            with contextlib.suppress(OSError):
                shutil.copy(log, kept)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(summary.text(), end="")
    print(json.dumps({"violations": len(summary.violations)}))
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
