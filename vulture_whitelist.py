"""Names the dead-code check (``python -m scripts.deadcode``, in ``make lint``) must not
report: each is used only by a framework that calls it by name, or is the field of a parsed
record. vulture matches names, not objects: an entry here lets that name pass everywhere, so
keep it short and say who uses each. A function that only the tests call is dead: delete it
or call it from the code that runs, rather than list it here (the last section holds the few
waiting for files that others are changing).
"""

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# pydantic and pydantic-settings read these by name (validators: [tool.vulture]
# ignore_decorators)
_.model_config  # flows/params.py, moxflow/inventory/
_.settings_customise_sources  # moxflow/inventory/model.py: pydantic-settings' hook, with its
_.dotenv_settings  # signature's parameters
_.file_secret_settings
_.handler  # moxflow/inventory/secrets.py: __get_pydantic_core_schema__(cls, source, handler)

# Prefect
_.deploy_settings  # deployments/definitions.py: the build step prefect.yaml names
_.__signature__  # flows/params.py: what Prefect reads a flow's parameters from
_.task_run  # tasks/_retry.py: retry_condition_fn(task, task_run, state)
# the flows: loaded by name, from the deployments' entrypoints and by flows/_cli.py
_.zfs_snapshot
_.guest_snapshot
_.nixos_update
_.vzdump_backup
_.offsite_copy
_.health_report
_.windows_update
_.windows_provision

# invoke and paramiko call these on our subclasses (moxflow/ssh.py)
_.input_sleep  # invoke.Runner
_.read_our_stdin  # invoke.Runner
_.missing_host_key  # paramiko.MissingHostKeyPolicy

# typing.Protocol members: their parameters are the shape, not code (tasks/_logging.py)
_.msg

# fields read by name: KeepPolicy.counts() uses getattr (moxflow/retention.py)
_.hourly
_.daily
_.weekly
_.monthly
_.yearly

# fields of whole records: of `nixos-rebuild list-generations --json` (moxflow/nixos.py
# Generation), of a decoded UPID (moxflow/proxmox.py Upid), of the report a flow returns
_.nixos_version
_.kernel_version
_.configuration_revision
_.specialisations
_.pid
_.pstart
_.starttime
_.finished  # moxflow/report.py RunReport, with started
_.LEASE_STORAGE  # tasks/targets.py: read by scripts/prefect_server.py (not scanned)
_.exc_text  # flows/_run.py: logging.LogRecord's, read by logging's formatters

# TO BE WIRED OR DELETED in files others are changing (issue 11, item 4): only the tests
# use these today, or nothing does. Remove each line when its file is done.
_.warnings  # moxflow/proxmox.py TaskStatus
