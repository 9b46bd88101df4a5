"""Schedules and deployment definitions.

``definitions`` holds every deployment once; ``serve`` runs them all from one process
(``python -m deployments.serve``); ``render`` writes ``prefect.yaml`` for
``prefect deploy --all`` onto the process work pool ``moxflow``.
"""
