"""Update the Windows VMs through the QEMU guest agent, snapshot-guarded and verified.

Only the Proxmox API and the guest agent: no network path into Windows. Pre-flight for each
VM of [windows.vms] first, before any change: the VM runs, its agent is configured and
answers, get-osinfo says Windows; then whether a reboot is pending and which updates
Windows Update offers (title, KB, size, category, reboot behaviour). A VM with nothing
applicable pending is skipped (no snapshot). --dry-run stops there and shows them.

Then, one VM at a time (a subflow run per VM, named after it, holding the VM):

  snapshot         with RAM state where [windows] snapshot_ram asks and the VM can save it
                   (PCI passthrough cannot: disk only, said in the report); with
                   snapshot_consistent a disk-only snapshot is taken with the VM shut down
                   cleanly, then started again
  install round N  search again, then download and install the chosen updates with the
                   Windows Update API (as SYSTEM, through agent/exec; exec-status polled
                   with backoff, its end read once); each update's result code
  reboot N         when the round needs one: through the API, then wait (bounded) for the
                   agent and a new boot time; then the next round, until nothing
                   applicable is pending or --max-rounds
  verify           the agent answers, no update failed, no reboot pending, and the VM's
                   [[windows.vms.KEY.checks]] pass (service running, TCP port listening,
                   a command's exit code)
  commit           the snapshot stays, marked committed; older pre-update snapshots go by
                   [windows.policies]
  rollback         (instead of commit, after any failure) back to the snapshot (marked
                   rolled back), the VM started, its agent answering again; the run is
                   Failed with each failed update's KB and result code

Each pre-update snapshot's description names the run and says how its update stands:
[in progress] until the commit marks it [committed] or the rollback [rolled back]. Any
failure after the snapshot, whatever raised it, rolls back.

A run that was killed half-way is finished by the next one: its pre-update snapshot (the
VM's newest, naming it, still [in progress]) is adopted as the next run's rollback point
instead of a new snapshot of a VM that may be half-updated; its snapshot, reboot or
rollback task still running is waited for, then an agent still silent from its reboot
(bounded by agent_timeout), and an install still at work in the guest (the installer
answers busy: it is not started twice); then the update is verified and committed, or
rolled back to that snapshot. The report says "recovered: adopted snapshot X of the
interrupted run Y" and what else it waited for. Pre-flight decides, before any change, and
the VM is left as it is instead when adopting is not safe: busy while the Prefect server
shows that run still running (cancel it if it is dead); needs attention when a snapshot was
taken after it, when it is older than [windows] adopt_max_age_hours (6 h: a rollback to it
undoes everything since), or when the server does not know that run; the row says what to
do (qm rollback / qm delsnapshot), and the snapshot is kept.

Every script is one of moxflow/windows_scripts/*.ps1, sent unchanged; its values travel as
JSON on its stdin. Its stdout and stderr are in the run's log (the last 16384 characters of
each). A VM another moxflow run holds (waited for up to --lock-timeout seconds) is busy.
"""

from __future__ import annotations

from flows._cli import Command
from flows.params import WindowsUpdateParams

command = Command("windows_update", WindowsUpdateParams, __doc__ or "")
main = command.main

if __name__ == "__main__":
    command.exit()
