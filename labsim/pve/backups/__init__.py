"""Backups on the cluster's storages: ``archive`` (names, files, prune marks), ``engine``
(vzdump), ``system`` (``BackupsSystem``) and ``routes`` (the API)."""

from labsim.pve.backups.archive import (
    Archive,
    BackupJob,
    archive_name,
    fair_shares,
    format_size,
    parse_prune,
    prune_marks,
)

__all__ = [
    "Archive",
    "BackupJob",
    "archive_name",
    "fair_shares",
    "format_size",
    "parse_prune",
    "prune_marks",
]
