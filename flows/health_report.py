"""The fleet at a glance: is every guest backed up, copied offsite and restore-tested, are
the snapshots within policy, are the NixOS hosts and Proxmox nodes up to date?

Checks, each against a limit from the inventory's [health] (defaults in brackets):

  backups     per guest of [backups] select: the newest backup's age
              [backups max_age_hours]; the newest offsite copy's age [48 h] when
              [offsite] is set; for the guests of [restore_test] select, the last
              passed restore test of a backup still listed [8 days]
  snapshots   per ZFS dataset and per guest of [guest_snapshots] select, for every label
              with a keep policy: the newest moxflow snapshot's age [1.5 x the label's
              period: 90 minutes for hourly, 36 hours for daily]; labels taken on events
              (pre-update) or of no known period are listed, not judged
  nixos       per NixOS host: the age of its last update [14 days]: its current
              generation, or the last update run that found nothing new; with the age of
              the nixpkgs its flake.lock pins
  nodes       per Proxmox node: pending package updates (Proxmox's cached list; shown,
              and judged only when [health] node_max_pending_updates is set)

The run only reads. It ends with one table, a line per check (target, kind, last, limit,
outcome, detail; also a Prefect artifact), and is Failed when any check is over its limit or
could not be read.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import HealthReportParams

command = Command("health_report", HealthReportParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
