"""Moved to labsim.hosts.zfs; kept while labsim/state.py and labsim/daemon.py move over."""

from labsim.hosts.zfs import (
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
