"""One self-contained HTML page per call (`engine replay CALL_ID --html out.html`): no network, ever.

Rules:
- Everything is inline: CSS, a few lines of JS, SVG. The page reads well with scripts off: details are SVG
  ``<title>`` elements (native hover); the script only turns them into a faster tooltip and lets a turn
  scroll the swimlanes to its moment.
- Swimlanes share one time axis; overlapping spans of a lane stack in sub-rows.
- Each turn is ``<section class="turn" id="turn-N" data-turn="N">`` with its numbers as data attributes, so
  tests (and scripts) can count turns and read latencies without parsing text. The summary numbers are
  replay/stats.py's, computed from the same timeline.
"""

from __future__ import annotations

from html import escape

from replay.stats import CallStats, call_stats
from replay.textview import PART_NAMES, turn_parts
from replay.timeline import LANES, Point, Span, Timeline, sec
from replay.turns import Turn

LABEL_W = 110
ROW_H = 20
LANE_GAP = 6
AXIS_H = 26
CHAR_W = 6.4  # px per character of the 11px label font, to fit labels in their boxes

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header,main{padding:12px 20px}header h1{font-size:20px;margin:0 0 6px}
dl.summary{display:flex;flex-wrap:wrap;gap:6px 18px;margin:0}dl.summary div{display:flex;gap:6px}
dl.summary dt{color:#5b6475}dl.summary dd{margin:0;font-weight:600}
.scroll{overflow-x:auto;background:#fff;border:1px solid #d8dce3;border-radius:6px}
svg text{font-size:11px;fill:#1d2330;pointer-events:none}svg .lane-name{font-weight:600;font-size:12px}
svg .tick{stroke:#e3e6eb}svg .axis text{fill:#5b6475}.lane-bg{fill:#fafbfc}.lane-bg.odd{fill:#f1f3f6}
.sp rect{stroke:#fff;stroke-width:.5}.sp:hover rect{stroke:#1d2330;stroke-width:1.5}
.speech rect{fill:#7cb9e8}.final circle,.dtmf circle{fill:#1f5f99}
.heard rect{fill:#5cb87a}.greeting.heard rect,.reprompt.heard rect,.goodbye.heard rect{fill:#3ea6a0}
.filler.heard rect,.tool_message.heard rect{fill:#b08be0}.resume.heard rect{fill:#e0b04c}
.cut rect{fill:url(#hatch);stroke:#d9534f}
.listening rect{fill:#d5d9e0}.thinking rect{fill:#f2c14e}.speaking rect{fill:#5cb87a}
.interrupted rect{fill:#d9534f}.tool_pending rect{fill:#b08be0}.ended rect{fill:#59606b}
.sp.lane-llm rect{fill:#6c8ef5}.sp.lane-llm.preemptive rect{fill:#a9bcf9}.sp.lane-tts rect{fill:#f0a35e}
.sp.lane-tools rect{fill:#9c6ade}.sp.lane-fillers rect{fill:#c9b2ee}.sp.lane-timers rect{fill:#d3d7de}
.sp.lane-timers.fired rect{fill:#aab1bd}.cancelled rect{fill:url(#hatch-grey)}.error rect{fill:#d9534f}
.barge rect{fill:#f4b4b2}.barge path{fill:#c9302c}.resume path{fill:#e0a030}.node path{fill:#59606b}
.open rect{opacity:.5}.turnline{stroke:#c9302c;stroke-dasharray:3 3}.turnlabel{fill:#c9302c;font-weight:600}
.turnlabel-link{cursor:pointer;pointer-events:all}
section.turn{background:#fff;border:1px solid #d8dce3;border-radius:6px;margin:12px 0;padding:10px 14px}
section.turn h3{margin:0 0 6px;font-size:15px}section.turn.flash{outline:2px solid #c9302c}
.who{color:#5b6475;display:inline-block;width:56px}.notes span{background:#eef0f4;border-radius:4px;padding:1px 6px;
margin-right:6px;font-size:12px}.notes .barge{background:#f9d6d5}
table.parts{border-collapse:collapse;font-size:12px}
.turnbody{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}table.parts td{padding:1px 8px 1px 0}
table.parts td.num{text-align:right;font-variant-numeric:tabular-nums}
.wf .bar{fill:#6c8ef5}.wf .bar.v2v{fill:#1d2330}.wf .bar.stt{fill:#7cb9e8}.wf .bar.endpointing{fill:#f2c14e}
.wf .bar.tts{fill:#f0a35e}.wf .bar.engine{fill:#d9534f}.wf .bar.tool{fill:#b08be0}.wf .bar.after{opacity:.45}
#tip{position:fixed;z-index:9;max-width:420px;white-space:pre-line;background:#1d2330;color:#fff;font-size:12px;
padding:6px 8px;border-radius:4px;pointer-events:none}
"""

# The tooltip replaces native <title> hovers (slow, unstyled); with scripts off the titles still work.
JS = """
(function(){
  var tip=document.getElementById('tip');
  document.querySelectorAll('svg [data-tip]').forEach(function(g){
    var t=g.querySelector(':scope>title'); if(t){t.remove();}
    g.addEventListener('mousemove',function(ev){tip.textContent=g.getAttribute('data-tip');tip.hidden=false;
      tip.style.left=Math.min(ev.clientX+12,window.innerWidth-430)+'px';tip.style.top=(ev.clientY+14)+'px';});
    g.addEventListener('mouseleave',function(){tip.hidden=true;});
  });
  var scroll=document.querySelector('.scroll');
  document.querySelectorAll('[data-goto-ms]').forEach(function(a){
    a.addEventListener('click',function(ev){
      var x=parseFloat(document.querySelector('svg.swimlanes').getAttribute('data-px-per-ms'))*
        parseInt(a.getAttribute('data-goto-ms'),10);
      scroll.scrollTo({left:Math.max(0,x-200),behavior:'smooth'});
      var sec=document.getElementById('turn-'+a.getAttribute('data-turn'));
      if(sec&&a.tagName!=='A'){sec.scrollIntoView({behavior:'smooth',block:'nearest'});}
      if(sec){sec.classList.add('flash');setTimeout(function(){sec.classList.remove('flash');},1200);}
    });
  });
})();
"""


def _a(value: object) -> str:
    return escape(str(value), quote=True)


def _pack(items: list[tuple[int, int]]) -> list[int]:
    """Sub-row of each interval (greedy, in start order) so that overlapping intervals never share a row."""
    ends: list[int] = []
    rows = []
    for start, end in items:
        for i, e in enumerate(ends):
            if e <= start:
                ends[i] = max(end, start + 1)
                rows.append(i)
                break
        else:
            ends.append(max(end, start + 1))
            rows.append(len(ends) - 1)
    return rows


class _Lanes:
    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        self.px = max(0.04, min(0.2, 1400 / max(tl.duration_ms, 1)))  # px per ms
        self.width = int(LABEL_W + tl.duration_ms * self.px + 40)

    def x(self, t_ms: int) -> float:
        return round(LABEL_W + t_ms * self.px, 1)

    def svg(self) -> str:
        tl, out, y = self.tl, [], AXIS_H
        for n, lane in enumerate(LANES):
            spans = [s for s in tl.spans if s.lane == lane]
            points = [p for p in tl.points if p.lane == lane]
            rows = _pack([(s.start_ms, s.end_ms) for s in spans])
            height = (max(rows, default=0) + 1) * ROW_H
            out.append(f'<g class="lane" data-lane="{lane}">'
                       f'<rect class="lane-bg{" odd" if n % 2 else ""}" x="0" y="{y}" width="{self.width}" '
                       f'height="{height + LANE_GAP}"/>'
                       f'<text class="lane-name" x="8" y="{y + 14}">{escape(lane)}</text>')
            out += [self.span(s, y + r * ROW_H) for s, r in zip(spans, rows, strict=True)]
            out += [self.point(p, y) for p in points]
            out.append("</g>")
            y += height + LANE_GAP
        height = y + 4
        grid = self.axis(height)
        marks = self.turn_marks(height)
        defs = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
                'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f9d6d5"/>'
                '<line x1="0" y1="0" x2="0" y2="6" stroke="#d9534f" stroke-width="2"/></pattern>'
                '<pattern id="hatch-grey" width="6" height="6" patternUnits="userSpaceOnUse" '
                'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eceef2"/>'
                '<line x1="0" y1="0" x2="0" y2="6" stroke="#aab1bd" stroke-width="2"/></pattern></defs>')
        return (f'<svg class="swimlanes" xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{height}" viewBox="0 0 {self.width} {height}" data-px-per-ms="{self.px}" '
                f'role="img" aria-label="swimlanes of call {_a(tl.call_id)}">'
                f'{defs}{grid}{"".join(out)}{marks}</svg>')

    def span(self, s: Span, y: int) -> str:
        x0, x1 = self.x(s.start_ms), self.x(s.end_ms)
        w = max(2.0, x1 - x0)
        fits = int((w - 6) / CHAR_W)
        label = s.label if len(s.label) <= fits else (s.label[: fits - 1] + "…" if fits > 3 else "")
        return (f'<g class="sp lane-{s.lane} {_a(s.css)}" data-tip="{_a(s.tip)}" data-seq="{s.seq}" '
                f'data-start-ms="{s.start_ms}" data-end-ms="{s.end_ms}"><title>{escape(s.tip)}</title>'
                f'<rect x="{x0}" y="{y + 2}" width="{round(w, 1)}" height="{ROW_H - 4}" rx="3"/>'
                + (f'<text x="{x0 + 3}" y="{y + ROW_H - 6}">{escape(label)}</text>' if label else "")
                + "</g>")

    def point(self, p: Point, y: int) -> str:
        x = self.x(p.t_ms)
        if p.lane == "caller":  # transcripts and keys: a dot on the caller's speech
            shape = f'<circle cx="{x}" cy="{y + ROW_H - 3}" r="3"/>'
        else:
            shape = f'<path d="M{x - 5},{y + 1} L{x + 5},{y + 1} L{x},{y + 9} Z"/>'
        return (f'<g class="pt lane-{p.lane} {_a(p.css)}" data-tip="{_a(p.tip)}" data-t-ms="{p.t_ms}">'
                f'<title>{escape(p.tip)}</title>{shape}</g>')

    def axis(self, height: int) -> str:
        dur = self.tl.duration_ms
        step = next(s for s in (500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 10**9) if s * self.px >= 60)
        ticks = []
        for t in range(0, dur + step, step):
            x = self.x(t)
            ticks.append(f'<line class="tick" x1="{x}" y1="{AXIS_H - 6}" x2="{x}" y2="{height}"/>'
                         f'<text x="{x + 2}" y="14">{t / 1000:g}s</text>')
        return f'<g class="axis">{"".join(ticks)}</g>'

    def turn_marks(self, height: int) -> str:
        out = []
        for t in self.tl.turns:
            x = self.x(t.t_ms)
            out.append(f'<g class="turnmark" data-turn="{t.index}"><line class="turnline" x1="{x}" y1="{AXIS_H - 4}" '
                       f'x2="{x}" y2="{height}"/><text class="turnlabel turnlabel-link" x="{x + 2}" y="{AXIS_H - 2}" '
                       f'data-goto-ms="{t.t_ms}" data-turn="{t.index}">T{t.index}</text></g>')
        return "".join(out)


def _waterfall(tl: Timeline, t: Turn) -> str:
    """Bars on the turn's own axis: the path from the end of the caller's speech to the first agent audio,
    each stage starting where the one before ended, so they sum to voice to voice; a tool turn adds the
    tool's whole run, and, when a delay message came first, the path on to the answer."""
    path, answer = t.waterfall(), t.answer()
    if not path:
        return '<p class="nowf">no latency to show (no agent audio answered this turn)</p>'
    css = {"stt_final_ms": "stt", "endpointing_ms": "endpointing", "tts_first_byte_ms": "tts", "send_ms": "engine",
           "tool_ms": "tool", "tool_wait_ms": "tool", "llm_tool_call_ms": "llm", "filler_wait_ms": "endpointing"}
    bars: list[tuple[str, str, str, int, int]] = [(PART_NAMES[x.key], x.key, css.get(x.key, "llm"), x.start_ms,
                                                   x.end_ms) for x in path]
    bars.append(("voice to voice", "voice_to_voice_ms", "v2v", path[0].start_ms, path[-1].end_ms))
    if t.llm_start_ms is not None and t.llm_tool_call_ms is not None:  # in parallel with endpointing, often
        bars.append(("llm, to the tool call", "llm_tool_call_run_ms", "llm", t.llm_start_ms, t.llm_tool_call_ms))
    if t.tool_call_ms is not None and t.tool_result_ms is not None:
        bars.append(("tool, whole run", "tool_run_ms", "tool", t.tool_call_ms, t.tool_result_ms))
    if answer:
        bars += [(f"then {PART_NAMES[x.key]}", x.key, css.get(x.key, "llm") + " after", x.start_ms, x.end_ms)
                 for x in answer]
        bars.append(("to the answer", "answer_ms", "v2v after", path[0].start_ms, answer[-1].end_ms))
    lo, hi = min(b[3] for b in bars), max(b[4] for b in bars)
    scale = 420 / max(hi - lo, 1)
    rows = []
    for i, (name, key, cls, a, b) in enumerate(bars):
        y = i * 18
        rows.append(f'<text x="0" y="{y + 12}">{escape(name)}</text>')
        x = 150 + (a - lo) * scale
        w = max(1.5, (b - a) * scale)
        tip = f"{name}: {b - a} ms ({sec(a)} to {sec(b)})"
        rows.append(f'<g class="wfbar" data-part="{key}" data-ms="{b - a}" data-tip="{_a(tip)}">'
                    f'<title>{escape(tip)}</title><rect class="bar {cls}" x="{round(x, 1)}" y="{y + 3}" '
                    f'width="{round(w, 1)}" height="12"/></g><text x="{round(x + w + 4, 1)}" y="{y + 12}">'
                    f'{b - a} ms</text>')
    return (f'<svg class="wf" xmlns="http://www.w3.org/2000/svg" width="640" height="{len(bars) * 18 + 4}" '
            f'role="img" aria-label="latency waterfall of turn {t.index}">{"".join(rows)}</svg>')


def _turn(tl: Timeline, t: Turn) -> str:
    parts = turn_parts(tl, t)
    attrs = " ".join(f'data-{k.removesuffix("_ms").replace("_", "-")}-ms="{"" if v is None else v}"'
                     for k, v in parts.items())
    notes = "".join(f'<span class="{c}">{escape(n)}</span>' for c, n in (
        ("barge", "barge-in") if t.barge_in else ("", ""), ("filler", "filler") if t.filler else ("", ""),
        ("tools", "tools: " + ", ".join(t.tools)) if t.tools else ("", "")) if n)
    table = "".join(f'<tr><td>{PART_NAMES[k]}</td><td class="num part" data-part="{k}">'
                    f'{"-" if v is None else f"{v} ms"}</td></tr>' for k, v in parts.items())
    agent = " · ".join(escape(a) for a in t.agent) or "<em>(nothing)</em>"
    return (f'<section class="turn" id="turn-{t.index}" data-turn="{t.index}" data-t-ms="{t.t_ms}" {attrs}>'
            f'<h3>Turn {t.index} <small>at {sec(t.t_ms)}</small> · voice to voice '
            f'<span class="v2v">{"-" if t.voice_to_voice_ms is None else f"{t.voice_to_voice_ms} ms"}</span> '
            f'<a href="#lanes" data-goto-ms="{t.t_ms}" data-turn="{t.index}">show in timeline</a></h3>'
            f'<p><span class="who">caller</span>{escape(t.caller) or "<em>(no words)</em>"}</p>'
            f'<p><span class="who">agent</span>{agent}</p>'
            f'<p class="notes">{notes}</p><div class="turnbody">{_waterfall(tl, t)}'
            f'<table class="parts">{table}</table></div></section>')


def _summary(s: CallStats) -> str:
    items = [("turns", s.turns, "turns"), ("voice to voice p50", s.v2v_p50, "v2v-p50-ms"),
             ("p90", s.v2v_p90, "v2v-p90-ms"), ("p99", s.v2v_p99, "v2v-p99-ms"),
             ("barge-ins", s.barge_ins, "barge-ins"), ("false interruptions", s.false_interruptions,
                                                       "false-interruptions"),
             ("fillers", s.fillers, "fillers"), ("reprompts", s.reprompts, "reprompts"),
             ("tool calls", len(s.tools), "tool-calls"), ("tool errors", s.tool_errors, "tool-errors")]
    attrs = " ".join(f'data-{key}="{"" if v is None else v}"' for _, v, key in items)
    body = "".join(f"<div><dt>{escape(n)}</dt><dd>{'-' if v is None else v}{' ms' if 'ms' in k and v else ''}"
                   f"</dd></div>" for n, v, k in items)
    return f'<dl class="summary" {attrs}>{body}</dl>'


def render(tl: Timeline) -> str:
    stats = call_stats(tl)
    meta = f"flow {tl.flow} · {sec(tl.duration_ms)}" + (f" · outcome {tl.outcome}" if tl.outcome else "")
    turns = "".join(_turn(tl, t) for t in tl.turns) or "<p>No turns: the caller never got an answer.</p>"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>call {escape(tl.call_id)}: timeline</title><style>{CSS}</style></head><body>"
            f'<header><h1>Call {escape(tl.call_id)}</h1><p>{escape(meta)}</p>{_summary(stats)}</header>'
            f'<main><h2 id="lanes">Timeline</h2><div class="scroll">{_Lanes(tl).svg()}</div>'
            f'<h2>Turns</h2><div class="turns" data-turn-count="{len(tl.turns)}">{turns}</div></main>'
            f'<div id="tip" hidden></div><script>{JS}</script></body></html>\n')
