"""``make demo`` runs clean, and the record it points to is there: the Prefect UI it names at
the end answers, and every ``View at`` link it printed opens a run of that server, until
``make demo-stop``."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
import uuid

import pytest
from prefect.client.orchestration import SyncPrefectClient

from flows._server import LOCAL_API_URL, server_answers
from tests.system.stack import ROOT, clean_env

pytestmark = pytest.mark.system

UI = LOCAL_API_URL.removesuffix("/api")


def _make(target: str) -> subprocess.CompletedProcess[str]:
    """``make TARGET`` as a user types it (not as a sub-make of CI's `make test`)."""
    env = {k: v for k, v in clean_env().items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", target], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def test_make_demo_leaves_the_ui_with_every_run_and_demo_stop_stops_it() -> None:
    if server_answers(LOCAL_API_URL):
        if os.environ.get("CI") == "true":
            pytest.fail(f"something already answers at {LOCAL_API_URL}")
        pytest.skip(f"a Prefect server already runs at {LOCAL_API_URL} (the demo would use it)")
    try:
        out = _make("demo")
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-4000:]
        for noise in ("Traceback", "database is locked", "unexpected exception"):
            assert noise not in text, text[-4000:]
        tail = out.stdout.strip().splitlines()[-3:]
        assert any(f"Prefect UI: {UI}" in line for line in tail), tail
        assert any("make demo-stop" in line for line in tail), tail
        assert server_answers(LOCAL_API_URL), "the UI the demo names does not answer"
        with urllib.request.urlopen(UI + "/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read(2000).lower()
        links = re.findall(rf"View at {re.escape(UI)}/runs/flow-run/([0-9a-f-]{{36}})", text)
        assert len(links) >= 10, text[-4000:]
        with SyncPrefectClient(LOCAL_API_URL) as client:
            for run_id in links:
                run = client.read_flow_run(uuid.UUID(run_id))
                assert run.state is not None and run.state.is_final(), run
    finally:
        stopped = _make("demo-stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not server_answers(LOCAL_API_URL, timeout=2.0)
