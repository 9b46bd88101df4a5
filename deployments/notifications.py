"""Create or update moxflow's Prefect automations: ``python -m deployments.notifications``.

From the inventory's ``[notifications]``: ``block`` names a Prefect notification block (ntfy,
Gotify, Slack, email, a custom webhook... created in the Prefect UI first) and ``on`` says
what to notify about. This makes, on the server at PREFECT_API_URL, one automation each:

  "moxflow: run failed"       a flow run of a deployment tagged moxflow enters Failed or Crashed
  "moxflow: rollback"         a NixOS update was undone (the moxflow.rollback event)
  "moxflow: needs attention"  a host could not be restored (moxflow.needs-attention)

each sending through the block. Running it again updates them in place (matched by name);
an automation of this list that ``on`` no longer asks for is deleted.

exit status: 0 done (or, with --dry-run, shown), 2 bad inventory, no block configured or
the block not found, 1 the Prefect server refused a change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from moxflow.errors import ConfigError
from moxflow.notify import AutomationSpec, automation_names, automation_specs

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import AutomationCore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line; argparse only, so that ``--help`` stays fast."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.notifications",
        description=__doc__,
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
        help="check the block and show the automations; change nothing on the server",
    )
    return parser


def find_notification_block(client: SyncPrefectClient, name: str) -> UUID:
    """The id of the notification block document called ``name``; ``ConfigError`` if none."""
    found: list[tuple[UUID, str]] = []
    other: list[str] = []
    offset, page = 0, 200
    while True:
        docs = client.read_block_documents(offset=offset, limit=page, include_secrets=False)
        for doc in docs:
            schema = doc.block_schema
            slug = doc.block_type.slug if doc.block_type else "?"
            can_notify = schema is not None and "notify" in schema.capabilities
            if can_notify and doc.name == name:
                found.append((doc.id, slug))
            elif can_notify and doc.name:
                other.append(f"{doc.name} ({slug})")
            elif doc.name == name:
                other.append(f"{doc.name} ({slug}, cannot send notifications)")
        if len(docs) < page:
            break
        offset += page
    if len(found) == 1:
        return found[0][0]
    if len(found) > 1:
        kinds = ", ".join(slug for _, slug in found)
        raise ConfigError(
            f"several notification blocks are called {name!r} ({kinds})",
            setting="notifications.block",
            hint="rename all but one in the Prefect UI (Blocks)",
        )
    known = ", ".join(sorted(other)) or "none"
    raise ConfigError(
        f"no Prefect notification block called {name!r} on the server; notification "
        f"blocks there: {known}",
        setting="notifications.block",
        hint="create one in the Prefect UI under Blocks (ntfy, Gotify, Slack, email, "
        "custom webhook, ...) with that name",
    )


def automation_for(spec: AutomationSpec, block_id: UUID) -> AutomationCore:
    """The Prefect automation for one spec, sending through the block."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=spec.name,
        description=spec.description,
        enabled=True,
        tags=["moxflow"],
        trigger=EventTrigger(
            expect=set(spec.expect),
            match=ResourceSpecification(dict(spec.match)),
            match_related=ResourceSpecification(dict(spec.match_related)),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=spec.subject, body=spec.body)
        ],
    )


def apply(client: SyncPrefectClient, wanted: Sequence[AutomationCore]) -> list[str]:
    """Create or update each automation by name and delete moxflow's unwanted ones.

    Returns one line per change. Duplicates of a name (left by hand or by an older version)
    are deleted, so that each name exists once.
    """
    lines: list[str] = []
    names = {a.name for a in wanted}
    for automation in wanted:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            keep, *extra = sorted(existing, key=lambda a: str(a.id))
            client.update_automation(keep.id, automation)
            lines.append(f"updated {automation.name!r}")
            for dup in extra:
                client.delete_automation(dup.id)
                lines.append(f"deleted a duplicate of {automation.name!r}")
        else:
            client.create_automation(automation)
            lines.append(f"created {automation.name!r}")
    for name in automation_names():
        if name in names:
            continue
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)
            lines.append(f"deleted {name!r} (not in notifications.on)")
    return lines


def _describe(spec: AutomationSpec, block: str) -> str:
    return f"{spec.name!r}: on {', '.join(spec.expect)} → notify through block {block!r}"


def main(argv: Sequence[str] | None = None) -> int:
    """Read the inventory, find the block, and create or update the automations."""
    args = build_parser().parse_args(argv)

    from moxflow.inventory import load_inventory

    try:
        inv = load_inventory(args.inventory)
        block = inv.notifications.block
        if block is None:
            raise ConfigError(
                "no notification block configured",
                setting="notifications.block",
                hint='add [notifications] with block = "NAME" of a Prefect notification block',
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    specs = automation_specs(inv.notifications.on)

    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    if get_current_settings().api.url is None:
        print(
            "error: PREFECT_API_URL is not set: automations must be made on the Prefect "
            "server that runs moxflow (e.g. PREFECT_API_URL=http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with get_client(sync_client=True) as client:
            block_id = find_notification_block(client, block)
            wanted = [automation_for(s, block_id) for s in specs]
            if args.dry_run:
                for spec in specs:
                    print(f"would set {_describe(spec, block)}")
                return EXIT_OK
            for line in apply(client, wanted):
                print(line)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        print(f"error: the Prefect server refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
