"""A run killed outright (SIGKILL: no cleanup of any kind) frees the targets it held by
itself, on a real ``prefect server start`` (PostgreSQL, leases on disk, as in compose): its
slot's lease runs out and the server's sweep revokes it. Slow (the lease is 60 s, the
server's minimum): ``make test-slow``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from moxflow.errors import TargetBusyError
from tasks.targets import LEASE_SECONDS, guest_target, hold
from tests.system.stack import ROOT, PrefectStack

HOLDER = """
import time
from tasks.targets import guest_target, hold
with hold([guest_target(4242)]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_holder_killed_outright_frees_its_target_by_itself(prefect_stack: PrefectStack) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=ROOT,
        env=prefect_stack.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        with temporary_settings(updates={PREFECT_API_URL: prefect_stack.api_url}):
            with (
                pytest.raises(TargetBusyError, match="moxflow-guest-4242"),
                hold([guest_target(4242)], wait=0),
            ):
                pass
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            t0 = time.monotonic()
            with hold([guest_target(4242)], wait=LEASE_SECONDS + 60):
                took = time.monotonic() - t0
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    print(f"freed {took:.0f}s after the kill (lease {LEASE_SECONDS:g}s)")
    assert took < LEASE_SECONDS + 60


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_hold_longer_than_its_lease_keeps_the_target(prefect_stack: PrefectStack) -> None:
    """A step holding a guest longer than a lease's term (a vzdump of a big disk) keeps it:
    the lease is renewed, so neither the server's sweep nor another run takes the slot; it
    is free the moment the step lets go."""
    slot = guest_target(4243)
    with temporary_settings(updates={PREFECT_API_URL: prefect_stack.api_url}):
        with hold([slot], wait=0):
            # past the first term and a sweep after it (every 15 s): without a renewal the
            # lease would be gone by now
            time.sleep(LEASE_SECONDS + 25)
            with pytest.raises(TargetBusyError, match="moxflow-guest-4243"), hold([slot], wait=0):
                pass
        t0 = time.monotonic()
        with hold([slot], wait=0):
            pass
        assert time.monotonic() - t0 < 5
