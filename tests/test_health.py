"""Health checks as data: a check in, its description out; what a check saw in, a result out."""

from __future__ import annotations

import pytest

from moxflow.health import (
    HealthResult,
    all_healthy,
    describe,
    failure,
    judge_command,
    judge_http,
    judge_tcp,
)
from moxflow.inventory import HealthCheck


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (
            HealthCheck(http="http://127.0.0.1:8080/health/media"),
            "GET http://127.0.0.1:8080/health/media expecting 200",
        ),
        (
            HealthCheck(http="https://jellyfin.lan/health", expect_status=204, expect_text="ok"),
            "GET https://jellyfin.lan/health expecting 204 and 'ok'",
        ),
        (HealthCheck(tcp="10.0.0.5:8096"), "TCP connect to 10.0.0.5:8096"),
        (HealthCheck(tcp="[fd00::5]:22"), "TCP connect to [fd00::5]:22"),
        (
            HealthCheck(command=["systemctl", "is-active", "jellyfin"]),
            "on the host: systemctl is-active jellyfin",
        ),
        (
            HealthCheck(command=["sh", "-c", "test -e /run/ok; echo $?"]),
            "on the host: sh -c 'test -e /run/ok; echo $?'",
        ),
    ],
)
def test_describe(check: HealthCheck, text: str) -> None:
    assert describe(check) == text


def test_check_kind_and_tcp_target() -> None:
    assert HealthCheck(http="http://a/").kind == "http"
    assert HealthCheck(tcp="a:1").kind == "tcp"
    assert HealthCheck(command=["true"]).kind == "command"
    assert HealthCheck(tcp="10.0.0.5:8096").tcp_target == ("10.0.0.5", 8096)
    assert HealthCheck(tcp="[fd00::5]:22").tcp_target == ("fd00::5", 22)
    assert HealthCheck(tcp="nas.lan:445").tcp_target == ("nas.lan", 445)


@pytest.mark.parametrize(
    ("status", "body", "expect_status", "expect_text", "ok", "detail"),
    [
        (200, "ok\n", 200, "ok", True, "HTTP 200, body contains 'ok'"),
        (200, "", 200, None, True, "HTTP 200"),
        (204, "", 204, None, True, "HTTP 204"),
        (503, "", 200, "ok", False, "HTTP 503, expected 200"),
        (
            503,
            "<html>\n  <body>Service Unavailable</body>\n</html>",
            200,
            None,
            False,
            "HTTP 503, expected 200; body '<html> <body>Service Unavailable</body> </html>'",
        ),
        (
            200,
            '{"status": "starting"}',
            200,
            '"status": "ok"',
            False,
            """HTTP 200 but the body lacks '"status": "ok"'; body '{"status": "starting"}'""",
        ),
        (200, "OK", 200, "ok", False, "HTTP 200 but the body lacks 'ok'; body 'OK'"),
    ],
)
def test_judge_http(
    status: int, body: str, expect_status: int, expect_text: str | None, ok: bool, detail: str
) -> None:
    result = judge_http(status, body, expect_status, expect_text, check="GET http://x/")
    assert result == HealthResult("GET http://x/", ok, detail)


def test_judge_http_quotes_long_or_hostile_bodies_briefly() -> None:
    body = "\x1b[31mERROR\x1b[0m " + "x" * 500
    result = judge_http(500, body, 200, None)
    assert result.check == "http"
    assert len(result.detail) < 130
    assert "\x1b" not in result.detail
    assert result.detail.endswith("...'")


def test_judge_tcp() -> None:
    assert judge_tcp(True, check="TCP connect to a:1") == HealthResult(
        "TCP connect to a:1", True, "connection accepted"
    )
    assert judge_tcp(False, "[Errno 111] Connection refused") == HealthResult(
        "tcp", False, "connection failed: [Errno 111] Connection refused"
    )
    assert judge_tcp(False).detail == "connection failed: no answer"


@pytest.mark.parametrize(
    ("exit_code", "stdout", "stderr", "ok", "detail"),
    [
        (0, "active\n", "", True, "exit 0: 'active'"),
        (0, "", "", True, "exit 0"),
        (3, "inactive\n", "", False, "exit 3: 'inactive'"),
        (
            1,
            "",
            "Unit jellyfin.service could not be found.\n",
            False,
            "exit 1: 'Unit jellyfin.service could not be found.'",
        ),
    ],
)
def test_judge_command(exit_code: int, stdout: str, stderr: str, ok: bool, detail: str) -> None:
    assert judge_command(exit_code, stdout, stderr) == HealthResult("command", ok, detail)


def test_results_read_well() -> None:
    good = HealthResult("TCP connect to a:1", True, "connection accepted")
    bad = judge_http(503, "", 200, None, check="GET http://a/health expecting 200")
    down = failure("on the host: true", "SshConnectError: dns: connection refused")
    assert str(good) == "TCP connect to a:1: ok (connection accepted)"
    assert str(bad) == "GET http://a/health expecting 200: FAILED (HTTP 503, expected 200)"
    assert str(down) == "on the host: true: FAILED (SshConnectError: dns: connection refused)"
    assert all_healthy([good])
    assert all_healthy([])
    assert not all_healthy([good, bad, down])
