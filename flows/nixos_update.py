"""Update NixOS hosts safely: snapshot, flake update, build, switch, verify, or roll back.

For each NixOS host in the inventory's [nixos.hosts]: read its state (pre-flight), take a
snapshot (Proxmox guest or ZFS dataset, as the inventory says), run `nix flake update`,
build, arm a dead-man timer that reverts the host by itself unless confirmed, switch, then
verify over a new SSH connection (the generation, no newly failed units, the health checks).
A host that fails verification is switched back; if it does not answer, the dead-man timer
reverts it; if that fails too, the snapshot is rolled back; if even that fails, the host is
reported "needs attention" with its snapshot kept. Canary hosts go first, then waves of at
most --max-parallel hosts, respecting `after`; the first failure stops the roll.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import NixosUpdateParams

command = Command("nixos_update", NixosUpdateParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
