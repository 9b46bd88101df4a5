"""Every shell block in README.md and docs/*.md works as written, or says why it is not run here.

Each ```sh block is preceded by a marker that says what becomes of it:

- ``<!-- shell: run -->``: run here, exactly as written, as one bash session from the moxflow
  folder, after the documented set-up (``. .venv/bin/activate``), with ``HOME`` a fresh
  folder (so ``~/lab`` is this test's own) and a local Prefect server reachable as the README
  says (``MOXFLOW_PREFECT_URL``). Each command must exit 0, or the status its trailing
  ``# exit N: why`` comment gives, without a traceback.
- ``<!-- shell: run by PLACE ... -->``: another test (``tests/...py[::name]``) or ``.ci/run``
  runs these commands; the place must exist.
- ``<!-- shell: not run here: REASON -->``: commands for another machine (a Proxmox node, a
  Docker host); the reason is the documentation of that.

A block without a marker fails: a new command in the docs is either tested or explained.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound

from deployments.definitions import DEFINITIONS
from flows._server import LOCAL_API_URL, server_answers
from tests.system.stack import ROOT, clean_env, wait_for

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(
    r"^\s*<!-- shell: (?P<what>run|run by (?P<by>.+?)|not run here: (?P<why>.+?)) -->$"
)
EXPECT = re.compile(r"#\s*exit (?P<rc>\d+):")


@dataclass(frozen=True)
class Block:
    """One ```sh block of a document."""

    doc: Path
    line: int
    marker: re.Match[str] | None
    commands: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def shell_blocks(doc: Path) -> list[Block]:
    """The ```sh blocks of ``doc`` with their marker and their commands (continuations joined)."""
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        start = i
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        body: list[str] = []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i].strip())
            i += 1
        commands: list[str] = []
        pending = ""
        for text in body:
            if text.endswith("\\"):
                pending += text[:-1].rstrip() + " "
                continue
            command = (pending + text).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
        blocks.append(Block(doc, start + 1, MARKER.match(prev), tuple(commands)))
        i += 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in shell_blocks(doc)]
RUN = [b for b in ALL_BLOCKS if b.marker is not None and b.marker["what"] == "run"]


def test_every_shell_block_is_run_or_says_why_not() -> None:
    unmarked = [b.where for b in ALL_BLOCKS if b.marker is None]
    assert unmarked == [], "a ```sh block without a <!-- shell: ... --> marker"
    assert len(RUN) >= 3  # README's jobs and lab, docs/testing.md's lab


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker and b.marker["by"]],
                         ids=lambda b: b.where)  # fmt: skip
def test_the_place_that_runs_a_block_exists(block: Block) -> None:
    assert block.marker is not None
    places = re.findall(r"(tests/[\w/]+\.py(?:::\w+)?|\.ci/run)", block.marker["by"])
    assert places, f"{block.where}: 'run by' names no test file or .ci/run"
    for place in places:
        path, _, name = place.partition("::")
        assert (ROOT / path).is_file(), f"{block.where}: {path} does not exist"
        if name:
            assert f"def {name}(" in (ROOT / path).read_text(), f"{block.where}: no {place}"


def _env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(HOME=str(home), PIP_NO_INPUT="1", **extra)


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_a_documented_block_runs_as_written(
    block: Block, local_server: str, tmp_path: Path
) -> None:
    script = [". .venv/bin/activate"]  # the documented set-up (README, "Running the jobs")
    for n, command in enumerate(block.commands):
        script += [f"printf '\\n@@@ {n} start\\n'", command, f"printf '\\n@@@ {n} exit %d\\n' $?"]
    out = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=ROOT,
        env=_env(tmp_path, MOXFLOW_PREFECT_URL=local_server),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = out.stdout + out.stderr
    try:
        for n, command in enumerate(block.commands):
            m = re.search(rf"\n@@@ {n} start\n(.*?)\n@@@ {n} exit (\d+)\n", out.stdout, re.S)
            assert m, f"{block.where}: `{command}` did not run\n{text[-3000:]}"
            want = EXPECT.search(command)
            expected = int(want["rc"]) if want else 0
            assert int(m[2]) == expected, f"{block.where}: `{command}` exit {m[2]}\n{m[1][-3000:]}"
        assert "Traceback" not in text, text[-3000:]
    finally:  # a lab the block left running (it failed half-way) is stopped
        for sock in tmp_path.glob("*/labsim.sock"):
            _lab_down(sock.parent)


def _trying_block() -> Block:
    [block] = [
        b
        for b in ALL_BLOCKS
        if b.marker is not None and "test_trying_it_without_a_homelab" in (b.marker["by"] or "")
    ]
    return block


def test_trying_it_without_a_homelab(tmp_path: Path) -> None:
    """docs/install.md: a lab, ``prefect server start &`` and serve, in one shell: the served
    deployments are in the server on :4200 (serve found it, though it started after serve)."""
    block = _trying_block()
    assert block.commands[-1].startswith("python -m deployments.serve"), block.commands
    if server_answers(LOCAL_API_URL):
        if os.environ.get("CI") == "true":
            pytest.fail(f"something already answers at {LOCAL_API_URL}")
        pytest.skip(f"a Prefect server already runs at {LOCAL_API_URL} (this test starts one)")
    log = tmp_path / "block.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", "\n".join(block.commands)],
            cwd=ROOT,
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for("the server on :4200", lambda: server_answers(LOCAL_API_URL), 120, log)
        with SyncPrefectClient(LOCAL_API_URL) as client:

            def served() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return all(client.read_deployment_by_name(d.full_name) for d in DEFINITIONS)
                except ObjectNotFound:
                    return False

            wait_for("serve to register every deployment", served, 120, log)
    finally:  # as Ctrl-C and `kill %1` would: serve and the server (a & job ignores SIGINT)
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        wait_for("the server to stop", lambda: not _alive(proc.pid) or _kill(proc.pid), 30, log)
        _lab_down(tmp_path / "lab")
    text = log.read_text()
    assert f"from the Prefect server at {LOCAL_API_URL}" in text
    assert "unexpected exception" not in text
    # the server started with & writes to the same terminal, SQLite's "database is locked"
    # tracebacks under load among it (Prefect's, not ours): none may come through our code
    ours = re.compile(rf'File "{re.escape(str(ROOT))}/(?!\.venv/)')
    assert not ours.search(text), text[-4000:]


def _lab_down(lab: Path) -> None:
    python = str(ROOT / ".venv" / "bin" / "python")
    argv = [python, "-m", "labsim", "down", "--dir", str(lab)]
    subprocess.run(argv, cwd=ROOT, capture_output=True, check=False, timeout=60)


def _kill(pgid: int) -> bool:
    """SIGKILL what is left of the group; whether it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    time.sleep(0.2)
    return not _alive(pgid)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
