"""Predicates every call must satisfy. The property tests and `engine check` use these same functions.

Each predicate takes the call's steps (input, states before/after, effects: see replay.turns.steps) and the
flow, and returns the violations it finds, each naming the event (seq) where the rule broke.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine import events as ev
from engine.flow import Flow
from engine.states import CallState
from replay.turns import Step


@dataclass(frozen=True)
class Violation:
    rule: str
    seq: int
    message: str

    def __str__(self) -> str:
        return f"{self.rule} at seq {self.seq}: {self.message}"


def no_overlapping_speech(steps: list[Step], flow: Flow) -> list[Violation]:
    """Agent audio goes out one Speak at a time, in order: never two replies' audio interleaved."""
    out: list[Violation] = []
    speak_of: dict[int, int] = {}  # TtsAudio seq -> Speak seq
    last = 0
    for st in steps:
        if isinstance(st.event, ev.TtsAudio) and st.event.cause is not None:
            speak_of[st.event.seq] = st.event.cause
        for x in st.effects:
            if isinstance(x, ev.SendAudio):
                speak = speak_of.get(x.cause or -1, -1)
                if speak < last:
                    out.append(Violation("no_overlapping_speech", x.seq,
                                         f"audio of Speak {speak} sent after audio of Speak {last}"))
                last = max(last, speak)
    return out


def barge_in_is_atomic(steps: list[Step], flow: Flow) -> list[Violation]:
    """A clear of playback (a barge-in) cancels the open LLM request in the same step; and no audio of a
    cancelled Speak goes out after its CancelTts."""
    out: list[Violation] = []
    llm_open: set[int] = set()
    cancelled: set[int] = set()
    speak_of: dict[int, int] = {}
    for st in steps:
        e = st.event
        if isinstance(e, ev.TtsAudio) and e.cause is not None:
            speak_of[e.seq] = e.cause
        if isinstance(e, ev.LlmDone | ev.LlmError) and e.cause is not None:
            llm_open.discard(e.cause)
        if any(isinstance(x, ev.ClearPlayback) for x in st.effects):
            stopped = {x.cause for x in st.effects if isinstance(x, ev.CancelLlm)}
            for seq in sorted(llm_open - stopped):
                out.append(Violation("barge_in_is_atomic", e.seq,
                                     f"playback cleared but StartLlm {seq} left running"))
        for x in st.effects:
            if isinstance(x, ev.StartLlm):
                llm_open.add(x.seq)
            elif isinstance(x, ev.CancelLlm) and x.cause is not None:
                llm_open.discard(x.cause)
            elif isinstance(x, ev.CancelTts) and x.cause is not None:
                cancelled.add(x.cause)
            elif isinstance(x, ev.SendAudio) and speak_of.get(x.cause or -1) in cancelled:
                out.append(Violation("barge_in_is_atomic", x.seq, "audio of a cancelled Speak was sent"))
    return out


def requests_closed_at_end(steps: list[Step], flow: Flow) -> list[Violation]:
    """Every StartLlm, CallTool and SetTimer is answered or cancelled by the end of the call."""
    if not steps or steps[-1].after != CallState.ENDED:
        return []
    open_: dict[int, str] = {}
    answers = {ev.LlmDone: ev.StartLlm, ev.LlmError: ev.StartLlm, ev.ToolResult: ev.CallTool,
               ev.TimerFired: ev.SetTimer}
    for st in steps:
        if type(st.event) in answers and st.event.cause is not None:
            open_.pop(st.event.cause, None)
        for x in st.effects:
            if isinstance(x, ev.StartLlm | ev.CallTool | ev.SetTimer):
                open_[x.seq] = type(x).__name__
            elif isinstance(x, ev.CancelLlm | ev.CancelTool | ev.CancelTimer) and x.cause is not None:
                open_.pop(x.cause, None)
    return [Violation("requests_closed_at_end", seq, f"{name} seq {seq} neither answered nor cancelled")
            for seq, name in sorted(open_.items())]


def one_filler_per_turn(steps: list[Step], flow: Flow) -> list[Violation]:
    """At most one filler per turn, and never before filler.after_ms since the turn was taken."""
    out: list[Violation] = []
    turn_start: int | None = None
    fillers = 0
    after = flow.turn_taking.filler.after_ms
    for st in steps:
        if any(isinstance(x, ev.Respond) for x in st.effects):
            turn_start, fillers = st.event.t_ms, 0
        for x in st.effects:
            if isinstance(x, ev.Speak) and x.purpose == "filler":
                fillers += 1
                if fillers > 1:
                    out.append(Violation("one_filler_per_turn", x.seq, "a second filler in one turn"))
                if turn_start is None or x.t_ms < turn_start + after:
                    out.append(Violation("one_filler_per_turn", x.seq,
                                         f"filler {x.t_ms - (turn_start or 0)} ms into the turn (< {after})"))
    return out


def no_reply_over_caller(steps: list[Step], flow: Flow) -> list[Violation]:
    """The agent never starts speaking (a reply, a filler, any line) while the caller is speaking."""
    out: list[Violation] = []
    speaking = False
    for st in steps:
        if isinstance(st.event, ev.SpeechStarted) and st.event.source == "vad":
            speaking = True  # the STT's own SpeechStarted is a hint with no stop (engine/turns.py)
        elif isinstance(st.event, ev.SpeechStopped):
            speaking = False
        for x in st.effects:
            if isinstance(x, ev.Speak) and speaking:
                out.append(Violation("no_reply_over_caller", x.seq,
                                     f"{x.purpose} {x.text[:40]!r} started while the caller was speaking"))
    return out


def ended_after_call_ended(steps: list[Step], flow: Flow) -> list[Violation]:
    return [Violation("ended_after_call_ended", st.event.seq, f"state {st.after!r} after CallEnded")
            for st in steps if isinstance(st.event, ev.CallEnded) and st.after != CallState.ENDED]


Predicate = Callable[[list[Step], Flow], list[Violation]]
INVARIANTS: tuple[Predicate, ...] = (
    no_overlapping_speech, barge_in_is_atomic, requests_closed_at_end, one_filler_per_turn,
    no_reply_over_caller, ended_after_call_ended,
)


def check(steps: list[Step], flow: Flow) -> list[Violation]:
    return [v for pred in INVARIANTS for v in pred(steps, flow)]
