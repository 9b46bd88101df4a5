"""Provision the Windows VMs through the QEMU guest agent: Steam and games, the Rust
toolchain, scheduled tasks. Idempotent: a second run finds everything present and changes
nothing.

Only the Proxmox API and the guest agent: no network path into Windows. What each VM of
[windows.vms] gets is its [windows.vms.KEY.steam] (steamcmd; apps by app id, anonymous
unless an app says otherwise, then the table's username and its password, a secret
reference read at the last moment and sent only as data on the script's stdin),
[windows.vms.KEY.rust] (rustup: the default toolchain, extra toolchains, components,
machine-wide) and [[windows.vms.KEY.scheduled_tasks]] (XML files beside the inventory, read
and checked first: they exist, are readable, are XML with a Task root).

Pre-flight for each VM first, before any change: the VM runs, its agent is configured and
answers, get-osinfo says Windows; then what is there already (provision-facts.ps1, read
only), and the plan: each item to install, to update, or present. A VM with nothing to
change gets no snapshot and no change; --dry-run stops there for every VM and shows it.

Then, one VM at a time (a subflow run per VM, named after it, holding the VM):

  snapshot      moxflow-pre-provision-<time>, before the first change: with RAM state where
                [windows] snapshot_ram asks and the VM can save it (PCI passthrough cannot:
                disk only); kept by [windows.policies] pre-provision
  <item>        one step per item with something to do: steamcmd, steam:<app id>, rust
                (rustup, toolchain:<name>, default:<name>, component:<name>), task:<name>;
                each says installed, present, updated or failed; a failed one does not stop
                the next
  verify        what is there is read again: an item called done that is still to do fails
  prune         older pre-provision snapshots go by [windows.policies]

The report has a row per item (installed / present / updated / failed) and the snapshot
taken; the run is Failed when any item failed, naming it. Nothing is rolled back: the
items that worked stay, the snapshot is kept for a rollback by hand. Every script is one of
moxflow/windows_scripts/*.ps1, sent unchanged; its values travel as JSON on its stdin. Its
stdout and stderr are in the run's log (the last 16384 characters of each). A VM another
moxflow run holds (waited for up to --lock-timeout seconds) is busy.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import WindowsProvisionParams

command = Command("windows_provision", WindowsProvisionParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
