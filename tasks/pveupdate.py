"""Prefect tasks for rolling Proxmox VE host updates: the facts (cluster, then per node), and
each node's steps, one task run each, named ``<node>: <step>``: snapshot → guests-leave →
upgrade → reboot → verify → guests-return (``moxflow.pveupdate`` decides, these only act).

Facts and the snapshot are idempotent and retried on transient errors. The upgrade changes
packages and is not blindly retried (``apt-get`` half way through leaves dpkg to configure:
an attempt after a dropped connection would meet its lock); the reboot and the guest moves
are not retried either (a second request reboots twice or moves a guest that already left):
each waits, bounded, and checks what happened instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

from prefect.logging import get_run_logger

from blocks.ssh import ssh_runner
from moxflow.errors import (
    MoxflowError,
    ProxmoxError,
    ProxmoxTaskError,
    SshCommandError,
    SshError,
    UpdateStepFailed,
)
from moxflow.guests import Guest
from moxflow.inventory import Inventory, ProxmoxUpdateSettings
from moxflow.naming import snapshot_name
from moxflow.pacing import poll_until
from moxflow.proxmox import ProxmoxClient
from moxflow.pveupdate import (
    CLUSTER_SERVICES,
    SNAPSHOT_LABEL,
    ClusterStatus,
    DpkgAudit,
    GuestStep,
    HaStatus,
    InstalledPackages,
    KernelList,
    MigratePrecheck,
    NodeFacts,
    NodePlan,
    RollJournal,
    RunningTask,
    Verdict,
    autoremove_argv,
    build_roll_journal,
    clear_roll_journal_argv,
    configure_pending_argv,
    dist_upgrade_argv,
    dpkg_audit_argv,
    failed_units_argv,
    held_packages_argv,
    judge_ha_status,
    judge_root_dataset,
    kernel_list_argv,
    lock_holder,
    maintenance_argv,
    not_active,
    other_work,
    parse_apt_updates,
    parse_apt_versions,
    parse_cluster_status,
    parse_dpkg_audit,
    parse_failed_units,
    parse_ha_status,
    parse_held_packages,
    parse_kernel_list,
    parse_migrate_precheck,
    parse_node_status,
    parse_qdevice,
    parse_roll_journal,
    parse_running_tasks,
    parse_service_states,
    prove_reboot,
    pveversion_argv,
    read_roll_journal_argv,
    root_dataset_argv,
    root_snapshot_argv,
    services_argv,
    verify_guests,
    verify_node,
    write_roll_journal_argv,
)
from moxflow.snapshots import DatasetJob, plan_dataset_snapshot
from moxflow.zfs import ZfsSnapshot, destroy_argv, list_snapshots_argv, parse_snapshot_list
from tasks._retry import step

T = TypeVar("T")

_ENTERPRISE_RE = re.compile(r"https://enterprise\.proxmox\.com/\S+")
APT_TASK_TIMEOUT = 300.0


# --- facts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """The whole cluster before any change."""

    cluster: ClusterStatus
    ha: HaStatus
    qdevice: str | None
    tasks: tuple[RunningTask, ...]
    guests: tuple[Guest, ...]


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node before any change: what the planner needs (``facts``) and what pre-flight
    and verification compare against."""

    facts: NodeFacts
    installed: InstalledPackages
    audit: DpkgAudit
    failed_units: frozenset[str]
    uptime: int
    root_problem: str | None = None


@step("pveupdate-cluster", "cluster: facts")
def cluster_facts(client: ProxmoxClient) -> ClusterFacts:
    """Quorum, nodes, QDevice, HA (judged: a status not from a current master is marked
    stale), the running tasks of every node online and every guest; read-only."""
    return _cluster_facts(client)


