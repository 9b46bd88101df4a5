"""Copy backup archives to the offsite host over SSH, then prune the offsite copies.

The offsite step of flows.vzdump_backup, alone: for the selected guests, the archives on the
storage that the [offsite] policy keeps and the offsite folder lacks are copied (to NAME.part,
SHA-256 compared on both sides, then renamed; a corrupted copy is redone once), and offsite
copies the policy does not keep are removed. Backups on the storage are never touched.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import OffsiteCopyParams

command = Command("offsite_copy", OffsiteCopyParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
