"""``[zfs]`` and ``[[zfs.datasets]]``: the datasets to snapshot and their keep policies."""

from __future__ import annotations

from pydantic import Field

from moxflow.inventory.fields import POLICIES_HELP, DatasetName, HostName, Policies, Section

__all__ = ["ZfsDataset", "ZfsSettings"]


class ZfsDataset(Section):
    """One ZFS dataset to snapshot and prune."""

    host: HostName = Field(description="Name of the host (a key of [hosts]) that has the pool.")
    name: DatasetName = Field(description="Dataset name, e.g. rpool/data.")
    recursive: bool = Field(
        default=False,
        description=(
            "Also snapshot every child dataset (zfs snapshot -r), and prune the children's "
            "snapshots together with the parent's."
        ),
    )
    policies: Policies = Field(
        default_factory=dict,
        description="Keep policies for this dataset that override [zfs.policies], per label.",
    )

    @property
    def target(self) -> str:
        """``host:name``, for logs and reports."""
        return f"{self.host}:{self.name}"


class ZfsSettings(Section):
    """ZFS datasets to snapshot, and how long to keep their snapshots."""

    policies: Policies = Field(default_factory=dict, description=POLICIES_HELP)
    datasets: list[ZfsDataset] = Field(
        default_factory=list,
        description="Datasets to snapshot, each as a [[zfs.datasets]] table.",
    )
