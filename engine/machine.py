"""The call machine: ``feed(event) -> [effect, ...]``, a pure function of the events fed so far.

Rules:
- Every state change is a row of TRANSITIONS. Nothing else assigns ``.state``; ``_fire`` checks
  ``may_<trigger>()`` first, so an impossible transition is a recorded Ignored, never a MachineError.
- The machine never reads a clock, does I/O or draws an unseeded random number: time is ``t_ms`` of the
  input, the only randomness is ``Random(CallStarted.seed)``.
- Input from the world never raises: unexpected, late (cause cancelled) or unknown inputs produce
  ``Ignored(reason=...)``. An exception out of feed is EngineMisuse (the caller broke the contract) or a bug.
- Effects carry the input's ``t_ms`` and the next seqs, so a replay numbers them identically.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from transitions import Machine

from engine import events as ev
from engine.context import Context
from engine.flow import Flow
from engine.playback import Playback
from engine.turns import TurnLogic


class EngineMisuse(RuntimeError):
    """The code driving the engine broke its contract (not the caller, not a provider)."""


class CallState(StrEnum):
    #: The caller has the floor; a final transcript arms the endpoint timer.
    LISTENING = "listening"
    #: The turn is confirmed; the LLM is producing the reply and nothing of it is playing yet.
    THINKING = "thinking"
    #: Reply audio is queued or playing for the caller.
    SPEAKING = "speaking"
    #: The caller barged in; playback was cleared; waiting for their words (or a false interruption).
    INTERRUPTED = "interrupted"
    #: A tool call is running; the LLM waits for its result.
    TOOL_PENDING = "tool_pending"
    #: The call is over; every input is ignored.
    ENDED = "ended"


_L, _T, _S, _I, _P, _E = (s.value for s in CallState)
_LIVE = [_L, _T, _S, _I, _P]

# Rule: every state change is a row here. Guards are named policy checks on TurnLogic.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "endpoint", "source": _L, "dest": _T},  # the caller's turn is over
    {"trigger": "first_clause", "source": _T, "dest": _S},  # the reply starts playing
    {"trigger": "announce", "source": _LIVE, "dest": _S},  # a fixed line: greeting, reprompt, node, goodbye
    {"trigger": "call_tool", "source": [_T, _S], "dest": _P},
    {"trigger": "tool_returned", "source": _P, "dest": _T},
    {"trigger": "barge_in", "source": [_S, _T, _P], "dest": _I, "conditions": "barge_in_confirmed"},
    {"trigger": "caller_resumes", "source": _I, "dest": _L},  # the caller's words arrived
    {"trigger": "resume", "source": _I, "dest": _S},  # false interruption: say the unheard rest
    {"trigger": "redirect", "source": _LIVE, "dest": _T},  # a node change: the LLM answers anew
    {"trigger": "reply_done", "source": [_S, _T], "dest": _L},
    {"trigger": "end", "source": _LIVE, "dest": _E},
]


class CallMachine(TurnLogic):
    """One call. Feed it inputs in order; it answers with effects."""

    state: str

    def __init__(self, flow: Flow, *, call_id: str = "call") -> None:
        self.flow = flow
        self.tt = flow.turn_taking
        self.call_id = call_id
        self.seq = 0
        self.now = 0
        self.out: list[ev.Effect] = []
        self.current: ev.Input | None = None
        self.rng = random.Random(0)
        self.context = Context(flow.system)
        self.playback = Playback()
        self.init_turn_state()
        Machine(model=self, states=[s.value for s in CallState], transitions=TRANSITIONS, initial=_L,
                auto_transitions=False, queued=True, send_event=False)

    # ----------------------------------------------------------------------------------- the API

    def feed(self, event: ev.Input) -> list[ev.Effect]:
        return self.step(event)[1]

    def step(self, event: ev.Input) -> tuple[ev.Input, list[ev.Effect]]:
        """Feed one input; returns it with its seq assigned, and the effects it caused."""
        if not isinstance(event, ev.Input):
            raise EngineMisuse(f"feed({type(event).__name__}) in state {self.state!r}: only Input events")
        expected = self.seq + 1
        if event.seq == 0:
            event = dataclasses.replace(event, seq=expected)
        elif event.seq != expected:
            raise EngineMisuse(f"feed({type(event).__name__} seq={event.seq}) in state {self.state!r}: "
                               f"the next seq is {expected}; feed a log's inputs in order, once each")
        if event.t_ms < self.now:
            # late stamps happen (a timer fires after a later input was stamped); time never goes back
            event = dataclasses.replace(event, t_ms=self.now)
        self.seq = expected
        self.now = event.t_ms
        self.current = event
        self.out = []
        if self.state == _E and not isinstance(event, ev.CallEnded):
            self.ignore("call_ended")
        else:
            handler: Callable[[Any], None] | None = getattr(self, f"on_{type(event).__name__}", None)
            if handler is None:
                self.ignore("unhandled")
            else:
                handler(event)
        return event, self.out

    @property
    def ended(self) -> bool:
        return self.state == _E

    # ------------------------------------------------------------------------------- primitives

    def emit(self, cls: type[ev.Effect], **fields: Any) -> ev.Effect:
        self.seq += 1
        effect = cls(t_ms=self.now, seq=self.seq, **fields)
        self.out.append(effect)
        return effect

    def ignore(self, reason: str) -> None:
        assert self.current is not None
        self.emit(ev.Ignored, cause=self.current.seq, event=type(self.current).__name__,
                  state=self.state, reason=reason)

    def fire(self, trigger: str) -> bool:
        """Take a transition of the table if it is allowed now (and its guard passes)."""
        if self.state == _E or not getattr(self, f"may_{trigger}")():
            return False
        return bool(getattr(self, trigger)())

    def set_timer(self, name: str, at_ms: int) -> None:
        self.cancel_timer(name)
        self.timers[name] = self.emit(ev.SetTimer, name=name, at_ms=max(at_ms, self.now)).seq

    def cancel_timer(self, name: str) -> None:
        seq = self.timers.pop(name, None)
        if seq is not None:
            self.emit(ev.CancelTimer, name=name, cause=seq)

    def choose(self, options: list[str]) -> str:
        return options[self.rng.randrange(len(options))]


def run_inputs(flow: Flow, inputs: list[ev.Input], *, call_id: str = "call") -> list[ev.Event]:
    """Feed inputs to a fresh machine; returns the whole log (inputs and effects, in seq order)."""
    machine = CallMachine(flow, call_id=call_id)
    log: list[ev.Event] = []
    for event in inputs:
        stamped, effects = machine.step(event)
        log.append(stamped)
        log.extend(effects)
    return log
