"""Reproduce a logged call: feed its inputs to a fresh machine and compare every effect with the log.

A difference is a bug of the first rank: the report names the first diverging event, the input that
caused it, and the fields that differ.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from engine import codec
from engine import events as ev
from engine.flow import Flow
from engine.machine import CallMachine, EngineMisuse
from engine.states import CallState


@dataclass
class Divergence:
    seq: int
    after: ev.Input | None  # the input whose step diverged
    logged: ev.Event | None
    replayed: ev.Event | None
    note: str = ""

    def describe(self, call_id: str) -> str:
        lines = [f"call {call_id!r} diverged at seq {self.seq}"]
        if self.after is not None:
            lines[0] += f" (the step of input seq {self.after.seq} {_label(self.after)} at t={self.after.t_ms} ms)"
        if self.note:
            lines.append(f"  {self.note}")
        lines.append(f"  logged:   {_show(self.logged)}")
        lines.append(f"  replayed: {_show(self.replayed)}")
        if self.logged is not None and self.replayed is not None and type(self.logged) is type(self.replayed):
            a, b = codec.to_record(call_id, self.logged), codec.to_record(call_id, self.replayed)
            for key in ("t_ms", "cause"):
                if a[key] != b[key]:
                    lines.append(f"  {key}: {a[key]!r} != {b[key]!r}")
            for key in sorted(set(a["data"]) | set(b["data"])):
                if a["data"].get(key) != b["data"].get(key):
                    lines.append(f"  data.{key}: {_short(a['data'].get(key))} != {_short(b['data'].get(key))}")
        return "\n".join(lines)


@dataclass
class Reproduction:
    events: int
    divergence: Divergence | None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def as_logged(effect: ev.Effect, schema_version: int) -> ev.Effect:
    """An effect as a log of that schema version would hold it. Versions 1 and 2 had no CLOSING state: the
    last line of a call played in SPEAKING, and its Ignored effects named that state."""
    if schema_version < 3 and isinstance(effect, ev.Ignored) and effect.state == CallState.CLOSING:
        return dataclasses.replace(effect, state=CallState.SPEAKING.value)
    return effect


def reproduce(flow: Flow, log: list[ev.Event], *, call_id: str = "call",
              schema_version: int = ev.SCHEMA_VERSION) -> Reproduction:
    """Feed the logged inputs in order; every produced effect must equal the next logged effect (as a log
    of ``schema_version`` holds it: older logs still reproduce)."""
    machine = CallMachine(flow, call_id=call_id)
    i = 0
    while i < len(log):
        logged_input = log[i]
        if not isinstance(logged_input, ev.Input):
            return Reproduction(i, Divergence(logged_input.seq, None, logged_input, None,
                                              "the log has an effect no input caused"))
        try:
            stamped, effects = machine.step(logged_input)
        except EngineMisuse as exc:
            return Reproduction(i, Divergence(logged_input.seq, logged_input, logged_input, None, str(exc)))
        i += 1
        if stamped != logged_input:
            return Reproduction(i, Divergence(logged_input.seq, logged_input, logged_input, stamped,
                                              "the input was stamped differently"))
        for effect in (as_logged(x, schema_version) for x in effects):
            logged = log[i] if i < len(log) else None
            if logged != effect:
                return Reproduction(i, Divergence(effect.seq, stamped, logged, effect))
            i += 1
        if i < len(log) and isinstance(log[i], ev.Effect):
            return Reproduction(i, Divergence(log[i].seq, stamped, log[i], None,
                                              "the log has more effects for this input than the replay"))
    return Reproduction(len(log), None)


def _label(e: ev.Event) -> str:
    name = type(e).__name__
    extra = getattr(e, "name", None) or getattr(e, "text", None)
    return f"{name} {extra!r}" if isinstance(extra, str) and extra else name


def _show(e: ev.Event | None) -> str:
    if e is None:
        return "(nothing)"
    data = codec.to_record("", e)["data"]
    return f"seq {e.seq} t={e.t_ms} {type(e).__name__} {_short(data, 160)}"


def _short(value: object, limit: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
