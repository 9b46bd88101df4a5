"""Systems from outside labsim: ``module:factory`` or ``path/to/file.py:factory``.

``python -m labsim up --system SPEC`` (repeatable) and ``start_lab(..., systems=[SPEC])`` pass
them to the daemon, which calls each factory with no arguments and plugs the system it
returns in after the lab's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from labsim.core.system import System


def load_system(spec: str) -> System:
    """The system ``spec`` names; ValueError when it names nothing usable."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"a system is module:factory or file.py:factory, not {spec!r}")
    if where.endswith(".py"):
        path = Path(where).resolve()
        name = f"labsim_plugin_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"cannot load {path}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{where} has no factory {attr!r}")
    system = factory()
    if not isinstance(system, System):
        raise ValueError(f"{spec} returned {type(system).__name__}, not a labsim System")
    return system
