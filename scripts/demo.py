"""`make demo`: moxflow's jobs against a simulated homelab, start to finish.

Starts a local Prefect server and a simulated lab (Proxmox API + SSH hosts with ZFS and
NixOS), then: both snapshot jobs (a dry run and a real run each), a NixOS rolling update and
a rollback, backups of two guests with offsite copies, a restore test, and the health
report, which fails on the guests left without a fresh backup. Then it stops everything.
Everything lives under .demo/ in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts.prefect_server import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
LAB = DEMO / "lab"
PY = sys.executable


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def lab_state() -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-m", "labsim", "state", "--dir", str(LAB)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def show_snapshots(state: dict[str, Any], before: dict[str, Any] | None = None) -> None:
    """Print every ZFS and guest snapshot; with ``before``, mark the new ones with +."""

    def zfs(st: dict[str, Any]) -> list[str]:
        return sorted(
            f"{host}:{ds}@{snap['name']}"
            for host, hs in st.get("hosts", {}).items()
            for ds, d in ((hs.get("zfs") or {}).get("datasets") or {}).items()
            for snap in d.get("snapshots", [])
        )

    def guests(st: dict[str, Any]) -> list[str]:
        return sorted(
            (
                f"{vmid} ({g.get('name', '')}) {name}"
                for vmid, g in st.get("guests", {}).items()
                for name in g.get("snapshots", {})
            ),
            key=lambda s: (int(s.split()[0]), s),
        )

    for title, now, old in (
        ("ZFS snapshots", zfs(state), zfs(before) if before else None),
        ("Guest snapshots", guests(state), guests(before) if before else None),
    ):
        print(f"{title}:")
        for item in now:
            mark = "+" if old is not None and item not in old else " "
            print(f"  {mark} {item}")


def lab(*args: str) -> None:
    """``python -m labsim ARGS --dir LAB``, quietly."""
    subprocess.run([PY, "-m", "labsim", *args, "--dir", str(LAB)], check=True, capture_output=True)


def show_generations(state: dict[str, Any]) -> None:
    """One line per NixOS host: the active generation and the locked nixpkgs revision."""
    for host, hs in sorted(state.get("hosts", {}).items()):
        nx = hs.get("nixos")
        if nx:
            print(
                f"  {host:<8} generation {nx['current']}, nixpkgs {str(nx['flake_rev'])[:12]}, "
                f"failed units: {', '.join(nx['failed_units']) or 'none'}"
            )


def run(cmd: list[str], env: dict[str, str]) -> int:
    print("$ " + " ".join(cmd[1:] if cmd[0] == PY else cmd), flush=True)
    return subprocess.run([PY if c == "python" else c for c in cmd], env=env, cwd=ROOT).returncode


def main() -> int:
    if DEMO.exists():
        subprocess.run([PY, "-m", "labsim", "down", "--dir", str(LAB)], capture_output=True)
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    env = dict(os.environ)
    say("starting a local Prefect server and the simulated homelab")
    server = start_server(DEMO / "prefect", env)
    status = 0
    try:
        subprocess.run(
            [PY, "-m", "labsim", "up", "--dir", str(LAB), "--time-scale", "0.2"],
            check=True,
            env=env,
        )
        inv = str(LAB / "inventory.toml")
        say("the lab before")
        before = lab_state()
        show_snapshots(before)
        steps = [
            ["python", "-m", job, "--inventory", inv, "--label", "daily", *extra]
            for job in ("flows.zfs_snapshot", "flows.guest_snapshot")
            for extra in (["--dry-run"], [])
        ]
        for step in steps:
            say(" ".join(step[2:4]) + (" (dry run)" if "--dry-run" in step else ""))
            rc = run(step, env)
            if rc != 0:
                print(f"(exit status {rc})")
                status = status or rc
        say("the lab after")
        show_snapshots(lab_state(), before)

        say("NixOS: new upstream for dns, media and builder")
        for host in ("dns", "media", "builder"):
            lab("nixos", "--host", host, "--upstream", "ab" * 20)
        show_generations(lab_state())
        for extra in (["--dry-run"], []):
            step = ["python", "-m", "flows.nixos_update", "--inventory", inv, *extra]
            say("flows.nixos_update" + (" (dry run)" if extra else ""))
            rc = run(step, env)
            if rc != 0:
                print(f"(exit status {rc})")
                status = status or rc
        show_generations(lab_state())

        say("NixOS: media's next generation breaks a service; moxflow rolls it back")
        lab(
            "nixos",
            "--host",
            "media",
            "--upstream",
            "cd" * 20,
            "--failed-units",
            "jellyfin.service",
        )
        rc = run(["python", "-m", "flows.nixos_update", "--inventory", inv, "--only", "media"], env)
        print(f"(exit status {rc}: a rolled-back host fails the run, as it should)")
        if rc != 1:
            status = status or 1
        show_generations(lab_state())

        say("backups: dns and homeassistant, verified, pruned and copied offsite")
        for extra in (["--dry-run"], []):
            rc = run(["python", "-m", "flows.vzdump_backup", "--inventory", inv,
                      "--select", "100,104", *extra], env)  # fmt: skip
            if rc != 0:
                print(f"(exit status {rc})")
                status = status or rc
        say("restore test: dns's newest backup on a scratch VMID, booted and destroyed")
        rc = run(["python", "-m", "flows.restore_test", "--inventory", inv, "--select", "100"], env)
        if rc != 0:
            print(f"(exit status {rc})")
            status = status or rc
        say("health report: the guests left out above have no fresh backup, and it says so")
        rc = run(["python", "-m", "flows.health_report", "--inventory", inv, "--only", "backups"],
                 env)  # fmt: skip
        print(f"(exit status {rc}: a guest without a fresh backup fails the report, as it should)")
        if rc != 1:
            status = status or 1
        say(
            "done: every run is recorded in the Prefect server; "
            "`python -m flows.<job> --help` shows the options"
        )
    finally:
        subprocess.run([PY, "-m", "labsim", "down", "--dir", str(LAB)], capture_output=True)
        stop_server(server)
    return status


if __name__ == "__main__":
    sys.exit(main())
