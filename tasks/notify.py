"""The direct notification webhook: POST a moxflow message as JSON with httpx.

For ad-hoc runs with no automation on the Prefect server (``notifications.webhook`` in the
inventory). A notification failing must never fail the job: every function here logs and
returns ``False`` instead of raising. Transient errors (connection problems, timeouts, 408,
429, 5xx) are retried a bounded number of times with backoff; a POST is not idempotent, so a
retried message may, rarely, arrive twice. The URL may carry a token: it is never logged,
only its host.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

import blocks  # noqa: F401 - registers the reader of block: webhook references
from moxflow.errors import MoxflowError
from moxflow.inventory import NotificationSettings
from moxflow.notify import Message, WebhookError, message_for_report
from moxflow.report import RunReport
from tasks._logging import run_logger

ATTEMPTS = 3
"""Tries per message: the first and two retries."""
BACKOFF = 1.0
"""Seconds before the first retry; doubled for each further one (at most 10 s)."""


# --- keeping the URL out of httpx's own request log --------------------------------------


class _RedactUrls(logging.Filter):
    """Replaces the webhook URLs being sent to in httpx's "HTTP Request: ..." records."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: dict[str, str] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self.lock:
            urls = dict(self.urls)
        if urls and isinstance(record.args, tuple):
            record.args = tuple(_scrub(str(a), urls) if _hit(a, urls) else a for a in record.args)
        return True


def _hit(arg: object, urls: dict[str, str]) -> bool:
    text = str(arg)
    return any(url in text for url in urls)


def _scrub(text: str, urls: dict[str, str]) -> str:
    for url, shown in urls.items():
        text = text.replace(url, shown)
    return text


_REDACT = _RedactUrls()
logging.getLogger("httpx").addFilter(_REDACT)


def shown_url(url: str) -> str:
    """What of a webhook URL may be shown: scheme and host, never path or query (tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


# --- sending ------------------------------------------------------------------------------


def _post(client: httpx.Client, url: str, message: Message, host: str) -> None:
    try:
        response = client.post(url, json=message.payload())
    except httpx.HTTPError as exc:
        raise WebhookError(type(exc).__name__, host=host) from None
    if response.status_code >= 400:
        raise WebhookError(f"HTTP {response.status_code}", host=host, status=response.status_code)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, WebhookError) and exc.retryable


def send_webhook(
    url: SecretStr,
    message: Message,
    *,
    timeout: float = 10.0,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    transport: httpx.BaseTransport | None = None,
) -> bool:
    """POST ``message`` as JSON to ``url``; whether it was delivered. Never raises.

    Transient failures are retried up to ``attempts`` tries in all, waiting ``backoff``
    seconds, then twice that, and so on (at most 10 s); other HTTP errors give up at once.
    """
    log = run_logger("moxflow.notify")
    secret = url.get_secret_value()
    shown = shown_url(secret)
    host = urlsplit(secret).hostname or "?"
    with _REDACT.lock:
        _REDACT.urls[secret] = shown
    try:
        with httpx.Client(timeout=timeout, transport=transport, follow_redirects=False) as client:
            for attempt in Retrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(max(1, attempts)),
                wait=wait_exponential(multiplier=backoff, max=10),
                reraise=False,
            ):
                with attempt:
                    number = attempt.retry_state.attempt_number
                    if number > 1:
                        log.info("notification webhook %s: attempt %d", shown, number)
                    _post(client, secret, message, host)
        log.info("notification sent to %s: %s", shown, message.title)
        return True
    except RetryError as exc:
        last = exc.last_attempt.exception()
        tries = exc.last_attempt.attempt_number
        log.warning("notification not sent after %d tries (%s): %s", tries, last, shown)
    except WebhookError as exc:
        log.warning("notification not sent, not retried: %s (%s)", exc, shown)
    except Exception as exc:  # a notifier must never fail the job
        text = _scrub(f"{type(exc).__name__}: {exc}", {secret: shown})
        log.warning("notification not sent: %s", text)
    finally:
        with _REDACT.lock:
            _REDACT.urls.pop(secret, None)
    return False


@task(name="notify-webhook", cache_policy=NO_CACHE)
def notify_webhook(settings: NotificationSettings, base_dir: Path, message: Message) -> bool:
    """Send ``message`` to ``notifications.webhook`` (read now); never raises."""
    try:
        url = settings.webhook_url(base_dir)
    except MoxflowError as exc:
        run_logger("moxflow.notify").warning("notification not sent: %s", exc)
        return False
    if url is None:
        return False
    return send_webhook(url, message, timeout=settings.timeout)


def notify_run(
    report: RunReport,
    settings: NotificationSettings,
    base_dir: Path,
    *,
    run_url: str | None = None,
) -> bool:
    """Notify through the direct webhook about a finished run, if it is configured and wanted.

    Whether a message was sent; a run that is ok, or whose kinds ``notifications.on`` leaves
    out, sends none.
    """
    if settings.webhook is None:
        return False
    message = message_for_report(report, settings.on, run_url=run_url)
    if message is None:
        return False
    try:
        return bool(notify_webhook(settings, base_dir, message))
    except Exception as exc:  # the task machinery itself failing must not fail the job
        run_logger("moxflow.notify").warning(
            "notification not sent: %s: %s", type(exc).__name__, exc
        )
        return False


__all__ = ["ATTEMPTS", "BACKOFF", "WebhookError", "notify_run", "notify_webhook", "send_webhook"]