@step("pveupdate-other-work", "{node}: other work")
def wait_other_work(
    client: ProxmoxClient, node: str, vmids: Collection[int], wait: float
) -> list[str]:
    """Wait up to ``wait`` seconds until no other work holds back the update of ``node`` and
    of its guests ``vmids`` (:func:`other_work`: a backup, a migration, a guest locked by
    its task; begun since pre-flight, by another job or tool); read-only. The work left
    then (empty: none: the node's turn goes on)."""
    seen: list[list[str]] = []

    def quiet() -> bool | None:
        facts = _cluster_facts(client)
        guests = [g for g in facts.guests if g.node == node or g.vmid in vmids]
        work = other_work(facts.tasks, guests, [node])
        if work and not seen and wait > 0:
            get_run_logger().info("%s: waiting up to %.0f s for: %s", node, wait, "; ".join(work))
        seen.append(work)
        return None if work else True

    poll_until(quiet, wait)
    return seen[-1]


def _cluster_facts(client: ProxmoxClient) -> ClusterFacts:
    cluster = parse_cluster_status(client.cluster_status())
    online = sorted(n.name for n in cluster.nodes if n.online)

    def running() -> list[RunningTask]:
        return [
            RunningTask(t.node or node, t.type, t.id, t.upid)
            for node in online
            for t in parse_running_tasks(client.active_tasks(node))
        ]

    tasks = running()
    # a restore test's scratch guests are its own: never moved, stopped or waited for
    guests = tuple(g for g in client.resources() if not g.scratch)
    if any(g.lock and lock_holder(g, tasks) is None for g in guests):
        # a task that began between the two reads (a snapshot another job just started)
        # holds its guest's lock but was not in the first: read them once more, so that only
        # a lock no task held at either read counts as left over
        seen = {t.upid for t in tasks}
        tasks += [t for t in running() if t.upid not in seen]
    return ClusterFacts(
        cluster=cluster,
        ha=judge_ha_status(parse_ha_status(client.ha_manager_status()), cluster, time.time()),
        qdevice=parse_qdevice(client.qdevice()),
        tasks=tuple(tasks),
        guests=guests,
    )


@step("pveupdate-refresh", "{node}: refresh package lists")
def refresh_lists(client: ProxmoxClient, node: str) -> None:
    """``POST /nodes/{node}/apt/update`` and wait for its ``aptupdate`` task: the node's
    list of pending upgrades is then current. A failure on the enterprise repository (no
    subscription) says so and what to do."""
    upid = client.apt_update(node)
    try:
        client.wait_task(upid, timeout=APT_TASK_TIMEOUT)
    except ProxmoxTaskError as exc:
        # the refusal is in the task's log: "Err:5 https://enterprise.proxmox.com/debian/pve
        # trixie InRelease" then "401  Unauthorized" (a UPID's hex fields may hold "401" too)
        text = str(exc)
        repo = _refused_enterprise_repo(text.split("|"))
        if repo is not None:
            raise UpdateStepFailed(
                node,
                "refresh package lists",
                f"apt-get update failed on the enterprise repository {repo} "
                "(401 Unauthorized: no subscription)",
                hint="add a subscription key, or disable that enterprise repository and enable "
                "the matching no-subscription one (Node → Updates → Repositories)",
            ) from exc
        raise UpdateStepFailed(node, "refresh package lists", text) from exc


def _refused_enterprise_repo(log: Sequence[str]) -> str | None:
    """The enterprise repository apt-get update was refused on (401), from the task's log
    lines; None when that is not why it failed."""
    for i, line in enumerate(log):
        found = _ENTERPRISE_RE.search(line)
        if found and any("401" in later for later in log[i : i + 2]):
            return found.group(0)
    return None


