"""The one command line of every job: ``python -m flows.<job>``.

``flows/<job>.py`` is the command: its docstring is the help, its parameter model the
options, and ``main = Command(...).main``. The flow itself lives in ``flows/jobs/<job>.py``,
imported only once the options are valid, so ``--help`` and usage errors answer before
Prefect is imported (a second instead of two). The job module offers two names: the flow
(named like the job) and ``check(params)``, which validates everything that can be checked
before the flow starts (the inventory, names, selections, the token) and raises.

Exit statuses: 0 every target ok (or skipped on purpose), 1 a target failed or was busy
(another run or operation held it), 2 bad input (nothing changed).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flows.params import FlowParams, build_parser, params_from_args
from moxflow.errors import ConfigError, MoxflowError, ProxmoxAuthError, ProxmoxPermissionError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

USAGE_ERRORS = (ConfigError, ProxmoxAuthError, ProxmoxPermissionError)
"""Bad input: an inventory, option or name that is wrong, or credentials that are refused."""


@dataclass(frozen=True, slots=True)
class Command:
    """``python -m flows.<job>``: options from ``model``, help from ``description``."""

    job: str
    """The job's module under ``flows.jobs`` and the name of its flow there."""
    model: type[FlowParams]
    description: str

    def parser(self) -> argparse.ArgumentParser:
        """The command line, from the model; fast, so is ``--help``."""
        return build_parser(f"python -m flows.{self.job}", self.description, self.model)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse, check the input, run the flow, print the report; the exit status."""
        args = self.parser().parse_args(argv)
        try:
            params = params_from_args(self.model, args)
            job = importlib.import_module(f"flows.jobs.{self.job}")
            job.check(params)
        except USAGE_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except MoxflowError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        from flows._run import run_from_cli

        flow: Any = getattr(job, self.job)
        return run_from_cli(flow, **params.model_dump())

    def exit(self) -> None:
        """``if __name__ == "__main__"``: run with the process's arguments, exit with the status."""
        sys.exit(self.main(sys.argv[1:]))
