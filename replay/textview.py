"""The text timeline (`engine replay CALL_ID --timeline`): one line per step worth reading, in columns.

Columns: time, state (the states the step went through), caller, agent, effects. A header line opens each
turn with its latency parts (replay/turns.py Turn.parts). Long text wraps inside its column; colour
(ANSI) only when asked, which the command does only for a terminal with NO_COLOR unset.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import TextIO

from replay.timeline import Row, Timeline, sec, tool_failure
from replay.turns import Segment, Turn, percentile

_W = {"time": 8, "state": 36, "caller": 32, "agent": 38}
_COLORS = {"caller": "36", "agent": "32", "state": "33", "turn": "1;35", "barge": "1;31", "dim": "2"}
#: Short names of Turn.parts() and Turn.waterfall() keys, in waterfall order.
PART_NAMES = {"stt_final_ms": "stt final", "endpointing_ms": "endpointing", "llm_tool_call_ms": "llm tool call",
              "tool_ms": "tool", "tool_wait_ms": "tool, until the delay message",
              "filler_wait_ms": "silence, until the filler", "llm_first_token_ms": "llm first token",
              "first_clause_ms": "first clause", "tts_first_byte_ms": "tts first byte", "send_ms": "to the phone",
              "engine_ms": "engine", "voice_to_voice_ms": "voice to voice"}


def use_color(stream: TextIO = sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def turn_parts(tl: Timeline, turn: Turn) -> dict[str, int | None]:
    """Turn.parts() with engine time where the log measured it (None otherwise), v2v last."""
    parts = turn.parts()
    v2v = parts.pop("voice_to_voice_ms")
    return {**parts, "engine_ms": tl.engine_ms.get(turn.index), "voice_to_voice_ms": v2v}


def _ms(v: int | None) -> str:
    return "-" if v is None else f"{v} ms"


def _sum(segments: list[Segment]) -> str:
    return " + ".join(f"{PART_NAMES[x.key]} {x.ms}" for x in segments)


def _tool_note(turn: Turn) -> str:
    """A tool turn's stages in full, since some run in parallel with the path (the LLM's tool call during
    endpointing, the tool while the delay message plays)."""
    parts = turn.parts()
    if "tool_ms" not in parts:
        return ""
    return f"llm tool call {_ms(parts['llm_tool_call_ms'])}, tool {_ms(parts['tool_ms'])}"


def turn_header(tl: Timeline, turn: Turn) -> str:
    """The turn's latency as the sum it is: voice to voice = each stage on the path to the first audio."""
    path = turn.waterfall()
    v2v = f"{_ms(turn.voice_to_voice_ms)}" + (f" = {_sum(path)}" if path else "")
    answer = turn.answer()
    if answer and turn.answer_audio_ms is not None and turn.speech_end_ms is not None:
        v2v += f"; the answer at {turn.answer_audio_ms - turn.speech_end_ms} ms = + {_sum(answer)}"
    engine = tl.engine_ms.get(turn.index)
    notes = [n for n in ("filler" if turn.filler else "", "barge-in" if turn.barge_in else "",
                         f"tools: {', '.join(turn.tools)}" if turn.tools else "", _tool_note(turn),
                         f"engine {engine} ms" if engine is not None else "") if n]
    head = f"── turn {turn.index} at {sec(turn.t_ms)} · voice to voice {v2v}"
    return head + (f" · {'; '.join(notes)}" if notes else "")


def render(tl: Timeline, *, color: bool = False) -> list[str]:
    def paint(text: str, what: str) -> str:
        return f"\x1b[{_COLORS[what]}m{text}\x1b[0m" if color and text.strip() else text

    lines = [f"call {tl.call_id} · flow {tl.flow} · {sec(tl.duration_ms)}"
             + (f" · outcome {tl.outcome}" if tl.outcome else ""),
             f"{'time':>{_W['time']}}  {'state':<{_W['state']}} {'caller':<{_W['caller']}} "
             f"{'agent':<{_W['agent']}} effects"]
    lines.append("─" * (len(lines[1]) + 20))
    for row in tl.rows:
        if row.turn is not None:
            lines.append(paint(turn_header(tl, row.turn), "turn"))
            continue
        lines.extend(_row_lines(row, paint))
    lines.append("─" * (len(lines[1]) + 20))
    lines.extend(summary(tl))
    return lines


def _row_lines(row: Row, paint) -> list[str]:  # type: ignore[no-untyped-def]
    cols = {
        "state": textwrap.wrap(row.state, _W["state"]) or [""],
        "caller": [w for c in row.caller for w in textwrap.wrap(c, _W["caller"])] or [""],
        "agent": [w for a in row.agent for w in textwrap.wrap(a, _W["agent"])] or [""],
        "effects": ["; ".join(row.effects)],
    }
    out = []
    for i in range(max(len(c) for c in cols.values())):
        def cell(name: str, width: int | None = None, i: int = i) -> str:
            text = cols[name][i] if i < len(cols[name]) else ""
            return text.ljust(width) if width else text

        t = sec(row.t_ms) if i == 0 else ""
        effects = cell("effects")
        out.append(f"{t:>{_W['time']}}  {paint(cell('state', _W['state']), 'state')} "
                   f"{paint(cell('caller', _W['caller']), 'caller')} {paint(cell('agent', _W['agent']), 'agent')} "
                   f"{paint(effects, 'barge' if row.barge_in else 'dim')}".rstrip())
    return out


def summary(tl: Timeline) -> list[str]:
    v2v = tl.voice_to_voice()
    pct = (f"p50 {percentile(v2v, 0.5)} ms, p90 {percentile(v2v, 0.9)} ms, p99 {percentile(v2v, 0.99)} ms"
           if v2v else "no turn with agent audio")
    tools = tl.tools
    lines = [f"turns {len(tl.turns)} · voice to voice {pct}",
             f"barge-ins {len(tl.barge_ins)} · false interruptions {len(tl.false_interruptions)} · "
             f"fillers {len(tl.fillers)} · reprompts {len(tl.reprompts)} · tool calls {len(tools)}"]
    for t in tools:
        status = "cancelled" if t.cancelled else "no result" if t.end_ms is None else \
            "ok" if t.ok else f"error {tool_failure(t.error, t.body)}"
        lines.append(f"  tool {t.name} at {sec(t.start_ms)}: {status}"
                     + (f" after {t.latency_ms} ms" if t.latency_ms is not None else ""))
    return lines
