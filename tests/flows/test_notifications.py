"""Notification paths against the Prefect test server: the automations, and the webhook of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from prefect import flow
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger
from pydantic import SecretStr

from deployments.notifications import main
from flows._run import finish
from moxflow.notify import Kind, automation_names, automation_specs
from moxflow.report import Outcome, ReportRow, RunReport

pytestmark = pytest.mark.prefect

BLOCK = "moxflow-test-alerts"
HOOK = "https://hooks.example.net/moxflow/t0k3n-xyz"


def write(tmp_path: Path, text: str) -> Path:
    """An inventory with one host (an inventory without one is refused) and ``text``."""
    path = tmp_path / "inventory.toml"
    path.write_text(f'[hosts.pve1]\naddress = "10.0.0.2"\n{text}')
    return path


def automations() -> dict[str, list[Any]]:
    with get_client(sync_client=True) as client:
        return {name: client.read_automations_by_name(name) for name in automation_names()}


@pytest.fixture
def block_id() -> str:
    """A Slack notification block with a fake URL (nothing is sent), and no automations yet."""
    with get_client(sync_client=True) as client:
        for found in automations().values():
            for a in found:
                client.delete_automation(a.id)
    block = SlackWebhook(url=SecretStr("https://hooks.slack.com/services/T000/B000/XXXXXXXX"))
    uuid = block.save(BLOCK, overwrite=True)
    return str(uuid)


def test_setup_creates_the_automations_once_and_updates_them(
    tmp_path: Path, block_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, f'[notifications]\nblock = "{BLOCK}"\n')
    assert main(["--inventory", str(inv), "--dry-run"]) == 0
    assert "would set 'moxflow: run failed'" in capsys.readouterr().out
    assert all(not found for found in automations().values())

    assert main(["--inventory", str(inv)]) == 0
    assert main(["--inventory", str(inv)]) == 0  # again: updated, not duplicated
    out = capsys.readouterr().out
    assert "created 'moxflow: rollback'" in out
    assert "updated 'moxflow: rollback'" in out
    found = automations()
    assert {name: len(a) for name, a in found.items()} == {
        "moxflow: run failed": 1,
        "moxflow: rollback": 1,
        "moxflow: needs attention": 1,
    }

    (failed,) = found["moxflow: run failed"]
    assert failed.enabled
    assert isinstance(failed.trigger, EventTrigger)
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.trigger.match.root == {"prefect.resource.id": "prefect.flow-run.*"}
    assert failed.trigger.match_related.root == {
        "prefect.resource.role": "tag",
        "prefect.resource.id": "prefect.tag.moxflow",
    }
    (action,) = failed.actions
    assert isinstance(action, SendNotification)
    assert str(action.block_document_id) == block_id
    assert "flow_run" in action.body

    (rollback,) = found["moxflow: rollback"]
    assert isinstance(rollback.trigger, EventTrigger)
    assert rollback.trigger.expect == {"moxflow.rollback"}
    assert rollback.trigger.match.root == {"prefect.resource.id": "moxflow.host.*"}
    (action,) = rollback.actions
    assert isinstance(action, SendNotification)
    assert action.subject == "moxflow: {{ event.payload.host }} rolled back"

    # fewer kinds in `on`: the others go away, the remaining one is updated in place
    inv = write(tmp_path, f'[notifications]\nblock = "{BLOCK}"\non = ["needs-attention"]\n')
    assert main(["--inventory", str(inv)]) == 0
    after = automations()
    assert [a.id for a in after["moxflow: needs attention"]] == [
        a.id for a in found["moxflow: needs attention"]
    ]
    assert after["moxflow: run failed"] == []
    assert after["moxflow: rollback"] == []


def test_a_missing_block_is_a_config_error(
    tmp_path: Path, block_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, '[notifications]\nblock = "no-such-block"\n')
    assert main(["--inventory", str(inv)]) == 2
    err = capsys.readouterr().err
    assert "notifications.block" in err
    assert "no Prefect notification block called 'no-such-block'" in err
    assert BLOCK in err  # the ones that exist are listed
    assert all(not found for found in automations().values())


def test_no_block_configured_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--inventory", str(write(tmp_path, ""))]) == 2
    assert "notifications.block: no notification block configured" in capsys.readouterr().err


# --- the direct webhook from a run ---------------------------------------------------------


@flow(name="notify-test")
def a_job(inventory: str, fail: bool) -> RunReport | State[Any]:
    report = RunReport(job="notify-test", label="adhoc")
    report.add(ReportRow("pve1:tank", Outcome.OK))
    if fail:
        report.add(ReportRow("pve1:rpool", Outcome.FAILED, detail="exit 1: dataset is busy"))
    return finish(report, artifact_key="notify-test-report")


@pytest.mark.parametrize("fail", [True, False])
def test_a_run_posts_to_the_webhook_only_when_it_failed(tmp_path: Path, fail: bool) -> None:
    inv = write(tmp_path, f'[notifications]\nwebhook = "{HOOK}"\n')
    with respx.mock(assert_all_called=False) as mock:
        hook = mock.post(HOOK).mock(return_value=httpx.Response(200))
        mock.route().pass_through()  # the Prefect test server
        state = a_job(str(inv), fail, return_state=True)
    assert state.is_failed() is fail
    if not fail:
        assert hook.call_count == 0
        return
    assert hook.call_count == 1
    sent = json.loads(hook.calls.last.request.content)
    assert sent["title"] == "moxflow notify-test [adhoc] failed: 1 of 2"
    assert sent["targets"] == {"pve1:rpool": "failed"}
    assert sent["run_url"].split("/")[-3:-1] == ["runs", "flow-run"]
    assert sent["body"].endswith(sent["run_url"])


@flow(name="notify-test-busy")
def a_busy_job(inventory: str) -> RunReport | State[Any]:
    report = RunReport(job="notify-test", label="adhoc")
    report.add(ReportRow("pve1:tank", Outcome.OK))
    report.add(ReportRow("pve1:rpool", Outcome.SKIPPED, detail="filtered out"))
    report.add(ReportRow("dns", Outcome.BUSY, detail="another run (flow run 1234) is updating dns"))
    return finish(report, artifact_key="notify-test-report")


def test_a_run_with_a_busy_target_fails_and_notifies(tmp_path: Path) -> None:
    """A target another run held was not done: the run ends Failed, the state the "run
    failed" automation fires on, and the direct webhook is sent too, naming the holder."""
    inv = write(tmp_path, f'[notifications]\nwebhook = "{HOOK}"\n')
    with respx.mock(assert_all_called=False) as mock:
        hook = mock.post(HOOK).mock(return_value=httpx.Response(200))
        mock.route().pass_through()
        state = a_busy_job(str(inv), return_state=True)
    assert state.is_failed() and state.message == "1 target(s) busy: dns"
    (spec,) = [s for s in automation_specs(["failed"]) if s.kind is Kind.FAILED]
    assert f"prefect.flow-run.{state.name}" in spec.expect
    assert hook.call_count == 1
    sent = json.loads(hook.calls.last.request.content)
    assert sent["title"] == "moxflow notify-test [adhoc] incomplete: 1 of 3"
    assert sent["targets"] == {"dns": "busy"}
    assert "another run (flow run 1234) is updating dns" in sent["body"]


def test_a_failing_webhook_does_not_change_the_run(tmp_path: Path) -> None:
    inv = write(tmp_path, f'[notifications]\nwebhook = "{HOOK}"\ntimeout = 1\n')
    with respx.mock() as mock:
        hook = mock.post(HOOK).mock(side_effect=httpx.ConnectError("refused"))
        mock.route().pass_through()
        state = a_job(str(inv), False, return_state=True)
        assert state.is_completed()
        state = a_job(str(inv), True, return_state=True)
    assert state.is_failed()
    assert "1 target(s) failed: pve1:rpool" in (state.message or "")
    assert hook.call_count == 3  # bounded: ATTEMPTS tries, then given up
