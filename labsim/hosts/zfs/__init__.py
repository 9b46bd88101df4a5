"""The simulated ``zfs`` command and the datasets and snapshots it acts on (OpenZFS 2.2.7)."""

from labsim.hosts.zfs.command import (
    ZfsDataset,
    ZfsSnapshot,
    ZfsState,
    default_zfs_state,
    nicenum,
    run_zfs,
)

__all__ = [
    "ZfsDataset",
    "ZfsSnapshot",
    "ZfsState",
    "default_zfs_state",
    "nicenum",
    "run_zfs",
]
