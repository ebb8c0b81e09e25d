"""One call's data and the primitives every handler uses: emit, ignore, fire, timers.

Rules:
- ``fire`` and ``fire_floor`` are the only way a state changes: each takes a row of engine/machine.py's
  tables if it is allowed now (``may_<trigger>``) and returns whether it did; an impossible transition is
  never an error (the handler records an Ignored where that matters).
- Effects carry the input's ``t_ms`` and the next seqs, so a replay numbers them identically.
- Timers are named: endpoint, barge_in, false_interruption, filler, idle, max_call, fault,
  tool_delay:<CallTool seq>:<i>. Setting a name again replaces its timer (CancelTimer, then SetTimer).
"""

from __future__ import annotations

import random
from typing import Any

from engine import events as ev
from engine.context import Context
from engine.flow import Flow, Node
from engine.playback import Playback
from engine.records import Candidate, Closing, Heard, LlmOutput, LlmRequest, PendingTool, Reply
from engine.states import CallState, Floor


class Half:
    """The model one ``transitions.Machine`` drives: it keeps ``state`` and gets a method per trigger."""

    state: Any

    def __init__(self, initial: CallState | Floor) -> None:
        self.state = initial


class Call:
    def __init__(self, flow: Flow, call_id: str) -> None:
        self.flow = flow
        self.tt = flow.turn_taking
        self.call_id = call_id
        self.agent = Half(CallState.LISTENING)
        self.floor_half = Half(Floor.SILENT)
        # the step in progress
        self.seq = 0
        self.now = 0
        self.out: list[ev.Effect] = []
        self.current: ev.Input | None = None
        self.fired: list[str] = []  # the triggers this step took, in order
        # the records
        self.rng = random.Random(0)
        self.context = Context(flow.system)
        self.playback = Playback()
        self.heard = Heard()
        self.candidate: Candidate | None = None
        self.llm: LlmRequest | None = None
        self.output = LlmOutput()
        self.reply = Reply()
        self.tools: dict[int, PendingTool] = {}  # CallTool seq -> the call it runs
        self.timers: dict[str, int] = {}  # name -> SetTimer seq
        self.cancelled: set[int] = set()  # effects cancelled: their late answers are ignored, not errors
        self.closing: Closing | None = None
        self.node: str | None = None
        self.started = False
        self.reprompts = 0
        self.turn_count = 0

    @property
    def state(self) -> CallState:
        return self.agent.state  # type: ignore[no-any-return]

    @property
    def floor(self) -> Floor:
        return self.floor_half.state  # type: ignore[no-any-return]

    @property
    def caller_speaking(self) -> bool:
        """The local VAD hears the caller (with or without a barge-in candidate)."""
        return self.floor in (Floor.TALKING, Floor.CANDIDATE)

    # ---------------------------------------------------------------------------------- primitives

    def emit(self, cls: type[ev.Effect], **fields: Any) -> ev.Effect:
        self.seq += 1
        effect = cls(t_ms=self.now, seq=self.seq, **fields)
        self.out.append(effect)
        return effect

    def ignore(self, reason: str) -> None:
        assert self.current is not None
        self.emit(ev.Ignored, cause=self.current.seq, event=type(self.current).__name__,
                  state=self.state.value, reason=reason)

    def fire(self, trigger: str) -> bool:
        """Take a row of the agent's table if it is allowed now (its guard, if any, passing)."""
        return self._take(self.agent, trigger)

    def fire_floor(self, trigger: str) -> bool:
        """Take a row of the floor's table if it is allowed now (its guard, if any, passing)."""
        return self._take(self.floor_half, trigger)

    def _take(self, half: Half, trigger: str) -> bool:
        if self.state == CallState.ENDED or not getattr(half, f"may_{trigger}")(self):
            return False
        getattr(half, trigger)(self)
        self.fired.append(trigger)
        return True

    def set_timer(self, name: str, at_ms: int) -> None:
        self.cancel_timer(name)
        self.timers[name] = self.emit(ev.SetTimer, name=name, at_ms=max(at_ms, self.now)).seq

    def cancel_timer(self, name: str) -> None:
        seq = self.timers.pop(name, None)
        if seq is not None:
            self.emit(ev.CancelTimer, name=name, cause=seq)

    def choose(self, options: list[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def node_cfg(self) -> Node | None:
        return self.flow.nodes.get(self.node) if self.node else None

    def answered_late(self, cause: int | None) -> None:
        """An answer to a request that is no longer open: cancelled (expected), or never made."""
        self.ignore("after_cancel" if cause in self.cancelled else "unknown_cause")
