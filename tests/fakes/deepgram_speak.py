"""Fake Deepgram Aura TTS over ``ws /v1/speak`` (the SDK's speak v1 socket: Speak / Flush / Clear / Close).

What each behaviour follows:
- Messages and their order (deepgram-sdk ``speak/v1/socket_client.py`` and ``speak/v1/types``): Metadata
  first; text accumulates from Speak; on Flush, after ``ttfb_s``, mu-law audio for the text so far
  (``ms_per_char`` of tone per character) as binary frames of ``chunk_bytes`` (not 160-aligned, so the
  adapter's re-cut is exercised), then ``{"type": "Flushed", "sequence_id": n}`` (developers.deepgram.com/
  docs/tts-ws-flush; that n counts this socket's Flushes is a guess: the docs show 0). Clear drops what is
  buffered or playing and answers ``Cleared``. Close ends the socket. Many lines may go over one socket.
- Concurrency (developers.deepgram.com/reference/api-rate-limits, "rate limits apply per project": Aura-2
  streaming up to 15 concurrent on Pay as You Go): past ``max_streams`` open sockets an upgrade gets 429
  (the status Deepgram documents for a concurrency limit; the body's exact text is unknown).
- Flushes (tts-ws-flush, Limits: "20 times every 60 seconds. After that, you will receive a warning
  message"): a Flush past the limit is answered with ``{"type": "Warning", "code": ..., "description":
  ...}`` (the SDK's SpeakV1Warning shape; the real code string is unknown) and produces no audio. The
  window is counted per socket, on ``clock`` (default: the loop's time; a test may pass a faster one).
- Idle sockets: how long Aura keeps an unused socket open is unknown; the fake never closes one itself.
Faults: ``status`` (refuse upgrades, e.g. 500; with ``status_on``, only those upgrades: 1-based, in arrival
order), ``truncate`` (abort the socket halfway through a line's audio, no Flushed), ``drop_on_speak`` (abort
the socket when these Flushes arrive, 1-based over the fake, or ``drop_on_text`` once, before any audio: a
dropped connection;
with ``refuse_after_drop``, the next upgrade is refused with that status too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.base import FakeServer, tone

MAX_STREAMS = 15
FLUSH_LIMIT, FLUSH_WINDOW_S = 20, 60.0


@dataclass(frozen=True)
class SpeakFaults:
    status: int | None = None  # answer the upgrade with this HTTP status
    truncate: bool = False  # abort the socket after half the audio
    #: Only these upgrades (1-based, counted over authorized requests) fail, with ``status`` or else 500.
    status_on: tuple[int, ...] = ()
    #: Abort the socket when these Flushes (1-based, counted over the fake) arrive, before any audio.
    drop_on_speak: tuple[int, ...] = ()
    #: Abort the socket, once, when a Flush would speak text containing this (before any audio).
    drop_on_text: str | None = None
    #: After such a drop, refuse the next upgrade with this status (the line then fails for good).
    refuse_after_drop: int | None = None


@dataclass
class SpeakConn:
    query: dict[str, str]
    headers: dict[str, str]
    texts: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    audio_bytes: int = 0  # sent to the client
    ended: str = ""  # done | cleared | client | truncated | dropped (the last line's fate)
    lines: int = 0  # Flushes answered with audio
    warnings: int = 0
    flushes: deque[float] = field(default_factory=deque)  # clock times in the window
    open: bool = True


class DeepgramSpeakFake(FakeServer):
    def __init__(self, *, api_key: str = "test-key", ttfb_s: float = 0.0, ms_per_char: int = 60,
                 chunk_bytes: int = 1000, chunk_delay_s: float = 0.0, faults: SpeakFaults | None = None,
                 max_streams: int = MAX_STREAMS, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.api_key, self.ttfb_s, self.ms_per_char = api_key, ttfb_s, ms_per_char
        self.chunk_bytes, self.chunk_delay_s = chunk_bytes, chunk_delay_s
        self.faults = faults or SpeakFaults()
        self.max_streams, self.clock = max_streams, clock
        self.connections: list[SpeakConn] = []
        self.upgrades = 0  # authorized upgrade requests, failed ones included
        self.failed: list[int] = []  # the upgrade numbers answered with an error status
        self.refused_429 = 0
        self.flushes = 0
        self.peak_open = 0
        self._refuse_next: int | None = None
        self._dropped_on_text = False

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/speak", self._speak)

    @property
    def open_now(self) -> int:
        return sum(c.open for c in self.connections)

    @property
    def warnings(self) -> int:
        return sum(c.warnings for c in self.connections)

    def audio_for(self, text: str) -> int:
        """Bytes of audio the fake sends for ``text`` (8 bytes per ms)."""
        return len(text) * self.ms_per_char * 8

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        self.upgrades += 1
        failing = self.upgrades in self.faults.status_on if self.faults.status_on else self.faults.status is not None
        if self._refuse_next is not None:
            failing, self._refuse_next = True, None
        if failing:
            self.failed.append(self.upgrades)
            return web.json_response({"err_code": "INTERNAL", "err_msg": "fake failure"},
                                     status=self.faults.status or self.faults.refuse_after_drop or 500)
        if self.open_now >= self.max_streams:
            self.refused_429 += 1
            return web.json_response({"err_code": "TOO_MANY_REQUESTS",
                                      "err_msg": "Too many concurrent requests."}, status=429)
        conn = SpeakConn(query=dict(request.query), headers=dict(request.headers))
        self.connections.append(conn)
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            return await self._serve(request, conn)
        finally:
            conn.open = False

    async def _serve(self, request: web.Request, conn: SpeakConn) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "Metadata", "request_id": "fake-speak",
                            "model_name": conn.query.get("model", ""), "model_version": "2025-01-01.0",
                            "model_uuid": "0b4a8e9a-0000-4000-8000-000000000000"})
        pending: list[str] = []
        speaker: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data: dict[str, Any] = json.loads(msg.data)
                kind = data.get("type", "")
                conn.controls.append(kind)
                if kind == "Speak":
                    conn.texts.append(data.get("text", ""))
                    pending.append(data.get("text", ""))
                elif kind == "Flush":
                    self.flushes += 1
                    cue = self.faults.drop_on_text
                    if self.flushes in self.faults.drop_on_speak or (
                            cue is not None and cue in "".join(pending) and not self._dropped_on_text):
                        self._dropped_on_text = self._dropped_on_text or (cue is not None and cue in "".join(pending))
                        conn.ended, self._refuse_next = "dropped", self.faults.refuse_after_drop
                        if request.transport is not None:
                            request.transport.abort()
                        break
                    now = self._now()
                    while conn.flushes and conn.flushes[0] <= now - FLUSH_WINDOW_S:
                        conn.flushes.popleft()
                    if len(conn.flushes) >= FLUSH_LIMIT:
                        conn.warnings += 1
                        await ws.send_json({"type": "Warning", "code": "FLUSH_LIMIT_EXCEEDED",
                                            "description": "Too many flushes: wait for the 60 s window."})
                        continue
                    conn.flushes.append(now)
                    if speaker is not None:  # lines play in order on one socket
                        await asyncio.wait({speaker})
                    speaker = asyncio.create_task(self._say(request, ws, conn, "".join(pending)))
                    pending.clear()
                elif kind == "Clear":
                    if speaker is not None:
                        speaker.cancel()
                    pending.clear()
                    conn.ended = "cleared"
                    await ws.send_json({"type": "Cleared", "sequence_id": len(conn.flushes)})
                elif kind == "Close":
                    break
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()
                conn.ended = conn.ended or "client"
        return ws

    async def _say(self, request: web.Request, ws: web.WebSocketResponse, conn: SpeakConn, text: str) -> None:
        conn.ended = ""
        await asyncio.sleep(self.ttfb_s)
        audio = tone(self.audio_for(text))
        stop_at = len(audio) // 2 if self.faults.truncate else len(audio)
        with contextlib.suppress(ConnectionError):
            for i in range(0, stop_at, self.chunk_bytes):
                chunk = audio[i:min(i + self.chunk_bytes, stop_at)]
                await ws.send_bytes(chunk)
                conn.audio_bytes += len(chunk)
                await asyncio.sleep(self.chunk_delay_s)
            if self.faults.truncate:
                conn.ended = "truncated"
                if request.transport is not None:
                    request.transport.abort()
                return
            conn.lines += 1
            await ws.send_json({"type": "Flushed", "sequence_id": len(conn.flushes) - 1})
            conn.ended = "done"
