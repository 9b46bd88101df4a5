"""Health checks as they run after a switch: HTTP (respx at the wire), TCP, commands over SSH."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import respx

from blocks.ssh import ssh_runner
from labsim.client import LabClient
from moxflow.inventory import HealthCheck, load_inventory
from tasks.verify import check_once, wait_healthy

URL = "http://media.lan:8096/health"


@respx.mock
def test_http_check_wants_the_status_and_the_text() -> None:
    respx.get(URL).mock(return_value=httpx.Response(200, text="Healthy"))
    assert check_once(HealthCheck(http=URL, expect_text="Healthy"), None).ok
    bad = check_once(HealthCheck(http=URL, expect_text="Ready"), None)
    assert not bad.ok
    assert "Ready" in bad.detail


@respx.mock
def test_http_check_reports_a_wrong_status_and_a_refused_connection() -> None:
    respx.get(URL).mock(return_value=httpx.Response(503, text="starting"))
    result = check_once(HealthCheck(http=URL), None)
    assert not result.ok
    assert "503" in result.detail
    respx.get(URL).mock(side_effect=httpx.ConnectError("refused"))
    assert not check_once(HealthCheck(http=URL), None).ok


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def test_tcp_check(listening: int) -> None:
    assert check_once(HealthCheck(tcp=f"127.0.0.1:{listening}"), None).ok
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    result = check_once(HealthCheck(tcp=f"127.0.0.1:{closed}", timeout=1), None)
    assert not result.ok


def test_command_check_runs_on_the_host(fresh_lab: LabClient) -> None:
    inv = load_inventory(fresh_lab.dir / "inventory.toml")
    with ssh_runner(inv, "media") as runner:
        assert check_once(HealthCheck(command=["systemctl", "is-system-running"]), runner).ok
        failing = check_once(HealthCheck(command=["sh", "-c", "echo down >&2; exit 3"]), runner)
    assert not failing.ok
    assert "exit 3" in failing.detail
    assert "down" in failing.detail


@respx.mock
def test_wait_healthy_retries_within_the_grace_then_gives_up() -> None:
    route = respx.get(URL)
    route.side_effect = [httpx.Response(503), httpx.Response(503), httpx.Response(200)]
    ok, results = wait_healthy([HealthCheck(http=URL)], lambda: None, grace=5, interval=0.01)
    assert ok
    assert route.call_count == 3
    route.side_effect = None
    route.return_value = httpx.Response(500)
    ok, results = wait_healthy([HealthCheck(http=URL)], lambda: None, grace=0.2, interval=0.01)
    assert not ok
    assert "500" in results[0].detail
