"""The original call and its what-if, side by side: turns, who spoke when, barge-ins, fillers, latency.

Turns are paired by number (turn 3 of the original beside turn 3 of the what-if). For each: when the
caller spoke, when the turn was taken, when the agent's audio played (and whether a barge-in cut it), and
voice to voice with its change. Both sides are replay/timeline.py timelines, so the numbers here are the
ones `--timeline`, `--html` and `engine stats` show for each side.
"""

from __future__ import annotations

from replay.timeline import Span, Timeline, sec, short
from replay.turns import Turn, percentile
from replay.whatif import WhatIfResult

COL = 58


def _spans(tl: Timeline, lane: str, lo: int, hi: int, by_end: bool = False) -> list[Span]:
    return [s for s in tl.spans if s.lane == lane and lo <= (s.end_ms if by_end else s.start_ms) < hi]


def _turn_lines(tl: Timeline, i: int, missing: str = "(no such turn)") -> list[str]:
    ts = tl.turns
    if i >= len(ts):
        return [missing]
    t: Turn = ts[i]
    prev = ts[i - 1].t_ms if i else 0
    nxt = ts[i + 1].t_ms if i + 1 < len(ts) else tl.duration_ms + 1
    caller = _spans(tl, "caller", prev, t.t_ms + 1, by_end=True)
    lines = [f'caller {short(t.caller, 44)!s}']
    if caller:
        lines.append("  spoke " + ", ".join(f"{sec(s.start_ms)}-{sec(s.end_ms)}" for s in caller))
    lines.append(f"  turn taken {sec(t.t_ms)}")
    for s in _spans(tl, "agent", t.t_ms, nxt):
        what = "cut off" if "cut" in s.css.split() else "heard"
        purpose = next((p for p in ("filler", "tool_message", "resume", "reprompt", "goodbye") if p in s.css), "")
        lines.append(f"  agent {sec(s.start_ms)}-{sec(s.end_ms)} {what}{f' ({purpose})' if purpose else ''}: "
                     f"{short(s.label, 26)}")
    barges = [b for b in tl.barge_ins if t.t_ms <= b < nxt]
    resumes = [b for b in tl.false_interruptions if t.t_ms <= b < nxt]
    fillers = [f for f in tl.fillers if t.t_ms <= f < nxt]
    flags = [*(f"barge-in {sec(b)}" for b in barges), *(f"resume {sec(r)}" for r in resumes),
             *(f"filler {sec(f)}" for f in fillers)]
    if flags:
        lines.append("  " + ", ".join(flags))
    lines.append(f"  voice to voice {'-' if t.voice_to_voice_ms is None else f'{t.voice_to_voice_ms} ms'}")
    return lines


def _delta(a: int | None, b: int | None) -> str:
    if a is None or b is None or a == b:
        return ""
    return f" ({'+' if b > a else ''}{b - a} ms)"


def _totals(tl: Timeline) -> dict[str, str]:
    v2v = tl.voice_to_voice()
    return {"turns": str(len(tl.turns)), "barge-ins": str(len(tl.barge_ins)),
            "false interruptions": str(len(tl.false_interruptions)), "fillers": str(len(tl.fillers)),
            "voice to voice p50": f"{percentile(v2v, 0.5)} ms" if v2v else "-",
            "voice to voice p90": f"{percentile(v2v, 0.9)} ms" if v2v else "-",
            "call length": sec(tl.duration_ms)}


def _length(tl: Timeline, result: WhatIfResult | None = None) -> str:
    if result is not None and result.stopped_at is not None:
        return f"stopped at {sec(result.stopped_at)}"
    return sec(tl.duration_ms)


def side_by_side(orig: Timeline, new: Timeline, result: WhatIfResult, changes: list[str]) -> list[str]:
    head = f"{'original':<{COL}} | what-if: {', '.join(changes) or 'no change'}"
    out = [head, "=" * len(head)]
    for i in range(max(len(orig.turns), len(new.turns))):
        stopped = f"(the what-if stopped at {sec(result.stopped_at)})" if result.stopped_at is not None else ""
        a, b = _turn_lines(orig, i), _turn_lines(new, i, stopped or "(no such turn)")
        ta = orig.turns[i] if i < len(orig.turns) else None
        tb = new.turns[i] if i < len(new.turns) else None
        changed = ta is None or tb is None or (ta.t_ms, ta.voice_to_voice_ms, ta.caller) != (
            tb.t_ms, tb.voice_to_voice_ms, tb.caller) or len(a) != len(b)
        out.append(f"turn {i + 1}" + ("" if changed else "  (unchanged)"))
        if tb is not None and ta is not None:
            b = [line + (_delta(ta.t_ms, tb.t_ms) if line.startswith("  turn taken") else "")
                 + (_delta(ta.voice_to_voice_ms, tb.voice_to_voice_ms) if line.startswith("  voice to voice") else "")
                 for line in b]
        for j in range(max(len(a), len(b))):
            left = a[j] if j < len(a) else ""
            right = b[j] if j < len(b) else ""
            out.append(f"  {left[:COL - 2]:<{COL - 2}} | {right}")
    out.append("-" * len(head))
    ta, tb = _totals(orig), _totals(new)
    tb["call length"] = _length(new, result)
    for key in ta:
        out.append(f"  {key + ' ' + ta[key]:<{COL - 2}} | {key} {tb[key]}")
    for note in result.notes:
        out.append(f"note: {note}")
    if result.stopped is None and not result.notes:
        out.append("note: every agent answer came from the log (nothing estimated)")
    return out
