"""The `local` providers: offline STT, LLM and TTS, so `engine serve` and `engine demo` run with no keys.

- STT: the nth caller utterance, as cut by a VAD from the real inbound audio, is transcribed as the nth
  line of a script (the stream's `script` parameter, a JSON list or lines split by "|", else the flow's
  local.caller). An interim with the first words comes early in the utterance, as a streaming STT's would,
  so barge-in by words works. Bursts shorter than `min_utterance_ms` (a cough) get no transcript.
- LLM: replies and tool calls from the flow's local.replies (adapters/scripted.py picks them from the
  request alone, so preemptive restarts and replays get the same answer).
- TTS: adapters/speech.py (espeak-ng where installed, else a speech-like signal of realistic length).

The offline driver (sim/offline.py) answers from the same adapters/scripted.py, in virtual time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from adapters.scripted import reply_tokens, reply_tool_call, scripted_reply
from engine import events as ev

Emit = Callable[[ev.Input], None]


class _Vad(Protocol):
    @property
    def in_speech(self) -> bool: ...
    def feed(self, frame: bytes, t_ms: int) -> str | None: ...
    def speech_ms(self) -> int: ...


def script_lines(params: Mapping[str, str], default: list[str]) -> list[str]:
    raw = params.get("script")
    if not raw:
        return list(default)
    try:
        lines = json.loads(raw)
        if isinstance(lines, list) and all(isinstance(x, str) for x in lines):
            return lines
    except json.JSONDecodeError:
        pass
    return [line.strip() for line in raw.split("|") if line.strip()]


class LocalStt:
    def __init__(self, lines: list[str], *, vad: Callable[[], _Vad], final_ms: int = 150,
                 interim_ms: int = 300, min_utterance_ms: int = 250) -> None:
        self.lines, self.vad, self.final_ms = lines, vad, final_ms
        self.interim_ms, self.min_utterance_ms = interim_ms, min_utterance_ms

    def session(self, *, params: Mapping[str, str] | None = None, **_: Any) -> LocalSttSession:
        return LocalSttSession(self, script_lines(params or {}, self.lines))


class LocalSttSession:
    def __init__(self, cfg: LocalStt, lines: list[str]) -> None:
        self.cfg, self.lines = cfg, lines
        self.vad = cfg.vad()
        self.next_line = 0
        self.frames = 0
        self.speech_frames = 0
        self.interim_sent = False
        self.transcribed = False  # this utterance's final was already sent (on Finalize)
        self.emit: Emit | None = None
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self, emit: Emit) -> None:
        self.emit = emit

    async def send_audio(self, mulaw: bytes) -> None:
        change = self.vad.feed(mulaw, self.frames * ev.FRAME_MS)
        self.frames += 1
        if change == "start":
            self.speech_frames, self.interim_sent, self.transcribed = 0, False, False
        if self.vad.in_speech:
            self.speech_frames += 1
            if (not self.interim_sent and self.speech_frames * ev.FRAME_MS >= self.cfg.interim_ms
                    and self.next_line < len(self.lines)):
                self.interim_sent = True
                first = " ".join(self.lines[self.next_line].split()[:2])
                self._emit(ev.Transcript(t_ms=0, text=first, is_final=False))
        if change == "stop":
            self._transcribe()

    def _transcribe(self) -> None:
        long_enough = self.vad.speech_ms() >= self.cfg.min_utterance_ms  # a cough gets no words
        if self.transcribed or not long_enough or self.next_line >= len(self.lines):
            return
        self.transcribed = True
        text = self.lines[self.next_line]
        self.next_line += 1
        task = asyncio.create_task(self._final(text))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _final(self, text: str) -> None:
        await asyncio.sleep(self.cfg.final_ms / 1000)
        self._emit(ev.Transcript(t_ms=0, text=text, is_final=True, speech_final=True))

    def _emit(self, event: ev.Input) -> None:
        if self.emit is not None:
            self.emit(event)

    async def speech_stopped(self) -> None:
        """Finalize (the runtime's VAD heard a stop): the final comes final_ms later, as Deepgram's does."""
        if self.vad.in_speech:
            self._transcribe()

    async def close(self) -> None:
        for task in self.pending:
            task.cancel()


class LocalLlm:
    def __init__(self, replies: list[Any], *, first_token_ms: int = 200, token_ms: int = 20) -> None:
        self.replies, self.first_token_ms, self.token_ms = replies, first_token_ms, token_ms

    async def stream(self, effect: ev.StartLlm, emit: Emit) -> None:
        reply = scripted_reply(effect, self.replies)
        await asyncio.sleep(self.first_token_ms / 1000)
        for i, tok in enumerate(reply_tokens(reply)):
            if i:
                await asyncio.sleep(self.token_ms / 1000)
            emit(effect.token(t_ms=0, text=tok))
        call = reply_tool_call(reply, effect.seq)
        if call is not None:
            emit(call)
        emit(ev.LlmDone(t_ms=0, cause=effect.seq, finish_reason="tool_calls" if call else "stop"))