@step("pveupdate-facts", "{node}: facts")
def node_facts(
    inv: Inventory,
    client: ProxmoxClient,
    node: str,
    guests: Sequence[Guest],
    migrate: bool,
    root: str | None,
    journal: RollJournal | None = None,
) -> NodeState:
    """A node's facts, read-only: pending upgrades, installed versions and the running kernel
    (API); the kernel list, failed units, ``dpkg --audit``, held packages and whether the
    root dataset ``root`` exists (SSH; None: not looked for, ``--no-snapshot``); with
    ``migrate``, each guest's migration pre-check; with the ``journal`` an interrupted
    update left there (:func:`node_journal`), where its guests are now."""
    pending = parse_apt_updates(client.pending_updates(node))
    installed = parse_apt_versions(client.apt_versions(node))
    status = parse_node_status(client.node_status(node))
    with ssh_runner(inv, node) as ssh:
        kernels: KernelList | None = parse_kernel_list(ssh.run(kernel_list_argv()).stdout)
        failed = parse_failed_units(ssh.run(failed_units_argv()).stdout)
        audit = parse_dpkg_audit(ssh.run(dpkg_audit_argv()).stdout)
        held = parse_held_packages(ssh.run(held_packages_argv()).stdout)
        root_problem = None
        if root is not None:
            found = ssh.run(root_dataset_argv(root), check=False)
            root_problem = judge_root_dataset(root, found.exit_code, found.stdout, found.stderr)
    mine = tuple(g for g in guests if g.node == node)
    prechecks: dict[int, MigratePrecheck] = {}
    if migrate:
        for g in mine:
            if not g.template:
                prechecks[g.vmid] = parse_migrate_precheck(
                    client.migrate_precheck(node, g.type, g.vmid)
                )
    facts = NodeFacts(
        name=node,
        running_kernel=status.kernel_release,
        pending=tuple(pending),
        kernels=kernels,
        versions=_versions(installed, status.manager_version),
        guests=mine,
        prechecks=prechecks,
        held=held,
        journal=journal,
        placement=tuple(
            g for g in guests if journal and g.vmid in {j.vmid for j in journal.guests}
        ),
    )
    return NodeState(facts, installed, audit, failed, status.uptime, root_problem)


@step("pveupdate-bystander", "{node}: facts (migration target)")
def bystander_facts(client: ProxmoxClient, node: str, guests: Sequence[Guest]) -> NodeFacts:
    """A node this roll does not update (``--only``) but may move guests to: its installed
    package versions (API) and its guests; nothing is refreshed or read over SSH."""
    installed = parse_apt_versions(client.apt_versions(node))
    status = parse_node_status(client.node_status(node))
    mine = tuple(g for g in guests if g.node == node)
    versions = _versions(installed, status.manager_version)
    return NodeFacts(node, status.kernel_release, versions=versions, guests=mine)


@step("pveupdate-journal", "{node}: journal")
def node_journal(inv: Inventory, node: str) -> RollJournal | None:
    """The journal an update of ``node`` left there (``[proxmox_update] journal``, read over
    SSH): an update that did not finish, or None. Read first, before anything is asked of
    the node (a live run may be upgrading it)."""
    with ssh_runner(inv, node) as ssh:
        path = inv.proxmox_update.journal_of(node)
        return parse_roll_journal(ssh.run(read_roll_journal_argv(path)).stdout)


def _versions(installed: InstalledPackages, manager: str | None) -> dict[str, str]:
    """Installed package versions; pve-manager from the node's status when the list lacks
    it."""
    versions = dict(installed.versions)
    if "pve-manager" not in versions and manager:
        versions["pve-manager"] = manager
    return versions


@step("pveupdate-versions", "{node}: installed versions")
def node_versions(client: ProxmoxClient, node: str) -> dict[str, str]:
    """What a node runs after its update (``GET /nodes/{node}/apt/versions``, read-only):
    the plan for the nodes after it sends guests there only by these real versions (a held
    package, say, stayed behind)."""
    status = parse_node_status(client.node_status(node))
    return _versions(parse_apt_versions(client.apt_versions(node)), status.manager_version)


# --- one node's run --------------------------------------------------------------------------


