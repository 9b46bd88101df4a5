"""``python -m labsim``: see ``labsim.cli``."""

from __future__ import annotations

import sys

from labsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
