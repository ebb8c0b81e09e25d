"""Drive a CallMachine with timed inputs and read its effects (h11's ConnectionPair, for calls)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from engine import events as ev
from engine.flow import Flow
from engine.machine import CallMachine

QUIET_FLOW = Flow(name="test", greeting=None, fillers=["One moment."], reprompts=["Are you still there?"])


def flow(**overrides: Any) -> Flow:
    """The quiet test flow (no greeting) with fields or turn_taking values replaced."""
    data = QUIET_FLOW.model_dump()
    tt = overrides.pop("turn_taking", {})
    for group, values in tt.items():
        data["turn_taking"][group] = {**data["turn_taking"][group], **values} if isinstance(values, dict) else values
    data.update(overrides)
    return Flow.model_validate(data)


class MachineDriver:
    def __init__(self, flow: Flow = QUIET_FLOW, *, seed: int = 0) -> None:
        self.m = CallMachine(flow)
        self.log: list[ev.Event] = []
        self.feed(ev.CallStarted(t_ms=0, seed=seed))

    @property
    def state(self) -> str:
        return self.m.view.state

    @property
    def llm(self) -> int | None:
        """The seq of the open StartLlm."""
        return self.m.view.open_llm

    def feed(self, event: ev.Input) -> list[ev.Effect]:
        stamped, effects = self.m.step(event)
        self.log.append(stamped)
        self.log.extend(effects)
        return effects

    def last(self, cls: type) -> Any:
        return next(e for e in reversed(self.log) if isinstance(e, cls))

    def all(self, cls: type) -> list[Any]:
        return [e for e in self.log if isinstance(e, cls)]

    def fire(self, name: str, t_ms: int | None = None) -> list[ev.Effect]:
        """Fire the pending timer `name` (at its own time unless t_ms is given)."""
        timer = next(e for e in reversed(self.log) if isinstance(e, ev.SetTimer) and e.name == name)
        return self.feed(timer.fired(t_ms=t_ms))

    def say(self, t_ms: int, text: str, *, dur_ms: int = 800, final_after_ms: int = 150) -> list[ev.Effect]:
        """The caller says `text` from t_ms: VAD start, VAD stop, then the final transcript."""
        self.feed(ev.SpeechStarted(t_ms=t_ms))
        self.feed(ev.SpeechStopped(t_ms=t_ms + dur_ms, end_ms=t_ms + dur_ms))
        return self.feed(ev.Transcript(t_ms=t_ms + dur_ms + final_after_ms, text=text, is_final=True,
                                       speech_final=True))

    def answer(self, t_ms: int, *tokens: str, done: bool = True) -> list[ev.Effect]:
        """The open LLM request streams `tokens` (one ms apart) and finishes."""
        start = self.m.view.open_llm
        assert start is not None, "no LLM request is open"
        out: list[ev.Effect] = []
        for i, tok in enumerate(tokens):
            out += self.feed(ev.LlmToken(t_ms=t_ms + i, cause=start, text=tok))
        if done:
            out += self.feed(ev.LlmDone(t_ms=t_ms + len(tokens), cause=start))
        return out

    def play(self, speak: ev.Speak, t_ms: int, *, chunks: int = 2, chunk_ms: int = 400) -> int:
        """Synthesize `speak` in chunks and echo every mark as the phone plays it; returns the end time."""
        t = t_ms
        for _ in range(chunks):
            self.feed(ev.TtsAudio(t_ms=t, cause=speak.seq, duration_ms=chunk_ms))
        self.feed(ev.TtsDone(t_ms=t, cause=speak.seq))
        for mark in [e for e in self.log if isinstance(e, ev.SendMark) and e.seq > speak.seq]:
            if self.m.view.mark_awaited(mark.name):
                t += chunk_ms
                self.feed(ev.PlaybackMark(t_ms=t, name=mark.name, cause=mark.seq))
        return t


def types(effects: list[ev.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


async def read_sse(resp: aiohttp.ClientResponse,
                   on_envelope: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """A call's event stream (`GET /calls/{id}/events`): (envelopes, SSE ids) until its `end` event;
    ``on_envelope`` runs after each one arrives."""
    envelopes: list[dict[str, Any]] = []
    ids: list[str] = []
    event, data, sid = "", "", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            sid = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "":
            if event == "end":
                return envelopes, ids
            envelopes.append(json.loads(data))
            ids.append(sid)
            if on_envelope is not None:
                on_envelope()
    raise AssertionError("the stream closed without an end event")
