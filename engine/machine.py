"""The call machine: ``feed(event) -> [effect, ...]``, a pure function of the events fed so far.

Theory of operation (as h11's _state.py): a call is two state machines side by side, the agent's
(CallState: what the agent is doing) and the caller's floor (Floor: whether the caller is talking, and
whether over the agent). Each input goes to exactly one handler, HANDLERS[type(input)]; the handler
reads both states and moves them only by taking rows of AGENT_TABLE and FLOOR_TABLE.

Rules:
- Rule 1: every state change is a row below. Nothing outside this file's tables decides a next state;
  ``Call.fire`` / ``Call.fire_floor`` take a row only if ``may_<trigger>`` allows it (its guard passing), so
  an impossible transition is never a MachineError: the handler records an Ignored where that matters.
- Rule 2: what an input does is its handler (engine/handlers.py; timers: engine/timers.py), found here by
  the input's type. A reader answers "what does X do in state S?" from the tables and that one function.
- Rule 3: the machine never reads a clock, does I/O or draws an unseeded random number: time is the
  input's ``t_ms``; the only randomness is ``Random(CallStarted.seed)``.
- Rule 4: input from the world never raises. Unexpected, late (cause cancelled) or unknown inputs produce
  ``Ignored(reason=...)``. An exception out of feed is EngineMisuse (the driver broke the contract) or a bug.
- Rule 5: effects carry the input's ``t_ms`` and the next seqs, so a replay numbers them identically.
- Rule 6: in ENDED every input is Ignored (``call_ended``), except a CallEnded, which does nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from transitions import Machine

from engine import events as ev
from engine import handlers as on
from engine import timers
from engine.call import Call
from engine.caller import agent_interruptible, barge_in_confirmed
from engine.flow import Flow
from engine.states import CallState, Floor

# one letter each, so the table reads as a table
L, T, S, P, C, E = (CallState.LISTENING, CallState.THINKING, CallState.SPEAKING, CallState.TOOL_PENDING,
                    CallState.CLOSING, CallState.ENDED)
I = CallState.INTERRUPTED  # noqa: E741
LIVE = [L, T, S, I, P]

# The agent's half. Rows are tried in order; a guard is a named function of the call.
AGENT_TABLE: list[dict[str, Any]] = [
    # the caller's turn is over (endpoint timer, UtteranceEnd): the agent answers
    {"trigger": "endpoint", "source": L, "dest": T},
    # the answer's first clause goes to TTS: from now on the caller hears it
    {"trigger": "first_clause", "source": T, "dest": S},
    # a fixed line (greeting, reprompt, a node's line, the fallback) replaces whatever the agent was doing
    {"trigger": "announce", "source": LIVE, "dest": S},
    # the LLM asked for tools: its answer waits for their results (a line may still be playing)
    {"trigger": "call_tool", "source": [T, S], "dest": P},
    # the last tool in flight answered (result or error, already in the context): the LLM answers with it
    {"trigger": "tool_returned", "source": P, "dest": T},
    # the caller takes the floor over the agent (time or words, policy.barge_in_confirmed)
    {"trigger": "barge_in", "source": [S, T, P], "dest": I, "conditions": barge_in_confirmed},
    # after a barge-in: their words came (or their speech went on), so it is their turn
    {"trigger": "caller_resumes", "source": I, "dest": L},
    # after a barge-in: no words in barge_in.false_interruption_ms, so the agent says the unheard rest
    {"trigger": "resume", "source": I, "dest": S},
    # a node change with no line of its own: the LLM answers anew under the node's instructions
    {"trigger": "redirect", "source": LIVE, "dest": T},
    # everything queued has played (or the reply was empty): the caller has the floor
    {"trigger": "reply_done", "source": [S, T], "dest": L},
    # the call is ending from our side (goodbye, transfer, limits, a fault): the last line plays, uninterrupted
    {"trigger": "close", "source": LIVE, "dest": C},
    # the caller is gone, or the last line has played: nothing more happens
    {"trigger": "end", "source": [*LIVE, C], "dest": E},
]

SILENT, TALKING, CANDIDATE, QUIET = Floor.SILENT, Floor.TALKING, Floor.CANDIDATE, Floor.QUIET_CANDIDATE

# The caller's half, driven by the local VAD (both ends of speech) and the STT's words.
FLOOR_TABLE: list[dict[str, Any]] = [
    # speech over a busy agent is a barge-in candidate (the barge_in timer starts)
    {"trigger": "voice_starts", "source": SILENT, "dest": CANDIDATE, "conditions": agent_interruptible},
    # otherwise the caller simply takes the floor (the agent listens; an interrupted or closing one too)
    {"trigger": "voice_starts", "source": SILENT, "dest": TALKING},
    # words the VAD missed were already a candidate; now the VAD hears them too
    {"trigger": "voice_starts", "source": QUIET, "dest": CANDIDATE},
    # the caller stopped: a candidate that was not confirmed was a cough or an "uh-huh", and is dropped
    {"trigger": "voice_stops", "source": [TALKING, CANDIDATE], "dest": SILENT},
    # the STT heard words over the busy agent while the VAD hears nothing: a candidate by words alone
    {"trigger": "words_over_agent", "source": SILENT, "dest": QUIET},
    # words over the busy agent from a caller who was already talking (they began while it listened)
    {"trigger": "words_over_agent", "source": TALKING, "dest": CANDIDATE},
    # the agent's barge_in row was taken: the candidate is the caller's floor now, and they are talking
    {"trigger": "confirmed", "source": CANDIDATE, "dest": TALKING},
    # confirmed by words the VAD never heard: the floor is theirs, and they are quiet (their turn's words wait)
    {"trigger": "confirmed", "source": QUIET, "dest": SILENT},
]

Handler = Callable[[Call, Any], None]


def timer_fired(c: Call, e: ev.TimerFired) -> None:
    """Only the timer pending under its name acts (one handler per name, TIMERS); any other is stale."""
    if c.timers.get(e.name) != e.cause:
        return c.ignore("stale_timer")
    del c.timers[e.name]
    TIMERS[e.name.split(":", 1)[0]](c, e)


#: What each input does: one handler per type (engine/handlers.py).
HANDLERS: dict[type[ev.Input], Handler] = {
    ev.CallStarted: on.call_started,
    ev.CallEnded: on.call_ended,
    ev.RuntimeFault: on.runtime_fault,
    ev.ProviderNotice: on.provider_notice,
    ev.SpeechStarted: on.speech_started,
    ev.SpeechStopped: on.speech_stopped,
    ev.Transcript: on.transcript,
    ev.UtteranceEnd: on.utterance_end,
    ev.Dtmf: on.dtmf,
    ev.LlmToken: on.llm_token,
    ev.LlmToolCall: on.llm_tool_call,
    ev.LlmDone: on.llm_done,
    ev.LlmError: on.llm_error,
    ev.TtsAudio: on.tts_audio,
    ev.TtsDone: on.tts_finished,
    ev.TtsError: on.tts_finished,
    ev.PlaybackMark: on.playback_mark,
    ev.ToolResult: on.tool_result,
    ev.TimerFired: timer_fired,
}

#: What each timer does when it fires, by the name before any ':' (engine/timers.py).
TIMERS: dict[str, Callable[[Call, ev.TimerFired], None]] = {
    "max_call": timers.max_call,
    "endpoint": timers.endpoint,
    "barge_in": timers.barge_in,
    "false_interruption": timers.false_interruption,
    "filler": timers.filler,
    "idle": timers.idle,
    "tool_delay": timers.tool_delay,
    "fault": timers.fault,
}


class EngineMisuse(RuntimeError):
    """The code driving the engine broke its contract (not the caller, not a provider)."""


class View:
    """What drivers (the runtime, the offline driver, what-if, replay) may read of a machine."""

    def __init__(self, call: Call) -> None:
        self._c = call

    @property
    def state(self) -> CallState:
        return self._c.state

    @property
    def floor(self) -> Floor:
        return self._c.floor

    @property
    def caller_talking(self) -> bool:
        """The local VAD hears the caller (holding the floor or over the agent)."""
        return self._c.caller_speaking

    @property
    def now(self) -> int:
        return self._c.now

    @property
    def ended(self) -> bool:
        return self._c.state == E

    @property
    def turns(self) -> int:
        """Caller turns taken so far."""
        return self._c.turn_count

    @property
    def node(self) -> str | None:
        return self._c.node

    @property
    def open_llm(self) -> int | None:
        """The seq of the StartLlm in flight."""
        return self._c.llm.seq if self._c.llm is not None else None

    @property
    def timers(self) -> frozenset[str]:
        """Names of the timers pending."""
        return frozenset(self._c.timers)

    @property
    def caller_words_pending(self) -> bool:
        """The caller said words (finals) that are not yet a turn."""
        return bool(self._c.heard.finals)

    @property
    def playing(self) -> bool:
        """Lines are queued or playing for the caller."""
        return self._c.playback.active

    @property
    def fired(self) -> tuple[str, ...]:
        """The rows (triggers) the last input took, in order: a step can pass through a state."""
        return tuple(self._c.fired)

    def mark_awaited(self, name: str) -> bool:
        """Is this mark's echo still awaited (sent, not yet echoed, not cleared)?"""
        return self._c.playback.awaiting(name)

    def mark_sent(self, name: str) -> int | None:
        """The SendMark seq of a mark name (Twilio echoes names only; the echo cites its SendMark)."""
        return self._c.playback.sent_marks.get(name)

    @property
    def messages(self) -> tuple[ev.Message, ...]:
        """The conversation as the next LLM request would see it (system prompt first)."""
        return self._c.context.messages()


