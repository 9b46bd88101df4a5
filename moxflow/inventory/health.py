"""``[health]``: what the daily health report checks, and when it calls something too old."""

from __future__ import annotations

from pydantic import Field

from moxflow.inventory.fields import Days, Hours, Label, Section

__all__ = ["LABEL_PERIOD_HOURS", "HealthSettings"]

LABEL_PERIOD_HOURS: dict[str, float] = {
    "frequently": 0.25,
    "hourly": 1.0,
    "daily": 24.0,
    "weekly": 7 * 24.0,
    "monthly": 31 * 24.0,
    "yearly": 366 * 24.0,
}
"""How often a snapshot of each well-known label is taken, in hours (as sanoid's labels)."""


class HealthSettings(Section):
    """What the daily health report checks, and when it calls something too old."""

    backup_max_age_hours: Hours | None = Field(
        default=None,
        description=(
            "A guest's newest backup older than this fails the report; "
            "default: [backups] max_age_hours."
        ),
    )
    offsite_max_age_hours: Hours = Field(
        default=48.0,
        description="A guest's newest offsite copy older than this fails (with [offsite] set).",
    )
    restore_test_max_age_days: Days = Field(
        default=8.0,
        description=(
            "Days since a guest's last passed restore test (of a backup still listed) after "
            "which the report fails; guests outside [restore_test] select are not checked."
        ),
    )
    snapshot_grace: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description=(
            "The newest snapshot of a label may be this many of the label's periods old, "
            "e.g. 1.5: an hourly snapshot 90 minutes old is still fine, a daily one 36 hours."
        ),
    )
    label_hours: dict[Label, Hours] = Field(
        default_factory=dict,
        description=(
            "Period in hours of labels other than frequently, hourly, daily, weekly, monthly "
            "and yearly (or to override them), e.g. { twice-daily = 12 }. Every label with a "
            "keep policy in [zfs] or [guest_snapshots] and a period is checked; the others "
            "(pre-update: taken on events) are listed as not judged."
        ),
    )
    nixos_max_age_days: Days = Field(
        default=14.0,
        description="A NixOS host whose current generation is older than this fails.",
    )
    node_max_pending_updates: int | None = Field(
        default=None,
        ge=0,
        description=(
            "A Proxmox node with more pending package updates than this fails; default: "
            "pending updates are shown, not judged."
        ),
    )

    windows_pending_max_age_days: Days = Field(
        default=45.0,
        description=(
            "A Windows VM of [windows.vms] with an update pending that Microsoft released "
            "longer ago than this fails (a month between update runs, and two weeks more); "
            "a VM that is not running is shown, not judged."
        ),
    )

    def period(self, label: str) -> float | None:
        """The label's period in hours, None when unknown."""
        return self.label_hours.get(label, LABEL_PERIOD_HOURS.get(label))
