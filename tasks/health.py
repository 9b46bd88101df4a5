"""Prefect tasks of the health report: read the fleet's facts and judge them.

Every task here only reads: storage listings, ``ls`` of the offsite folder, ``zfs list``,
guest snapshot lists, ``nixos-rebuild list-generations``, ``flake.lock``,
``GET /nodes/{node}/apt/update`` (the cached list Proxmox refreshes daily; it does not run
``apt update``), each node's running kernel (``GET /nodes/{node}/status``) and, over SSH,
the kernel it boots next and dpkg's log; per running Windows VM of [windows.vms], through
its guest agent, ``reboot-pending.ps1`` and ``list-updates.ps1`` (a Windows Update search,
which installs nothing), and from the Prefect server its last successful update run. A fact
that cannot be read becomes a failed check naming the error; the other checks go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.ssh import ssh_runner
from moxflow.backups import Archive
from moxflow.errors import MoxflowError, SshCommandError
from moxflow.fleet import (
    Check,
    backup_checks,
    last_upgrade_check,
    locked_nixpkgs_time,
    nixos_check,
    node_check,
    reboot_check,
    snapshot_check,
    windows_checks,
)
from moxflow.guests import Guest
from moxflow.inventory import Inventory
from moxflow.naming import is_moxflow_description, parse_snapshot_name
from moxflow.nixos import (
    current_generation,
    generations_argv,
    parse_checked,
    parse_generations,
    read_checked_argv,
)
from moxflow.proxmox import ProxmoxClient
from moxflow.pveupdate import (
    dpkg_log_argv,
    kernel_list_argv,
    last_upgrade,
    parse_kernel_list,
    parse_node_status,
)
from moxflow.ssh import SshRunner
from moxflow.windows import parse_reboot_pending, parse_update_scan, select_vms
from moxflow.zfs import list_snapshots_argv, parse_snapshot_list
from tasks.backups import list_archives, list_offsite
from tasks.windows import run_script


@dataclass(frozen=True, slots=True)
class GuestSets:
    """The guests each job is configured for (templates already left out)."""

    backups: tuple[Guest, ...]
    restore_tested: tuple[Guest, ...]
    snapshotted: tuple[Guest, ...]


def _error(kind: str, target: str, exc: Exception) -> Check:
    return Check(kind, target, None, None, False, f"cannot read: {exc}", "ERROR")


def _hours(value: float) -> timedelta:
    return timedelta(hours=value)


@task(name="health-backups", cache_policy=NO_CACHE)
def check_backups(
    inv: Inventory, client: ProxmoxClient, sets: GuestSets, now: datetime
) -> list[Check]:
    """Per guest: newest backup, newest offsite copy, last passed restore test."""
    logger = get_run_logger()
    h = inv.health
    storage = inv.backups.storage
    guests = {g.vmid: g for g in (*sets.backups, *sets.restore_tested)}
    archives: dict[int, list[Archive]] = {}
    out: list[Check] = []
    for guest in sorted(guests.values(), key=lambda g: g.vmid):
        try:
            archives[guest.vmid] = list_archives(client, guest.node, storage, guest.vmid)
        except MoxflowError as exc:
            logger.error("%s: cannot list its backups on %s: %s", guest.label, storage, exc)
            out.append(_error("backup", guest.label, exc))
    listing: list[str] | None = None
    if inv.offsite is not None:
        try:
            with ssh_runner(inv, inv.offsite.host) as runner:
                listing = list_offsite(runner, inv.offsite.path, create=False)
        except MoxflowError as exc:
            logger.error("offsite host %s: %s", inv.offsite.host, exc)
            out.append(_error("offsite", inv.offsite.host, exc))
    out += backup_checks(
        [g for g in guests.values() if g.vmid in archives],
        archives,
        now=now,
        tz=inv.tz,
        backup_limit=_hours(h.backup_max_age_hours or inv.backups.max_age_hours),
        backed_up=[g.vmid for g in sets.backups],
        offsite=listing,
        offsite_limit=_hours(h.offsite_max_age_hours),
        restore_tested=[g.vmid for g in sets.restore_tested],
        restore_limit=timedelta(days=h.restore_test_max_age_days),
    )
    return out


def _label_limits(inv: Inventory, labels: Sequence[str]) -> dict[str, timedelta]:
    """The age limit (grace × period) of each label that has a known period; the others
    (pre-update, pre-restore: taken on events, not on a schedule) are not judged."""
    limits: dict[str, timedelta] = {}
    for label in labels:
        period = inv.health.period(label)
        if period is not None:
            limits[label] = timedelta(hours=period * inv.health.snapshot_grace)
    return limits


@task(name="health-zfs-snapshots", cache_policy=NO_CACHE)
def check_zfs_snapshots(inv: Inventory, now: datetime) -> list[Check]:
    """Per configured dataset and label with a keep policy: the newest snapshot's age."""
    logger = get_run_logger()
    out: list[Check] = []
    by_host: dict[str, list[int]] = {}
    for i, ds in enumerate(inv.zfs.datasets):
        by_host.setdefault(ds.host, []).append(i)
    for host, indexes in by_host.items():
        done: set[int] = set()
        try:
            with ssh_runner(inv, host) as runner:
                for i in indexes:
                    target = f"{host}:{inv.zfs.datasets[i].name}"
                    try:
                        out += _dataset_checks(inv, runner, i, now)
                    except SshCommandError as exc:  # this dataset; the host answers
                        logger.error("%s: %s", target, exc)
                        out.append(_error("snapshots", target, exc))
                    done.add(i)
        except MoxflowError as exc:  # the host cannot be reached (any more)
            logger.error("%s: %s", host, exc)
            out += [
                _error("snapshots", f"{host}:{inv.zfs.datasets[i].name}", exc)
                for i in indexes
                if i not in done
            ]
    return out