@dataclass
class NodeRun:
    """One node's update as the steps share it: the plan, the facts before, and what the
    steps did so far: the snapshot taken, whether maintenance is on, the guests still away
    (migrated or shut down, until each is back), whether ``apt-get dist-upgrade`` ran."""

    inv: Inventory
    client: ProxmoxClient
    plan: NodePlan
    state: NodeState
    now: datetime
    tz: tzinfo
    no_snapshot: bool = False
    snapshot: str | None = None
    maintenance: bool = False
    away: list[GuestStep] = field(default_factory=list)
    upgrade_ran: bool = False
    rebooted: bool = False
    notes: list[str] = field(default_factory=list)
    flow_run_id: str = ""
    journal: RollJournal | None = None

    @property
    def node(self) -> str:
        return self.plan.node

    @property
    def settings(self) -> ProxmoxUpdateSettings:
        return self.inv.proxmox_update

    def write_journal(self, journal: RollJournal) -> None:
        """Replace the node's journal (atomically, over SSH)."""
        path = self.settings.journal_of(self.node)
        with ssh_runner(self.inv, self.node) as ssh:
            ssh.run(write_roll_journal_argv(path), stdin=journal.to_json())
        self.journal = journal


@dataclass
class Seen:
    """What a wait's last look saw that was not yet what it waits for (for its timeout)."""

    why: str = ""


def _wait(
    what: str,
    node: str,
    step_name: str,
    timeout: float,
    check: Callable[[], T | None],
    seen: Seen | None = None,
) -> T:
    """Call ``check`` until it returns something (not None), at most ``timeout`` seconds,
    with backoff (``moxflow.pacing.poll_until``: 0.5 s apart at first, sooner under a short
    bound, doubling to 5 s, the last look at the bound). A transient API error or a refused
    SSH connection (a node rebooting) counts as not yet. The timeout's error says what the
    last look saw (``seen``, which ``check`` fills in)."""
    seen = seen if seen is not None else Seen()

    def look() -> T | None:
        try:
            return check()
        except (MoxflowError, OSError) as exc:
            if not getattr(exc, "transient", True) and not isinstance(exc, SshError):
                raise
            seen.why = str(exc)
            return None

    found = poll_until(look, timeout)
    if found is None:
        last = f"; last seen: {seen.why}" if seen.why else ""
        raise UpdateStepFailed(node, step_name, f"{what}: not within {timeout:g} s{last}")
    return found


def _services_down(run: NodeRun, units: Sequence[str] = CLUSTER_SERVICES) -> list[str]:
    """``unit state`` of each of ``units`` not active on the node (``systemctl is-active``
    over SSH)."""
    with ssh_runner(run.inv, run.node) as ssh:
        answer = ssh.run(services_argv(units), check=False)
    return not_active(parse_service_states(units, answer.stdout))


