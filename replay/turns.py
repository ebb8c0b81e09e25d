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

    @property
    def voice_to_voice_ms(self) -> int | None:
        if self.first_audio_ms is None or self.speech_end_ms is None:
            return None
        return self.first_audio_ms - self.speech_end_ms

    def parts(self) -> dict[str, int | None]:
        def d(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a - b

        return {
            "stt_final_ms": d(self.final_ms, self.speech_end_ms),
            "endpointing_ms": d(self.t_ms, self.final_ms),
            "llm_first_token_ms": d(self.first_token_ms, self.llm_start_ms),
            "first_clause_ms": d(self.first_speak_ms, self.first_token_ms),
            "tts_first_byte_ms": d(self.tts_first_byte_ms, self.first_speak_ms),
            "voice_to_voice_ms": self.voice_to_voice_ms,
        }


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
        if isinstance(e, ev.TtsAudio) and e.cause in speaks:
            t = speaks.pop(e.cause)
            if t.tts_first_byte_ms is None:
                t.tts_first_byte_ms = e.t_ms
        if turn is None:
            continue
        for x in st.effects:
            if isinstance(x, ev.StartLlm) and (turn.llm_start_ms is None):
                turn.llm_start_ms = x.t_ms
                llm_turn[x.seq] = turn
            elif isinstance(x, ev.Speak):
                turn.agent.append(x.text)
                turn.filler |= x.purpose == "filler"
                if turn.first_speak_ms is None and x.purpose in ("reply", "resume", "fallback"):
                    turn.first_speak_ms = x.t_ms  # the answer's first clause (a filler is not the answer)
                    speaks[x.seq] = turn
            elif isinstance(x, ev.SendAudio) and turn.first_audio_ms is None:
                turn.first_audio_ms = x.t_ms
            elif isinstance(x, ev.CallTool):
                turn.tools.append(x.name)
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
                if isinstance(y, ev.LlmToken) and y.cause == x.seq:
                    turn.first_token_ms = y.t_ms
                    break
            return


def percentile(values: list[int], q: float) -> int | None:
    """Nearest-rank percentile (no interpolation: every reported value is a real turn's)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
