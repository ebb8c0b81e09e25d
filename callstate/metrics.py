"""Prometheus metrics for `engine serve`, in the text exposition format (small enough to write here)."""

from __future__ import annotations

from collections import defaultdict, deque

from engine import events as ev
from logstore.writer import LogWriter
from replay.turns import TurnClock

__all__ = ["Metrics", "TurnClock"]  # TurnClock: voice to voice, defined once (replay/turns.py)

#: Voice-to-voice buckets (ms): dense around the 500 ms target and the ~700 ms talk-over point.
V2V_BUCKETS = (200, 300, 400, 450, 500, 600, 700, 800, 1000, 1500, 2000, 5000)
ENGINE_BUCKETS_US = (50, 100, 250, 500, 1000, 2000, 5000, 10000)


class Histogram:
    def __init__(self, buckets: tuple[int, ...]) -> None:
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0, 0

    def observe(self, value: int) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        inf = f'{name}_bucket{{le="+Inf"}} {self.count}'
        return [*out, inf, f"{name}_sum {self.sum}", f"{name}_count {self.count}"]


class Metrics:
    def __init__(self) -> None:
        self.active = 0
        self.calls: dict[str, int] = defaultdict(int)
        self.turns = 0
        self.barge_ins = 0
        self.provider_errors: dict[str, int] = defaultdict(int)
        self.refused: dict[str, int] = defaultdict(int)  # calls or connections turned away, by reason
        self.timeouts: dict[str, int] = defaultdict(int)  # peers cut for idling, by what they failed to send
        self.limits: dict[str, int] = defaultdict(int)  # per-call limits hit, by limit
        self.events = 0  # events the calls produced (each one is due in the log)
        self.loop_lag_ms: deque[float] = deque(maxlen=6000)  # the last 10 minutes, sampled every 100 ms
        self.v2v = Histogram(V2V_BUCKETS)
        self.engine_us = Histogram(ENGINE_BUCKETS_US)

    def observe_step(self, event: ev.Input, effects: list[ev.Effect], engine_us: int) -> None:
        self.engine_us.observe(engine_us)
        self.events += 1 + len(effects)
        for e in effects:
            if isinstance(e, ev.ClearPlayback):
                self.barge_ins += 1
        # a timeout is a provider that stopped answering: counted beside the peers cut for idling
        if isinstance(event, ev.LlmError):
            self.provider_errors["llm"] += 1
            if "timeout" in event.message:
                self.timeouts["llm"] += 1
        elif isinstance(event, ev.TtsError):
            self.provider_errors["tts"] += 1
        elif isinstance(event, ev.ToolResult):
            if not event.ok:
                self.provider_errors["tools"] += 1
            if event.error == "timeout":
                self.timeouts["tool"] += 1
        elif isinstance(event, ev.ProviderNotice) and event.what in ("error", "stt_dropped", "retry", "timeout"):
            self.provider_errors[event.provider] += 1
            if event.what == "timeout" and event.provider:
                self.timeouts[event.provider] += 1

    def render(self, writer: LogWriter | None = None) -> str:
        lines = [
            "# HELP callstate_active_calls Calls in progress.", "# TYPE callstate_active_calls gauge",
            f"callstate_active_calls {self.active}",
            "# HELP callstate_calls_total Calls ended, by outcome.", "# TYPE callstate_calls_total counter",
            *[f'callstate_calls_total{{outcome="{k}"}} {v}' for k, v in sorted(self.calls.items())],
            "# HELP callstate_turns_total Caller turns answered.", "# TYPE callstate_turns_total counter",
            f"callstate_turns_total {self.turns}",
            "# HELP callstate_barge_ins_total Confirmed barge-ins.", "# TYPE callstate_barge_ins_total counter",
            f"callstate_barge_ins_total {self.barge_ins}",
            "# HELP callstate_provider_errors_total Provider errors, by provider.",
            "# TYPE callstate_provider_errors_total counter",
            *[f'callstate_provider_errors_total{{provider="{k}"}} {v}'
              for k, v in sorted(self.provider_errors.items())],
            "# HELP callstate_voice_to_voice_ms Caller speech end to first agent audio.",
            "# TYPE callstate_voice_to_voice_ms histogram", *self.v2v.lines("callstate_voice_to_voice_ms"),
            "# HELP callstate_engine_us Time inside the engine per input (feed, log, dispatch).",
            "# TYPE callstate_engine_us histogram", *self.engine_us.lines("callstate_engine_us"),
            *_counter("callstate_refused_total", "Calls or connections refused, by reason.", "reason",
                      self.refused),
            *_counter("callstate_peer_timeouts_total", "Peers cut for idling, by what they did not send.",
                      "what", self.timeouts),
            *_counter("callstate_call_limits_total", "Per-call limits hit, by limit.", "limit", self.limits),
            "# HELP callstate_events_total Events the calls produced (inputs and effects), each due in the log.",
            "# TYPE callstate_events_total counter", f"callstate_events_total {self.events}",
            "# HELP callstate_loop_lag_ms Event loop lag over the last 10 minutes (sampled every 100 ms).",
            "# TYPE callstate_loop_lag_ms summary",
            *[f'callstate_loop_lag_ms{{quantile="{q}"}} {_quantile(self.loop_lag_ms, q):.1f}' for q in (0.5, 0.99, 1)],
        ]
        if writer is not None:
            st = writer.stats
            lines += [
                "# HELP callstate_log_queued_events Events waiting for the log writer.",
                "# TYPE callstate_log_queued_events gauge", f"callstate_log_queued_events {writer.pending_events}",
                "# HELP callstate_log_stalled_seconds How long the log writer has been waiting on the database.",
                "# TYPE callstate_log_stalled_seconds gauge", f"callstate_log_stalled_seconds {writer.stalled_s:.1f}",
                "# HELP callstate_log_events_written_total Events written to the log.",
                "# TYPE callstate_log_events_written_total counter",
                f"callstate_log_events_written_total {st.written_events}",
                "# HELP callstate_log_write_retries_total Log writes retried (database locked or full).",
                "# TYPE callstate_log_write_retries_total counter", f"callstate_log_write_retries_total {st.retries}",
                "# HELP callstate_log_events_lost_total Events the log could not take.",
                "# TYPE callstate_log_events_lost_total counter", f"callstate_log_events_lost_total {st.lost_events}",
            ]
        return "\n".join(lines) + "\n"


def _quantile(xs: deque[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _counter(name: str, help_: str, label: str, values: dict[str, int]) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} counter",
            *[f'{name}{{{label}="{k}"}} {v}' for k, v in sorted(values.items())]]
