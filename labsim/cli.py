"""``python -m labsim``: start, inspect, break and stop a simulated homelab.

python -m labsim up --dir .lab            start a lab in the background (default topology)
python -m labsim state --dir .lab         the whole state as JSON
python -m labsim fault --dir .lab ...     inject a fault (or --clear them)
python -m labsim reset --dir .lab         back to the initial state
python -m labsim time-scale --dir .lab F  change the time scale live
python -m labsim nixos --dir .lab --host H ...  what a NixOS host's next generation does
python -m labsim down --dir .lab          stop it

Besides ``up``, ``daemon`` and ``down``, every command is a control operation with a ``Cli``
(``labsim.core.system``): those of the lab's own systems are known here; those of a system
plugged into the running lab in ``--dir`` are asked from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from labsim.client import LabClient, LabError, LabNotRunningError, lab_running, start_lab
from labsim.core import ControlOp, LabOptions
from labsim.core.lab import DEFAULT_SNAPSHOT_SECONDS
from labsim.core.system import positive_float, positive_int

LIFECYCLE = ("up", "daemon", "down")


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
        type=positive_int,
        default=None,
        help="build a generated cluster of N nodes (pve1..pveN, plus the SSH host nas) "
        "instead of the default topology (pve1, pve2 and seven guests)",
    )
    p.add_argument(
        "--guests-per-node",
        metavar="M",
        type=positive_int,
        default=10,
        help="with --nodes: M guests per node, mixed VMs and containers, plus one template "
        "per node (default: 10)",
    )
    p.add_argument(
        "--time-scale",
        metavar="F",
        type=positive_float,
        default=1.0,
        help="multiply every simulated duration by F; 0.01 makes a 2 s snapshot take 20 ms "
        "(default: 1.0)",
    )
    p.add_argument(
        "--snapshot-seconds",
        metavar="S",
        type=positive_float,
        default=DEFAULT_SNAPSHOT_SECONDS,
        help="how long a guest snapshot, snapshot deletion or rollback task takes, before "
        f"the time scale (default: {DEFAULT_SNAPSHOT_SECONDS:g})",
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
    p.add_argument(
        "--system",
        metavar="MODULE:FACTORY",
        dest="systems",
        action="append",
        default=[],
        help="plug in a system from outside labsim: FACTORY() in MODULE (or in a file "
        "path/to/module.py) returns it; repeatable",
    )


def _add_op(sub: Any, op: ControlOp) -> None:
    assert op.cli is not None
    p = sub.add_parser(op.cli.command, help=op.cli.help, description=op.cli.description)
    _add_dir(p)
    for arg in op.args:
        arg.add_to(p)
    p.set_defaults(op=op)


def build_parser(ops: list[ControlOp]) -> argparse.ArgumentParser:
    """The command line: ``up``, ``daemon``, a command per control operation with a CLI in
    ``ops``, and ``down``."""
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
        type=positive_float,
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

    for op in ops:
        if op.cli is not None:
            _add_op(sub, op)

    down = sub.add_parser(
        "down",
        help="stop the lab and wait for it to exit",
        description="Stop the lab daemon of --dir and wait until its process has exited.",
    )
    _add_dir(down)
    return parser


def own_ops() -> list[ControlOp]:
    """The control operations of the core and the lab's own systems (of a lab built here,
    never started: the daemon's own operations have no command)."""
    from labsim.lab import Lab

    return Lab().controls()


def _plugged_ops(argv: list[str], known: set[str]) -> list[ControlOp]:
    """The operations with a CLI of the lab running in ``--dir`` that are not ``known``:
    those of systems plugged into it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("cmd", nargs="?")
    pre.add_argument("--dir", type=Path)
    ns, _ = pre.parse_known_args(argv)
    if ns.cmd is None or ns.cmd in known or ns.cmd in LIFECYCLE or ns.dir is None:
        return []
    client = lab_running(ns.dir)
    if client is None:
        return []
    ops = [ControlOp.from_json(spec) for spec in client.control("controls")]
    return [op for op in ops if op.cli is not None and op.cli.command not in known]


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ops = own_ops()
    known = {op.cli.command for op in ops if op.cli is not None}
    try:
        args = build_parser(ops + _plugged_ops(argv, known)).parse_args(argv)
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
        return daemon.run(daemon.DaemonConfig(lab_dir, opts, args.api_port, args.systems))
    if args.cmd == "up":
        existing = lab_running(lab_dir)
        if existing is not None:
            missing = [s for s in args.systems if s not in existing.info.get("systems", [])]
            if missing:
                print(
                    f"labsim: the lab running in {existing.dir} has no {', '.join(missing)}; "
                    f"stop it first (python -m labsim down --dir {existing.dir})",
                    file=sys.stderr,
                )
                return 2
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
            systems=args.systems,
        )
        print(_summary(client))
        return 0
    client = _running(lab_dir)
    if args.cmd == "down":
        client.stop()
        print(f"lab in {client.dir} stopped")
        return 0
    op: ControlOp = args.op
    assert op.cli is not None
    if op.cli.run is not None:
        return op.cli.run(client.control, args)
    msg = op.request(args)
    result = client.control(op.name, **msg)
    if op.cli.done is not None:
        print(op.cli.done.format(**msg))
    else:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0
