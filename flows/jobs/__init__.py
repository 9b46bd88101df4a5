"""The flows, one module per job: the flow (named like the job) and ``check(params)``.

Importing one imports Prefect; the command line (``flows/<job>.py``, ``flows/_cli.py``) does
so only once the options are valid.
"""
