"""A call's timeline: what happened when, lane by lane, read from its log by re-running the machine.

Rules:
- One model feeds every view: the text timeline (replay/textview.py), the HTML page (replay/html.py) and
  `engine stats` (replay/stats.py). So a number shown in one view is the number in the others.
- Turns and their latency parts are replay/turns.py's (latency is defined once, there).
- Agent speech is what the phone played: audio queues behind audio already sent (the phone model of
  sim/offline.py), a ClearPlayback cuts everything not played yet. So each Speak has a heard part and,
  after a barge-in, a cut-off part.
- Barge-ins and false interruptions are the machine's own transitions (``barge_in``, ``resume``),
  observed while re-running it, never guessed from effects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.flow import Flow
from engine.machine import AGENT_TABLE
from engine.states import BUSY, CallState
from replay.turns import Step, Turn, steps, takes_turn, turns

NO_WORDS = "(no words)"
#: trigger -> the agent state it leads to (each trigger of the agent's table has one destination)
DEST: dict[str, CallState] = {row["trigger"]: row["dest"] for row in AGENT_TABLE}
LANES = ("caller", "agent", "state", "llm", "tts", "tools", "fillers", "barge-ins", "timers")


@dataclass
class Span:
    lane: str
    start_ms: int
    end_ms: int
    label: str
    tip: str
    css: str = ""
    seq: int = 0
    open: bool = False  # never closed in the log: drawn up to the end of the call


@dataclass
class Point:
    lane: str
    t_ms: int
    label: str
    tip: str
    css: str = ""
    seq: int = 0


@dataclass
class Row:
    """One step worth a line in the text timeline (``turn`` set on a turn's header row)."""

    t_ms: int
    seq: int
    state: str = ""
    caller: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)
    turn: Turn | None = None
    barge_in: bool = False


@dataclass
class ToolCall:
    seq: int
    name: str
    arguments: str
    start_ms: int
    end_ms: int | None = None
    ok: bool | None = None
    error: str | None = None
    cancelled: bool = False
    body: str = ""

    @property
    def latency_ms(self) -> int | None:
        return None if self.end_ms is None or self.cancelled else self.end_ms - self.start_ms


@dataclass
class Timeline:
    call_id: str
    flow: str
    duration_ms: int
    spans: list[Span]
    points: list[Point]
    rows: list[Row]
    turns: list[Turn]
    barge_ins: list[int]  # when each was confirmed
    false_interruptions: list[int]  # when the unheard rest was resumed
    fillers: list[int]
    reprompts: list[int]
    tools: list[ToolCall]
    outcome: str | None = None
    engine_ms: dict[int, int] = field(default_factory=dict)  # turn index -> engine time, where measured

    def voice_to_voice(self) -> list[int]:
        return [t.voice_to_voice_ms for t in self.turns if t.voice_to_voice_ms is not None]


def short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tool_failure(error: str | None, body: str) -> str:
    """A failed tool result as one line: its code and the runner's detail (which names the URL)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"{error}: {detail}" if isinstance(detail, str) and detail else str(error)


def sec(t_ms: int) -> str:
    return f"{t_ms / 1000:.2f}s"


def _engine_ms(meta: dict[str, Any] | None, ts: list[Turn], steps: list[Step]) -> dict[int, int]:
    """Engine time per turn from the live runtime's per-input measure (meta ``engine_us``: input seq -> us),
    summed over the inputs from the turn's start to its first audio. Offline logs have none."""
    raw = (meta or {}).get("engine_us")
    if not isinstance(raw, dict) or not raw:
        return {}
    per_seq = {int(k): int(v) for k, v in raw.items()}
    out = {}
    for t in ts:
        if t.first_audio_ms is None:
            continue
        us = sum(per_seq.get(st.event.seq, 0) for st in steps if t.t_ms <= st.event.t_ms <= t.first_audio_ms)
        out[t.index] = round(us / 1000)
    return out


