"""Back up Proxmox guests with vzdump, verify the archives, prune, copy offsite, report coverage.

Selects guests with the selection language (templates are skipped) and backs each up on the
node that owns it: one at a time per node (vzdump holds a node-wide lock), all nodes in
parallel, at most [backups] max_per_storage writing to the storage at once. A locked guest or
an unavailable API is waited out for --lock-timeout seconds; a failed dump is tried once more,
then reported while the other guests go on. Each new archive must be listed, made by this run,
non-empty and not far smaller than the guest's previous one. Then the storage is pruned by
[backups] policy through Proxmox's prune endpoint, guest by guest (protected archives are never
removed), and the archives the [offsite] policy keeps are copied over SSH with SHA-256 checked
on both sides. The run ends with a coverage table; a guest without a backup newer than
[backups] max_age_hours fails it.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import VzdumpBackupParams

command = Command("vzdump_backup", VzdumpBackupParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
