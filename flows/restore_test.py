"""Prove backups restore: restore each selected guest's newest backup to a scratch guest,
boot it, check it, destroy it.

For each selected guest (templates are skipped), its newest archive on the [backups] storage
is restored to a scratch VMID from [restore_test] scratch_vmids (never one in use: checked
again right before each restore) on [restore_test] scratch_storage with new MAC addresses,
started, and waited for: a VM until its guest agent answers, a container until it runs, at
most [restore_test] boot_timeout seconds. The scratch guest is then stopped and destroyed,
also when a step failed; the report says when that cleanup failed. The original guest is
never touched: every changing request names the scratch VMID.

The report has a line per guest: the archive restored, the scratch VMID, how long the boot
took, whether the guest agent answered, the outcome and what was done.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import RestoreTestParams

command = Command("restore_test", RestoreTestParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
