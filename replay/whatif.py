"""What-if replay: a logged call run again under other parameters or another flow, on a virtual clock.

Rules (design.md, Replay):
- The caller's side keeps its logged times: speech, transcripts, DTMF, a hang-up by the caller.
- Agent-side answers keep their logged latency from their cause and move with it: LLM output from its
  StartLlm, TTS audio from its Speak, a tool result from its CallTool. Timers fire at the new SetTimer's
  ``at_ms``; marks echo when the phone (sim/world.py, shared with the offline driver) has played the audio
  before them.
- New effects match logged ones by order within their kind: the k-th StartLlm of the what-if is answered
  as the k-th logged one was, if their messages are equal; failing that, by a logged request with equal
  messages. Speaks match on text, CallTools on name and arguments.
- Nothing is invented. An LLM request or tool call the log cannot answer stops the what-if at the moment it
  would have mattered, with a note saying which turn needed what. Only TTS may be estimated (its length
  from the text, engine/playback.MS_PER_CHAR), and the Speak is marked estimated.
- Ties at one instant keep the log's order (each event ranks by the seq of the logged event it stands for),
  so a what-if that changes nothing reproduces the logged call exactly.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from engine import events as ev
from engine.flow import Flow
from engine.machine import CallMachine
from engine.playback import MS_PER_CHAR
from replay.turns import steps, takes_turn
from sim.world import CANCELS, World

CALLER_SIDE = (ev.CallStarted, ev.SpeechStarted, ev.SpeechStopped, ev.Transcript, ev.UtteranceEnd, ev.Dtmf,
               ev.ProviderNotice, ev.CallEnded)
ANSWERS: dict[type, tuple[type, ...]] = {
    ev.StartLlm: (ev.LlmToken, ev.LlmToolCall, ev.LlmDone, ev.LlmError),
    ev.Speak: (ev.TtsAudio, ev.TtsDone, ev.TtsError),
    ev.CallTool: (ev.ToolResult,),
}
FINAL = (ev.LlmDone, ev.LlmError, ev.TtsDone, ev.TtsError, ev.ToolResult)
NEW = 1 << 40  # rank of an event with no logged counterpart: after the logged ones at the same instant


@dataclass
class WhatIfResult:
    flow: Flow
    log: list[ev.Event]
    notes: list[str] = field(default_factory=list)
    estimated: list[int] = field(default_factory=list)  # Speaks whose audio was (partly) estimated
    stopped: str | None = None  # why the what-if stopped before the call's end
    stopped_at: int | None = None


@dataclass(frozen=True)
class _Need:
    """A pending stop: the log has no answer for ``effect``."""

    effect: ev.Effect
    why: str


class _Logged:
    """The original log, indexed for matching new effects to logged ones."""

    def __init__(self, log: list[ev.Event]) -> None:
        self.by_seq = {e.seq: e for e in log}
        self.answers: dict[int, list[ev.Input]] = {}
        self.effects: dict[type, list[ev.Effect]] = {}
        self.cancelled_at: dict[int, int] = {}
        self.caller: list[ev.Input] = []
        agent_ended = False
        for e in log:
            if isinstance(e, ev.Effect):
                self.effects.setdefault(type(e), []).append(e)
                if isinstance(e, CANCELS) and e.cause is not None:
                    self.cancelled_at.setdefault(e.cause, e.t_ms)
                agent_ended |= isinstance(e, ev.Hangup | ev.Transfer)
            elif isinstance(e, CALLER_SIDE) and not (isinstance(e, ev.CallEnded) and agent_ended):
                self.caller.append(e)
            elif e.cause is not None:
                self.answers.setdefault(e.cause, []).append(e)
        self.used: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.end_ms = log[-1].t_ms if log else 0

    def known_until(self, seq: int) -> int:
        """Until when the log knows what answered this request: its cancel, else the end of the log."""
        return self.cancelled_at.get(seq, self.end_ms)

    def complete(self, seq: int) -> bool:
        return any(isinstance(a, FINAL) for a in self.answers.get(seq, []))

    def match(self, e: ev.Effect, same: Callable[[ev.Effect], bool], *, fallback: bool = True) -> ev.Effect | None:
        """The k-th logged effect of e's kind if it is the same request; else an unused one, else any."""
        kind = type(e)
        key = kind.__name__ + (f":{e.name}" if isinstance(e, ev.SetTimer) else "")
        k = self.counts[key]
        self.counts[key] += 1
        logged = [x for x in self.effects.get(kind, []) if not isinstance(e, ev.SetTimer) or x.name == e.name]
        if k < len(logged) and same(logged[k]) and logged[k].seq not in self.used:
            found: ev.Effect | None = logged[k]
        elif not fallback:
            found = None
        else:
            found = next((x for x in logged if x.seq not in self.used and same(x)), None) or next(
                (x for x in logged if same(x) and self.complete(x.seq)), None)
        if found is not None:
            self.used.add(found.seq)
        return found

    def offsets(self, kind: type, first: bool) -> list[int]:
        """Logged latencies of a kind of request: to its first answer, or between TTS chunks."""
        out = []
        for x in self.effects.get(kind, []):
            ans = self.answers.get(x.seq, [])
            if first and ans:
                out.append(ans[0].t_ms - x.t_ms)
            elif not first:
                audio = [a.t_ms for a in ans if isinstance(a, ev.TtsAudio)]
                out += [b - a for a, b in itertools.pairwise(audio)]
        return out


