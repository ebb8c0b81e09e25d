"""Plain-text views of a call for the terminal: the transcript with states, and the per-turn latencies."""

from __future__ import annotations

from engine import events as ev
from engine.flow import Flow
from replay.timeline import tool_failure
from replay.turns import Turn, percentile, steps, turns
from replay.words import plural


def step_lines(e: ev.Input, effects: list[ev.Effect], before: str, after: str, *,
               outcome: str | None = None) -> list[str]:
    """The transcript lines of one step of the machine: what the caller said, what the agent said and did.
    Used live (`engine demo` prints each step as it happens) and over a log (`transcript`)."""
    lines = []
    t = f"{e.t_ms / 1000:7.2f}s"
    state = f"[{after}]" if after != before else ""
    if isinstance(e, ev.Transcript) and e.is_final:
        lines.append(f"{t}  caller: {e.text} {state}".rstrip())
    elif isinstance(e, ev.Dtmf):
        lines.append(f"{t}  caller pressed {e.digit} {state}".rstrip())
    elif isinstance(e, ev.CallEnded):
        lines.append(f"{t}  call ended: {outcome}" if outcome else f"{t}  call ended ({e.reason})")
        state = ""
    for x in effects:
        if isinstance(x, ev.Speak):
            tag = "" if x.purpose == "reply" else f" ({x.purpose})"
            lines.append(f"{t}  agent{tag}: {x.text} {state}".rstrip())
            state = ""
        elif isinstance(x, ev.ClearPlayback):
            lines.append(f"{t}  -- barge-in: playback cleared {state}".rstrip())
            state = ""
        elif isinstance(x, ev.CallTool):
            lines.append(f"{t}  tool {x.name}({x.arguments})")
        elif isinstance(x, (ev.Hangup, ev.Transfer)):
            what = f"transfer to {x.to}" if isinstance(x, ev.Transfer) else f"hang up ({x.reason})"
            lines.append(f"{t}  agent: {what}")
        elif isinstance(x, ev.EnterNode):
            lines.append(f"{t}  -> node {x.node}")
    if isinstance(e, ev.ToolResult):
        result = f"ok: {e.body[:80]}" if e.ok else f"failed: {tool_failure(e.error, e.body)}"
        lines.append(f"{t}  tool {e.name} -> {result}")
    if state and not isinstance(e, ev.Transcript):
        lines.append(f"{t}  {state}")
    return lines


def transcript(flow: Flow, log: list[ev.Event], *, outcome: str | None = None) -> list[str]:
    """The whole call's transcript; ``outcome`` (as `engine calls` shows it) names how it ended."""
    return [line for st in steps(flow, log)
            for line in step_lines(st.event, st.effects, st.before, st.after, outcome=outcome)]


def _ms(v: int | None) -> str:
    return "-" if v is None else str(v)


def turn_table(ts: list[Turn]) -> list[str]:
    head = (f"{'turn':>4}  {'caller':<34} {'stt':>5} {'endpt':>5} {'tool':>5} {'llm':>5} {'clause':>6} "
            f"{'tts':>5} {'v2v ms':>7}  notes")
    lines = [head, "-" * len(head)]
    for t in ts:
        p = t.parts()
        first = t.first_audio_purpose
        notes = ", ".join(x for x in (
            "filler" if t.filler else "", "barge-in" if t.barge_in else "",
            f"tools: {', '.join(t.tools)}" if t.tools else "",
            {"tool_message": "v2v to the delay message", "filler": "v2v to the filler"}.get(first or "", "")) if x)
        caller = t.caller if len(t.caller) <= 34 else t.caller[:31] + "..."
        lines.append(f"{t.index:>4}  {caller:<34} {_ms(p['stt_final_ms']):>5} {_ms(p['endpointing_ms']):>5} "
                     f"{_ms(p.get('tool_ms')):>5} {_ms(p['llm_first_token_ms']):>5} {_ms(p['first_clause_ms']):>6} "
                     f"{_ms(p['tts_first_byte_ms']):>5} {_ms(t.voice_to_voice_ms):>7}  {notes}")
    v2v = [t.voice_to_voice_ms for t in ts if t.voice_to_voice_ms is not None]
    if v2v:
        lines.append(f"voice-to-voice: p50 {percentile(v2v, 0.5)} ms, p90 {percentile(v2v, 0.9)} ms, "
                     f"max {max(v2v)} ms over {plural(len(v2v), 'turn')}")
    return lines


__all__ = ["step_lines", "transcript", "turn_table", "turns"]
