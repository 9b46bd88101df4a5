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
task on a guest (a snapshot) only waits for the guest's slot to be free
(:func:`wait_free`): Proxmox's guest lock already serialises such tasks.

The limits are created on first use (Prefect 3 no longer creates them implicitly): a take
that finds one missing makes it and asks again; a run about to start several chains side by
side makes their limits beforehand (:func:`make_slots`). The
server keeps leases in memory unless ``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`` names the
file storage (:data:`LEASE_STORAGE`: the compose file and moxflow's own servers set it): with
memory storage, a server restart while a target is held leaves its slot taken
(docs/operating.md). Expired leases are swept by the server's repossessor service, which a
``prefect server start`` runs; an ephemeral server (tests, a temporary one) does not.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound

from moxflow.errors import SlotServerError, TargetBusyError
from moxflow.pacing import poll_until

LEASE_SECONDS = 60.0
"""How long a held slot outlives its holder's last renewal (renewed every 45 s)."""

TARGET_WAIT = 120.0
"""How long a step waits for a target another run holds, unless the job says otherwise."""

PREFIX = "moxflow-"

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`` for a long-lived server: leases on disk (in
PREFECT_HOME), so that a restart neither forgets who holds a slot nor strands it."""

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


def _make(client: SyncPrefectClient, names: Iterable[str]) -> None:
    """Create the limits (limit 1; one that exists stays as it is: 409)."""
    for name in names:
        body = GlobalConcurrencyLimitCreate(name=name, limit=1).model_dump(mode="json")
        response = _post(client, f"{_API}/", body)
        if response.status_code != 409:
            response.raise_for_status()


PAGE = 200
"""Limits read per request (the most the server gives at once)."""


def make_slots(targets: Iterable[str]) -> None:
    """Create the slots of ``targets`` the server does not have yet, before a run's chains
    begin. A fresh server has none: hosts starting side by side would each find theirs
    missing, make it and ask again, their requests meeting on a SQLite server (each such
    meeting is a 503 and another request). One read of the server's limits per
    :data:`PAGE`, one request per missing slot; a slot made meanwhile by another run is
    fine. A server that fails here is left to the takes, which say so."""
    wanted = set(targets)
    if not wanted:
        return
    try:
        with get_client(sync_client=True) as client:
            offset = 0
            while True:
                page = client.read_global_concurrency_limits(limit=PAGE, offset=offset)
                wanted.difference_update(limit.name for limit in page)
                if len(page) < PAGE or not wanted:
                    break
                offset += PAGE
            _make(client, sorted(wanted))
    except Exception as exc:  # only slower: each take then makes its own
        logging.getLogger("moxflow.targets").info("could not make the slots beforehand: %s", exc)


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


_API = "/v2/concurrency_limits"

BUSY_FIRST = 0.005
BUSY_MAX = 0.25
BUSY_WAIT = 30.0
"""A slot request the server could not serve (503), or whose connection broke before an
answer: asked again after 5 ms, doubling up to 0.25 s, for up to 30 s. A SQLite server
answers 503 when the request's transaction met another write (its read of the limits went
stale), which under a busy run is every few requests; Prefect's client would wait 2 s, then
4, 8 ... before asking again."""

_DROPPED = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
)
"""A connection that broke (a kept-alive one the server had just closed, a restart): what
Prefect's client sends again too. A take whose answer was lost this way may have been
granted, and the second one then meets its own slot (busy until that lease runs out): the
same risk Prefect's client takes, against failing a step on every reset. Never a timeout:
a request cut short by one may well still be on its way."""


def _post(client: SyncPrefectClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body`` to the server's concurrency API, asking again soon after a 503 or a
    dropped connection (:data:`BUSY_FIRST`). Sent past Prefect's client's own retries but
    with its connection pool, URL, credentials and CSRF token when it has one; a server that
    wants a token the client has not fetched yet (403) gets the request through Prefect's
    client, which fetches one. A server never reached (a wrong URL, a stopped server) fails
    at once. Any other answer is returned as it is; the last error or 503 once
    :data:`BUSY_WAIT` is over."""
    http = client._client
    delay, deadline = BUSY_FIRST, time.monotonic() + BUSY_WAIT
    while True:
        request = http.build_request("POST", path, json=body)
        token = getattr(http, "csrf_token", None)
        if token:
            request.headers["Prefect-Csrf-Token"] = token
            request.headers["Prefect-Csrf-Client"] = str(getattr(http, "csrf_client_id", ""))
        try:
            response = httpx.Client.send(http, request)
        except _DROPPED as exc:
            never = isinstance(exc, httpx.ConnectError) and not getattr(http, "_has_connected", 1)
            if never or time.monotonic() + delay > deadline:
                raise
        else:
            if response.status_code == 403 and getattr(http, "enable_csrf_support", False):
                try:
                    response = http.send(http.build_request("POST", path, json=body))
                except httpx.HTTPStatusError as exc:
                    response = exc.response
            if response.status_code != 503 or time.monotonic() + delay > deadline:
                return response
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, BUSY_MAX)