class _Builder:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.points: list[Point] = []
        self.rows: list[Row] = []
        self.speaks: dict[int, ev.Speak] = {}
        self.tts_of: dict[int, int] = {}  # TtsAudio seq -> Speak seq
        self.chunks: list[list[Any]] = []  # [speak seq, start, end, cut_at | None]
        self.play_end = 0
        self.open: dict[tuple[str, int], tuple[int, str, str, str]] = {}  # (lane, seq) -> start, label, tip, css
        self.speech_from: int | None = None
        self.speech_words: list[str] = []
        self.speech_interim = ""
        self.cand_from: int | None = None
        self.llm_text: dict[int, list[str]] = {}
        self.tts_first: dict[int, int] = {}
        self.tools: dict[int, ToolCall] = {}
        self.barge_ins: list[int] = []
        self.false_interruptions: list[int] = []
        self.fillers: list[int] = []
        self.reprompts: list[int] = []
        self.state_from: tuple[int, str] = (0, CallState.LISTENING)
        self.last_speech: Span | None = None

    # --------------------------------------------------------------------------------- spans

    def begin(self, lane: str, seq: int, t: int, label: str, tip: str, css: str = "") -> None:
        self.open[(lane, seq)] = (t, label, tip, css)

    def end(self, lane: str, seq: int | None, t: int, extra: str = "", css: str | None = None) -> bool:
        got = self.open.pop((lane, seq if seq is not None else -1), None)
        if got is None:
            return False
        start, label, tip, css0 = got
        self.spans.append(Span(lane, start, t, label, tip + extra, css0 if css is None else css, seq or 0))
        return True

    def close_all(self, t: int) -> None:
        for (lane, seq), (start, label, tip, css) in self.open.items():
            self.spans.append(Span(lane, start, max(t, start), label, tip + "\n(still open at the end of the log)",
                                   css + " open", seq, open=True))
        self.open.clear()

    # --------------------------------------------------------------------------------- the walk

    def run(self, steps: list[Step], ts: list[Turn]) -> None:
        pending_turns = list(ts)
        for st in steps:
            e = st.event
            row = Row(t_ms=e.t_ms, seq=e.seq)
            if takes_turn(st) and pending_turns:
                self.rows.append(Row(t_ms=e.t_ms, seq=e.seq, turn=pending_turns.pop(0)))
            self.on_input(e, st, row)
            for x in st.effects:
                self.on_effect(x, st, row)
            if "barge_in" in st.triggers:
                self.barge_in(e, row)
            if "resume" in st.triggers:
                self.false_interruptions.append(e.t_ms)
                self.points.append(Point("barge-ins", e.t_ms, "resume",
                                         "false interruption: no words came, the unheard rest is resumed",
                                         "resume", e.seq))
                row.effects.append("false interruption: resume")
            path = [st.before, *(DEST[t] for t in st.triggers if t in DEST)]  # the floor's rows aside
            if len(path) > 1:
                row.state = " → ".join(path)
                start, name = self.state_from
                if e.t_ms > start:
                    self.spans.append(Span("state", start, e.t_ms, name, f"{name}: {sec(start)} to {sec(e.t_ms)}",
                                           name))
                self.state_from = (e.t_ms, st.after)
            if row.caller or row.agent or row.effects or row.state:
                self.rows.append(row)

    def barge_in(self, e: ev.Input, row: Row) -> None:
        start = self.cand_from if self.cand_from is not None else e.t_ms
        why = f'words "{self.speech_interim or " ".join(self.speech_words)}"' if isinstance(e, ev.Transcript) \
            else f"{e.t_ms - start} ms of speech"
        tip = f"barge-in: caller started {sec(start)}, confirmed {sec(e.t_ms)} by {why}"
        self.spans.append(Span("barge-ins", start, e.t_ms, "barge-in", tip, "barge", e.seq))
        self.points.append(Point("barge-ins", e.t_ms, "✕", tip, "barge", e.seq))
        self.barge_ins.append(e.t_ms)
        row.barge_in = True
        row.effects.insert(0, "BARGE-IN")

    def on_input(self, e: ev.Input, st: Step, row: Row) -> None:
        t = e.t_ms
        match e:
            case ev.SpeechStarted():
                self.speech_from, self.speech_words, self.speech_interim = t, [], ""
                if st.before in BUSY:
                    self.cand_from = t
                row.caller.append("(starts speaking)")
            case ev.SpeechStopped():
                if self.speech_from is not None:
                    end = e.end_ms if e.end_ms is not None else t
                    words = " ".join(self.speech_words)
                    self.spans.append(Span("caller", self.speech_from, t, words or NO_WORDS,
                                           f"caller speech {sec(self.speech_from)} to {sec(t)} "
                                           f"(speech ended {sec(end)})", "speech", e.seq))
                    self.last_speech = self.spans[-1]
                self.speech_from = None
                row.caller.append("(stops)")
            case ev.Transcript(is_final=True):
                self.speech_words.append(e.text)
                self.points.append(Point("caller", t, "final", f'final transcript at {sec(t)}: "{e.text}"',
                                         "final", e.seq))
                if self.speech_from is None and self.last_speech is not None:
                    span = self.last_speech
                    span.label = e.text if span.label == NO_WORDS else f"{span.label} {e.text}"
                    span.tip += f'\nfinal: "{e.text}" at {sec(t)}'
                row.caller.append(f'"{e.text}"')
            case ev.Transcript():
                self.speech_interim = e.text
            case ev.Dtmf():
                self.points.append(Point("caller", t, e.digit, f"DTMF {e.digit} at {sec(t)}", "dtmf", e.seq))
                row.caller.append(f"DTMF {e.digit}")
            case ev.CallEnded():
                row.caller.append(f"call ended ({e.reason})")
            case ev.LlmToken() if e.cause is not None:
                if e.cause not in self.llm_text and (("llm", e.cause) in self.open):
                    row.effects.append(f"LLM #{e.cause} first token")
                self.llm_text.setdefault(e.cause, []).append(e.text)
            case ev.LlmToolCall():
                row.effects.append(f"LLM #{e.cause} calls {e.name}({short(e.arguments, 50)})")
                self.llm_text.setdefault(e.cause or 0, []).append(f"[{e.name}({e.arguments})]")
            case ev.LlmDone() | ev.LlmError():
                text = "".join(self.llm_text.get(e.cause or 0, []))
                bad = isinstance(e, ev.LlmError)
                extra = f"\n{'error: ' + e.message if bad else 'done'} at {sec(t)}\n{short(text, 300)}"
                if self.end("llm", e.cause, t, extra, "error" if bad else None):
                    row.effects.append(f"LLM #{e.cause} {'error' if bad else 'done'}")
            case ev.TtsAudio() if e.cause is not None:
                self.tts_of[e.seq] = e.cause
                if e.cause not in self.tts_first and ("tts", e.cause) in self.open:
                    self.tts_first[e.cause] = t
            case ev.TtsDone() | ev.TtsError():
                first, bad = self.tts_first.get(e.cause or 0), isinstance(e, ev.TtsError)
                extra = f"\nfirst byte {first - self.speaks[e.cause].t_ms} ms" if first and e.cause in self.speaks \
                    else ""
                self.end("tts", e.cause, t, f"{extra}\n{'error' if bad else 'done'} at {sec(t)}",
                         "error" if bad else None)
            case ev.ToolResult() if e.cause in self.tools:
                call = self.tools[e.cause]
                if call.end_ms is None:
                    call.end_ms, call.ok, call.error, call.body = t, e.ok, e.error, e.body
                    status = "ok" if e.ok else f"error {tool_failure(e.error, e.body)}"
                    body = short(e.body, 200) if e.ok else e.body  # an error in full: it says what to fix
                    self.end("tools", e.cause, t, f"\n{status} after {t - call.start_ms} ms\n{body}",
                             None if e.ok else "error")
                    row.effects.append(f"tool {e.name} → {status} ({t - call.start_ms} ms)")
            case ev.TimerFired() if e.cause is not None:
                if self.end("timers", e.cause, t, f"\nfired at {sec(t)}", "fired") and e.name != "max_call":
                    row.effects.append(f"timer {e.name} fired")
            case _:
                pass

    def on_effect(self, x: ev.Effect, st: Step, row: Row) -> None:
        t = x.t_ms
        match x:
            case ev.StartLlm():
                kind = "preemptive" if x.preemptive else "request"
                last_user = next((m.content for m in reversed(x.messages) if m.role in ("user", "tool")), "")
                self.begin("llm", x.seq, t, f"LLM #{x.seq}",
                           f"LLM #{x.seq} ({kind}) at {sec(t)}, {len(x.messages)} messages\n"
                           f"last: {short(last_user or '', 120)}", "preemptive" if x.preemptive else "")
                row.effects.append(f"LLM #{x.seq} started" + (" (preemptive)" if x.preemptive else ""))
            case ev.CancelLlm():
                if self.end("llm", x.cause, t, f"\ncancelled at {sec(t)}", "cancelled"):
                    row.effects.append(f"LLM #{x.cause} cancelled")
            case ev.Speak():
                self.speaks[x.seq] = x
                self.begin("tts", x.seq, t, f"TTS #{x.seq}",
                           f"TTS #{x.seq} ({x.purpose}) at {sec(t)}: {short(x.text, 120)}")
                tag = "" if x.purpose == "reply" else f"({x.purpose}) "
                row.agent.append(f'{tag}"{x.text}"')
                if x.purpose in ("filler", "tool_message"):
                    self.points.append(Point("fillers", t, x.text, f"{x.purpose} at {sec(t)}: {x.text}",
                                             x.purpose, x.seq))
                if x.purpose == "filler":
                    self.fillers.append(t)
                elif x.purpose == "reprompt":
                    self.reprompts.append(t)
            case ev.CancelTts():
                self.end("tts", x.cause, t, f"\ncancelled at {sec(t)}", "cancelled")
            case ev.SendAudio():
                speak = self.tts_of.get(x.cause or -1, -1)
                start = max(self.play_end, t)
                self.play_end = start + x.duration_ms
                self.chunks.append([speak, start, self.play_end, None])
            case ev.ClearPlayback():
                for c in self.chunks:
                    if c[2] > t and c[3] is None:
                        c[3] = t
                self.play_end = t
                row.effects.append("playback cleared")
            case ev.CallTool():
                self.tools[x.seq] = ToolCall(x.seq, x.name, x.arguments, t)
                self.begin("tools", x.seq, t, x.name, f"tool {x.name}({short(x.arguments, 120)}) at {sec(t)}")
                row.effects.append(f"tool {x.name}({short(x.arguments, 50)})")
            case ev.CancelTool():
                if x.cause in self.tools:
                    self.tools[x.cause].cancelled = True
                    self.tools[x.cause].end_ms = t
                if self.end("tools", x.cause, t, f"\ncancelled at {sec(t)}", "cancelled"):
                    row.effects.append(f"tool #{x.cause} cancelled")
            case ev.SetTimer():
                self.begin("timers", x.seq, t, x.name, f"timer {x.name}: set {sec(t)} for {sec(x.at_ms)}")
            case ev.CancelTimer():
                self.end("timers", x.cause, t, f"\ncancelled at {sec(t)}", "cancelled")
            case ev.Hangup():
                row.effects.append(f"hang up ({x.reason})")
            case ev.Transfer():
                row.effects.append(f"transfer to {x.to}")
            case ev.EnterNode():
                row.effects.append(f"node {x.node}")
                self.points.append(Point("state", t, x.node, f"entered node {x.node} at {sec(t)}", "node", x.seq))
            case _:
                pass

    def agent_spans(self) -> None:
        """One heard span per Speak (and a cut-off span where a clear stopped it)."""
        by_speak: dict[int, list[list[Any]]] = {}
        for c in self.chunks:
            by_speak.setdefault(c[0], []).append(c)
        for seq, cs in by_speak.items():
            s = self.speaks.get(seq)
            text, purpose = (s.text, s.purpose) if s else ("?", "reply")
            start, end = cs[0][1], cs[-1][2]
            cut = next((c[3] for c in cs if c[3] is not None), None)
            audio = sum(c[2] - c[1] for c in cs)
            heard_end = end if cut is None else max(start, min(cut, end))
            heard = heard_end - start
            tip = f"agent ({purpose}) #{seq}: {text}\nplays {sec(start)} to {sec(end)}, {audio} ms of audio"
            if cut is not None:
                tip += f"\ncut off at {sec(cut)}: heard {max(0, heard)} ms of {audio} ms"
            css = f"speak {purpose}"
            if heard_end > start:
                self.spans.append(Span("agent", start, heard_end, text, tip, css + " heard", seq))
            if cut is not None and end > heard_end:
                self.spans.append(Span("agent", heard_end, end, f"(cut) {text}", tip, css + " cut", seq))
            if purpose in ("filler", "tool_message"):
                self.spans.append(Span("fillers", start, heard_end if heard_end > start else end, text, tip,
                                       purpose, seq))


