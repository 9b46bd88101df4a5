"""One mutating job per target, across runs, workers and machines.

Every step that changes a guest (a snapshot, a backup, a restore onto it), a NixOS host or a
Proxmox node first takes the target's slot: a Prefect global concurrency limit of 1 named
after the target (``moxflow-guest-101``, ``moxflow-host-dns``, ``moxflow-node-pve1``), held
with a lease. The lease is renewed while its holder runs and expires with it: a run killed
half-way frees its targets within :data:`LEASE_SECONDS` (plus the server's lease sweep,
every 15 s), with nothing left to clean by hand. The limits show on the Prefect UI's
*Concurrency* page, with the slots in use. A second run waits for a held target (bounded),
then leaves it as busy (:class:`TargetBusy`), never as done.

The limits are created on first use (Prefect 3 no longer creates them implicitly). The
server keeps leases in memory unless ``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`` names the
file storage (the compose file and moxflow's own server set it): with memory storage, a
server restart while a target is held leaves its slot taken (docs/operating.md).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists

from moxflow.errors import MoxflowError

LEASE_SECONDS = 60.0
"""How long a held slot outlives its holder's last renewal (renewed every 45 s)."""

TARGET_WAIT = 120.0
"""How long a step waits for a target another run holds, unless the job says otherwise."""

PREFIX = "moxflow-"

_known: set[tuple[str, str]] = set()  # (API URL, limit name): made or seen by this process
_known_lock = threading.Lock()


class TargetBusy(MoxflowError):
    """Another moxflow run holds the target (its Prefect concurrency slot) and did not let go
    within the wait. Not retried: the step already waited."""

    def __init__(self, targets: Sequence[str], waited: float) -> None:
        names = ", ".join(targets)
        super().__init__(
            f"another moxflow run holds {names} (Prefect concurrency limit; waited {waited:.0f}s)",
            hint="the Prefect UI's Concurrency page shows it; a run that died frees it within "
            f"{LEASE_SECONDS:.0f}s; the next run does this target",
        )
        self.targets = tuple(targets)


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


@contextmanager
def hold(targets: Sequence[str], *, wait: float = TARGET_WAIT) -> Iterator[None]:
    """Hold every slot of ``targets`` (all or none, taken together) for the block; wait up to
    ``wait`` seconds for a run that holds one, else raise :class:`TargetBusy`."""
    names = sorted(set(targets))
    if not names:
        yield
        return
    _ensure(names)
    slots = ExitStack()
    for attempt in range(2):
        try:
            slots.enter_context(
                concurrency(
                    names,
                    occupy=1,
                    timeout_seconds=max(wait, 0.001),
                    lease_duration=LEASE_SECONDS,
                    strict=True,
                    holder=_holder(),
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError as exc:
            raise TargetBusy(names, wait) from exc
        except ConcurrencySlotAcquisitionError:
            if attempt:
                raise
            _forget(names)  # deleted by hand since this process made them: make them again
            _ensure(names)
            continue
        break
    with slots:
        yield
