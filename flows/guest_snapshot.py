"""Snapshot Proxmox VMs and containers through the API, then prune by retention.

Selects guests with the selection language (ids, ranges 100:110, names, @all, @tag-X,
@pool-X, @node-X, exclusions with a leading -), skips templates (and stopped guests with
--running-only), and takes moxflow-<label>-<UTC timestamp> on each, marking the snapshot as
moxflow's in its description. Then removes moxflow's older snapshots *of that label* that
the keep policy does not keep; snapshots made by hand or by other tools are never touched.
A locked guest (a backup is running, say) is retried (the step's retries, for at most
--lock-timeout seconds), then reported as busy (the run is not OK); the other guests go on.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import GuestSnapshotParams

command = Command("guest_snapshot", GuestSnapshotParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
