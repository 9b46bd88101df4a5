"""``[notifications]``: the Prefect notification block and moxflow's own webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr

from moxflow.errors import SecretError
from moxflow.inventory.fields import BlockName, Seconds, Section
from moxflow.inventory.secrets import SECRET_SCHEMES, SecretRef

__all__ = ["NotificationSettings", "NotifyOn"]

NotifyOn = Literal["failed", "rollback", "needs-attention"]


def _check_webhook(value: str) -> str:
    """A plain https:// URL or an env:/file:/block: reference; never echoes the value."""
    if value.partition(":")[0] in SECRET_SCHEMES:
        return SecretRef.check(value, "webhook")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("a URL must not contain spaces or control characters")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("is not a URL; write an https:// URL or env:NAME / file:PATH") from None
    if url.scheme != "https" or not url.hostname:
        raise ValueError(
            "is not an https:// URL; write one, or keep it in the environment and write "
            'webhook = "env:MOXFLOW_WEBHOOK" (or file:PATH)'
        )
    return value


class NotificationSettings(Section):
    """Who hears about failed runs, rollbacks and hosts that need attention, and how."""

    block: BlockName | None = Field(
        default=None,
        description=(
            "Name of a Prefect notification block (ntfy, Gotify, Slack, email, a custom "
            "webhook, ...) that the automations made by python -m deployments.notifications "
            "send through. Create the block in the Prefect UI first."
        ),
    )
    webhook: Annotated[str, AfterValidator(_check_webhook)] | None = Field(
        default=None,
        description=(
            "URL moxflow itself POSTs a JSON message to when a run fails, also for ad-hoc "
            "runs with no automation on the server: an https:// URL, or env:NAME / file:PATH "
            "when the URL carries a token."
        ),
    )
    on: list[NotifyOn] = Field(
        default=["failed", "rollback", "needs-attention"],
        description=(
            'What to notify about: "failed" (a run ended Failed or Crashed), "rollback" (a '
            'NixOS update was undone), "needs-attention" (a host could not be restored). '
            "Default: all three."
        ),
    )
    timeout: Seconds = Field(
        default=10.0, description="Seconds to wait for one webhook request before giving up."
    )

    def webhook_url(self, base_dir: Path | None = None) -> SecretStr | None:
        """The webhook URL, read now (a reference is resolved); ``None`` when there is none."""
        if self.webhook is None:
            return None
        if self.webhook.partition(":")[0] in SECRET_SCHEMES:
            ref = SecretRef(self.webhook)
            url = ref.resolve(base_dir, setting="notifications.webhook")
            _check_resolved_webhook(url, ref)
            return SecretStr(url.get_secret_value().strip())
        return SecretStr(self.webhook)


def _check_resolved_webhook(url: SecretStr, ref: SecretRef) -> None:
    try:
        _check_webhook(url.get_secret_value().strip())
    except ValueError as exc:
        raise SecretError(
            f"the webhook URL in {ref.scheme}:{ref.target} {exc}", setting="notifications.webhook"
        ) from None
