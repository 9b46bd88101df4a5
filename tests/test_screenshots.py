"""The docs' Prefect UI screenshots exist and show moxflow (made by scripts/screenshots.py).

Chromium is not needed here: these tests check the committed files only. Each PNG has a
``.txt`` beside it with the page's visible text, read from the page when it was taken.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from deployments.definitions import DEFINITIONS

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
INSTALL = IMG.parent / "install.md"
README = IMG.parent.parent / "README.md"
GRAPHS = (
    "prefect-graph-nixos-update",
    "prefect-graph-nixos-host-rollback",
    "prefect-graph-vzdump-backup",
)
"""Flow run pages: the run graph at the top, the run's logs below."""
SCREENSHOTS = ("prefect-deployments", "prefect-run-report", "prefect-flow-runs", *GRAPHS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) chunks of a PNG file, CRCs checked."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def text_of(name: str) -> str:
    return (IMG / f"{name}.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SCREENSHOTS)
def test_screenshot_is_a_sane_png(name: str) -> None:
    data = (IMG / f"{name}.png").read_bytes()
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1][0] == b"IEND"
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert width >= 1000
    assert 600 <= height <= 4000
    assert depth == 8
    # not blank: a rendered page compresses far worse than a plain colour, and its
    # pixels have many distinct byte values
    pixels = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    assert len(pixels) == height * (1 + width * {2: 3, 6: 4}[color])
    assert len(data) > 30_000
    assert len(set(pixels)) > 64


@pytest.mark.parametrize("name", SCREENSHOTS)
def test_screenshot_has_its_text(name: str) -> None:
    text = text_of(name)
    # the page rendered (the SPA's navigation is there), not an error or a blank page
    assert "Deployments" in text.splitlines()
    # a moxflow page: its deployments' tag, or (a subflow run, untagged) its parent run
    assert "moxflow" in text or "Parent Run" in text.splitlines()


def test_deployments_page_shows_moxflows_deployments() -> None:
    lines = text_of("prefect-deployments").splitlines()
    for flow, name in (
        ("zfs-snapshot", "hourly"),
        ("zfs-snapshot", "daily"),
        ("guest-snapshot", "daily"),
        ("nixos-update", "weekly"),
    ):
        assert flow in lines
        assert name in lines
    # every flow shown is still one of moxflow's (a renamed flow means: take them again)
    known = {d.flow_name for d in DEFINITIONS}
    shown = {line for line in lines if line.endswith(("-snapshot", "-update", "-backup"))}
    assert shown <= known
    assert "Ready" in lines
    assert "moxflow" in lines


def test_run_report_page_shows_the_report_table() -> None:
    lines = text_of("prefect-run-report").splitlines()
    assert "zfs-snapshot-report" in lines
    for column in ("target", "taken", "kept", "removed", "outcome", "seconds", "detail"):
        assert column in lines
    assert "ok" in lines
    assert any(line.startswith("zfs-snapshot [daily] OK:") for line in lines)


def test_flow_runs_page_shows_the_runs() -> None:
    lines = text_of("prefect-flow-runs").splitlines()
    # zfs-snapshot, guest-snapshot, nixos-update and its three hosts' subflow runs, vzdump-backup
    assert "7 runs" in lines
    assert lines.count("Completed") >= 4
    assert "Failed" in lines  # the NixOS update that rolled media back
    for flow in ("zfs-snapshot", "guest-snapshot", "nixos-update", "nixos-update-host"):
        assert flow in lines
    assert "vzdump-backup" in lines


def flow_run_page(name: str, flow: str) -> list[str]:
    """The lines of a flow run page's text, checked to be a page about a run of ``flow``."""
    lines = text_of(name).splitlines()
    assert lines[lines.index("Flow") + 1] == flow
    for tab in ("Logs", "Task Runs", "Subflow Runs", "Artifacts"):
        assert tab in lines
    return lines


def run_state(lines: list[str]) -> str:
    """The state badge of the run: the first state name in the page's header (above the
    "Flow" line; the logs below also say "Completed")."""
    states = {"Completed", "Failed", "Cancelled", "Crashed", "Running", "Pending"}
    return next(line for line in lines[: lines.index("Flow")] if line in states)


def task_runs(lines: list[str]) -> int:
    """The "N Task runs" the page's header counts."""
    [count] = [int(m[1]) for line in lines if (m := re.fullmatch(r"(\d+) Task runs?", line))]
    return count


def test_nixos_update_graph_shows_a_rollback() -> None:
    lines = flow_run_page("prefect-graph-nixos-update", "nixos-update")
    assert run_state(lines) == "Failed"
    assert lines[lines.index("Deployment") + 1] == "weekly"
    assert "moxflow" in lines
    assert task_runs(lines) >= 3  # a preflight per host; the hosts are subflow runs
    # the log: dns first, then media and builder; media failed verification, switched back
    assert "plan: [dns] → [media, builder]" in lines
    assert any(line.startswith("media: verification failed") for line in lines)
    assert any(line.startswith("media: rolled back") for line in lines)
    for host in ("dns", "builder"):
        assert any(line.startswith(f"{host}: ok: updated") for line in lines)
    assert any("(2 ok, 1 rolled back)" in line for line in lines)


def test_rolled_back_hosts_graph_shows_its_steps() -> None:
    lines = flow_run_page("prefect-graph-nixos-host-rollback", "nixos-update-host")
    assert "media" in lines  # the subflow run is named after its host
    assert "Failed" in lines
    assert "Parent Run" in lines
    # each step a task run, named in the log; verify failed, switch-back brought media back
    steps = ["lock", "snapshot", "flake-update", "build", "arm-dead-man", "switch"]
    steps += ["verify", "switch-back", "unlock"]
    assert task_runs(lines) == len(steps)
    for step in steps:
        assert f"media: {step}" in lines
    assert any("VerificationFailed" in line and "jellyfin.service" in line for line in lines)
    assert "Finished in state Failed('media: rolled back')" in lines


def test_vzdump_backup_graph_shows_the_backup_run() -> None:
    lines = flow_run_page("prefect-graph-vzdump-backup", "vzdump-backup")
    assert run_state(lines) == "Completed"
    assert lines[lines.index("Deployment") + 1] == "nightly"
    assert "moxflow" in lines
    assert task_runs(lines) >= 2
    assert any(line.startswith("vzdump-backup [") for line in lines)  # its report's summary


def test_install_doc_embeds_the_screenshots() -> None:
    doc = INSTALL.read_text(encoding="utf-8")
    assert "## What it looks like" in doc
    assert "](img/prefect-deployments.png)" in doc
    assert "](img/prefect-run-report.png)" in doc
    assert "python -m scripts.screenshots" in doc


def test_readme_shows_the_run_graphs() -> None:
    doc = README.read_text(encoding="utf-8")
    assert "](docs/img/prefect-graph-nixos-update.png)" in doc
    assert "](docs/img/prefect-graph-vzdump-backup.png)" in doc
    assert "(docs/img/prefect-graph-nixos-host-rollback.png)" in doc
    for name in GRAPHS:
        assert f"{name}.png" in INSTALL.read_text(encoding="utf-8")
