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
    async def send_audio(self, mulaw: bytes) -> None: ...  # 20 ms of mu-law 8 kHz, as it arrives
    async def speech_stopped(self) -> None: ...  # the local VAD heard the caller stop: finalize now
    async def close(self) -> None: ...


class Stt(Protocol):
    def session(self, *, params: dict[str, str]) -> SttSession: ...


class Llm(Protocol):
    async def stream(self, effect: StartLlm, emit: Emit) -> None:
        """Emit LlmToken* / LlmToolCall* then LlmDone, or LlmError; all with cause=effect.seq."""


class Tts(Protocol):
    def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        """Yield mu-law 8 kHz audio as it arrives; closing the iterator cancels the request."""


class Tools(Protocol):
    async def call(self, effect: CallTool) -> ToolResult:
        """Run one tool; every failure is a ToolResult with ok=False and an error code, never a raise."""
