"""The docs' Prefect UI screenshots exist and show moxflow (made by scripts/screenshots.py).

Chromium is not needed here: these tests check the committed files only. Each PNG has a
``.txt`` beside it with the page's visible text, read from the page when it was taken.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from deployments.definitions import DEFINITIONS

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
INSTALL = IMG.parent / "install.md"
SCREENSHOTS = ("prefect-deployments", "prefect-run-report", "prefect-flow-runs")
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
    assert "moxflow" in text


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


def test_flow_runs_page_shows_both_runs() -> None:
    lines = text_of("prefect-flow-runs").splitlines()
    assert "2 runs" in lines
    assert lines.count("Completed") >= 2
    for flow in ("zfs-snapshot", "guest-snapshot", "nixos-update"):
        assert flow in lines


def test_install_doc_embeds_the_screenshots() -> None:
    doc = INSTALL.read_text(encoding="utf-8")
    assert "## What it looks like" in doc
    assert "](img/prefect-deployments.png)" in doc
    assert "](img/prefect-run-report.png)" in doc
    assert "python -m scripts.screenshots" in doc
