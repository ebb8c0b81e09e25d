"""Fake Deepgram Aura TTS over ``ws /v1/speak`` (the SDK's speak v1 socket: Speak / Flush / Clear / Close).

On Flush it sends, after ``ttfb_s``, mu-law audio for the text so far (``ms_per_char`` of tone per
character) as binary frames of ``chunk_bytes`` (not 160-aligned, so the adapter's re-cut is exercised),
then ``{"type": "Flushed"}``. Clear stops the audio and answers ``Cleared``. Metadata goes first, as
Deepgram sends it. Faults: ``status`` (refuse the upgrade, e.g. 500; with ``status_on``, only those
upgrades: 1-based, in arrival order), ``truncate`` (abort the socket halfway through the audio, no Flushed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.base import FakeServer, tone


@dataclass(frozen=True)
class SpeakFaults:
    status: int | None = None  # answer the upgrade with this HTTP status
    truncate: bool = False  # abort the socket after half the audio
    #: Only these upgrades (1-based, counted over authorized requests) fail, with ``status`` or else 500.
    status_on: tuple[int, ...] = ()


@dataclass
class SpeakConn:
    query: dict[str, str]
    headers: dict[str, str]
    texts: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    audio_bytes: int = 0  # sent to the client
    ended: str = ""  # done | cleared | client | truncated


class DeepgramSpeakFake(FakeServer):
    def __init__(self, *, api_key: str = "test-key", ttfb_s: float = 0.0, ms_per_char: int = 60,
                 chunk_bytes: int = 1000, chunk_delay_s: float = 0.0,
                 faults: SpeakFaults | None = None) -> None:
        super().__init__()
        self.api_key, self.ttfb_s, self.ms_per_char = api_key, ttfb_s, ms_per_char
        self.chunk_bytes, self.chunk_delay_s = chunk_bytes, chunk_delay_s
        self.faults = faults or SpeakFaults()
        self.connections: list[SpeakConn] = []
        self.upgrades = 0  # authorized upgrade requests, failed ones included
        self.failed: list[int] = []  # the upgrade numbers answered with an error status

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/speak", self._speak)

    def audio_for(self, text: str) -> int:
        """Bytes of audio the fake sends for ``text`` (8 bytes per ms)."""
        return len(text) * self.ms_per_char * 8

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        self.upgrades += 1
        failing = self.upgrades in self.faults.status_on if self.faults.status_on else self.faults.status is not None
        if failing:
            self.failed.append(self.upgrades)
            return web.json_response({"err_code": "INTERNAL", "err_msg": "fake failure"},
                                     status=self.faults.status or 500)
        conn = SpeakConn(query=dict(request.query), headers=dict(request.headers))
        self.connections.append(conn)
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
                conn.controls.append(data.get("type", ""))
                if data.get("type") == "Speak":
                    conn.texts.append(data.get("text", ""))
                    pending.append(data.get("text", ""))
                elif data.get("type") == "Flush":
                    speaker = asyncio.create_task(self._say(request, ws, conn, "".join(pending)))
                    pending.clear()
                elif data.get("type") == "Clear":
                    if speaker is not None:
                        speaker.cancel()
                    conn.ended = "cleared"
                    await ws.send_json({"type": "Cleared", "sequence_id": 0})
                elif data.get("type") == "Close":
                    break
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()
                conn.ended = conn.ended or "client"
        return ws

    async def _say(self, request: web.Request, ws: web.WebSocketResponse, conn: SpeakConn, text: str) -> None:
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
            await ws.send_json({"type": "Flushed", "sequence_id": 0})
            conn.ended = "done"
