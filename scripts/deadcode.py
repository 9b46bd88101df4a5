"""`make lint`'s dead-code check: vulture over the production packages, where a name listed
in a module's ``__all__`` does not count as a use.

Plain vulture counts ``__all__`` as a use, which hides every exported function that only the
tests call (the tests are not scanned, on purpose: a function only they call is dead). The
paths and options are ``[tool.vulture]`` in pyproject.toml; the names only frameworks call
are in vulture_whitelist.py. Run: ``python -m scripts.deadcode`` (exit 3: dead code found).
"""

from __future__ import annotations

import ast
import sys

from vulture.config import InputError, make_config
from vulture.core import Vulture


class _Vulture(Vulture):
    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802 - ast.NodeVisitor naming
        """``__all__ = [...]`` declares what a module exports; it does not use it."""


def main() -> int:
    try:
        config = make_config()
    except InputError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    vulture = _Vulture(
        verbose=config["verbose"],
        ignore_names=config["ignore_names"],
        ignore_decorators=config["ignore_decorators"],
    )
    vulture.scavenge(config["paths"], exclude=config["exclude"])
    status: int = vulture.report(
        min_confidence=config["min_confidence"],
        sort_by_size=config["sort_by_size"],
        make_whitelist=config["make_whitelist"],
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
