"""One mutating job per target, across runs, workers and machines.

Every chain of steps that changes a guest (a restore onto it, a migration, a NixOS update of
the guest it is), a NixOS host or a Proxmox node first takes the target's slot
(:func:`hold`): a Prefect global concurrency limit of 1 named after the target
(``moxflow-guest-101``, ``moxflow-host-dns``, ``moxflow-node-pve1``), held with a lease. The
lease is renewed while its holder runs and expires with it: a run killed half-way frees its
targets within :data:`LEASE_SECONDS` (plus the server's lease sweep, every 15 s), with
nothing left to clean by hand. The limits show on the Prefect UI's *Concurrency* page, with
the slots in use. A second run waits for a held target (bounded), then leaves it as busy
(:class:`~moxflow.errors.TargetBusyError`), never as done. A step that is a single Proxmox
task on a guest (a snapshot, a vzdump) only waits for the guest's slot to be free
(:func:`wait_free`): Proxmox's guest lock already serialises such tasks.

The limits are created on first use (Prefect 3 no longer creates them implicitly). The
server keeps leases in memory unless ``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`` names the
file storage (:data:`LEASE_STORAGE`: the compose file and moxflow's own servers set it): with
memory storage, a server restart while a target is held leaves its slot taken
(docs/operating.md). Expired leases are swept by the server's repossessor service, which a
``prefect server start`` runs; an ephemeral server (tests, a temporary one) does not.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from moxflow.errors import SlotServerError, TargetBusyError

LEASE_SECONDS = 60.0
"""How long a held slot outlives its holder's last renewal (renewed every 45 s)."""

TARGET_WAIT = 120.0
"""How long a step waits for a target another run holds, unless the job says otherwise."""

PREFIX = "moxflow-"

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`` for a long-lived server: leases on disk (in
PREFECT_HOME), so that a restart neither forgets who holds a slot nor strands it."""


class _QuietRefusals(logging.Filter):
    """Drops Prefect's ERROR line for a slot request that failed ("Service
    'ConcurrencySlotAcquisitionWithLeaseService' failed to process item"): the same failure
    reaches :func:`hold` as an exception, which reports it in the run's words (busy)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and args[0] == "ConcurrencySlotAcquisitionWithLeaseService")


logging.getLogger("prefect._internal.concurrency").addFilter(_QuietRefusals())

_known: set[tuple[str, str]] = set()  # (API URL, limit name): made or seen by this process
_known_lock = threading.Lock()


SCRATCH_TARGET = f"{PREFIX}scratch-guests"
"""The slot of the restore tests' scratch guests (the scratch VMID range): one test at a time."""


def guest_target(vmid: int) -> str:
    """The slot of a Proxmox guest (cluster-wide: a guest keeps its VMID when it moves)."""
    return f"{PREFIX}guest-{vmid}"


def host_target(host: str) -> str:
    """The slot of a host moxflow changes over SSH (a NixOS host)."""
    return f"{PREFIX}host-{host}"


def node_target(node: str) -> str:
    """The slot of a Proxmox node (its packages, its reboots)."""
    return f"{PREFIX}node-{node}"


def _ensure(names: Sequence[str]) -> None:
    """Create the limits this process has not seen yet (limit 1; one that exists stays as
    it is)."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
        with _known_lock:
            missing = [n for n in names if (url, n) not in _known]
        for name in missing:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            with _known_lock:
                _known.add((url, name))


def _forget(names: Sequence[str]) -> None:
    with _known_lock:
        for key in [k for k in _known if k[1] in names]:
            _known.discard(key)


def _holder() -> ConcurrencyLeaseHolder | None:
    """This flow run, as the lease's holder (None outside a run)."""
    ctx = FlowRunContext.get()
    run = getattr(ctx, "flow_run", None)
    if run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=uuid.UUID(str(run.id)))


def _held(names: Sequence[str]) -> list[str]:
    """Which of ``names`` another run holds now."""
    held: list[str] = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except Exception as exc:  # only the message depends on it
                logging.getLogger("moxflow").debug("could not read %s: %s", name, exc)
                continue
            if limit.active_slots >= limit.limit:
                held.append(name)
    return held