class WhatIf:
    def __init__(self, flow: Flow, log: list[ev.Event], *, call_id: str = "whatif") -> None:
        self.flow = flow
        self.logged = _Logged(log)
        self.machine = CallMachine(flow, call_id=call_id)
        self.result = WhatIfResult(flow=flow, log=[])
        self.world = World()
        chunks = Counter(a.duration_ms for x in self.logged.effects.get(ev.Speak, [])
                         for a in self.logged.answers.get(x.seq, []) if isinstance(a, ev.TtsAudio))
        self.chunk_ms = chunks.most_common(1)[0][0] if chunks else 200
        self.tts_first = int(statistics.median(self.logged.offsets(ev.Speak, True) or [100]))
        self.tts_gap = int(statistics.median(self.logged.offsets(ev.Speak, False) or [self.chunk_ms // 5]))

    def at(self, t_ms: int, event: ev.Input | None, rank: int = NEW, tag: int | None = None,
           note: _Need | ev.Speak | None = None) -> None:
        """``note``: a _Need stops the what-if there; a Speak marks audio estimated from its text."""
        self.world.at(t_ms, event, rank=rank, tag=tag, note=note)

    def run(self) -> WhatIfResult:
        for e in self.logged.caller:
            self.at(e.t_ms, replace(e, seq=0), rank=e.seq)
        limit = self.flow.turn_taking.max_call_ms + 60_000
        while not self.machine.view.ended and (p := self.world.next(limit)) is not None:
            if isinstance(p.note, _Need):
                self.stop(p.t_ms, p.note.effect, p.note.why)
                break
            if isinstance(p.note, ev.Speak) and p.note.seq not in self.result.estimated:
                self.estimated(p.note)
            stamped, effects = self.world.feed(self.machine, p)
            self.result.log.append(stamped)
            for x in effects:
                self.result.log.append(x)
                self.carry_out(x)
        if self.result.stopped is None:
            self.result.log += self.world.finish(self.machine, "whatif_end")
        return self.result

    # ---------------------------------------------------------------------------------- the world

    def carry_out(self, x: ev.Effect) -> None:
        if self.world.carry_out(x, self.rank(x)):
            return
        match x:
            case ev.StartLlm():
                logged = self.logged.match(x, lambda y: y.messages == x.messages)  # type: ignore[attr-defined]
                self.answer(x, logged, "an LLM answer")
            case ev.CallTool():
                logged = self.logged.match(x, lambda y: (y.name, y.arguments) == (x.name, x.arguments))  # type: ignore[attr-defined]
                self.answer(x, logged, "a tool result")
            case ev.Speak():
                logged = self.logged.match(x, lambda y: y.text == x.text)  # type: ignore[attr-defined]
                self.synthesize(x, logged)
            case _:
                pass

    def rank(self, x: ev.Effect) -> int:
        """Where the world's answer to a timer or a mark ranks at its instant: as the logged answer of the
        logged effect it matches (so ties keep the log's order), else after the logged ones."""
        match x:
            case ev.SetTimer():
                logged = self.logged.match(x, lambda y: y.at_ms - y.t_ms == x.at_ms - x.t_ms,  # type: ignore[attr-defined]
                                          fallback=False)
            case ev.SendMark():
                logged = self.logged.match(x, lambda y: True, fallback=False)
            case _:
                return NEW
        answer = next(iter(self.logged.answers.get(logged.seq, [])), None) if logged else None
        return answer.seq if answer else NEW

    def replay_answers(self, x: ev.Effect, logged: ev.Effect) -> list[ev.Input]:
        answers = self.logged.answers.get(logged.seq, [])
        for a in answers:
            self.at(x.t_ms + a.t_ms - logged.t_ms, replace(a, t_ms=0, seq=0, cause=x.seq), rank=a.seq, tag=x.seq)
        return answers

    def answer(self, x: ev.Effect, logged: ev.Effect | None, what: str) -> None:
        """Schedule the logged answers; where the log's answer stops short, schedule the stop instead."""
        if logged is not None:
            answers = self.replay_answers(x, logged)
            if self.logged.complete(logged.seq):
                return
            known = max([self.logged.known_until(logged.seq), *(a.t_ms for a in answers)])
            why = f"the logged request #{logged.seq} got no full answer in its {known - logged.t_ms} ms"
            self.at(x.t_ms + known - logged.t_ms, None, tag=x.seq,
                    note=_Need(x, f"needs {what} the log does not have ({why})"))
            return
        kind = type(x)
        n = len(self.logged.effects.get(kind, []))
        k = self.logged.counts[kind.__name__]
        noun = "LLM requests" if kind is ev.StartLlm else "tool calls"
        why = f"the log has only {n} {noun}" if k > n else f"request {k} matches none of the {n} logged " + (
            "requests: its messages differ" if kind is ev.StartLlm else "tool calls: its arguments differ")
        wait = min(self.logged.offsets(kind, True), default=0)  # the soonest it could have mattered
        self.at(x.t_ms + wait, None, tag=x.seq, note=_Need(x, f"needs {what} the log does not have ({why})"))

    def synthesize(self, x: ev.Speak, logged: ev.Effect | None) -> None:
        """Logged audio where the log has it; the rest estimated from the text."""
        t = x.t_ms + self.tts_first
        sent = 0
        if logged is not None:
            answers = self.replay_answers(x, logged)
            if self.logged.complete(logged.seq):
                return
            audio = [a for a in answers if isinstance(a, ev.TtsAudio)]
            sent = sum(a.duration_ms for a in audio)
            if audio:
                t = x.t_ms + audio[-1].t_ms - logged.t_ms + self.tts_gap
            t = max(t, x.t_ms + self.logged.known_until(logged.seq) - logged.t_ms)
        left = max(self.chunk_ms if not sent else 0, len(x.text) * MS_PER_CHAR - sent)
        while left > 0:
            chunk = min(self.chunk_ms, left)
            self.at(t, ev.TtsAudio(t_ms=0, cause=x.seq, duration_ms=chunk), tag=x.seq, note=x)
            left -= chunk
            t += self.tts_gap
        self.at(t, ev.TtsDone(t_ms=0, cause=x.seq), tag=x.seq, note=x)

    def estimated(self, x: ev.Speak) -> None:
        self.result.estimated.append(x.seq)
        self.result.notes.append(f"turn {self.turn_of(x)}: audio of {x.text[:50]!r} estimated from its text "
                                 f"({MS_PER_CHAR} ms a character): the log never synthesized all of it")

    def turn_of(self, x: ev.Effect) -> int:
        """The caller turn an effect belongs to: turns taken before it, plus the one a preemptive
        request is for."""
        taken = sum(1 for st in steps(self.flow, self.result.log) if st.event.seq < x.seq and takes_turn(st))
        return max(1, taken + (1 if isinstance(x, ev.StartLlm) and x.preemptive else 0))

    def stop(self, t_ms: int, x: ev.Effect, why: str) -> None:
        self.result.stopped = f"turn {self.turn_of(x)}: {why}"
        self.result.stopped_at = t_ms
        self.result.notes.append(f"{self.result.stopped}; the what-if stops at {t_ms / 1000:.2f}s")


def what_if(flow: Flow, log: list[ev.Event], *, call_id: str = "whatif") -> WhatIfResult:
    return WhatIf(flow, log, call_id=call_id).run()
