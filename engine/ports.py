"""What the runtime expects of the adapters at the edges (structural types: adapters don't import this).

Rules:
- An adapter turns one outside system's protocol into Input events and nothing more: no turn-taking here.
- ``emit`` hands an Input to the runtime, which stamps ``t_ms`` on arrival (adapters pass ``t_ms=0``),
  appends it to the log and feeds it. Responses to an effect carry ``cause=effect.seq``.
- Cancellation is ``task.cancel()`` on the coroutine the runtime started; an adapter must stop at once
  (close its stream or socket) and emit nothing after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from engine.events import CallTool, Input, Speak, StartLlm, ToolResult

Emit = Callable[[Input], None]


class SttSession(Protocol):
    """One call's streaming recognizer. Emits Transcript, UtteranceEnd, SpeechStarted(source="stt")."""

    async def start(self, emit: Emit) -> None: ...
    async def send_audio(self, mulaw: bytes) -> None: ...  # whole 20 ms frames of mu-law 8 kHz
    async def speech_stopped(self) -> None: ...  # the local VAD heard the caller stop: finalize now
    async def close(self) -> None: ...


class Stt(Protocol):
    """May also set ``batch_frames`` (default 1) and ``batch_after_ms``: in the caller's silences, from
    ``batch_after_ms`` after their speech stopped (past the STT's own endpointing) until they speak again, the
    runtime joins up to ``batch_frames`` 20 ms frames into one send_audio; speech goes frame by frame, and
    nothing is held across a speech_stopped."""

    def session(self, *, params: dict[str, str]) -> SttSession: ...


class Llm(Protocol):
    """May also have ``async def warm() -> str``: open a connection before the first request needs it; the
    runtime runs it at call start and logs what it returns (ProviderNotice what="warm")."""

    async def stream(self, effect: StartLlm, emit: Emit) -> None:
        """Emit LlmToken* / LlmToolCall* then LlmDone, or LlmError; all with cause=effect.seq."""


class Tts(Protocol):
    """May also have ``async warm()``: the runtime calls it as a call starts (open a socket ahead)."""

    def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        """Yield mu-law 8 kHz audio as it arrives; closing the iterator cancels the request."""


class Tools(Protocol):
    async def call(self, effect: CallTool) -> ToolResult:
        """Run one tool; every failure is a ToolResult with ok=False and an error code, never a raise."""


class Phone(Protocol):
    """The caller's line (adapters/twilio.py over Media Streams). Sends are queued in order."""

    async def send_audio(self, mulaw: bytes) -> None: ...  # paced out in 20 ms frames, in real time
    async def send_mark(self, name: str) -> None: ...  # echoed back (PlaybackMark) once played or cleared
    async def clear(self) -> None: ...  # drop everything queued and not yet played, at once
    async def hangup(self) -> None: ...  # end the call (REST), or close the stream when there is no REST
    async def transfer(self, to: str) -> None: ...


class CallHandle(Protocol):
    """What the phone bridge holds for a live call (engine/runtime.py's LiveCall)."""

    def audio_in(self, mulaw: bytes) -> None: ...  # one inbound media frame; never blocks
    def emit(self, event: Input) -> None: ...  # Dtmf, PlaybackMark, ProviderNotice, CallEnded
    async def wait(self) -> None: ...  # until the call has ended and its log is flushed
