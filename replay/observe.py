"""Re-running a logged call while watching the machine: which rows of its transition table each input took.

replay/turns.py's ``steps`` gives the state before and after each input; a step can pass through a state
(speaking -> interrupted -> listening in one barge-in), and only the fired triggers show it. Barge-ins and
false interruptions are counted from these triggers, never guessed from effects.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import events as ev
from engine.flow import Flow
from engine.machine import TRANSITIONS, CallMachine
from replay.turns import Step

#: trigger -> the state it leads to (each trigger of the table has one destination)
DEST: dict[str, str] = {row["trigger"]: row["dest"] for row in TRANSITIONS}


@dataclass
class Observed:
    step: Step
    triggers: list[str]

    def path(self) -> list[str]:
        """The states this input went through: before, then each transition's destination."""
        return [self.step.before, *(DEST[t] for t in self.triggers)]


class _Watched(CallMachine):
    fired: list[str]

    def fire(self, trigger: str) -> bool:
        ok = super().fire(trigger)
        if ok:
            self.fired.append(trigger)
        return ok


def observe(flow: Flow, log: list[ev.Event]) -> list[Observed]:
    """replay.turns.steps, plus the transitions each input fired."""
    machine = _Watched(flow)
    out = []
    for e in log:
        if isinstance(e, ev.Input):
            machine.fired = []
            before = machine.state
            _, effects = machine.step(e)
            out.append(Observed(Step(e, before, machine.state, effects), machine.fired))
    return out
