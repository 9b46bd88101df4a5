"""Register moxflow's block types with the Prefect server, so the UI can create them.

Usage::

    python -m blocks register      # both types, against PREFECT_API_URL
    python -m blocks list          # what would be registered, without a server

Prefect's own CLI does the same one module at a time::

    prefect block register -m blocks.proxmox
    prefect block register -m blocks.ssh

Registration is idempotent: run it again after upgrading moxflow to update the schemas.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefect.blocks.core import Block

from blocks.proxmox import ProxmoxCredentials
from blocks.ssh import SshCredentials

BLOCK_TYPES: tuple[type[Block], ...] = (ProxmoxCredentials, SshCredentials)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blocks", description="Manage moxflow's Prefect block types."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("register", help="register every moxflow block type with the Prefect server")
    sub.add_parser("list", help="list moxflow's block types")
    args = parser.parse_args(argv)
    for block_type in BLOCK_TYPES:
        name, slug = block_type.get_block_type_name(), block_type.get_block_type_slug()
        if args.command == "register":
            block_type.register_type_and_schema()
            print(f"registered {name} ({slug})")
        else:
            print(f"{name} ({slug})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
