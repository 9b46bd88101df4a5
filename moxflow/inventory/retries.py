"""``[retries]``: how often Prefect retries a step that failed for a passing reason."""

from __future__ import annotations

from pydantic import Field, field_validator

from moxflow.inventory.fields import Section

__all__ = ["RetrySettings"]


class RetrySettings(Section):
    """Retries of a step (a snapshot, a vzdump's verification, a flake update) that failed for a
    passing reason: an SSH connection dropped or refused, the Proxmox API unavailable or timing
    out, a guest locked by another task. A command that failed, a refused token or a changed
    host key is never retried, nor is a step that cannot safely run twice (a switch, the start
    of a vzdump)."""

    attempts: int = Field(
        default=2, ge=0, le=10, description="Tries after the first (0: never retry)."
    )
    delays: list[float] = Field(
        default_factory=lambda: [1.0, 5.0],
        min_length=1,
        max_length=10,
        description=(
            "Seconds to wait before each retry; the last one repeats when there are more "
            "attempts than delays."
        ),
    )

    @field_validator("delays")
    @classmethod
    def _delays(cls, value: list[float]) -> list[float]:
        if any(not 0 <= d <= 3600 for d in value):
            raise ValueError("each delay must be between 0 and 3600 seconds")
        return value
