"""Take a moxflow snapshot of every configured ZFS dataset, then prune by retention.

For each dataset in the inventory's [[zfs.datasets]] this takes
DATASET@moxflow-<label>-<UTC timestamp> (with -r where the dataset says recursive = true),
then removes moxflow's older snapshots *of that label* that the dataset's keep policy does not
keep. It never touches snapshots moxflow did not make, snapshots of another label, held
snapshots, or the one it just took; if the snapshot fails, nothing is pruned there. Datasets
are independent: one failing does not stop the others, but the run ends failed and says which.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import ZfsSnapshotParams

command = Command("zfs_snapshot", ZfsSnapshotParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
