"""`engine stats`: latency and turn-taking numbers over logged calls, each read from the call's timeline.

Rules:
- Per call, every number comes from replay/timeline.py's Timeline (the same one the text and HTML
  timelines show), so stats and timelines can't disagree.
- Percentiles are nearest rank (replay.turns.percentile): every reported value is a real turn's.
- Overall voice to voice is over all turns of all calls, not an average of per-call percentiles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from replay.timeline import Timeline
from replay.turns import percentile
from replay.words import plural, width


@dataclass
class ToolStat:
    name: str
    latency_ms: int | None  # CallTool -> ToolResult; None when cancelled or never answered
    ok: bool | None
    error: str | None
    cancelled: bool


@dataclass
class CallStats:
    call_id: str
    flow: str
    outcome: str | None
    duration_ms: int
    turns: int
    v2v: list[int]
    barge_ins: int
    false_interruptions: int
    fillers: int
    reprompts: int
    tools: list[ToolStat] = field(default_factory=list)
    error: str | None = None  # the call could not be read or replayed

    @property
    def v2v_p50(self) -> int | None:
        return percentile(self.v2v, 0.5)

    @property
    def v2v_p90(self) -> int | None:
        return percentile(self.v2v, 0.9)

    @property
    def v2v_p99(self) -> int | None:
        return percentile(self.v2v, 0.99)

    @property
    def tool_errors(self) -> int:
        return sum(1 for t in self.tools if t.ok is False)

    def as_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "flow": self.flow, "outcome": self.outcome,
                "duration_ms": self.duration_ms, "turns": self.turns, "voice_to_voice_ms": self.v2v,
                "v2v_p50_ms": self.v2v_p50, "v2v_p90_ms": self.v2v_p90, "v2v_p99_ms": self.v2v_p99,
                "barge_ins": self.barge_ins, "false_interruptions": self.false_interruptions,
                "fillers": self.fillers, "reprompts": self.reprompts,
                "tools": [t.__dict__ for t in self.tools], "error": self.error}


def call_stats(tl: Timeline) -> CallStats:
    return CallStats(
        call_id=tl.call_id, flow=tl.flow, outcome=tl.outcome, duration_ms=tl.duration_ms, turns=len(tl.turns),
        v2v=tl.voice_to_voice(), barge_ins=len(tl.barge_ins), false_interruptions=len(tl.false_interruptions),
        fillers=len(tl.fillers), reprompts=len(tl.reprompts),
        tools=[ToolStat(t.name, t.latency_ms, t.ok, t.error, t.cancelled) for t in tl.tools])


def failed_call(call_id: str, flow: str, outcome: str | None, error: str) -> CallStats:
    return CallStats(call_id, flow, outcome, 0, 0, [], 0, 0, 0, 0, error=error)


@dataclass
class Summary:
    calls: list[CallStats]

    @property
    def v2v(self) -> list[int]:
        return [v for c in self.calls for v in c.v2v]

    def tools(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.calls:
            for t in c.tools:
                d = out.setdefault(t.name, {"calls": 0, "latencies": [], "errors": Counter(), "cancelled": 0})
                d["calls"] += 1
                if t.latency_ms is not None:
                    d["latencies"].append(t.latency_ms)
                if t.ok is False:
                    d["errors"][t.error or "error"] += 1
                d["cancelled"] += t.cancelled
        return {name: {"calls": d["calls"], "p50_ms": percentile(d["latencies"], 0.5),
                       "p90_ms": percentile(d["latencies"], 0.9), "p99_ms": percentile(d["latencies"], 0.99),
                       "max_ms": max(d["latencies"], default=None), "errors": sum(d["errors"].values()),
                       "errors_by_kind": dict(sorted(d["errors"].items())), "cancelled": d["cancelled"]}
                for name, d in sorted(out.items())}

    def totals(self) -> dict[str, int]:
        ok = [c for c in self.calls if c.error is None]
        return {"calls": len(self.calls), "unreadable": len(self.calls) - len(ok), "turns": sum(c.turns for c in ok),
                "barge_ins": sum(c.barge_ins for c in ok),
                "false_interruptions": sum(c.false_interruptions for c in ok),
                "fillers": sum(c.fillers for c in ok), "reprompts": sum(c.reprompts for c in ok)}

    def outcomes(self) -> dict[str, int]:
        return dict(sorted(Counter(c.outcome or "open" for c in self.calls).items()))

    def as_json(self) -> dict[str, Any]:
        v2v = self.v2v
        return {"totals": self.totals(),
                "voice_to_voice_ms": {"turns": len(v2v), "p50": percentile(v2v, 0.5), "p90": percentile(v2v, 0.9),
                                      "p99": percentile(v2v, 0.99)},
                "tools": self.tools(), "outcomes": self.outcomes(), "calls": [c.as_json() for c in self.calls]}


def _ms(v: int | None) -> str:
    return "-" if v is None else str(v)


def render(summary: Summary) -> list[str]:
    s = summary.as_json()
    tot, v = s["totals"], s["voice_to_voice_ms"]
    lines = [f"{plural(tot['calls'], 'call')}, {plural(tot['turns'], 'turn')}" + (f" ({tot['unreadable']} unreadable)"
                                                                if tot["unreadable"] else ""),
             f"voice to voice: p50 {_ms(v['p50'])} ms, p90 {_ms(v['p90'])} ms, p99 {_ms(v['p99'])} ms "
             f"over {plural(v['turns'], 'turn')}",
             f"barge-ins {tot['barge_ins']} · false interruptions {tot['false_interruptions']} · "
             f"fillers {tot['fillers']} · reprompts {tot['reprompts']}",
             "outcomes: " + (", ".join(f"{k} {n}" for k, n in s["outcomes"].items()) or "-")]
    if s["tools"]:
        lines += ["", f"{'tool':<24} {'calls':>5} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} {'errors':>6}"
                      f" {'cancel':>6}"]
        for name, t in s["tools"].items():
            errs = f"{t['errors']}" + (f" ({', '.join(f'{k} {n}' for k, n in t['errors_by_kind'].items())})"
                                       if t["errors"] else "")
            lines.append(f"{name:<24} {t['calls']:>5} {_ms(t['p50_ms']):>6} {_ms(t['p90_ms']):>6} "
                         f"{_ms(t['p99_ms']):>6} {_ms(t['max_ms']):>6} {errs:>6} {t['cancelled']:>6}")
    cw = width("call", (c.call_id for c in summary.calls))
    lines += ["", f"{'call':<{cw}} {'outcome':<15} {'turns':>5} {'p50':>6} {'p90':>6} {'p99':>6} {'barge':>5} "
                  f"{'false':>5} {'fill':>4} {'repr':>4} {'tools':>5}"]
    for c in summary.calls:
        if c.error is not None:
            lines.append(f"{c.call_id:<{cw}} {c.outcome or 'open':<15} error: {c.error}")
            continue
        lines.append(f"{c.call_id:<{cw}} {c.outcome or 'open':<15} {c.turns:>5} {_ms(c.v2v_p50):>6} "
                     f"{_ms(c.v2v_p90):>6} {_ms(c.v2v_p99):>6} {c.barge_ins:>5} {c.false_interruptions:>5} "
                     f"{c.fillers:>4} {c.reprompts:>4} {len(c.tools):>5}")
    return lines
