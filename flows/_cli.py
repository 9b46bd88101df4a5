"""Exit statuses of the ``python -m flows.<name>`` command lines.

The options themselves come from each job's parameter model (``flows/params.py``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
