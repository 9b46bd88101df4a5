"""Run a benchmark's measured part in a fresh process (its own imports, its own peak memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_json_child(
    args: list[str], env: dict[str, str], log_path: Path | None = None
) -> tuple[dict[str, Any], int]:
    """Run ``python ARGS`` from the repository root: the JSON object on its last line of
    output, and its peak RSS in KiB. Its stderr goes to ``log_path`` (a temporary file when
    None); a child that fails or prints nothing raises SystemExit with its output and the
    tail of its stderr, so a broken benchmark says why."""
    with log_path.open("w+b") if log_path is not None else tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not out.strip():
            err.seek(0)
            tail = err.read().decode(errors="replace")[-4000:]
            raise SystemExit(f"the child failed with exit status {code}:\n{out}\n{tail}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result, int(usage.ru_maxrss)
