"""What a live call is built from and held to (engine/runtime.py drives it): the adapters it uses, the limits
on what it may write to the log, the engine time it measures, and the pacing of a provider's audio."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine import events as ev
from engine.ports import Llm, Stt, Tools, Tts


class Vad(Protocol):
    start_ms: int | None
    stop_ms: int | None

    def feed(self, frame: bytes, t_ms: int) -> str | None: ...


@dataclass
class Providers:
    stt: Stt
    llm: Llm
    tts: Tts
    tools: Tools
    vad: Callable[[], Vad]
    tts_fallback: Tts | None = None
    #: Ask the STT for its final when the local VAD hears the caller stop (the provider's own option).
    finalize_on_vad_stop: bool = True

    async def aclose(self) -> None:
        """Close the shared clients (HTTP sessions) of the adapters that have them."""
        for adapter in (self.stt, self.llm, self.tts, self.tools, self.tts_fallback):
            closer = getattr(adapter, "aclose", None) or getattr(adapter, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


@dataclass
class EngineTimes:
    """Wall-clock measures the log does not hold (they differ between runs by nature)."""

    engine_us_by_seq: dict[int, int] = field(default_factory=dict)  # input seq -> feed + log + dispatch

    @property
    def engine_us(self) -> list[int]:
        return list(self.engine_us_by_seq.values())
    barge_in_us: list[int] = field(default_factory=list)  # input that confirmed a barge-in -> clear sent


@dataclass(frozen=True)
class CallLimits:
    """What one call may write to the log. A peer can send marks, bad frames and DTMF as fast as it likes
    (issue 11: 1,500 marks of 60 KB made a 92 MB log for a 2.7 s call): past ``events`` logged events or
    ``input_bytes`` of input text the call is ended (outcome ``limit``); a mark name longer than
    ``mark_name_chars`` cannot be one we sent and is dropped. Each hit is counted and logged once per call.
    The defaults sit far above a real call: max_call_ms (10 min) of talk logs a few thousand events."""

    events: int = 50_000
    input_bytes: int = 4_000_000
    mark_name_chars: int = 64


_TEXT_FIELDS: dict[type, tuple[str, ...]] = {}


def text_size(event: ev.Event) -> int:
    """The length of an event's text fields (mark names, transcripts, tokens, notices): what a peer can
    make large. Field names are found once per event type."""
    names = _TEXT_FIELDS.get(type(event))
    if names is None:
        names = _TEXT_FIELDS[type(event)] = tuple(
            f.name for f in dataclasses.fields(event) if f.type in ("str", "str | None"))
    return sum(len(getattr(event, n) or "") for n in names)


async def paced(chunks: AsyncIterator[bytes], silence_s: float) -> AsyncIterator[bytes]:
    """``chunks``, failing with TimeoutError when the next one takes longer than ``silence_s``."""
    it = aiter(chunks)
    try:
        while True:
            try:
                async with asyncio.timeout(silence_s):  # no Task per chunk, as wait_for makes on 3.11
                    chunk = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TimeoutError(f"no audio for {silence_s:g} s") from None
            yield chunk
    finally:
        closer = getattr(it, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