@step("pveupdate-snapshot", "{run.node}: snapshot")
def snapshot(run: NodeRun) -> str | None:
    """``zfs snapshot`` of the node's root dataset (label ``pre-update``, a moxflow name),
    then prune moxflow's own ``pre-update`` snapshots there by the policy (never the new one).
    Idempotent: the name carries the run's time; one that exists is an earlier attempt's.
    With ``--no-snapshot`` it takes none, and says so (None). Recovering an interrupted
    update, the snapshot that run took before any change is kept and used."""
    log = get_run_logger()
    earlier = run.plan.recover
    if earlier is not None and earlier.snapshot:
        run.snapshot = earlier.snapshot
        log.info("%s: kept %s, taken before run %s changed anything", run.node,
                 earlier.snapshot, earlier.flow_run_id)  # fmt: skip
        return earlier.snapshot
    if run.no_snapshot:
        log.warning("%s: NO root snapshot (--no-snapshot): nothing to roll back to", run.node)
        run.notes.append("no root snapshot (--no-snapshot)")
        return None
    dataset = run.settings.root_dataset
    name = snapshot_name(SNAPSHOT_LABEL, run.now)
    job = DatasetJob(run.node, dataset, False, run.inv.proxmox_update_policy(SNAPSHOT_LABEL))
    with ssh_runner(run.inv, run.node) as ssh:
        listed = parse_snapshot_list(ssh.run(list_snapshots_argv(dataset)).stdout)
        facts: dict[str, list[ZfsSnapshot]] = {dataset: [s for s in listed if s.dataset == dataset]}
        plan = plan_dataset_snapshot(job, facts, SNAPSHOT_LABEL, name, run.now, run.tz)
        try:
            ssh.run(root_snapshot_argv(dataset, name))
        except SshCommandError as exc:
            if "dataset already exists" not in (exc.stderr or ""):
                raise
        run.snapshot = plan.taken
        log.info("%s: took %s", run.node, plan.taken)
        for full in plan.prune:
            ds, _, snap = full.partition("@")
            try:
                ssh.run(destroy_argv(ds, snap))
                log.info("%s: pruned %s", run.node, full)
            except SshCommandError as exc:
                run.notes.append(f"could not prune {full}: {(exc.stderr or '').strip()}")
    return plan.taken


def _ha(run: NodeRun, seen: Seen | None = None) -> HaStatus | None:
    """The HA manager status now, when it comes from a current master; None (and why, in
    ``seen``) when it is stale: a dead master's last status is not trusted."""
    cluster = parse_cluster_status(run.client.cluster_status())
    ha = judge_ha_status(parse_ha_status(run.client.ha_manager_status()), cluster, time.time())
    if ha.stale:
        if seen is not None:
            seen.why = ha.stale
        return None
    return ha


def _guest(run: NodeRun, vmid: int) -> Guest | None:
    return next((g for g in run.client.resources() if g.vmid == vmid), None)


def _migrate(run: NodeRun, s: GuestStep, step_name: str) -> None:
    """One guest from ``s.source`` to ``s.target`` (its slot held by the node's chain); waits
    until the guest is on the target (an HA migration's task ends when the move is only
    queued)."""
    if s.target is None:
        raise UpdateStepFailed(run.node, step_name, f"{s.label}: a migration without a target")
    params: dict[str, Any] = {}
    if s.mode == "online":
        params["online"] = 1
    elif s.mode == "restart":
        params["restart"] = 1
        params["timeout"] = int(run.settings.shutdown_timeout)
    timeout = run.settings.migration_timeout
    upid = run.client.migrate(s.source, s.type, s.vmid, s.target, **params)
    run.client.wait_task(upid, timeout=timeout)
    target = s.target

    def arrived() -> bool | None:
        g = _guest(run, s.vmid)
        return True if g is not None and g.node == target else None

    _wait(f"{s.label} on {target}", run.node, step_name, timeout, arrived)
    get_run_logger().info("%s: %s", run.node, s)


def _running_on(run: NodeRun, s: GuestStep) -> bool:
    g = _guest(run, s.vmid)
    return g is not None and g.node == s.source and g.running


def _power(run: NodeRun, s: GuestStep, action: str) -> None:
    """Shut a guest down cleanly, or start it. A guest to start that runs already on its
    node (``onboot`` started it when the node booted) is done, not a failure: it is not
    asked to start (PVE would refuse: "VM 101 already running" as a failed task, "CT 102
    already running" as an error), and a start refused because the boot got there first
    counts once the guest is seen running. The guest's slot is held by the node's chain."""
    if action == "start":
        if _running_on(run, s):
            get_run_logger().info("%s: %s: already running (started on boot)", run.node, s)
            return
        try:
            upid = run.client.power(s.source, s.type, s.vmid, "start")
            run.client.wait_task(upid, timeout=run.settings.shutdown_timeout)
        except ProxmoxError:
            if not _running_on(run, s):
                raise
            get_run_logger().info("%s: %s: already running (started on boot)", run.node, s)
            return
    else:
        timeout = run.settings.shutdown_timeout
        upid = run.client.shutdown(s.source, s.type, s.vmid, int(timeout))
        run.client.wait_task(upid, timeout=timeout + 30)
    get_run_logger().info("%s: %s", run.node, s)


