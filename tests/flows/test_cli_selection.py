"""A selection that names a guest that is not there is bad input: exit status 2, nothing changed.

A typo (``--select medai-vm``) used to end "OK: 0 targets" with exit status 0, so a backup
job could back up nothing for weeks without anyone noticing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from flows.guest_snapshot import main as guest_snapshot_main
from flows.offsite_copy import main as offsite_copy_main
from flows.restore_test import main as restore_test_main
from flows.vzdump_backup import main as vzdump_backup_main
from labsim.client import LabClient

Main = Callable[[Sequence[str] | None], int]
JOBS: dict[str, tuple[Main, list[str]]] = {
    "guest_snapshot": (guest_snapshot_main, ["--label", "daily"]),
    "vzdump_backup": (vzdump_backup_main, []),
    "offsite_copy": (offsite_copy_main, []),
    "restore_test": (restore_test_main, []),
}


@pytest.mark.parametrize("job", sorted(JOBS))
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_selection_naming_no_guest_is_a_usage_error(
    job: str,
    dry_run: bool,
    fresh_lab: LabClient,
    lab_inventory: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    main, extra = JOBS[job]
    before = fresh_lab.state()
    argv = ["--inventory", str(lab_inventory), *extra, "--select", "100,medai-vm"]
    assert main([*argv, "--dry-run"] if dry_run else argv) == 2
    err = capsys.readouterr().err
    assert "'medai-vm' (did you mean 'media-vm'?) matches no guest" in err
    assert fresh_lab.state() == before
    assert all(r["method"] == "GET" for r in fresh_lab.api_requests())
