"""Fake PlayHT, as pyht's HTTP path calls it (reference section 4.3).

1. ``POST /api/v4/sdk-auth`` (headers ``x-user-id`` and ``authorization: Bearer <key>``) answers the
   inference coordinates: per model an ``http_streaming_url`` on this server carrying a short-lived token.
2. ``POST /tts?token=..`` (the streaming URL; only an ``accept`` header, the token is the credential)
   answers a chunked body of raw mu-law: ``ms_per_char`` of tone per character of text, after ``ttfb_s``.
Faults: ``status`` (e.g. 500 with a text body), ``truncate`` (abort the socket halfway through the audio).

Sources: the coordinates exchange, its headers, the reply's ``expires_at`` format and model keys, and the
streaming POST with only ``accept`` follow pyht 0.1.14 (``pyht/inference_coordinates.py``,
``pyht/async_client.py``); non-200 answers raise ``Exception("HTTP <code>: <body>")`` there. PlayHT's own
servers are gone (shut down 2025-12-31), so their limits, error bodies and timings are unknown: the fake
imposes none.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, tone

MODELS = ("Play3.0-mini", "PlayDialog", "PlayDialogMultilingual", "PlayDialogArabic")


@dataclass(frozen=True)
class PlayHtFaults:
    status: int | None = None  # answer the TTS POST with this status
    truncate: bool = False  # abort the socket after half the audio


@dataclass
class TtsRequest:
    body: dict[str, Any]
    headers: dict[str, str]  # names lowercased
    audio_bytes: int = 0
    ended: str = ""  # done | client | truncated


class PlayHtFake(FakeServer):
    def __init__(self, *, api_key: str = "test-key", user_id: str = "test-user", ttfb_s: float = 0.0,
                 ms_per_char: int = 60, chunk_bytes: int = 1000, chunk_delay_s: float = 0.0,
                 faults: PlayHtFaults | None = None) -> None:
        super().__init__()
        self.api_key, self.user_id, self.ttfb_s, self.ms_per_char = api_key, user_id, ttfb_s, ms_per_char
        self.chunk_bytes, self.chunk_delay_s = chunk_bytes, chunk_delay_s
        self.faults = faults or PlayHtFaults()
        self.auth_calls = 0
        self.requests: list[TtsRequest] = []
        self._token = "coord-token-1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v4/sdk-auth", self._sdk_auth)
        # The path avoids the word "stream": pyht derives its non-streaming URL by deleting it.
        app.router.add_post("/tts", self._tts)

    def audio_for(self, text: str) -> int:
        return len(text) * self.ms_per_char * 8

    async def _sdk_auth(self, request: web.Request) -> web.StreamResponse:
        if (request.headers.get("authorization") != f"Bearer {self.api_key}"
                or request.headers.get("x-user-id") != self.user_id):
            return web.json_response({"error_message": "unauthorized"}, status=401)
        self.auth_calls += 1
        urls = {"http_streaming_url": f"{self.url}/tts?token={self._token}",
                "websocket_url": f"{self.ws_url}/ws?token={self._token}"}
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return web.json_response({"expires_at": expires, **{m: urls for m in MODELS}})

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token") != self._token:
            return web.Response(status=401, text="bad token")
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = TtsRequest(body=await request.json(), headers=headers)
        self.requests.append(rec)
        if self.faults.status is not None:
            return web.Response(status=self.faults.status, text="fake failure")
        text = rec.body.get("text", "")
        text = " ".join(text) if isinstance(text, list) else str(text)  # pyht sends a list of sentences
        audio = tone(self.audio_for(text))
        stop_at = len(audio) // 2 if self.faults.truncate else len(audio)
        await asyncio.sleep(self.ttfb_s)
        resp = web.StreamResponse(headers={"Content-Type": "audio/basic"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            for i in range(0, stop_at, self.chunk_bytes):
                chunk = audio[i:min(i + self.chunk_bytes, stop_at)]
                await resp.write(chunk)
                rec.audio_bytes += len(chunk)
                await asyncio.sleep(self.chunk_delay_s)
            if self.faults.truncate:
                rec.ended = "truncated"
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write_eof()
            rec.ended = "done"
        except (ConnectionError, asyncio.CancelledError):
            rec.ended = "client"
            raise
        return resp
