"""``python -m labsim``: start, inspect, break and stop a simulated homelab.

python -m labsim up --dir .lab            start a lab in the background (default topology)
python -m labsim state --dir .lab         the whole state as JSON
python -m labsim fault --dir .lab ...     inject a fault (or --clear them)
python -m labsim reset --dir .lab         back to the initial state
python -m labsim time-scale --dir .lab F  change the time scale live
python -m labsim nixos --dir .lab --host H ...  what a NixOS host's next generation does
python -m labsim down --dir .lab          stop it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from labsim.client import LabClient, LabError, LabNotRunningError, lab_running, start_lab
from labsim.state import DEFAULT_DURATIONS, LabOptions


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        required=True,
        type=Path,
        help="the lab folder (keys, certificates, inventory.toml, lab.json, labsim.sock, log)",
    )


def _add_topology(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nodes",
        metavar="N",
        type=_positive_int,
        default=None,
        help="build a generated cluster of N nodes (pve1..pveN, plus the SSH host nas) "
        "instead of the default topology (pve1, pve2 and seven guests)",
    )
    p.add_argument(
        "--guests-per-node",
        metavar="M",
        type=_positive_int,
        default=10,
        help="with --nodes: M guests per node, mixed VMs and containers, plus one template "
        "per node (default: 10)",
    )
    p.add_argument(
        "--time-scale",
        metavar="F",
        type=_positive_float,
        default=1.0,
        help="multiply every simulated duration by F; 0.01 makes a 2 s snapshot take 20 ms "
        "(default: 1.0)",
    )
    p.add_argument(
        "--snapshot-seconds",
        metavar="S",
        type=_positive_float,
        default=DEFAULT_DURATIONS["snapshot"],
        help="how long a guest snapshot, snapshot deletion or rollback task takes, before "
        f"the time scale (default: {DEFAULT_DURATIONS['snapshot']:g})",
    )
    p.add_argument(
        "--nixos-hosts",
        metavar="N",
        type=int,
        default=0,
        help="add N generated NixOS hosts nixos-01..nixos-N (machines of their own, builds "
        "of 1 to 4 s before the time scale) besides the topology's own: dns, media and "
        "builder in the default topology, none with --nodes (default: 0)",
    )
    p.add_argument(
        "--api-port",
        metavar="P",
        type=int,
        default=0,
        help="TCP port of the Proxmox API on 127.0.0.1 (default: any free port)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labsim",
        description="A simulated Proxmox + ZFS homelab: a Proxmox VE API over HTTPS and SSH "
        "hosts with simulated tools, with fault injection and a time scale.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start a lab in the background and wait until it answers",
        description="Start a lab daemon for --dir in the background (log in DIR/labsim.log), "
        "wait until the API answers and every SSH port accepts, and print where "
        "everything is. A lab already running in DIR is left as it is.",
    )
    _add_dir(up)
    _add_topology(up)
    up.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=20.0,
        help="seconds to wait for the lab to become ready (default: 20)",
    )

    daemon = sub.add_parser(
        "daemon",
        help="run the lab in the foreground (what 'up' starts)",
        description="Run the lab daemon in this process until SIGTERM, SIGINT or 'down'.",
    )
    _add_dir(daemon)
    _add_topology(daemon)

    state = sub.add_parser(
        "state",
        help="print the whole state as JSON",
        description="Print the whole lab state as JSON: nodes, guests with snapshots and "
        "locks, storages, tasks, SSH hosts with their ZFS datasets, snapshots and holds "
        "and NixOS state (generations, units, timers, network, flake revisions), and the "
        "active faults.",
    )
    _add_dir(state)

    fault = sub.add_parser(
        "fault",
        help="inject a fault, or clear them all",
        description="Inject a fault. Targets: api (match --method and --path, a regex on "
        "the path without /api2/json), command (--host and --command, a regex on the "
        "command line), connect (--host: SSH connections), task (--type and --id of a "
        "Proxmox task, e.g. qmsnapshot 101). Actions: error, hang, slow (--delay), drop, "
        "drop-after.",
    )
    _add_dir(fault)
    fault.add_argument("--clear", action="store_true", help="remove every fault and exit")
    fault.add_argument(
        "--target", choices=["api", "command", "connect", "task"], help="what the fault hits"
    )
    fault.add_argument(
        "--action",
        choices=["error", "hang", "slow", "drop", "drop-after"],
        help="error: fail with --status/--message (api), --exit/--stderr (command) or "
        "--exitstatus (task); hang: never answer (or until --delay); slow: wait --delay "
        "seconds, then behave normally; drop: close the connection; drop-after (command): run "
        "the command, then close the connection before its result is sent",
    )
    fault.add_argument("--method", help="api: HTTP method to match (GET, POST, PUT, DELETE)")
    fault.add_argument("--path", help="api: regex matched against the request path")
    fault.add_argument("--host", help="command/connect: the SSH host name (pve1, nas, ...)")
    fault.add_argument("--command", help="command: regex matched against the command line")
    fault.add_argument("--type", help="task: the task type, e.g. qmsnapshot, vzdelsnapshot")
    fault.add_argument("--id", help="task: the task id, usually the VMID")
    fault.add_argument("--node", help="task: only tasks on this node")
    fault.add_argument("--status", type=int, help="api error: the HTTP status (default 500)")
    fault.add_argument("--message", help="api error: the reason phrase (default 'internal error')")
    fault.add_argument("--exit", type=int, help="command error: the exit code (default 1)")
    fault.add_argument("--stderr", help="command error: what the command prints on stderr")
    fault.add_argument("--exitstatus", help="task error: the task's exit status text")
    fault.add_argument(
        "--delay",
        type=float,
        metavar="SECONDS",
        help="slow: seconds to wait; hang: give up after this long",
    )
    fault.add_argument(
        "--times", type=_positive_int, help="affect only this many events (default: until cleared)"
    )

    reset = sub.add_parser(
        "reset",
        help="back to the initial state",
        description="Put the lab back to its initial state (same ports and keys): guests, "
        "snapshots, ZFS datasets and NixOS hosts (their folders rewritten) rebuilt, tasks, "
        "faults and the API request log cleared.",
    )
    _add_dir(reset)

    scale = sub.add_parser(
        "time-scale",
        help="change the time scale of a running lab",
        description="Multiply every simulated duration from now on by F.",
    )
    _add_dir(scale)
    scale.add_argument("factor", type=_positive_float, metavar="F", help="the new time scale")

    nix = sub.add_parser(
        "nixos",
        help="set what a NixOS host's next generation does",
        description="Change a NixOS host: its upstream nixpkgs revision (what 'nix flake "
        "update' locks next), its build time, and how the next generation it builds behaves. "
        "Flags not given keep their value; --healthy resets the behaviour first. Prints the "
        "host's NixOS state as JSON.",
    )
    _add_dir(nix)
    nix.add_argument("--host", required=True, help="the NixOS host (dns, media, ...; * = all)")
    nix.add_argument(
        "--upstream",
        metavar="REV",
        help="the new upstream nixpkgs revision (40 hex digits; any other text is turned into one)",
    )
    nix.add_argument(
        "--healthy", action="store_true", help="reset the next generation's behaviour first"
    )
    nix.add_argument(
        "--build-fails", action="store_true", default=None, help="its build fails (exit 1)"
    )
    nix.add_argument(
        "--failed-units",
        metavar="A,B",
        help="units that fail once it is active (switch exits 4, the system is degraded)",
    )
    nix.add_argument(
        "--health-broken",
        action="store_true",
        default=None,
        help="the health endpoint answers 503 while it runs",
    )
    nix.add_argument(
        "--cut-network",
        action="store_true",
        default=None,
        help="once active, the host drops SSH connections and its health endpoint answers "
        "nothing, until another generation runs or a snapshot is rolled back",
    )
    nix.add_argument(
        "--deadman-broken",
        action="store_true",
        default=None,
        help="while it runs, reverting fails (the dead-man timer fires but cannot restore "
        "the host; only a snapshot rollback helps)",
    )
    nix.add_argument(
        "--build-seconds",
        metavar="S",
        type=float,
        help="how long a build takes on this host, before the time scale",
    )

    down = sub.add_parser(
        "down",
        help="stop the lab and wait for it to exit",
        description="Stop the lab daemon of --dir and wait until its process has exited.",
    )
    _add_dir(down)
    return parser


def _summary(client: LabClient) -> str:
    info = client.info
    hosts = ", ".join(f"{n} :{h['port']}" for n, h in info["hosts"].items())
    d = info["dir"]
    return "\n".join(
        [
            f"labsim running in {d} (pid {info['pid']}, cluster {info['cluster']}: "
            f"{', '.join(info['nodes'])})",
            f"  Proxmox API  {info['api']['url']}  token {info['api']['token_id']}, "
            f"secret in {info['api']['token_file']}",
            f"               CA {info['api']['ca_file']}",
            f"  SSH hosts    {hosts} on 127.0.0.1 as root, key {info['ssh']['key_file']}",
            f"               known_hosts {info['ssh']['known_hosts']}",
            f"  NixOS        {', '.join(info.get('nixos', {})) or 'none'}; health at "
            f"{info.get('health_url', '?')}<host>, folders in {d}/hosts/",
            f"  inventory    {info['inventory']}",
            f"  log          {info['log']}",
            f"  stop it with python -m labsim down --dir {d}",
        ]
    )


def _running(lab_dir: Path) -> LabClient:
    client = lab_running(lab_dir)
    if client is None:
        raise LabNotRunningError(lab_dir.resolve())
    return client


def _fault_spec(args: argparse.Namespace) -> dict[str, Any]:
    keys = [
        "target", "action", "method", "path", "host", "command", "type", "id", "node",
        "status", "message", "exit", "stderr", "exitstatus", "delay", "times",
    ]  # fmt: skip
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except LabError as exc:
        print(f"labsim: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    lab_dir: Path = args.dir
    if args.cmd == "daemon":
        from labsim import daemon

        opts = LabOptions(
            nodes=args.nodes,
            guests_per_node=args.guests_per_node,
            time_scale=args.time_scale,
            snapshot_seconds=args.snapshot_seconds,
            nixos_hosts=args.nixos_hosts,
        )
        return daemon.run(daemon.DaemonConfig(lab_dir, opts, args.api_port))
    if args.cmd == "up":
        existing = lab_running(lab_dir)
        if existing is not None:
            print(f"a lab is already running in {existing.dir}; leaving it as it is")
            print(_summary(existing))
            return 0
        client = start_lab(
            lab_dir,
            nodes=args.nodes,
            guests_per_node=args.guests_per_node,
            time_scale=args.time_scale,
            snapshot_seconds=args.snapshot_seconds,
            nixos_hosts=args.nixos_hosts,
            api_port=args.api_port,
            timeout=args.timeout,
            detach=True,
        )
        print(_summary(client))
        return 0
    client = _running(lab_dir)
    if args.cmd == "state":
        json.dump(client.state(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif args.cmd == "fault":
        if args.clear:
            client.clear_faults()
            print("faults cleared")
            return 0
        if not args.target or not args.action:
            print("labsim: fault needs --target and --action (or --clear)", file=sys.stderr)
            return 2
        fault_id = client.fault(**_fault_spec(args))
        print(f"fault {fault_id} added")
    elif args.cmd == "reset":
        client.reset()
        print("lab reset to its initial state")
    elif args.cmd == "nixos":
        fields = {
            "upstream": args.upstream,
            "healthy": args.healthy or None,
            "build_fails": args.build_fails,
            "failed_units": args.failed_units,
            "health_broken": args.health_broken,
            "cut_network": args.cut_network,
            "deadman_broken": args.deadman_broken,
            "build_seconds": args.build_seconds,
        }
        result = client.nixos(args.host, **{k: v for k, v in fields.items() if v is not None})
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif args.cmd == "time-scale":
        client.set_time_scale(args.factor)
        print(f"time scale is now {args.factor:g}")
    elif args.cmd == "down":
        client.stop()
        print(f"lab in {client.dir} stopped")
    return 0
