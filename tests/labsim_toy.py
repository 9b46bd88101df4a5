"""A toy system plugged into the lab from outside labsim (``tests/test_labsim_plugin.py``).

A lamp on the host ``pve1``: ``GET /toy/lamp`` (a lab-only API route) and the SSH command
``lamp`` say whether it is on, the control operation ``toy_lamp`` (CLI ``toy-lamp``) switches
it, the state JSON has it under ``toy`` and the inventory a line about it. Nothing of it is
in labsim.
"""

from __future__ import annotations

from typing import Any

from labsim.core import ApiRoute, Arg, Cli, Command, ControlOp, Result, System


class ToySystem(System):
    name = "toy"

    def __init__(self) -> None:
        self.on = False

    def build(self, now: float) -> None:
        self.on = False

    def routes(self) -> list[ApiRoute]:
        return [ApiRoute("GET", "/toy/lamp", lambda req: {"on": int(self.on)}, in_schema=False)]

    def commands(self) -> list[Command]:
        return [Command("lamp", self._lamp)]

    def _lamp(
        self, host: str, argv: list[str], stdin: str | None, cwd: str | None
    ) -> Result | None:
        if host != "pve1":
            return None  # only pve1 has the lamp
        return 0, f"lamp is {'on' if self.on else 'off'}\n", ""

    def controls(self) -> list[ControlOp]:
        def switch(msg: dict[str, Any]) -> dict[str, bool]:
            with self.lab.lock:
                self.on = msg["state"] == "on"
                return {"on": self.on}

        return [
            ControlOp(
                "toy_lamp",
                switch,
                (Arg("state", "on or off", required=True, choices=("on", "off")),),
                Cli("toy-lamp", "switch the toy lamp", "Switch the toy lamp on or off."),
            )
        ]

    def to_json(self) -> dict[str, Any]:
        return {"toy": {"lamp": self.on}}

    def inventory(self) -> list[str]:
        # moxflow has no [toy] section: a comment, so the inventory still loads
        return ["# toy: the lamp is on pve1"]


def make() -> ToySystem:
    return ToySystem()
