"""Where the Prefect server is: the one a run or ``serve`` records to. No Prefect import here.

``PREFECT_API_URL`` (environment or Prefect profile) always wins. Without it, moxflow looks
for a server already running on this machine: ``$MOXFLOW_PREFECT_URL``, else the address
``prefect server start`` listens on by default.
"""

from __future__ import annotations

import os
import urllib.request

LOCAL_API_URL = "http://127.0.0.1:4200/api"
"""Where ``prefect server start`` listens by default."""
ENV_PREFECT_URL = "MOXFLOW_PREFECT_URL"
"""Where else to look for a running server ("off": never look, always start a temporary one)."""


def server_answers(api_url: str, timeout: float = 0.5) -> bool:
    """Whether a Prefect server answers ``GET {api_url}/health`` with ``true``."""
    if not api_url.startswith(("http://", "https://")):
        return False
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310
            return bool(r.status == 200 and r.read(16).strip() == b"true")
    except (OSError, ValueError):
        return False


def find_local_server() -> str | None:
    """The API URL of a running Prefect server to use: $MOXFLOW_PREFECT_URL, else 127.0.0.1:4200."""
    wanted = os.environ.get(ENV_PREFECT_URL, "").strip()
    if wanted.lower() == "off":
        return None
    url = wanted or LOCAL_API_URL
    return url if server_answers(url) else None