def _dataset_checks(inv: Inventory, runner: SshRunner, index: int, now: datetime) -> list[Check]:
    ds = inv.zfs.datasets[index]
    target = f"{ds.host}:{ds.name}"
    limits = _label_limits(inv, sorted(set(inv.zfs.policies) | set(ds.policies)))
    out: list[Check] = []
    if not limits:
        return out
    listed = parse_snapshot_list(runner.run(list_snapshots_argv(ds.name, recursive=False)).stdout)
    names = [p for p in (parse_snapshot_name(s.name) for s in listed if s.dataset == ds.name) if p]
    for label, limit in limits.items():
        taken = [p.created for p in names if p.label == label]
        out.append(snapshot_check(target, label, taken, now=now, limit=limit))
    return out


@task(name="health-guest-snapshots", cache_policy=NO_CACHE)
def check_guest_snapshots(
    inv: Inventory, client: ProxmoxClient, guests: Sequence[Guest], now: datetime
) -> list[Check]:
    """Per selected guest and label with a keep policy: the newest moxflow snapshot's age."""
    logger = get_run_logger()
    limits = _label_limits(inv, sorted(inv.guest_snapshots.policies))
    out: list[Check] = []
    if not limits:
        return out
    for guest in sorted(guests, key=lambda g: g.vmid):
        try:
            snaps = client.list_snapshots(guest)
        except MoxflowError as exc:
            logger.error("%s: cannot list its snapshots: %s", guest.label, exc)
            out.append(_error("snapshots", guest.label, exc))
            continue
        for label, limit in limits.items():
            taken = [
                p.created
                for s in snaps
                if s.complete and is_moxflow_description(s.description)
                for p in (parse_snapshot_name(s.name),)
                if p is not None and p.label == label
            ]
            out.append(snapshot_check(guest.label, label, taken, now=now, limit=limit))
    return out


@task(name="health-nixos", cache_policy=NO_CACHE)
def check_nixos(inv: Inventory, now: datetime) -> list[Check]:
    """Per NixOS host: the current generation's age and the age of its pinned nixpkgs."""
    logger = get_run_logger()
    limit = timedelta(days=inv.health.nixos_max_age_days)
    out: list[Check] = []
    for name, host in inv.nixos.hosts.items():
        pinned: datetime | None = None
        checked: datetime | None = None
        try:
            with ssh_runner(inv, name) as runner:
                listed = runner.run(generations_argv()).stdout
                current = current_generation(parse_generations(listed))
                try:  # only shown: without it the generation is still judged
                    lock = runner.run(["cat", "--", f"{host.flake}/flake.lock"]).stdout
                    pinned = locked_nixpkgs_time(lock)
                except MoxflowError as exc:
                    logger.warning("%s: cannot read the nixpkgs pin: %s", name, exc)
                mark = runner.run(read_checked_argv(inv.nixos_state_dir(name)), check=False)
                checked = parse_checked(mark.stdout) if mark.exit_code == 0 else None
        except MoxflowError as exc:
            logger.error("%s: %s", name, exc)
            out.append(_error("nixos", name, exc))
            continue
        switched = current.date
        if switched is not None and switched.tzinfo is None:  # the host's local time
            switched = switched.replace(tzinfo=inv.tz)
        out.append(nixos_check(name, switched, pinned, now=now, limit=limit, checked=checked))
    return out


