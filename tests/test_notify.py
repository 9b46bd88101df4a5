"""Notifications: the messages (pure), the [notifications] settings, and the webhook (respx)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from moxflow.errors import ConfigError
from moxflow.inventory import load_inventory
from moxflow.notify import (
    Kind,
    Severity,
    automation_specs,
    kinds_of,
    message_for_report,
)
from moxflow.report import Outcome, ReportRow, RunReport
from tasks.notify import send_webhook

TOKEN = "s3cr3t-t0ken-abc"
URL = f"https://hooks.example.net/notify/{TOKEN}"


def report(*rows: ReportRow, job: str = "nixos-update", label: str = "update") -> RunReport:
    r = RunReport(job=job, label=label)
    r.extend(rows)
    return r.finish()


FAILED = ReportRow("pve1:tank/data", Outcome.FAILED, detail="zfs snapshot: exit 1: out of space")
OK = ReportRow("pve1:rpool", Outcome.OK)
ROLLED = ReportRow("web", Outcome.ROLLED_BACK, detail="health check failed; switched back")
ATTENTION = ReportRow("dns", Outcome.NEEDS_ATTENTION, detail="unreachable after rollback")
ALL = ["failed", "rollback", "needs-attention"]


# --- messages ------------------------------------------------------------------------------


def test_an_ok_run_says_nothing() -> None:
    assert kinds_of(report(OK)) == []
    assert message_for_report(report(OK), ALL) is None


def test_a_failed_run_names_its_failed_targets() -> None:
    msg = message_for_report(report(OK, FAILED, job="zfs-snapshot", label="hourly"), ALL)
    assert msg is not None
    assert msg.title == "moxflow zfs-snapshot [hourly] failed: 1 of 2"
    assert msg.severity is Severity.ERROR
    assert "- pve1:tank/data: failed: zfs snapshot: exit 1: out of space" in msg.body
    assert "pve1:rpool" not in msg.body
    payload = msg.payload()
    assert payload["severity"] == "error"
    assert payload["targets"] == {"pve1:tank/data": "failed"}
    assert payload["kinds"] == ["failed"]


def test_needs_attention_is_critical_and_rollback_listed() -> None:
    msg = message_for_report(report(ROLLED, ATTENTION), ALL, run_url="http://ui/runs/1")
    assert msg is not None
    assert msg.severity is Severity.CRITICAL
    assert "needs attention" in msg.title
    assert msg.kinds == (Kind.FAILED, Kind.ROLLBACK, Kind.NEEDS_ATTENTION)
    assert "- web: rolled back" in msg.body
    assert msg.body.endswith("http://ui/runs/1")


def test_a_busy_target_is_worth_a_message_that_names_its_holder() -> None:
    busy = ReportRow("dns", Outcome.BUSY, detail="another run (flow run 1234) is updating dns")
    assert kinds_of(report(OK, busy)) == [Kind.FAILED]
    msg = message_for_report(report(OK, busy), ["failed"])
    assert msg is not None
    assert msg.title == "moxflow nixos-update [update] incomplete: 1 of 2"
    assert msg.severity is Severity.ERROR
    assert "- dns: busy: another run (flow run 1234) is updating dns" in msg.body
    assert "Busy: another run or operation holds the target" in msg.body
    assert msg.payload()["targets"] == {"dns": "busy"}


def test_on_filters_what_is_worth_a_message() -> None:
    assert message_for_report(report(FAILED), ["needs-attention"]) is None
    assert message_for_report(report(ATTENTION), ["needs-attention"]) is not None
    assert message_for_report(report(ROLLED), ["rollback"]) is not None


def test_long_lists_and_details_are_cut() -> None:
    rows = [ReportRow(f"host{i:02}", Outcome.FAILED, detail="x" * 500) for i in range(15)]
    msg = message_for_report(report(*rows), ALL)
    assert msg is not None
    assert "- … and 5 more" in msg.body
    assert max(len(line) for line in msg.body.splitlines()) < 250


def test_automation_specs_follow_on() -> None:
    assert [s.name for s in automation_specs(ALL)] == [
        "moxflow: run failed",
        "moxflow: rollback",
        "moxflow: needs attention",
    ]
    (only,) = automation_specs(["rollback"])
    assert only.expect == ("moxflow.rollback",)
    assert only.match == {"prefect.resource.id": "moxflow.host.*"}


# --- settings ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    """An inventory with one host (an inventory without one is refused) and ``text``."""
    path = tmp_path / "inventory.toml"
    path.write_text(f'[hosts.pve1]\naddress = "10.0.0.2"\n{text}')
    return path


def test_notifications_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, ""))
    assert inv.notifications.block is None
    assert inv.notifications.webhook_url() is None
    assert inv.notifications.on == ALL


def test_a_plain_http_webhook_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, f'[notifications]\nwebhook = "http://hooks.example.net/{TOKEN}"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.setting == "notifications.webhook"
    assert "https://" in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('block = "My Block"', "notifications.block"),
        ('on = ["failed", "sometimes"]', "notifications.on[1]"),
        ('webhook = "https://x.example"\nretries = 3', "notifications.retries: unknown setting"),
        ("timeout = 0", "notifications.timeout"),
    ],
)
def test_bad_notification_settings(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match="problem") as info:
        load_inventory(write(tmp_path, f"[notifications]\n{text}\n"))
    assert where in str(info.value)


def test_webhook_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", URL)
    inv = load_inventory(write(tmp_path, '[notifications]\nwebhook = "env:HOOK_URL"\n'))
    assert inv.notifications.webhook_url(inv.base_dir) == SecretStr(URL)
    (tmp_path / "hook").write_text(URL + "\n")
    inv = load_inventory(write(tmp_path, '[notifications]\nwebhook = "file:hook"\n'))
    url = inv.notifications.webhook_url(inv.base_dir)
    assert url is not None and url.get_secret_value() == URL
    (tmp_path / "hook").write_text(f"http://plain/{TOKEN}\n")
    with pytest.raises(ConfigError, match="https") as info:
        inv.notifications.webhook_url(inv.base_dir)
    assert TOKEN not in str(info.value)


# --- the webhook ---------------------------------------------------------------------------


def test_webhook_posts_the_message_as_json() -> None:
    msg = message_for_report(report(FAILED), ALL)
    assert msg is not None
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(200))
        assert send_webhook(SecretStr(URL), msg, backoff=0) is True
    assert route.call_count == 1
    sent = json.loads(route.calls.last.request.content)
    assert sent["title"] == "moxflow nixos-update [update] failed: 1 of 1"
    assert sent["severity"] == "error"
    assert sent["source"] == "moxflow"
    assert sent["targets"] == {"pve1:tank/data": "failed"}
    assert route.calls.last.request.headers["content-type"] == "application/json"


def test_webhook_retries_5xx_and_connection_errors_then_succeeds() -> None:
    msg = message_for_report(report(FAILED), ALL)
    assert msg is not None
    with respx.mock() as mock:
        route = mock.post(URL).mock(
            side_effect=[httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(204)]
        )
        assert send_webhook(SecretStr(URL), msg, backoff=0, attempts=3) is True
    assert route.call_count == 3


def test_webhook_gives_up_bounded_logs_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    msg = message_for_report(report(FAILED), ALL)
    assert msg is not None
    caplog.set_level(logging.DEBUG)
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(502))
        assert send_webhook(SecretStr(URL), msg, backoff=0, attempts=4) is False
    assert route.call_count == 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "not sent after 4 tries" in text
    assert "HTTP 502" in text
    assert "hooks.example.net" in text


def test_webhook_client_errors_are_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    msg = message_for_report(report(FAILED), ALL)
    assert msg is not None
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(404))
        assert send_webhook(SecretStr(URL), msg, backoff=0) is False
    assert route.call_count == 1
    assert "not retried" in caplog.text
    assert "HTTP 404" in caplog.text


def test_the_webhook_url_never_appears_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    msg = message_for_report(report(FAILED), ALL)
    assert msg is not None
    caplog.set_level(logging.DEBUG)  # httpx logs every request's URL at INFO
    with respx.mock() as mock:
        mock.post(URL).mock(
            side_effect=[httpx.Response(500), httpx.ReadTimeout("slow"), httpx.Response(200)]
        )
        assert send_webhook(SecretStr(URL), msg, backoff=0) is True
        mock.post(URL).mock(side_effect=httpx.ConnectError(f"cannot reach {URL}"))
        assert send_webhook(SecretStr(URL), msg, backoff=0, attempts=2) is False
    assert "hooks.example.net" in caplog.text
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
