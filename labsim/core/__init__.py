"""The lab's core (clock, tasks, faults, command log, control table) and the system protocol.

``lab`` holds the core, ``system`` what a system plugs in, ``controls`` the core's control
operations, ``plugins`` how a system from outside labsim is loaded (``module:factory``).
"""

from labsim.core.lab import LabCore, LabOptions, SshHost
from labsim.core.system import ApiRoute, Arg, Cli, Command, ControlOp, Deferred, Result, System
from labsim.core.tasks import Task

__all__ = [
    "ApiRoute",
    "Arg",
    "Cli",
    "Command",
    "ControlOp",
    "Deferred",
    "LabCore",
    "LabOptions",
    "Result",
    "SshHost",
    "System",
    "Task",
]
