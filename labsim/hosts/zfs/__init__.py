"""The simulated ``zfs`` command and the datasets and snapshots it acts on (OpenZFS 2.2.7).

``datasets`` holds a host's pools, datasets and snapshots; ``command`` runs ``zfs`` on them with
the subcommands of ``list_get``, ``snapshot_destroy`` and ``rollback_hold`` over ``libzfs``.
"""

from labsim.hosts.zfs.command import run_zfs
from labsim.hosts.zfs.datasets import ZfsDataset, ZfsSnapshot, ZfsState, default_zfs_state
from labsim.hosts.zfs.output import nicenum

__all__ = [
    "ZfsDataset",
    "ZfsSnapshot",
    "ZfsState",
    "default_zfs_state",
    "nicenum",
    "run_zfs",
]