@step(
    "pveupdate-guests-leave", "{run.node}: guests-leave", retries=0
)  # not idempotent: never blind
def guests_leave(run: NodeRun, upstream: object) -> int:
    """The node's journal written (before any change: the run, the snapshot, each guest's
    node and state), then HA node maintenance (when HA guests are there), waiting until the
    CRM has moved every HA service away; then each other guest migrated, shut down or left,
    by the plan. Not retried: a guest already on its way would be asked twice; the roll
    stops instead."""
    log = get_run_logger()
    step_name = "guests-leave"
    # before the first change: the journal says where every guest was and how it ran
    run.write_journal(
        build_roll_journal(
            run.node,
            run.flow_run_id,
            run.snapshot,
            run.state.facts.guests,
            datetime.now(UTC),
            run.plan.recover,
        )
    )
    if run.plan.maintenance:
        with ssh_runner(run.inv, run.node) as ssh:
            ssh.run(maintenance_argv(run.node, enable=True))
        run.maintenance = True

        seen = Seen()

        def drained() -> bool | None:
            ha = _ha(run, seen)
            if ha is None:
                return None
            left = [s.sid for s in ha.services_on(run.node)]
            mode = ha.lrm_modes.get(run.node)
            seen.why = f"LRM mode {mode}" + (f", still here: {', '.join(left)}" if left else "")
            return True if mode == "maintenance" and not left else None

        _wait(
            "HA maintenance moving the HA services away",
            run.node,
            step_name,
            run.settings.maintenance_timeout,
            drained,
            seen,
        )
        log.info("%s: in HA maintenance, no HA service left on it", run.node)
    for s in run.plan.guests:
        try:
            if s.action == "migrate":
                _migrate(run, s, step_name)
                run.away.append(s)
            elif s.action == "shutdown":
                _power(run, s, "shutdown")
                run.away.append(s)
            else:
                log.info("%s: %s", run.node, s)
        except MoxflowError as exc:
            raise UpdateStepFailed(run.node, step_name, f"{s.label}: {exc}") from exc
    return len(run.away)


@dataclass(frozen=True, slots=True)
class Upgraded:
    """How long ``apt-get dist-upgrade`` and ``autoremove`` took."""

    seconds: float