class _Gone(Exception):
    """A limit asked for does not exist on the server (deleted by hand since this process
    made it)."""


def _take_once(client: SyncPrefectClient, names: list[str]) -> uuid.UUID | None:
    """One request for every slot of ``names``, all or none: the lease, or None when another
    run holds one of them (423)."""
    holder = _holder()
    body: dict[str, Any] = {
        "names": names,
        "slots": 1,
        "mode": "concurrency",
        "lease_duration": LEASE_SECONDS,
    }
    if holder is not None:
        body["holder"] = holder.model_dump(mode="json")
    response = _post(client, f"{_API}/increment-with-lease", body)
    if response.status_code == 423:
        return None
    response.raise_for_status()
    granted = response.json()
    lease = uuid.UUID(granted["lease_id"])
    if len(granted["limits"]) < len(names):  # granted on the limits that exist only
        _release(client, lease)
        raise _Gone(names)
    return lease


def _release(client: SyncPrefectClient, lease: uuid.UUID) -> None:
    _post(client, f"{_API}/decrement-with-lease", {"lease_id": str(lease)}).raise_for_status()


def _take(
    client: SyncPrefectClient, names: list[str], wait: float, deadline: float | None = None
) -> uuid.UUID:
    """The slots' lease; ``TargetBusyError`` when another run still holds one of them after
    ``wait`` seconds (0: one request), or at ``deadline`` (``time.monotonic``) when given
    (a wait that began earlier). Asked again after :data:`RETRY_FIRST` s, doubling up to
    :data:`RETRY_MAX`."""
    deadline = time.monotonic() + wait if deadline is None else deadline
    left = max(0.0, deadline - time.monotonic())
    lease = poll_until(lambda: _take_once(client, names), left, first=RETRY_FIRST, cap=RETRY_MAX)
    if lease is None:
        raise TargetBusyError(_held(names) or names, wait, LEASE_SECONDS)
    return lease


RETRY_FIRST = 0.5
RETRY_MAX = 5.0
"""Between two requests for a held slot: 0.5 s, doubling up to 5 s."""

RENEW_EVERY = LEASE_SECONDS * 0.75
"""How often a held lease is renewed; after a failed renewal, every :data:`RENEW_RETRY` s."""
RENEW_RETRY = 5.0


def _renew(
    lease: uuid.UUID,
    names: list[str],
    stop: threading.Event,
    every: float = RENEW_EVERY,
    retry: float = RENEW_RETRY,
) -> None:
    """Renew ``lease`` every ``every`` s until ``stop``. A renewal the server could not make
    (it is restarting, its network dropped) is tried again every ``retry`` s until it
    answers: the slot stays held through a server outage shorter than the lease. One the
    server no longer knows (410: it ran out, the sweep took it) is given up, said in the
    log: another run may now take the target."""
    log = logging.getLogger("moxflow.targets")
    wait = every
    while not stop.wait(wait):
        try:
            with get_client(sync_client=True) as client:
                response = _post(
                    client, f"{_API}/leases/{lease}/renew", {"lease_duration": LEASE_SECONDS}
                )
            if stop.is_set():  # released meanwhile: whatever the answer, nothing to say
                return
            if response.status_code in (404, 410):
                log.error(
                    "the hold on %s ran out (the Prefect server forgot its lease): another "
                    "run may now take it",
                    ", ".join(names),
                )
                return
            response.raise_for_status()
            wait = every
        except Exception as exc:  # the thread must go on: the lease lapses without it
            if stop.is_set():
                return
            log.warning("could not renew the hold on %s: %s", ", ".join(names), exc)
            wait = retry


