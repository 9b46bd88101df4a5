"""Update the Proxmox VE nodes one at a time: snapshot, guests leave, upgrade, reboot, verify.

Pre-flight for the whole cluster first, before any change: quorate, every node online, no
guest of the roll with a stale config lock (it could neither leave nor come back), no
broken dpkg, each node's root dataset
there to snapshot ([proxmox_update] root_dataset; --no-snapshot for nodes without a ZFS
root: no snapshot then, and the report says so first), and a two-node cluster only with a
QDevice ([proxmox_update] two_node_without_qdevice). The package lists are
refreshed through the API (the aptupdate task); a node with nothing to upgrade is skipped.
Before each node's turn, other work on it (a backup, a restore, a migration anywhere, a
guest locked by its task) is waited for up to --lock-timeout seconds (its "other work"
step); after that the node is busy and the roll stops there, nothing changed on it.
--dry-run stops there and shows per node the packages (current → new), whether it reboots
and why, and what happens to each guest.

Then, one node at a time (a subflow run per node, named after it):

  snapshot       zfs snapshot of its root dataset (label pre-update, pruned by
                 [proxmox_update.policies])
  guests-leave   HA node maintenance for HA-managed guests (waits until none is left on
                 it); the others migrate (online VMs, containers in restart mode; only
                 to a node running the same or newer pve-manager, qemu-server and
                 pve-qemu-kvm, or pve-container), shut down, or stay, by --guests; a
                 guest with local disks or passthrough, or that no node can take,
                 follows its fallback ([proxmox_update] fallback, default_fallback)
  upgrade        apt-get dist-upgrade non-interactively over SSH (then autoremove);
                 dpkg --audit before and after; the whole output in the run's log
  reboot         only when the kernel it boots next is not the running one (or
                 --reboot always); proven by the API's uptime, then online, quorum,
                 SSH, pveversion and the cluster services (pve-cluster, pveproxy,
                 pvedaemon, pve-ha-lrm active), within [proxmox_update] reboot_timeout
  verify         online, quorate, the expected kernel, no newly failed systemd unit
  guests-return  leave maintenance (once pve-ha-lrm runs again), migrate back, start
                 what was shut down (one onboot already started counts as back); every
                 guest where it was and running as before

The first failure stops the roll: the nodes after it are not started, the failed node stays
in maintenance with its snapshot kept, and the report says what to do next (the guests it
sent away or shut down, each with the command that brings it back; once the upgrade ran,
boot the previous kernel with proxmox-boot-tool kernel pin, the snapshot to roll back to
from a rescue system; how to leave maintenance).

A node's roll holds the slots of the node and of its guests from its snapshot to its
guests' return (another run's backup of such a guest waits, then is busy). A node another
moxflow run holds, or one of its guests, or where other work began since pre-flight (a
backup: waited for up to --lock-timeout seconds), is busy, and stops the roll the same way.

A run killed half-way leaves a journal on the node (/var/lib/moxflow/proxmox-update.json).
While Prefect shows that run alive the node is busy and no node is rolled; once it is
cancelled, the next run recovers that node before any other (dpkg, the upgrade, the
reboot, maintenance, every guest back where the journal says); --only without that node is
refused until it is recovered. See docs/operating.md, "After a crash".
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import ProxmoxUpdateParams

command = Command("proxmox_update", ProxmoxUpdateParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