@task(name="health-node-updates", cache_policy=NO_CACHE)
def check_nodes(inv: Inventory, client: ProxmoxClient) -> list[Check]:
    """Per Proxmox node: its pending package updates (Proxmox's cached list), when dpkg last
    upgraded a package and whether a reboot is pending (the kernel that boots next is not the
    running one); the last two over SSH, for nodes that are [hosts]."""
    logger = get_run_logger()
    out: list[Check] = []
    try:
        nodes = [str(n["node"]) for n in client.nodes()]
    except MoxflowError as exc:
        logger.error("cannot list the Proxmox nodes: %s", exc)
        return [_error("node updates", "proxmox", exc)]
    for node in nodes:
        try:
            pending = client.pending_updates(node)
        except MoxflowError as exc:
            logger.error("%s: cannot read pending updates: %s", node, exc)
            out.append(_error("node updates", node, exc))
        else:
            items = [p for p in pending if isinstance(p, dict)]
            out.append(node_check(node, items, inv.health.node_max_pending_updates))
        if node in inv.hosts:
            out += _node_state_checks(inv, client, node)
        else:
            logger.info("%s is not in [hosts]: last upgrade and reboot not read", node)
    return out


def _node_state_checks(inv: Inventory, client: ProxmoxClient, node: str) -> list[Check]:
    """A node's last upgrade (dpkg's log) and pending reboot (running vs next-boot kernel)."""
    logger = get_run_logger()
    path = inv.proxmox_update.dpkg_log_of(node)
    try:
        running = parse_node_status(client.node_status(node)).kernel_release
        with ssh_runner(inv, node) as runner:
            kernels = parse_kernel_list(runner.run(kernel_list_argv()).stdout)
            log = runner.run(dpkg_log_argv(path), check=False)
    except MoxflowError as exc:
        logger.error("%s: cannot read its kernels and dpkg's log: %s", node, exc)
        return [_error("last upgrade", node, exc), _error("reboot", node, exc)]
    out = [reboot_check(node, running, kernels.next_boot)]
    if log.exit_code > 1:  # 1: no matching line; 2: the log cannot be read
        logger.error("%s: cannot read %s: %s", node, path, log.stderr.strip())
        why = log.stderr.strip() or f"grep exited {log.exit_code}"
        out.insert(
            0, Check("last upgrade", node, None, None, False, f"cannot read: {why}", "ERROR")
        )
    else:
        out.insert(0, last_upgrade_check(node, last_upgrade(log.stdout, inv.tz)))
    return out


UPDATE_VM_FLOW = "windows-update-vm"
"""The flow of one VM's Windows update: a Completed run of it, named after the VM, is a
successful update (``flows/jobs/windows_update.py``)."""


def _last_update_run(label: str) -> datetime | None:
    """When the newest Completed ``windows-update-vm`` run of VM ``label`` ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[UPDATE_VM_FLOW])),
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[label]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=1,
        )
    return runs[0].end_time if runs else None


@task(name="health-windows", cache_policy=NO_CACHE)
def check_windows(inv: Inventory, client: ProxmoxClient, now: datetime) -> list[Check]:
    """Per Windows VM of [windows.vms]: its last successful update run (the Prefect
    server's), the updates Windows Update offers it and the oldest one's release, and
    whether a reboot is pending (both through its guest agent, when it runs)."""
    logger = get_run_logger()
    settings, limit = inv.windows, timedelta(days=inv.health.windows_pending_max_age_days)
    try:
        vms = select_vms(list(settings.vms), client.resources())
    except MoxflowError as exc:
        logger.error("cannot find the Windows VMs: %s", exc)
        return [_error("windows update", "windows", exc)]
    out: list[Check] = []
    for _, guest in vms:
        try:
            last = _last_update_run(guest.label)
        except Exception as exc:  # the server's answer only adds a date; the rest goes on
            logger.warning("%s: cannot read its update runs: %s", guest.label, exc)
            last = None
        if not guest.running:
            why = f"the VM is {guest.status}"
            out += windows_checks(guest.label, last, None, None, now=now, limit=limit,
                                  why_unread=why)  # fmt: skip
            continue
        try:
            _, out_reboot = run_script(
                client, guest, "reboot-pending.ps1", {}, timeout=settings.script_timeout
            )
            _, out_scan = run_script(
                client, guest, "list-updates.ps1", {"drivers": settings.drivers},
                timeout=settings.scan_timeout,
            )  # fmt: skip
            reboot, scan = parse_reboot_pending(out_reboot), parse_update_scan(out_scan)
        except MoxflowError as exc:
            logger.error("%s: cannot read its updates: %s", guest.label, exc)
            out += windows_checks(guest.label, last, None, None, now=now, limit=limit)[:1]
            out.append(_error("windows pending", guest.label, exc))
            continue
        out += windows_checks(guest.label, last, scan, reboot, now=now, limit=limit)
    return out
