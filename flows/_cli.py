"""Command-line plumbing shared by the flows; light, so that ``--help`` is fast."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EPILOG = """\
exit status: 0 every target ok (or skipped), 1 a target failed (the report says which),
2 bad input (inventory, option or name), nothing changed.

The inventory is read from --inventory, else $MOXFLOW_INVENTORY, else ./inventory.toml.
Any setting can be overridden from the environment: MOXFLOW_PROXMOX__PORT=8007.
"""


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every job shares."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="inventory TOML file (default: $MOXFLOW_INVENTORY or ./inventory.toml)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read the current state and show the full plan; change nothing anywhere",
    )
    return parser


def add_lock_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    """``--lock-timeout SECONDS``: how long to retry a locked guest (and ``what``) first."""
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help=f"how long to keep retrying a locked guest {what} (default: 120)",
    )


def split_csv(values: Sequence[str] | None) -> list[str]:
    """Accept both ``--only a,b`` and ``--only a --only b``."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out
