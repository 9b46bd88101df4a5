"""The proxmox-update flow; what it does and its command line: ``flows/proxmox_update.py``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.proxmox import proxmox_client
from flows._run import finish
from flows.params import ProxmoxUpdateParams, flow_parameters
from moxflow.errors import ConfigError, MoxflowError, TargetBusyError
from moxflow.guests import Guest
from moxflow.inventory import Inventory, load_inventory
from moxflow.inventory.proxmox_update import GuestPolicy, RebootPolicy
from moxflow.naming import snapshot_name
from moxflow.proxmox import ProxmoxClient
from moxflow.pveupdate import (
    SNAPSHOT_LABEL,
    NodeFacts,
    NodePlan,
    RollJournal,
    RollPlan,
    failure_next_steps,
    parse_cluster_status,
    plan_roll,
    preflight,
)
from moxflow.report import Outcome, ReportRow, RunReport
from moxflow.snapshots import utc_now
from tasks._retry import tuned
from tasks._runs import flow_run_alive
from tasks.pveupdate import (
    ClusterFacts,
    NodeRun,
    NodeState,
    bystander_facts,
    cluster_facts,
    guests_leave,
    guests_return,
    node_facts,
    node_journal,
    node_versions,
    reboot,
    refresh_lists,
    snapshot,
    upgrade,
    verify,
    wait_other_work,
)
from tasks.targets import SCRATCH_TARGET, guest_target, hold, node_target

JOB = "proxmox-update"
NO_SNAPSHOT = (
    "WARNING: --no-snapshot: no node's root dataset is snapshotted before its upgrade; "
    "a failed upgrade has no snapshot to go back to"
)


def _cells(plan: NodePlan, snap: str | None = None) -> dict[str, str]:
    """The report cells of a node: packages, reboot, snapshot."""
    count = len(plan.packages)
    reboot_text = ""
    if plan.reboot is not None:
        reboot_text = "yes" if plan.reboot.reboot else "pending" if plan.reboot.pending else "no"
    return {
        "packages": str(count) if count else "",
        "reboot": reboot_text,
        "snapshot": snap or ("NONE (--no-snapshot)" if plan.no_snapshot else ""),
    }


@flow(name="proxmox-update-node", flow_run_name="{node}", validate_parameters=False)
def update_node(node: str, run: NodeRun, wait: float) -> ReportRow | State[ReportRow]:
    """One node, step by step: snapshot → guests-leave → upgrade → reboot (when needed) →
    verify → guests-return, holding the slots of the node and of each of its guests the
    whole time: no other moxflow run (a backup, a snapshot, a restore) touches a guest while
    it is away, shut down, or on a node that reboots. Failed when the node did not end up
    updated: failed (the roll stops) or busy (another run holds the node or one of its
    guests longer than ``wait`` seconds)."""
    mine = {g.vmid for g in run.state.facts.guests}
    if run.plan.recover is not None:  # and those the interrupted run left away
        mine |= {g.vmid for g in run.plan.recover.guests}
    targets = [node_target(node), *(guest_target(v) for v in sorted(mine))]
    try:
        with hold(targets, wait=wait):
            # work begun on the node since pre-flight (a backup another tool or job started)
            # is waited for: a guest it locks could not leave
            work = tuned(wait_other_work, run.inv)(run.client, node, mine, wait)
            if work:
                row = ReportRow(
                    node,
                    Outcome.BUSY,
                    detail=f"not started: other work on {node} after {wait:.0f} s "
                    f"(--lock-timeout): {'; '.join(work)}; the next run updates it",
                    cells=_cells(run.plan),
                )
            else:
                row = _chain(run)
    except TargetBusyError as exc:
        row = ReportRow(node, Outcome.BUSY, detail=str(exc), cells=_cells(run.plan))
    if not row.ok:
        return Failed(message=f"{node}: {row.outcome.value}", data=row)
    return Completed(message=row.outcome.value, data=row)


def _chain(run: NodeRun) -> ReportRow:
    inv, plan = run.inv, run.plan
    try:
        snap = tuned(snapshot, inv)(run)
        left = guests_leave(run, snap)
        done: object = upgrade(run, left)
        if plan.reboot is not None and plan.reboot.reboot:
            done = reboot(run, done)
        verified = tuned(verify, inv)(run, done)
        guests_return(run, verified)
    except MoxflowError as exc:
        return ReportRow(
            plan.node, Outcome.FAILED, detail=str(exc), cells=_cells(plan, run.snapshot)
        )
    why = f"; {plan.reboot.reason}" if plan.reboot is not None else ""
    notes = f"; {'; '.join(run.notes)}" if run.notes else ""
    text = f"{len(plan.packages)} packages upgraded{why}{notes}"
    if plan.recover is not None:
        back = ", ".join(s.label for s in plan.returns if s.reason.startswith("recover")) or "none"
        text = (
            f"recovered the interrupted update of run {plan.recover.flow_run_id} "
            f"(phase {plan.recover.phase}; guests brought back: {back}); {text}"
        )
    return ReportRow(plan.node, Outcome.OK, detail=text, cells=_cells(plan, run.snapshot))


def _nodes(inv: Inventory, client: ProxmoxClient, only: list[str] | None) -> list[str]:
    """The nodes this run covers: [proxmox_update] nodes (else every node), cut by --only."""
    cluster = parse_cluster_status(client.cluster_status())
    chosen = inv.proxmox_update_nodes([n.name for n in cluster.nodes])
    if only:
        unknown = [n for n in only if n not in chosen]
        if unknown:
            raise ConfigError(
                f"--only names nodes this job does not update: {', '.join(unknown)}; "
                f"it updates: {', '.join(chosen)}",
                setting="only",
            )
        chosen = [n for n in chosen if n in only]
    return chosen


@flow(
    name=JOB,
    description="Update the Proxmox VE nodes one at a time, snapshot-guarded and verified.",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
)
@flow_parameters(ProxmoxUpdateParams)
def proxmox_update(
    *,
    only: list[str] | None = None,
    guests: GuestPolicy | None = None,
    reboot: RebootPolicy | None = None,
    lock_timeout: float = 120.0,
    no_snapshot: bool = False,
    dry_run: bool = False,
    inventory: str | None = None,
) -> RunReport | State[Any]:
    """Pre-flight the cluster, plan the roll, then one ``proxmox-update-node`` subflow run
    per node, one at a time; the first failure stops the roll."""
    p = ProxmoxUpdateParams(
        only=only,
        guests=guests,
        reboot=reboot,
        lock_timeout=lock_timeout,
        no_snapshot=no_snapshot,
        dry_run=dry_run,
        inventory=inventory,
    )
    inv = load_inventory(p.inventory)
    report = RunReport(job=JOB, label="update", dry_run=p.dry_run, counts_snapshots=False)
    if p.no_snapshot:
        report.notes.append(NO_SNAPSHOT)
        get_run_logger().warning("%s", NO_SNAPSHOT)
    now, tz = utc_now(), ZoneInfo(inv.timezone)
    with proxmox_client(inv) as client:
        nodes = _nodes(inv, client, p.only)
        # a restore test puts its scratch guests on these nodes: none runs during a roll
        # (a running one is waited for, bounded), and a roll never plans for a scratch guest
        scratch: AbstractContextManager[None] = (
            nullcontext() if p.dry_run else hold([SCRATCH_TARGET], wait=p.lock_timeout)
        )
        try:
            with scratch:
                _update(report, inv, client, nodes, p, now, tz)
        except TargetBusyError as exc:
            for node in nodes:
                report.add(ReportRow(node, Outcome.BUSY, detail=f"not started: {exc}"))
    return finish(report, artifact_key="proxmox-update-report", inv=inv)


def _update(
    report: RunReport,
    inv: Inventory,
    client: ProxmoxClient,
    nodes: list[str],
    p: ProxmoxUpdateParams,
    now: datetime,
    tz: ZoneInfo,
) -> None:
    """Facts, pre-flight and plan; the dry run's rows, or the roll's."""
    logger = get_run_logger()
    settings = inv.proxmox_update
    facts = cluster_facts(client)
    online = {n.name for n in facts.cluster.nodes if n.online}
    states: dict[str, NodeState] = {}
    busy: set[str] = set()
    refused: list[str] = []
    policy = p.guests or settings.guests
    # every node's journal first (before anything is asked of a node a live run may be
    # upgrading); the nodes --only leaves out too: an update left unfinished there comes
    # first, and a live one there means no node is rolled beside it
    journals: dict[str, RollJournal | None] = {}
    for node in sorted(online):
        if node not in nodes and node not in inv.hosts:
            logger.warning("%s: its update journal is not read (no [hosts] entry)", node)
            continue
        try:
            journals[node] = tuned(node_journal, inv)(inv, node)
        except MoxflowError as exc:
            refused.append(f"{node}: its update journal could not be read: {exc}")
            report.add(ReportRow(node, Outcome.FAILED, detail=f"pre-flight: {refused[-1]}"))
    for node, journal in journals.items():
        if journal is None:
            continue
        if flow_run_alive(journal.flow_run_id):
            busy.add(node)
            report.add(ReportRow(node, Outcome.BUSY, detail=busy_node(node, journal)))
        elif node not in nodes:
            refused.append(unfinished_elsewhere(node, journal))
            report.add(
                ReportRow(node, Outcome.NEEDS_ATTENTION, detail=f"pre-flight: {refused[-1]}")
            )
    if busy:  # a roll takes one node at a time: never beside another run's
        why = ", ".join(sorted(busy))
        for node in nodes:
            if all(r.target != node for r in report.rows):
                report.add(
                    ReportRow(
                        node,
                        Outcome.BUSY,
                        detail=f"not started: another run is updating {why} (one node at a "
                        "time across the cluster)",
                    )
                )
        return
    unread = bool(refused)  # a journal that cannot be read: no node is asked for more
    for node in nodes:
        if node not in online or node not in journals or unread:
            continue
        try:
            tuned(refresh_lists, inv)(client, node)
            root = None if p.no_snapshot else settings.root_dataset
            states[node] = tuned(node_facts, inv)(
                inv, client, node, facts.guests, policy == "migrate", root, journals.get(node)
            )
        except MoxflowError as exc:
            refused.append(f"{node}: {exc}")
            report.add(ReportRow(node, Outcome.FAILED, detail=f"pre-flight: {exc}"))
    if refused:  # a node's journal or facts could not be read: nothing will run; the
        plan = _plan(facts, states, inv, now, p)  # checks still say what else to fix
    else:
        # the nodes --only leaves out take guests (the planner checks their versions)
        bystanders: list[NodeFacts] = []
        for other in sorted(online - set(nodes)) if policy == "migrate" else ():
            try:
                bystanders.append(tuned(bystander_facts, inv)(client, other, facts.guests))
            except MoxflowError as exc:
                logger.warning("%s: not a migration target (%s)", other, exc)
        plan = _plan(facts, states, inv, now, p, bystanders)
        for line in plan.describe():
            logger.info("%s", line)
        report.notes.extend(plan.describe())
    if refused or not plan.preflight.ok:
        if not plan.preflight.ok:
            why = "; ".join(plan.preflight.reasons)
            report.add(ReportRow("cluster", Outcome.FAILED, detail=f"refused: {why}"))
        for node in [*(n.node for n in plan.nodes), *nodes]:
            if all(r.target != node for r in report.rows):
                report.add(ReportRow(node, Outcome.SKIPPED, detail="not started: refused"))
        return
    if p.dry_run:
        for n in plan.nodes:
            outcome = Outcome.SKIPPED if n.skip else Outcome.PLANNED
            detail = n.skip or " | ".join(line.strip() for line in n.describe()[1:])
            report.add(ReportRow(n.node, outcome, detail=detail, cells=_cells(n, n.snapshot)))
        return

    def replan(actual: Mapping[str, Mapping[str, str]]) -> RollPlan:
        return _plan(facts, states, inv, now, p, bystanders, actual)

    _roll(report, inv, client, plan, states, now, tz, p.lock_timeout, p.no_snapshot, replan)


def busy_node(node: str, journal: RollJournal) -> str:
    """Why a node whose journal names a run still alive is left alone."""
    return (
        f"another run (flow run {journal.flow_run_id}) is updating {node} (its journal, phase "
        f"{journal.phase}); not updated this time: if that run is gone (no worker runs it any "
        "more), cancel it (`prefect flow-run cancel ID`) and the next run recovers the node; "
        "see docs/operating.md"
    )


def unfinished_elsewhere(node: str, journal: RollJournal) -> str:
    """Why a roll that leaves out (``--only``) a node with an interrupted update is refused."""
    return (
        f"{node} has the interrupted update of run {journal.flow_run_id} (phase "
        f"{journal.phase}): recover it first (`python -m flows.proxmox_update --only {node}`, "
        "or a run without --only, which recovers it before any other node)"
    )


def _roll_guests(guests: Sequence[Guest], states: Mapping[str, NodeState]) -> list[Guest]:
    """The guests a roll of ``states`` moves: those on its nodes, and those an interrupted
    update of one of them left elsewhere (its journal)."""
    parked = {g.vmid for s in states.values() if s.facts.journal for g in s.facts.journal.guests}
    return [g for g in guests if g.node in states or g.vmid in parked]


def _plan(
    facts: ClusterFacts,
    states: dict[str, NodeState],
    inv: Inventory,
    now: datetime,
    p: ProxmoxUpdateParams,
    bystanders: Sequence[NodeFacts] = (),
    actual: Mapping[str, Mapping[str, str]] | None = None,
) -> RollPlan:
    """The pre-flight verdict and the roll's plan from the facts (pure); ``actual``: the
    installed versions of the nodes this roll updated so far."""
    settings = inv.proxmox_update
    # a node recovering an interrupted update: its dpkg is finished and its HA maintenance
    # ended by this run, not refused
    fresh = {n: s for n, s in states.items() if s.facts.journal is None}
    verdict = preflight(
        facts.cluster,
        facts.ha,
        facts.tasks,
        qdevice=facts.qdevice,
        two_node=settings.two_node_without_qdevice,
        dpkg={n: s.audit for n, s in fresh.items()},
        held={n: s.facts.held for n, s in states.items()},
        broken={n: s.installed.broken for n, s in fresh.items()},
        roots={n: s.root_problem for n, s in states.items()},
        recovering=set(states) - set(fresh),
        locked=_roll_guests(facts.guests, states),
        nodes=list(states),
    )
    online = [n for n in facts.cluster.nodes if n.online]
    # HA maintenance needs another node to move the HA services to
    ha = facts.ha if len(online) > 1 else None
    return plan_roll(
        [s.facts for s in states.values()],
        settings,
        verdict,
        ha=ha,
        snapshot=snapshot_name(SNAPSHOT_LABEL, now),
        policy=p.guests,
        reboot=p.reboot,
        bystanders=bystanders,
        no_snapshot=p.no_snapshot,
        actual=actual,
    )


def _roll(
    report: RunReport,
    inv: Inventory,
    client: ProxmoxClient,
    plan: RollPlan,
    states: dict[str, NodeState],
    now: datetime,
    tz: ZoneInfo,
    wait: float,
    no_snapshot: bool,
    replan: Callable[[Mapping[str, Mapping[str, str]]], RollPlan],
) -> None:
    """The nodes in the plan's order, one subflow run each; the first failure stops it.
    After each node its installed versions are read again and the later nodes planned
    anew with them (guests go only to nodes that really run the same or newer versions)."""
    logger = get_run_logger()
    stopped: str | None = None
    actual: dict[str, dict[str, str]] = {}
    names = [n.node for n in plan.nodes]
    for i, name in enumerate(names):
        n = next(x for x in plan.nodes if x.node == name)
        if stopped is not None:
            report.add(ReportRow(n.node, Outcome.SKIPPED, detail=f"not started: {stopped}"))
            continue
        if n.skip:
            report.add(ReportRow(n.node, Outcome.SKIPPED, detail=n.skip, cells=_cells(n)))
            continue
        run = NodeRun(inv, client, n, states[n.node], now, tz, no_snapshot)
        run.flow_run_id = str(flow_run.id or "")
        state = update_node(n.node, run, wait, return_state=True)
        row = state.result(raise_on_failure=False)
        if not isinstance(row, ReportRow):
            row = ReportRow(n.node, Outcome.FAILED, detail=f"the node's update crashed: {row}")
        report.add(row)
        logger.info("%s: %s", row.target, row.line())
        if not row.ok:
            stopped = f"{n.node} {row.outcome.value}"
            if row.outcome is not Outcome.BUSY:
                snapname = run.snapshot.partition("@")[2] if run.snapshot else None
                ha_moved = [s for s in n.guests if s.action == "ha"] if run.maintenance else []
                report.notes.extend(
                    failure_next_steps(
                        n.node,
                        inv.proxmox_update.root_dataset,
                        snapname,
                        states[n.node].facts.running_kernel,
                        upgraded=run.upgrade_ran,
                        maintenance=run.maintenance,
                        away=[*run.away, *ha_moved],
                    )
                )
            continue
        if all(x.skip for x in plan.nodes if x.node in names[i + 1 :]):
            continue  # no node after it to plan for
        try:
            actual[n.node] = tuned(node_versions, inv)(client, n.node)
        except MoxflowError as exc:
            stopped = f"{n.node}'s installed versions unknown"
            report.add(
                ReportRow(
                    "roll",
                    Outcome.FAILED,
                    detail=f"stopped after {n.node}: its installed versions could not be "
                    f"read, so no guest can be sent there safely: {exc}",
                )
            )
            continue
        before = plan
        plan = replan(actual)
        for later in plan.nodes:
            old = next(x for x in before.nodes if x.node == later.node)
            if later.node not in actual and later.guests != old.guests:
                text = f"{later.node}: planned again with {n.node}'s installed versions"
                logger.info("%s:\n%s", text, "\n".join(later.describe()[1:]))
                report.notes.append(text)


def check(p: ProxmoxUpdateParams) -> None:
    """Bad input fails here, before the flow starts: the inventory, the token, the nodes."""
    inv = load_inventory(p.inventory)
    with proxmox_client(inv) as client:
        _nodes(inv, client, p.only)