@contextmanager
def hold(targets: Sequence[str], *, wait: float = TARGET_WAIT) -> Iterator[None]:
    """Hold every slot of ``targets`` (all or none, taken together) for the block; wait up to
    ``wait`` seconds (0: one try) for a run that holds one, else raise ``TargetBusyError``.

    Two requests to the Prefect server (take, release) and a renewal every
    :data:`RENEW_EVERY` s in a thread, all through plain client calls: Prefect's own
    ``concurrency()`` costs about 55 ms more per hold in a flow (its service thread, events
    and lease watcher), on the critical path of a node's backups (docs/internals.md)."""
    names = sorted(set(targets))
    if not names:
        yield
        return
    deadline = time.monotonic() + wait
    try:
        with get_client(sync_client=True) as client:
            try:
                lease = _take(client, names, wait)
            except _Gone:
                # first use of a target (Prefect 3 makes no limit by itself), or a limit
                # deleted by hand: made, and waited for within what is left of ``wait``
                _make(client, names)
                lease = _take(client, names, wait, deadline)
    except (_Gone, httpx.HTTPError) as exc:
        raise SlotServerError(
            f"the Prefect server could not give out {', '.join(names)}: {exc}",
            hint="check that the Prefect server runs (PREFECT_API_URL)",
        ) from exc
    stop = threading.Event()
    renewal = threading.Thread(
        target=contextvars.copy_context().run,
        args=(_renew, lease, names, stop),
        name=f"moxflow-renew-{names[0]}",
        daemon=True,
    )
    renewal.start()
    try:
        yield
    finally:
        stop.set()
        try:
            with get_client(sync_client=True) as client:
                _release(client, lease)
        except httpx.HTTPError as exc:
            logging.getLogger("moxflow.targets").warning(
                "could not give back %s (free again within %.0f s): %s",
                ", ".join(names),
                LEASE_SECONDS,
                exc,
            )


class Reserved(AbstractContextManager[None]):
    """The slots of a step that starts later, asked for ahead (one request, in a thread of
    its own) while the step before it still works: the take, and the server's busy answers
    under a busy run, are then off the critical path. Entering uses the hold taken ahead;
    when another run held a slot at that moment (or the server failed), the step waits for
    them as a plain ``hold(targets, wait=wait)`` from its own start, as it would have done
    without the reservation. Leaving releases them. The price: slots taken ahead are held
    from then on, while the step before runs (a backup's next guest, during the dump before
    it). One the step never entered is given back by :meth:`cancel`."""

    def __init__(self, targets: Sequence[str], *, wait: float = TARGET_WAIT) -> None:
        self._targets, self._wait = list(targets), wait
        self._ahead = hold(self._targets, wait=0)
        self._late: AbstractContextManager[None] | None = None  # the step's own hold
        self._lock = threading.Lock()
        # taking → held → entered → released; or taking → missed → entered (a late hold);
        # or cancelled
        self._state = "taking"
        self._taken = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._take,),
            name=f"moxflow-reserve-{','.join(self._targets)}",
            daemon=True,
        )
        self._taken.start()

    def _take(self) -> None:
        try:
            self._ahead.__enter__()
        except Exception:  # held by another run, or the server failed: the step asks itself
            with self._lock:
                self._state = "missed" if self._state == "taking" else self._state
            return
        with self._lock:
            cancelled = self._state == "cancelled"
            self._state = "held"
        if cancelled:
            self._release()

    def __enter__(self) -> None:
        self._taken.join()
        with self._lock:
            state = self._state
            if state == "held":
                self._state = "entered"
                return
            if state != "missed":  # given back by cancel(), or entered twice
                raise RuntimeError(f"the hold on {', '.join(self._targets)} is {state}")
        late = hold(self._targets, wait=self._wait)
        late.__enter__()  # TargetBusyError after the wait, SlotServerError ...
        with self._lock:
            self._late, self._state = late, "entered"

    def __exit__(self, *exc_info: object) -> None:
        if self._late is not None:
            late, self._late = self._late, None
            with self._lock:
                self._state = "released"
            late.__exit__(None, None, None)
            return
        self._release()

    def _release(self) -> None:
        with self._lock:
            if self._state not in ("held", "entered"):
                return
            self._state = "released"
        self._ahead.__exit__(None, None, None)

    def cancel(self) -> None:
        """Give the slots back if the step never took them over (it never ran, or failed
        before its body)."""
        with self._lock:
            if self._state in ("taking", "missed"):
                self._state = "cancelled"
                return
            if self._state != "held":
                return
        self._release()


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

    For a step that is one Proxmox task on a guest (a snapshot, its deletion):
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
