"""`make demo`: moxflow's jobs against a simulated homelab, start to finish.

Starts a local Prefect server (with its UI, on http://127.0.0.1:4200 when that port is free)
and a simulated lab (Proxmox API + SSH hosts with ZFS and NixOS), then: both snapshot jobs (a
dry run and a real run each), a NixOS rolling update and a rollback, backups of two guests
with offsite copies, a restore test, and the health report, which fails on the guests left
without a fresh backup. Then it stops the lab and leaves the server running, so that every
run it printed a link to can be opened in the UI; `make demo-stop` stops the server.
A Prefect server already answering on 127.0.0.1:4200 is used instead (and left alone).
Everything else lives under .demo/ in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flows._server import LOCAL_API_URL, server_answers
from scripts.prefect_server import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
LAB = DEMO / "lab"
PID = DEMO / "prefect" / "server.pid"
UI_PORT = 4200
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


def stop() -> int:
    """``make demo-stop``: stop the demo's Prefect server and lab, if they still run."""
    subprocess.run([PY, "-m", "labsim", "down", "--dir", str(LAB)], capture_output=True)
    if PID.exists():
        pgid = int(PID.read_text())
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if not _signal(pgid, sig):
                break
            deadline = time.monotonic() + grace
            while _signal(pgid, 0) and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            print(f"the demo's Prefect server (process group {pgid}) did not stop", file=sys.stderr)
            return 1
        PID.unlink()
        print("stopped the demo's Prefect server")
    return 0


def _signal(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; whether it still exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def server(env: dict[str, str]) -> str:
    """The demo's Prefect server (its UI URL): the one on :4200 if it answers, else a new one
    on :4200 (a free port if that is taken), left running after the demo."""
    if server_answers(LOCAL_API_URL):
        env["PREFECT_API_URL"] = LOCAL_API_URL
        print(f"using the Prefect server already running at {LOCAL_API_URL}")
    else:
        env["PREFECT_UI_ENABLED"] = "true"
        port = UI_PORT if _port_free(UI_PORT) else free_port()
        proc = start_server(DEMO / "prefect", env, port=port, detach=True)
        PID.write_text(str(proc.pid))
    return env["PREFECT_API_URL"].removesuffix("/api")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> int:
    if "--stop" in sys.argv[1:]:
        return stop()
    stop()  # an earlier demo's server and lab: .demo/ is made anew
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    env = dict(os.environ)
    say("starting a local Prefect server and the simulated homelab")
    ui = server(env)
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
    finally:
        subprocess.run([PY, "-m", "labsim", "down", "--dir", str(LAB)], capture_output=True)
    say("done")
    print(f"Every run above, with its task graph, logs and report, is in the Prefect UI: {ui}")
    print(
        "(the `View at` links open them). "
        + (
            "`make demo-stop` stops that server."
            if PID.exists()
            else "That server is yours: it keeps running."
        )
    )
    print("`python -m flows.<job> --help` shows a job's options (after `. .venv/bin/activate`).")
    return status


if __name__ == "__main__":
    sys.exit(main())
