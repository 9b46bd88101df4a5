"""The one logger shape tasks pass around, and the run's logger where there is a run."""

from __future__ import annotations

import logging
from typing import Any, Protocol


class LoggerLike(Protocol):
    """What task code needs of a logger (Prefect's run logger is one, so is logging's)."""

    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...
    def error(self, msg: str, *args: Any) -> None: ...


def run_logger(fallback: str) -> LoggerLike:
    """The current Prefect run's logger; outside a run (a script, a test), ``fallback``'s."""
    from prefect.exceptions import MissingContextError  # lazily: fast command lines
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(fallback)
