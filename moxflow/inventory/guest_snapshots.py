"""``[guest_snapshots]``: which Proxmox guests to snapshot, and how long to keep the snapshots."""

from __future__ import annotations

from pydantic import Field, field_validator

from moxflow.inventory.fields import POLICIES_HELP, Policies, Section, check_selection

__all__ = ["GuestSnapshotSettings"]


class GuestSnapshotSettings(Section):
    """Proxmox VM and container snapshots: which guests, and how long to keep them."""

    select: str = Field(
        default="@all",
        description=(
            "Which guests to snapshot: comma-separated ids (100), ranges (100:110), @all, "
            "@tag-X, @pool-X, @node-X or names; a leading '-' excludes (-@tag-nosnap)."
        ),
    )
    running_only: bool = Field(default=False, description="Skip guests that are not running.")
    vmstate: bool = Field(
        default=False,
        description="Include the RAM of running VMs in their snapshots (slower, larger).",
    )
    concurrency: int = Field(
        default=8, ge=1, le=256, description="How many guests to snapshot at the same time."
    )
    policies: Policies = Field(default_factory=dict, description=POLICIES_HELP)

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        return check_selection(value)