class CallMachine:
    """One call. Feed it inputs in order; it answers with effects. Read it through ``view``."""

    def __init__(self, flow: Flow, *, call_id: str = "call") -> None:
        self._call = Call(flow, call_id)
        self.view = View(self._call)
        kw: dict[str, Any] = {"auto_transitions": False, "queued": True, "send_event": False}
        Machine(model=self._call.agent, states=CallState, transitions=AGENT_TABLE, initial=L, **kw)
        Machine(model=self._call.floor_half, states=Floor, transitions=FLOOR_TABLE, initial=SILENT, **kw)

    def feed(self, event: ev.Input) -> list[ev.Effect]:
        return self.step(event)[1]

    def step(self, event: ev.Input) -> tuple[ev.Input, list[ev.Effect]]:
        """Feed one input; returns it with its seq assigned, and the effects it caused."""
        c = self._call
        if not isinstance(event, ev.Input):
            raise EngineMisuse(f"feed({type(event).__name__}) in state {c.state.value!r}: only Input events")
        expected = c.seq + 1
        if event.seq == 0:
            event = dataclasses.replace(event, seq=expected)
        elif event.seq != expected:
            raise EngineMisuse(f"feed({type(event).__name__} seq={event.seq}) in state {c.state.value!r}: "
                               f"the next seq is {expected}; feed a log's inputs in order, once each")
        if event.t_ms < c.now:
            # late stamps happen (a timer fires after a later input was stamped); time never goes back
            event = dataclasses.replace(event, t_ms=c.now)
        c.seq = expected
        c.now = event.t_ms
        c.current = event
        c.out = []
        c.fired = []
        handler = HANDLERS.get(type(event))
        if c.state == E and not isinstance(event, ev.CallEnded):
            c.ignore("call_ended")
        elif handler is None:
            c.ignore("unhandled")
        else:
            handler(c, event)
        return event, c.out


def run_inputs(flow: Flow, inputs: list[ev.Input], *, call_id: str = "call") -> list[ev.Event]:
    """Feed inputs to a fresh machine; returns the whole log (inputs and effects, in seq order)."""
    machine = CallMachine(flow, call_id=call_id)
    log: list[ev.Event] = []
    for event in inputs:
        stamped, effects = machine.step(event)
        log.append(stamped)
        log.extend(effects)
    return log