def _refused(exc: ConcurrencySlotAcquisitionError) -> bool:
    """The server said the slots are taken (423), as opposed to the limits not existing."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _slots(names: list[str]) -> AbstractContextManager[None]:
    """Prefect's context manager for the slots: one request, however long the server takes
    to answer it. Never with Prefect's ``timeout_seconds``: a request cut short by it may
    still be granted on the server, and that lease, never renewed and never released, holds
    the slot until the server's sweep (a run then finds its own leaked slot "held")."""
    return concurrency(
        names,
        occupy=1,
        max_retries=0,
        lease_duration=LEASE_SECONDS,
        strict=True,
        holder=_holder(),
        raise_on_lease_renewal_failure=False,
    )


RETRY_FIRST = 0.5
RETRY_MAX = 5.0
"""Between two requests for a held slot: 0.5 s, doubling up to 5 s."""


def _take(names: list[str], wait: float, deadline: float | None = None) -> ExitStack[bool | None]:
    """The slots, entered; ``TargetBusyError`` when another run still holds one of them
    after ``wait`` seconds (0: one request), or at ``deadline`` (``time.monotonic``) when
    given (a wait that began earlier)."""
    deadline = time.monotonic() + wait if deadline is None else deadline
    delay = RETRY_FIRST
    while True:
        stack = ExitStack()
        try:
            stack.enter_context(_slots(names))
            return stack
        except ConcurrencySlotAcquisitionError as exc:
            if not _refused(exc):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise TargetBusyError(_held(names) or names, wait, LEASE_SECONDS)
        time.sleep(min(delay, left))
        delay = min(delay * 2, RETRY_MAX)


@contextmanager
def hold(targets: Sequence[str], *, wait: float = TARGET_WAIT) -> Iterator[None]:
    """Hold every slot of ``targets`` (all or none, taken together) for the block; wait up to
    ``wait`` seconds (0: one try) for a run that holds one, else raise ``TargetBusyError``."""
    names = sorted(set(targets))
    if not names:
        yield
        return
    deadline = time.monotonic() + wait
    try:
        _ensure(names)
        try:
            slots = _take(names, wait)
        except ConcurrencySlotAcquisitionError:
            # not refused: the limits are gone (deleted by hand since this process made them);
            # made again, and waited for within what is left of ``wait``
            _forget(names)
            _ensure(names)
            slots = _take(names, wait, deadline)
    except (ConcurrencySlotAcquisitionError, httpx.HTTPError) as exc:
        raise SlotServerError(
            f"the Prefect server could not give out {', '.join(names)}: {exc}",
            hint="check that the Prefect server runs (PREFECT_API_URL)",
        ) from exc
    with slots:
        yield


@contextmanager
def free_check() -> Iterator[Callable[..., None]]:
    """``wait_free`` for a step's many guests, over one connection to the server."""
    with get_client(sync_client=True) as client:
        yield lambda target, wait=TARGET_WAIT: wait_free(target, wait=wait, client=client)


def wait_free(
    target: str, *, wait: float = TARGET_WAIT, client: SyncPrefectClient | None = None
) -> None:
    """Return once no run holds ``target`` (at once when none does, or the limit was never
    made); poll up to ``wait`` seconds, else raise ``TargetBusyError``.

    For a step that is one Proxmox task on a guest (a snapshot, its deletion, a vzdump):
    Proxmox's own guest lock already keeps such tasks one at a time, so the step does not
    take the slot (a write on the server per guest; at 1,000 guests that was several times
    the run's ideal time); it only keeps out of a chain another run holds the guest for (a
    NixOS update between its snapshot and its switch, a restore, a migration). Checked right
    before the task is started: a chain that takes the slot after that finds the task
    running (the guest is locked) and waits for it, so the chain's own snapshot stays the
    newest."""
    if client is None:
        with get_client(sync_client=True) as own:
            return wait_free(target, wait=wait, client=own)
    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            limit = client.read_global_concurrency_limit_by_name(target)
        except ObjectNotFound:
            return None
        except httpx.HTTPError as exc:
            raise SlotServerError(
                f"the Prefect server could not say whether {target} is free: {exc}",
                hint="check that the Prefect server runs (PREFECT_API_URL)",
            ) from exc
        if limit.active_slots < limit.limit:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TargetBusyError([target], wait, LEASE_SECONDS)
        time.sleep(min(delay, left))
        delay = min(delay * 2, 5.0)
