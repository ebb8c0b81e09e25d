"""What-if replay: a logged call run again under other parameters or another flow, on a virtual clock.

Rules (design.md, Replay):
- The caller's side keeps its logged times: speech, transcripts, DTMF, a hang-up by the caller.
- Agent-side answers keep their logged latency from their cause and move with it: LLM output from its
  StartLlm, TTS audio from its Speak, a tool result from its CallTool. Timers fire at the new SetTimer's
  ``at_ms``; marks echo when the phone model (engine/offline.py's) has played the audio before them.
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

import heapq
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

CALLER_SIDE = (ev.CallStarted, ev.SpeechStarted, ev.SpeechStopped, ev.Transcript, ev.UtteranceEnd, ev.Dtmf,
               ev.ProviderNotice, ev.CallEnded)
ANSWERS: dict[type, tuple[type, ...]] = {
    ev.StartLlm: (ev.LlmToken, ev.LlmToolCall, ev.LlmDone, ev.LlmError),
    ev.Speak: (ev.TtsAudio, ev.TtsDone, ev.TtsError),
    ev.CallTool: (ev.ToolResult,),
}
FINAL = (ev.LlmDone, ev.LlmError, ev.TtsDone, ev.TtsError, ev.ToolResult)
CANCELS = (ev.CancelLlm, ev.CancelTts, ev.CancelTool, ev.CancelTimer)
NEW = 1 << 40  # rank of an event with no logged counterpart: after the logged ones at the same instant


@dataclass
class WhatIfResult:
    flow: Flow
    log: list[ev.Event]
    notes: list[str] = field(default_factory=list)
    estimated: list[int] = field(default_factory=list)  # Speaks whose audio was (partly) estimated
    stopped: str | None = None  # why the what-if stopped before the call's end
    stopped_at: int | None = None


@dataclass(order=True)
class _Pending:
    t_ms: int
    rank: int
    order: int
    event: ev.Input | None = field(compare=False)
    tag: int | None = field(compare=False, default=None)  # the new effect it answers (for cancellation)
    need: tuple[ev.Effect, str] | None = field(compare=False, default=None)  # the log has no answer
    estimate: ev.Speak | None = field(compare=False, default=None)  # audio made up from this Speak's text


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
        self.queue: list[_Pending] = []
        self.order = itertools.count()
        self.cancelled: set[int] = set()
        self.play_end = 0
        self.marks: list[tuple[int, ev.SendMark, int]] = []  # (echo time, mark, rank) pending on the phone
        chunks = Counter(a.duration_ms for x in self.logged.effects.get(ev.Speak, [])
                         for a in self.logged.answers.get(x.seq, []) if isinstance(a, ev.TtsAudio))
        self.chunk_ms = chunks.most_common(1)[0][0] if chunks else 200
        self.tts_first = int(statistics.median(self.logged.offsets(ev.Speak, True) or [100]))
        self.tts_gap = int(statistics.median(self.logged.offsets(ev.Speak, False) or [self.chunk_ms // 5]))

    def at(self, t_ms: int, event: ev.Input | None, rank: int = NEW, tag: int | None = None,
           need: tuple[ev.Effect, str] | None = None, estimate: ev.Speak | None = None) -> None:
        heapq.heappush(self.queue, _Pending(t_ms, rank, next(self.order), event, tag, need, estimate))

    def run(self) -> WhatIfResult:
        for e in self.logged.caller:
            self.at(e.t_ms, replace(e, seq=0), rank=e.seq)
        limit = self.flow.turn_taking.max_call_ms + 60_000
        while self.queue and self.machine.state != "ended":
            p = heapq.heappop(self.queue)
            if p.t_ms > limit:
                break
            if p.tag is not None and p.tag in self.cancelled:
                continue
            if p.need is not None:
                self.stop(p.t_ms, *p.need)
                break
            assert p.event is not None
            if p.estimate is not None and p.estimate.seq not in self.result.estimated:
                self.estimated(p.estimate)
            stamped, effects = self.machine.step(replace(p.event, t_ms=p.t_ms))
            self.result.log.append(stamped)
            for x in effects:
                self.result.log.append(x)
                self.carry_out(x)
        if self.machine.state != "ended" and self.result.stopped is None:
            stamped, effects = self.machine.step(ev.CallEnded(t_ms=self.machine.now, reason="whatif_end"))
            self.result.log += [stamped, *effects]
        return self.result

    # ---------------------------------------------------------------------------------- the world

    def carry_out(self, x: ev.Effect) -> None:
        t = x.t_ms
        match x:
            case ev.SetTimer():
                logged = self.logged.match(x, lambda y: y.at_ms - y.t_ms == x.at_ms - x.t_ms,  # type: ignore[attr-defined]
                                          fallback=False)
                fired = next((a for a in self.logged.answers.get(logged.seq, [])), None) if logged else None
                self.at(x.at_ms, x.fired(t_ms=0), rank=fired.seq if fired else NEW, tag=x.seq)
            case ev.CancelLlm() | ev.CancelTts() | ev.CancelTool() | ev.CancelTimer():
                if x.cause is not None:
                    self.cancelled.add(x.cause)
            case ev.StartLlm():
                logged = self.logged.match(x, lambda y: y.messages == x.messages)  # type: ignore[attr-defined]
                self.answer(x, logged, "an LLM answer")
            case ev.CallTool():
                logged = self.logged.match(x, lambda y: (y.name, y.arguments) == (x.name, x.arguments))  # type: ignore[attr-defined]
                self.answer(x, logged, "a tool result")
            case ev.Speak():
                logged = self.logged.match(x, lambda y: y.text == x.text)  # type: ignore[attr-defined]
                self.synthesize(x, logged)
            case ev.SendAudio():
                self.play_end = max(self.play_end, t) + x.duration_ms
            case ev.SendMark():
                logged = self.logged.match(x, lambda y: True, fallback=False)
                echo = next(iter(self.logged.answers.get(logged.seq, [])), None) if logged else None
                rank = echo.seq if echo else NEW
                self.marks = [m for m in self.marks if m[0] > t]
                self.marks.append((self.play_end, x, rank))
                self.at(self.play_end, ev.PlaybackMark(t_ms=0, name=x.name, cause=x.seq), rank=rank, tag=-x.seq)
            case ev.ClearPlayback():
                for echo_t, mark, rank in self.marks:
                    if echo_t > t:  # Twilio echoes every pending mark at once after a clear
                        self.cancelled.add(-mark.seq)
                        self.at(t, ev.PlaybackMark(t_ms=0, name=mark.name, cause=mark.seq), rank=rank)
                self.marks = []
                self.play_end = t
            case _:
                pass

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
            self.at(x.t_ms + known - logged.t_ms, None, tag=x.seq, need=(x, f"needs {what} the log does not have "
                                                                          f"({why})"))
            return
        kind = type(x)
        n = len(self.logged.effects.get(kind, []))
        k = self.logged.counts[kind.__name__]
        noun = "LLM requests" if kind is ev.StartLlm else "tool calls"
        why = f"the log has only {n} {noun}" if k > n else f"request {k} matches none of the {n} logged " + (
            "requests: its messages differ" if kind is ev.StartLlm else "tool calls: its arguments differ")
        wait = min(self.logged.offsets(kind, True), default=0)  # the soonest it could have mattered
        self.at(x.t_ms + wait, None, tag=x.seq, need=(x, f"needs {what} the log does not have ({why})"))

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
            self.at(t, ev.TtsAudio(t_ms=0, cause=x.seq, duration_ms=chunk), tag=x.seq, estimate=x)
            left -= chunk
            t += self.tts_gap
        self.at(t, ev.TtsDone(t_ms=0, cause=x.seq), tag=x.seq, estimate=x)

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
