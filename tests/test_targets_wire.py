"""A target slot's requests at the wire (tasks/targets.py): what moxflow sends to the Prefect
server's concurrency API and how it takes the server's answers (respx). The slots against a
real server: tests/flows/test_targets.py; a lease outliving its first term and a killed
holder: tests/system/test_leases.py."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import respx
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.targets import PAGE, _Gone, _renew, _take_once, make_slots

API = "http://prefect.test/api"
TAKE = f"{API}/v2/concurrency_limits/increment-with-lease"
RELEASE = f"{API}/v2/concurrency_limits/decrement-with-lease"
LEASE = uuid.UUID("6f1c2d4e-0000-4000-8000-000000000001")


def granted(*names: str) -> httpx.Response:
    limits = [{"id": str(uuid.uuid4()), "name": n, "limit": 1} for n in names]
    return httpx.Response(200, json={"lease_id": str(LEASE), "limits": limits})


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(API) as c:
        yield c


@respx.mock
def test_a_busy_server_is_asked_again_at_once_not_after_prefects_two_seconds(
    client: SyncPrefectClient,
) -> None:
    """A SQLite server answers 503 when the take met another write; Prefect's client would
    wait 2 s, then 4 s, before asking again (each stall a hole in a node's backups)."""
    route = respx.post(TAKE).mock(
        side_effect=[httpx.Response(503), httpx.Response(503), granted("moxflow-guest-101")]
    )
    t0 = time.monotonic()
    assert _take_once(client, ["moxflow-guest-101"]) == LEASE
    took = time.monotonic() - t0
    assert route.call_count == 3
    body = json.loads(route.calls[0].request.content)
    assert body["names"] == ["moxflow-guest-101"]
    assert (body["slots"], body["mode"], body["lease_duration"]) == (1, "concurrency", 60.0)
    assert took < 1.5  # Prefect's own retries: at least 2 x 1.6 s


@respx.mock
def test_a_connection_the_server_dropped_is_sent_again(client: SyncPrefectClient) -> None:
    """A kept-alive connection the server had just closed ("connection reset by peer"):
    the take is sent again on a new one, as Prefect's client does, instead of failing the
    step (a vzdump of 120 guests met this)."""
    route = respx.post(TAKE).mock(
        side_effect=[httpx.ReadError("Connection reset by peer"), granted("moxflow-guest-101")]
    )
    assert _take_once(client, ["moxflow-guest-101"]) == LEASE
    assert route.call_count == 2


@respx.mock
def test_a_take_that_timed_out_is_not_sent_again(client: SyncPrefectClient) -> None:
    """A request cut short by a timeout may still be granted on the server: a second take
    would meet that lease's slot, so the step fails instead (SlotServerError)."""
    route = respx.post(TAKE).mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(httpx.ReadTimeout):
        _take_once(client, ["moxflow-guest-101"])
    assert route.call_count == 1


@respx.mock
def test_a_slot_another_run_holds_is_one_request_and_no_lease(
    client: SyncPrefectClient,
) -> None:
    route = respx.post(TAKE).mock(return_value=httpx.Response(423, json={"detail": "locked"}))
    assert _take_once(client, ["moxflow-guest-101"]) is None
    assert route.call_count == 1


@respx.mock
def test_a_lease_granted_on_fewer_limits_than_asked_is_given_back(
    client: SyncPrefectClient,
) -> None:
    """A limit deleted by hand: the server grants the take on the limits that exist. That
    lease is released at once and the caller makes the limit again."""
    respx.post(TAKE).mock(return_value=granted("moxflow-guest-101"))
    release = respx.post(RELEASE).mock(return_value=httpx.Response(200, json=[]))
    with pytest.raises(_Gone):
        _take_once(client, ["moxflow-guest-101", "moxflow-guest-102"])
    assert json.loads(release.calls.last.request.content) == {"lease_id": str(LEASE)}


@respx.mock
def test_a_server_that_wants_a_csrf_token_gets_one(client: SyncPrefectClient) -> None:
    """PREFECT_SERVER_CSRF_PROTECTION_ENABLED: the take without a token is refused (403);
    it is sent again through Prefect's client, which fetches a token first."""

    def take(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Prefect-Csrf-Token") != "t0k3n":
            return httpx.Response(403, json={"detail": "Invalid CSRF token"})
        return granted("moxflow-guest-101")

    route = respx.post(TAKE).mock(side_effect=take)
    token = respx.get(url__startswith=f"{API}/csrf-token").mock(
        return_value=httpx.Response(
            200,
            json={
                "token": "t0k3n",
                "client": "x",
                "expiration": "2999-01-01T00:00:00Z",
                "id": str(uuid.uuid4()),
                "created": "2026-01-01T00:00:00Z",
                "updated": "2026-01-01T00:00:00Z",
            },
        )
    )
    assert _take_once(client, ["moxflow-guest-101"]) == LEASE
    assert (route.call_count, token.call_count) == (2, 1)


RENEW = f"{API}/v2/concurrency_limits/leases/{LEASE}/renew"


@respx.mock
def test_a_renewal_the_server_could_not_make_is_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server restarting (500, a refused connection) does not end the hold: the renewal
    is tried again until the server answers, then goes on at its pace."""
    answers = [httpx.Response(500), httpx.ConnectError("refused")] + [httpx.Response(200)] * 3
    route = respx.post(RENEW).mock(side_effect=answers)
    stop = threading.Event()
    with temporary_settings(updates={PREFECT_API_URL: API}):
        thread = threading.Thread(  # as hold() starts it: in a copy of the context
            target=contextvars.copy_context().run,
            args=(_renew, LEASE, ["moxflow-guest-101"], stop, 0.01, 0.01),
        )
        thread.start()
        deadline = time.monotonic() + 10
        while route.call_count < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join(10)
    assert route.call_count == 5
    assert json.loads(route.calls.last.request.content) == {"lease_duration": 60.0}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(
        "could not renew the hold on moxflow-guest-101" in w for w in warned
    )


@respx.mock
def test_a_lease_the_server_forgot_is_said_and_no_longer_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """410 Gone (Prefect's answer for a lease it no longer knows: it ran out, the sweep took
    it): one error line naming the target, and the renewals stop."""
    route = respx.post(RENEW).mock(return_value=httpx.Response(410, json={"detail": "gone"}))
    with temporary_settings(updates={PREFECT_API_URL: API}):
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(_renew, LEASE, ["moxflow-guest-101"], threading.Event(), 0.01, 0.01),
        )
        thread.start()
        thread.join(10)
    assert not thread.is_alive()
    assert route.call_count == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "the hold on moxflow-guest-101 ran out (the Prefect server forgot its lease): "
        "another run may now take it"
    ]


@respx.mock
def test_make_slots_reads_every_page_and_makes_only_the_missing_ones() -> None:
    """The server's limits are read a page at a time; a slot on a later page is not made
    again; a busy server (503) is asked again at once, one made meanwhile (409) is fine."""
    first = [{"id": str(uuid.uuid4()), "name": f"other-{i}", "limit": 1} for i in range(PAGE)]
    later = [{"id": str(uuid.uuid4()), "name": "moxflow-guest-1", "limit": 1}]

    def page(request: httpx.Request) -> httpx.Response:
        offset = json.loads(request.content)["offset"]
        return httpx.Response(200, json=first if offset == 0 else later)

    def limit(*created: object) -> list[dict[str, object]]:
        return [{**f, "active": True, "active_slots": 0, "denied_slots": 0,
                 "slot_decay_per_second": 0.0, "created": "2026-12-07T00:00:00Z",
                 "updated": "2026-12-07T00:00:00Z"} for f in created]  # fmt: skip

    first, later = limit(*first), limit(*later)
    respx.get(url__startswith=f"{API}/csrf-token").mock(return_value=httpx.Response(404))
    listed = respx.post(f"{API}/v2/concurrency_limits/filter").mock(side_effect=page)
    create = respx.post(f"{API}/v2/concurrency_limits/").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(201, json={"id": str(uuid.uuid4())}),
            httpx.Response(409),
        ]
    )
    with temporary_settings(updates={PREFECT_API_URL: API}):
        make_slots(["moxflow-guest-1", "moxflow-guest-2", "moxflow-guest-3", "moxflow-guest-1"])
    assert listed.call_count == 2
    made = [json.loads(c.request.content) for c in create.calls]
    assert [m["name"] for m in made] == ["moxflow-guest-2", "moxflow-guest-2", "moxflow-guest-3"]
    assert {m["limit"] for m in made} == {1}