@step("pveupdate-upgrade", "{run.node}: upgrade", retries=0)  # not idempotent
def upgrade(run: NodeRun, upstream: object) -> Upgraded:
    """``dpkg --audit``, then ``apt-get dist-upgrade`` non-interactively (keeping changed
    config files) and ``autoremove`` over SSH, the whole output in the run's log, then
    ``dpkg --audit`` again. The journal says the upgrade began. Recovering an interrupted
    update, half-configured packages are finished first (``dpkg --configure -a``).
    Not idempotent and never blindly retried: a second attempt would meet dpkg half way; a
    broken dpkg state stops the roll with what to run."""
    log = get_run_logger()
    started = time.monotonic()
    limit = run.settings.upgrade_timeout
    if run.journal is not None:
        run.write_journal(run.journal.advance("upgrading"))
    with ssh_runner(run.inv, run.node) as ssh:
        before = parse_dpkg_audit(ssh.run(dpkg_audit_argv()).stdout)
        if not before.ok and run.plan.recover is not None:
            run.upgrade_ran = True
            done = ssh.run(configure_pending_argv(), timeout=limit, check=False)
            log.info("%s: dpkg --configure -a (exit %d):\n%s", run.node, done.exit_code,
                     done.stdout + (done.stderr or ""))  # fmt: skip
            run.notes.append(f"dpkg --configure -a finished {', '.join(before.packages)}")
            before = parse_dpkg_audit(ssh.run(dpkg_audit_argv()).stdout)
        if not before.ok:
            raise UpdateStepFailed(
                run.node, "upgrade", f"refused: {before}", hint="run dpkg --configure -a"
            )
        run.upgrade_ran = True  # from here on packages may have changed, a kernel among them
        result = ssh.run(dist_upgrade_argv(), timeout=limit, check=False)
        log.info("%s: apt-get dist-upgrade (exit %d):\n%s", run.node, result.exit_code,
                 result.stdout + (result.stderr or ""))  # fmt: skip
        after = parse_dpkg_audit(ssh.run(dpkg_audit_argv()).stdout)
        if result.exit_code != 0 or not after.ok:
            tail = (result.stderr or "").strip().splitlines()[-1:] or ["no error output"]
            raise UpdateStepFailed(
                run.node,
                "upgrade",
                f"apt-get dist-upgrade failed (exit {result.exit_code}): {tail[0]}; {after}",
                hint="look at the run's log; `dpkg --configure -a` finishes what was unpacked",
            )
        removed = ssh.run(autoremove_argv(), timeout=limit, check=False)
        log.info("%s: apt-get autoremove (exit %d):\n%s", run.node, removed.exit_code,
                 removed.stdout)  # fmt: skip
    return Upgraded(time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Rebooted:
    """How a reboot ended: proven (and why), back, and how long it took."""

    proof: str
    seconds: float


@step("pveupdate-reboot", "{run.node}: reboot", retries=0)  # not idempotent
def reboot(run: NodeRun, upstream: object) -> Rebooted:
    """Request the reboot through the API, prove it by the API's uptime (smaller than the
    time since the request: a node that merely answers proves nothing), then wait until it
    is online in the API, the cluster quorate, SSH answers, ``pveversion`` responds and the
    cluster services run (``systemctl is-active pve-cluster pveproxy pvedaemon pve-ha-lrm``:
    they activate a while after SSH is up). Bounded by ``reboot_timeout``. Not retried: a
    second request would reboot it twice."""
    log = get_run_logger()
    node = run.node
    started = time.monotonic()
    requested = datetime.now(UTC)
    run.client.reboot_node(node)
    log.info("%s: reboot requested: %s", node, run.plan.reboot.reason if run.plan.reboot else "")
    deadline = started + run.settings.reboot_timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    def proven() -> str | None:
        uptime = parse_node_status(run.client.node_status(node)).uptime
        proof = prove_reboot(requested, datetime.now(UTC), uptime)
        return proof.reason if proof.rebooted else None

    proof = _wait("the reboot (uptime reset)", node, "reboot", left(), proven)
    run.rebooted = True
    log.info("%s: rebooted: %s", node, proof)

    seen = Seen()

    def back() -> bool | None:
        cluster = parse_cluster_status(run.client.cluster_status())
        row = next((n for n in cluster.nodes if n.name == node), None)
        if row is None or not row.online or not cluster.quorate:
            seen.why = "not online in the cluster" if cluster.quorate else "no quorum"
            return None
        with ssh_runner(run.inv, node) as ssh:
            ssh.run(pveversion_argv())
        down = _services_down(run)
        if down:
            seen.why = "not active: " + ", ".join(down)
            return None
        return True

    what = "online, quorum, SSH, pveversion and the cluster services after the reboot"
    _wait(what, node, "reboot", left(), back, seen)
    return Rebooted(proof, time.monotonic() - started)


@step("pveupdate-verify", "{run.node}: verify")
def verify(run: NodeRun, upstream: object) -> Verdict:
    """The node back from its update: online, the cluster quorate, the expected kernel (the
    one it boots, when it rebooted; else the one it ran), no newly failed unit."""
    cluster = parse_cluster_status(run.client.cluster_status())
    status = parse_node_status(run.client.node_status(run.node))
    with ssh_runner(run.inv, run.node) as ssh:
        failed = parse_failed_units(ssh.run(failed_units_argv()).stdout)
    decision = run.plan.reboot
    expected = run.state.facts.running_kernel
    if decision is not None and run.rebooted:
        expected = decision.expected_kernel
    verdict = verify_node(
        run.node, cluster, status.kernel_release, expected, run.state.failed_units, failed
    )
    if not verdict.ok:
        raise UpdateStepFailed(run.node, "verify", str(verdict))
    return verdict


@step(
    "pveupdate-guests-return", "{run.node}: guests-return", retries=0
)  # not idempotent: never blind
def guests_return(run: NodeRun, upstream: object) -> Verdict:
    """Leave HA maintenance once ``pve-ha-lrm`` is active on the node (the CRM moves the HA
    services back; waits for them), migrate back what left, start what was shut down, and
    start what the reboot stopped; then the guests must be where they were and running as
    before (the journal's placement), and the journal is removed."""
    log = get_run_logger()
    step_name = "guests-return"
    before = [g for g in run.state.facts.guests if not g.template]
    if run.journal is not None:  # where they were before any change, this run's or earlier
        before = list(run.journal.guests)
    if run.maintenance:
        # never leave maintenance before the LRM runs again (an upgrade of pve-ha-manager
        # restarts it; after a reboot it starts late): the CRM would hand it the services
        lrm = Seen()

        def lrm_up() -> bool | None:
            down = _services_down(run, ["pve-ha-lrm"])
            lrm.why = ", ".join(down)
            return None if down else True

        _wait(
            "pve-ha-lrm active before leaving HA maintenance",
            run.node,
            step_name,
            run.settings.maintenance_timeout,
            lrm_up,
            lrm,
        )
        with ssh_runner(run.inv, run.node) as ssh:
            ssh.run(maintenance_argv(run.node, enable=False))
        ha_here = {s.vmid for s in (*run.plan.guests, *run.plan.returns) if s.action == "ha"}
        ha_seen = Seen()

        def home() -> bool | None:
            ha = _ha(run, ha_seen)
            if ha is None:
                return None
            where = {s.vmid: s.node for s in ha.services}
            away = sorted(v for v in ha_here if where.get(v) != run.node)
            mode = ha.lrm_modes.get(run.node)
            ha_seen.why = f"LRM mode {mode}" + (f", not back: {away}" if away else "")
            return True if mode != "maintenance" and not away else None

        _wait(
            "HA services back after maintenance",
            run.node,
            step_name,
            run.settings.maintenance_timeout,
            home,
            ha_seen,
        )
        run.maintenance = False
        log.info("%s: left HA maintenance; HA services back", run.node)
    for s in run.plan.returns:
        try:
            if s.action == "migrate":
                _migrate(run, s, step_name)
            elif s.action == "start":
                _power(run, s, "start")
        except MoxflowError as exc:
            raise UpdateStepFailed(run.node, step_name, f"{s.label}: {exc}") from exc
        run.away = [a for a in run.away if a.vmid != s.vmid]
    # a reboot stops the guests left running that do not start on boot: start them again
    now = {g.vmid: g for g in run.client.resources()}
    for g in before:
        seen = now.get(g.vmid)
        if g.running and seen is not None and seen.node == g.node and not seen.running:
            back = GuestStep(g.vmid, g.name, g.type, "start", g.node, reason="stopped by reboot")
            _power(run, back, "start")

    last = Seen()

    def settled() -> Verdict | None:
        verdict = verify_guests(before, run.client.resources())
        last.why = str(verdict)
        return verdict if verdict.ok else None

    verdict = _wait("guests back as before", run.node, step_name, 10.0, settled, last)
    with ssh_runner(run.inv, run.node) as ssh:
        ssh.run(clear_roll_journal_argv(run.settings.journal_of(run.node)))
    run.journal = None
    return verdict
