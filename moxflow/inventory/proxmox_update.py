"""``[proxmox_update]``: rolling Proxmox VE host updates, one node at a time.

What happens to each node's guests (``guests``, with a ``fallback`` per guest that cannot
move), when a node reboots (``reboot``), which root dataset is snapshotted first and how long
those ``pre-update`` snapshots are kept, how long each bounded wait may last, whether a
two-node cluster without a QDevice may be rolled at all, and where dpkg's log is (the health
report reads the last upgrade from it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from moxflow.inventory.fields import (
    POLICIES_HELP,
    DatasetName,
    HostName,
    NodePath,
    Policies,
    Seconds,
    Section,
)

__all__ = [
    "FallbackPolicy",
    "GuestPolicy",
    "ProxmoxUpdateSettings",
    "RebootPolicy",
    "TwoNodePolicy",
]

GuestPolicy = Literal["migrate", "shutdown", "leave"]
"""What happens to a node's guests (not managed by HA) while it is updated."""
FallbackPolicy = Literal["shutdown", "leave"]
"""What happens to a guest that cannot be migrated (local disks, passthrough, no target)."""
RebootPolicy = Literal["auto", "always", "never"]
"""When a node reboots after its upgrade."""
TwoNodePolicy = Literal["refuse", "allow"]
"""Whether a two-node cluster without a QDevice is rolled (it loses quorum while one node
reboots)."""


class ProxmoxUpdateSettings(Section):
    """Rolling Proxmox VE host updates: which nodes, their guests, reboots and time limits."""

    nodes: list[HostName] = Field(
        default_factory=list,
        description=(
            "The Proxmox nodes to update, in this order; empty: every node of the cluster, "
            "fewest running guests first. Each is a [hosts] name (the upgrade runs over SSH)."
        ),
    )
    guests: GuestPolicy = Field(
        default="migrate",
        description=(
            "What happens to a node's guests that HA does not manage while it is updated: "
            '"migrate" to another node and back afterwards (online for running VMs, restart '
            'mode for containers), "shutdown" cleanly and start again afterwards, or "leave" '
            "them running (single hosts). HA-managed guests leave through HA node maintenance."
        ),
    )
    fallback: dict[str, FallbackPolicy] = Field(
        default_factory=dict,
        description=(
            "What happens to a guest that cannot be migrated (local disks, passthrough, no node "
            'to take it), per VMID or guest name: { 105 = "leave", "gaming-vm" = "shutdown" }.'
        ),
    )
    default_fallback: FallbackPolicy = Field(
        default="shutdown",
        description=(
            "What happens to a guest that cannot be migrated and has no fallback entry: "
            '"shutdown" (stopped cleanly and started again after the update, so it ends '
            'running as before even without onboot) or "leave" (running through the upgrade; '
            "a reboot stops and starts it the way Proxmox does at shutdown and boot)."
        ),
    )
    reboot: RebootPolicy = Field(
        default="auto",
        description=(
            'When a node reboots after its upgrade: "auto" when the kernel it would boot '
            'differs from the running one, "always", or "never" (the report says a reboot is '
            "pending)."
        ),
    )
    root_dataset: DatasetName = Field(
        default="rpool/ROOT/pve-1",
        description=(
            "The ZFS dataset of each node's root file system, snapshotted before its upgrade "
            "(label pre-update); pre-flight refuses a node that does not have it (run with "
            "--no-snapshot for nodes without a ZFS root). It does not hold the kernels, which "
            "live on the EFI partitions."
        ),
    )
    policies: Policies = Field(
        default_factory=lambda: {"pre-update": "keep-last=3"},
        description=(
            "Keep policy of the root dataset's snapshots per label (default pre-update = "
            '"keep-last=3"). ' + POLICIES_HELP
        ),
    )
    two_node_without_qdevice: TwoNodePolicy = Field(
        default="refuse",
        description=(
            "A two-node cluster without a QDevice loses quorum while one node reboots "
            '(/etc/pve read-only, guests cannot start or move): "refuse" to roll it, or '
            '"allow" to accept that (never with HA resources, which get a node fenced).'
        ),
    )
    dpkg_log: NodePath = Field(
        default="/var/log/dpkg.log",
        description=(
            "dpkg's log on each node, where the health report reads when packages were last "
            "upgraded; {node} stands for the node's name."
        ),
    )
    journal: NodePath = Field(
        default="/var/lib/moxflow/proxmox-update.json",
        description=(
            "The journal of a node's update on each node, written before its first change and "
            "removed once its guests are back: a run killed half-way leaves it, and the next "
            "run recovers the node from it; {node} stands for the node's name."
        ),
    )
    reboot_timeout: Seconds = Field(
        default=900.0,
        description=(
            "Seconds a node may take from the reboot request until it is proven rebooted and "
            "back (API, quorum, SSH, pveversion, and pve-cluster, pveproxy, pvedaemon and "
            "pve-ha-lrm active)."
        ),
    )
    upgrade_timeout: Seconds = Field(
        default=3600.0,
        description="Seconds apt-get dist-upgrade (and then autoremove) may run on a node.",
    )
    migration_timeout: Seconds = Field(
        default=600.0, description="Seconds one guest's migration may take."
    )
    shutdown_timeout: Seconds = Field(
        default=180.0, description="Seconds one guest gets to shut down cleanly."
    )
    maintenance_timeout: Seconds = Field(
        default=600.0,
        description=(
            "Seconds HA node maintenance may take to move the HA-managed guests away (and, "
            "when disabled, back); also how long pve-ha-lrm may take to run again before "
            "maintenance is left."
        ),
    )

    @field_validator("nodes")
    @classmethod
    def _nodes_once(cls, nodes: list[str]) -> list[str]:
        twice = sorted({n for n in nodes if nodes.count(n) > 1})
        if twice:
            raise ValueError(f"nodes listed twice: {', '.join(twice)}")
        return nodes

    @field_validator("fallback")
    @classmethod
    def _fallback_keys(cls, fallback: dict[str, str]) -> dict[str, str]:
        for key in fallback:
            if not key or len(key) > 63 or not key.replace("-", "").replace(".", "").isalnum():
                raise ValueError(
                    f"{key!r} is neither a VMID nor a guest name (letters, digits, '-', '.')"
                )
        return fallback

    def dpkg_log_of(self, node: str) -> str:
        """Where dpkg's log is on ``node``."""
        return self.dpkg_log.replace("{node}", node)

    def journal_of(self, node: str) -> str:
        """Where the journal of ``node``'s update is on ``node``."""
        return self.journal.replace("{node}", node)

    def fallback_for(self, vmid: int, name: str = "") -> FallbackPolicy:
        """The fallback of guest ``vmid`` (called ``name``): its VMID's entry, else its
        name's, else ``default_fallback``."""
        found = self.fallback.get(str(vmid)) or (self.fallback.get(name) if name else None)
        return found or self.default_fallback
