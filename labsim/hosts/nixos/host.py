"""A simulated NixOS host: the machine whose transient timers fire, running their commands."""

from __future__ import annotations

from labsim.hosts.nixos.commands import run_script
from labsim.hosts.nixos.machine import NixosMachine
from labsim.hosts.nixos.model import Ctx


class NixosHost(NixosMachine):
    """One simulated NixOS machine whose timers fire. Every method runs under the lab's lock."""

    # -- timers --------------------------------------------------------------------------------

    def tick(self, ctx: Ctx) -> None:
        """Fire every timer whose time has come (the lab's ticker calls this ~20 times a s)."""
        if self.drop_at is not None and ctx.mono >= self.drop_at:
            self.drop_at = None
            self.drop_now = True
        if not self.powered:
            return
        for timer in sorted(self.timers.values(), key=lambda t: t.due):
            if timer.due > ctx.mono:
                break
            del self.timers[timer.unit]
            rc, out, err = run_script(self, timer.command, ctx)
            self.timer_runs.append(
                {
                    "unit": f"{timer.unit}.timer",
                    "command": list(timer.command),
                    "fired": ctx.wall,
                    "exit": rc,
                    "stdout": out,
                    "stderr": err,
                }
            )
            if rc != 0 and not timer.collect:
                self.transient_units[f"{timer.unit}.service"] = "failed"
