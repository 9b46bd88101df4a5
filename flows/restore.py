"""Restore a guest from a vzdump backup, for the day things went wrong.

Restores the newest backup of guest --vmid (or the one named by --backup VOLID) from the
[backups] storage (or the storage of the volid). Restoring over an existing guest needs
--force: moxflow then takes a pre-restore snapshot of it where possible
(moxflow-pre-restore-<UTC timestamp>), stops it, restores over it and starts it again if it
was running. Without --force it refuses (exit 2) and changes nothing. With --target-vmid N
the backup is restored beside the original as a new guest N (new MAC addresses while the
original exists); no --force is needed unless N is taken.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import RestoreParams

command = Command("restore", RestoreParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
