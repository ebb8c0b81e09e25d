"""Turns and their latencies, read from a call's log (re-running the machine to know its states).

Latency is defined once (design.md): voice_to_voice_ms = first agent audio sent after the caller's turn
minus the end of the caller's speech (the VAD's measured end, else the STT's word end, else the final
transcript's arrival). Its parts: STT finalisation, endpointing wait, LLM first token, first clause, TTS
first byte. Engine time is measured by the live runtime only (offline it is zero by construction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine import events as ev
from engine.flow import Flow
from engine.machine import CallMachine
from engine.states import CallState


@dataclass
class Step:
    event: ev.Input
    before: CallState
    after: CallState
    effects: list[ev.Effect]
    #: The transitions this input fired, in order (filled by ``steps(..., watch=True)`` only). A step can
    #: pass through a state: a barge-in is speaking -> interrupted -> listening in one input.
    triggers: list[str] = field(default_factory=list)


@dataclass
class Turn:
    index: int
    t_ms: int  # when the machine took the turn (endpoint, or a DTMF choice)
    caller: str
    speech_end_ms: int | None
    final_ms: int | None = None
    llm_start_ms: int | None = None
    first_token_ms: int | None = None
    first_speak_ms: int | None = None
    tts_first_byte_ms: int | None = None
    first_audio_ms: int | None = None
    agent: list[str] = field(default_factory=list)
    filler: bool = False
    barge_in: bool = False
    tools: list[str] = field(default_factory=list)
    # A tool turn: the LLM's first pass ends in a tool call; its second pass, after the result, answers.
    tool_call_ms: int | None = None  # the CallTool (held until the turn is taken)
    llm_tool_call_ms: int | None = None  # when the first pass returned the tool call
    tool_result_ms: int | None = None
    llm2_start_ms: int | None = None
    llm2_first_token_ms: int | None = None
    # What the first agent audio was: the answer, or a line said while waiting (delay message, filler).
    first_audio_purpose: str | None = None
    first_audio_speak_ms: int | None = None
    first_audio_tts_ms: int | None = None
    answer_audio_ms: int | None = None  # the answer's first audio, when a delay message or filler came first

    @property
    def voice_to_voice_ms(self) -> int | None:
        if self.first_audio_ms is None or self.speech_end_ms is None:
            return None
        return self.first_audio_ms - self.speech_end_ms

    def parts(self) -> dict[str, int | None]:
        """Each stage's own latency (stages may overlap: a preemptive LLM runs during endpointing). In a
        tool turn, the LLM parts are its second pass, after the tool's result."""

        def d(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a - b

        tool = {}
        llm_start, first_token = self.llm_start_ms, self.first_token_ms
        if self.tool_call_ms is not None:
            tool = {"llm_tool_call_ms": d(self.llm_tool_call_ms, self.llm_start_ms),
                    "tool_ms": d(self.tool_result_ms, self.tool_call_ms)}
            llm_start, first_token = self.llm2_start_ms, self.llm2_first_token_ms
        return {
            "stt_final_ms": d(self.final_ms, self.speech_end_ms),
            "endpointing_ms": d(self.t_ms, self.final_ms),
            **tool,
            "llm_first_token_ms": d(first_token, llm_start),
            "first_clause_ms": d(self.first_speak_ms, first_token),
            "tts_first_byte_ms": d(self.tts_first_byte_ms, self.first_speak_ms),
            "voice_to_voice_ms": self.voice_to_voice_ms,
        }

    def _chain(self, start: int | None, marks: list[tuple[str, int | None]], end: int | None) -> list[Segment]:
        """Consecutive segments from ``start`` through each mark to ``end``: a mark that is missing or came
        earlier (hidden behind the segment before it, like a preemptive LLM) is skipped, so the segments
        sum to end - start exactly."""
        if start is None or end is None or end < start:
            return []
        out, at = [], start
        for key, t in [*marks, ("send_ms", end)]:
            if t is None or (t <= at and key != "send_ms"):
                continue
            t = min(t, end)
            out.append(Segment(key, at, t))
            at = t
        return out

    def waterfall(self) -> list[Segment]:
        """The path from the end of the caller's speech to the first agent audio, as consecutive segments
        that sum to voice to voice. A tool turn goes through its tool call; when a delay message (or a
        filler) was the first audio, the path waits for it and the answer follows in ``answer()``."""
        marks: list[tuple[str, int | None]] = [("stt_final_ms", self.final_ms), ("endpointing_ms", self.t_ms)]
        waiting = self.first_audio_purpose in WAITS
        if self.tool_call_ms is not None:
            marks.append(("llm_tool_call_ms", self.llm_tool_call_ms))
            if waiting:
                marks.append(("tool_wait_ms", self.first_audio_speak_ms))
            else:
                marks += [("tool_ms", self.tool_result_ms), ("llm_first_token_ms", self.llm2_first_token_ms)]
        elif waiting:
            marks.append(("filler_wait_ms", self.first_audio_speak_ms))
        else:
            marks.append(("llm_first_token_ms", self.first_token_ms))
        if not waiting:
            marks.append(("first_clause_ms", self.first_audio_speak_ms))
        marks.append(("tts_first_byte_ms", self.first_audio_tts_ms))
        return self._chain(self.speech_end_ms, marks, self.first_audio_ms)

    def answer(self) -> list[Segment]:
        """After a delay message or filler was the first audio: the path on to the answer's first audio."""
        if self.first_audio_purpose not in WAITS or self.answer_audio_ms is None:
            return []
        marks: list[tuple[str, int | None]] = []
        if self.tool_call_ms is not None:
            marks += [("tool_ms", self.tool_result_ms), ("llm_first_token_ms", self.llm2_first_token_ms)]
        else:
            marks += [("llm_first_token_ms", self.first_token_ms)]
        marks += [("first_clause_ms", self.first_speak_ms), ("tts_first_byte_ms", self.tts_first_byte_ms)]
        return self._chain(self.first_audio_ms, marks, self.answer_audio_ms)


#: Speak purposes that only fill a wait: the answer is still to come.
WAITS = ("filler", "tool_message")
#: Speak purposes that answer the caller (a filler or a delay message only fills the wait).
ANSWERS = ("reply", "resume", "fallback")


@dataclass(frozen=True)
class Segment:
    key: str  # a PART_NAMES key (replay/textview.py)
    start_ms: int
    end_ms: int

    @property
    def ms(self) -> int:
        return self.end_ms - self.start_ms


class TurnClock:
    """Voice to voice, defined once and fed step by step (live by `engine serve`'s metrics, offline by
    ``turns``): the first agent audio sent after a caller turn is taken, minus the end of the caller's
    speech (the VAD's measured end, else the STT's word end; a keypress: its own time)."""

    def __init__(self) -> None:
        self.speech_end: int | None = None  # of the speech not yet part of a taken turn
        self.turn_end: int | None = None  # of the turn taken last: voice to voice counts from here
        self.waiting = False  # a turn was taken and no audio has answered it yet

    def observe(self, e: ev.Input, effects: list[ev.Effect], before: str, after: str = "") -> int | None:
        """One step of the machine; returns the turn's voice to voice at the step that answers it."""
        if isinstance(e, ev.SpeechStopped):
            self.speech_end = e.end_ms if e.end_ms is not None else e.t_ms
        elif isinstance(e, ev.Transcript) and e.is_final and e.end_ms is not None \
                and before in (CallState.LISTENING, CallState.INTERRUPTED) \
                and (self.speech_end is None or self.speech_end < (e.start_ms or 0)):
            self.speech_end = e.end_ms  # the STT's word end, when the VAD gave none for these words
        if any(isinstance(x, ev.Respond) for x in effects):
            self.turn_end = e.t_ms if isinstance(e, ev.Dtmf) else self.speech_end
            self.speech_end, self.waiting = None, True
        audio = next((x for x in effects if isinstance(x, ev.SendAudio)), None)
        if self.waiting and audio is not None:
            self.waiting = False
            return None if self.turn_end is None else audio.t_ms - self.turn_end
        return None


def steps(flow: Flow, log: list[ev.Event], *, watch: bool = False) -> list[Step]:
    """Re-run the machine over the logged inputs, keeping the state before and after each one (and, with
    ``watch``, the transitions each input fired)."""
    machine = CallMachine(flow)
    view = machine.view
    out = []
    for e in log:
        if isinstance(e, ev.Input):
            before = view.state
            _, effects = machine.step(e)
            out.append(Step(e, before, view.state, effects, list(view.fired) if watch else []))
    return out


def takes_turn(st: Step) -> bool:
    """Does this step start a caller turn? The machine says so with a Respond effect (the endpoint, or a
    DTMF key that moves the flow)."""
    return any(isinstance(x, ev.Respond) for x in st.effects)


def turns(flow: Flow, log: list[ev.Event]) -> list[Turn]:
    result: list[Turn] = []
    finals: list[str] = []
    clock = TurnClock()
    final_t: int | None = None
    speaks: dict[int, Turn] = {}
    llm_turn: dict[int, Turn] = {}
    llm2_turn: dict[int, Turn] = {}
    spoken: dict[int, tuple[int, str]] = {}  # Speak seq -> (when, purpose)
    tts_speak: dict[int, int] = {}  # TtsAudio seq -> its Speak seq
    tts_first: dict[int, int] = {}  # Speak seq -> its first audio byte
    for st in steps(flow, log):
        e = st.event
        if isinstance(e, ev.Transcript) and e.is_final and st.before in (CallState.LISTENING, CallState.INTERRUPTED):
            finals.append(e.text)
            final_t = e.t_ms
        clock.observe(e, st.effects, st.before)
        taken = takes_turn(st)
        if taken:
            caller = " ".join(finals) if not isinstance(e, ev.Dtmf) else f"[DTMF {e.digit}]"
            result.append(Turn(index=len(result) + 1, t_ms=e.t_ms, caller=caller, speech_end_ms=clock.turn_end,
                               final_ms=final_t if not isinstance(e, ev.Dtmf) else e.t_ms))
            finals, final_t = [], None
        turn = result[-1] if result else None
        if isinstance(e, ev.LlmToken) and e.cause in llm_turn:
            t = llm_turn[e.cause]
            if t.first_token_ms is None:
                t.first_token_ms = e.t_ms
        if isinstance(e, ev.LlmToken) and e.cause in llm2_turn:
            t = llm2_turn[e.cause]
            if t.llm2_first_token_ms is None:
                t.llm2_first_token_ms = e.t_ms
        if isinstance(e, ev.LlmToolCall) and e.cause in llm_turn:
            t = llm_turn[e.cause]
            if t.llm_tool_call_ms is None:
                t.llm_tool_call_ms = e.t_ms
        if isinstance(e, ev.TtsAudio) and e.cause is not None:
            tts_speak[e.seq] = e.cause
            tts_first.setdefault(e.cause, e.t_ms)
        if isinstance(e, ev.TtsAudio) and e.cause in speaks:
            t = speaks.pop(e.cause)
            if t.tts_first_byte_ms is None:
                t.tts_first_byte_ms = e.t_ms
        if turn is None:
            continue
        if isinstance(e, ev.ToolResult) and turn.tool_call_ms is not None and turn.llm2_start_ms is None:
            turn.tool_result_ms = e.t_ms
        for x in st.effects:
            if isinstance(x, ev.StartLlm) and (turn.llm_start_ms is None):
                turn.llm_start_ms = x.t_ms
                llm_turn[x.seq] = turn
            elif isinstance(x, ev.StartLlm) and turn.tool_result_ms is not None and turn.llm2_start_ms is None:
                turn.llm2_start_ms = x.t_ms  # the LLM's second pass: it reads the tool's result
                llm2_turn[x.seq] = turn
            elif isinstance(x, ev.Speak):
                spoken[x.seq] = (x.t_ms, x.purpose)
                turn.agent.append(x.text)
                turn.filler |= x.purpose == "filler"
                if turn.first_speak_ms is None and x.purpose in ANSWERS:
                    turn.first_speak_ms = x.t_ms  # the answer's first clause (a filler is not the answer)
                    speaks[x.seq] = turn
            elif isinstance(x, ev.SendAudio):
                at, purpose = spoken.get(tts_speak.get(x.cause or -1, -1), (None, None))
                if turn.first_audio_ms is None:
                    turn.first_audio_ms = x.t_ms
                    turn.first_audio_purpose, turn.first_audio_speak_ms = purpose, at
                    turn.first_audio_tts_ms = tts_first.get(tts_speak.get(x.cause or -1, -1))
                elif turn.answer_audio_ms is None and purpose not in WAITS \
                        and turn.first_audio_purpose in WAITS:
                    turn.answer_audio_ms = x.t_ms
            elif isinstance(x, ev.CallTool):
                turn.tools.append(x.name)
                if turn.tool_call_ms is None:
                    turn.tool_call_ms = x.t_ms
            elif isinstance(x, ev.ClearPlayback):
                turn.barge_in = True
        if taken and turn.llm_start_ms is None:
            # a preemptive request started before the turn was taken: find it in the previous steps
            _adopt_preemptive(turn, log, e.seq, llm_turn)
    return result


def _adopt_preemptive(turn: Turn, log: list[ev.Event], upto: int, llm_turn: dict[int, Turn]) -> None:
    cancelled = {x.cause for x in log if isinstance(x, ev.CancelLlm) and x.seq < upto}
    for x in reversed(log[:upto]):
        if isinstance(x, ev.StartLlm) and x.seq not in cancelled:
            turn.llm_start_ms = x.t_ms
            llm_turn[x.seq] = turn
            for y in log[:upto]:
                if isinstance(y, ev.LlmToken) and y.cause == x.seq and turn.first_token_ms is None:
                    turn.first_token_ms = y.t_ms
                elif isinstance(y, ev.LlmToolCall) and y.cause == x.seq and turn.llm_tool_call_ms is None:
                    turn.llm_tool_call_ms = y.t_ms
            return


def percentile(values: list[int], q: float) -> int | None:
    """Nearest-rank percentile (no interpolation: every reported value is a real turn's)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