def build(flow: Flow, log: list[ev.Event], *, call_id: str = "call", outcome: str | None = None,
          meta: dict[str, Any] | None = None) -> Timeline:
    """The timeline of a logged call (its log must reproduce under ``flow`` for the states to be right)."""
    run = steps(flow, log, watch=True)
    ts = turns(flow, log)
    b = _Builder()
    b.run(run, ts)
    end = max((e.t_ms for e in log), default=0)
    b.agent_spans()
    end = max([end, *(s.end_ms for s in b.spans)])
    start, name = b.state_from
    b.spans.append(Span("state", start, max(end, start), name, f"{name}: from {sec(start)}", name))
    if b.speech_from is not None:
        b.spans.append(Span("caller", b.speech_from, end, " ".join(b.speech_words) or b.speech_interim or "…",
                            "caller still speaking at the end of the log", "speech open", open=True))
    b.close_all(end)
    b.spans.sort(key=lambda s: (LANES.index(s.lane), s.start_ms, s.seq))
    b.points.sort(key=lambda p: (LANES.index(p.lane), p.t_ms, p.seq))
    return Timeline(call_id=call_id, flow=flow.name, duration_ms=end, spans=b.spans, points=b.points,
                    rows=b.rows, turns=ts, barge_ins=b.barge_ins, false_interruptions=b.false_interruptions,
                    fillers=b.fillers, reprompts=b.reprompts, tools=list(b.tools.values()), outcome=outcome,
                    engine_ms=_engine_ms(meta, ts, run))
