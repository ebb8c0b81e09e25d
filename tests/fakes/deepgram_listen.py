"""Fake Deepgram live STT: ``ws /v1/listen`` (reference section 2) answering from a script of timed words.

Audio time is bytes received / 8000 (mu-law 8 kHz mono), per connection, as Deepgram's own timestamps are.
As it passes each scripted word the fake sends what Deepgram would: SpeechStarted at an utterance's first
word (``vad_events``), an interim Results per heard word (``interim_results``), a final with
``speech_final`` once ``endpointing`` ms of silence follow the last word, UtteranceEnd after
``utterance_end_ms``; ``Finalize`` flushes a ``from_finalize`` final; ``CloseStream`` flushes, sends
Metadata and closes. Faults: drop the socket once after N s of audio, slow start, refuse reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.base import FakeServer

MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}
_CLOSE = object()  # sentinel in the send queue: close the socket after what is queued before it


@dataclass(frozen=True)
class Utterance:
    """Words as smart_format prints them, starting at ``start_s`` of stream time, one per ``word_s``."""

    words: Sequence[str]
    start_s: float
    word_s: float = 0.3  # each word's slot; the word itself fills 80% of it
    confidence: float = 0.97


@dataclass(frozen=True)
class Script:
    utterances: Sequence[Utterance] = ()
    result_latency_s: float = 0.0  # every message leaves this long after the audio that triggered it


@dataclass(frozen=True)
class ListenFaults:
    drop_after_s: float | None = None  # abort the TCP socket (no close frame) once, after this much audio
    slow_start_s: float = 0.0  # wait this long before accepting each upgrade
    refuse_reconnects: int = 0  # after a drop, answer this many connection attempts with 503


@dataclass
class ListenConn:
    """What one WebSocket connection carried."""

    query: dict[str, list[str]]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    controls: list[str] = field(default_factory=list)  # types of the text frames received, in order
    sent: list[dict[str, Any]] = field(default_factory=list)
    ended: str = ""  # close_stream | dropped | client

    def q(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, [default])[0]

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 8000


@dataclass(frozen=True)
class _Word:
    text: str
    start: float
    end: float
    confidence: float
    utt: int

    def as_json(self) -> dict[str, Any]:
        return {"word": self.text.lower().strip(".,?!;:"), "start": round(self.start, 3),
                "end": round(self.end, 3), "confidence": self.confidence, "punctuated_word": self.text}


class _Session:
    """One connection's recognizer: turns audio time into the messages Deepgram would send."""

    def __init__(self, conn: ListenConn, script: Script) -> None:
        self.conn, self.script = conn, script
        self.words = [
            _Word(w, u.start_s + i * u.word_s, u.start_s + i * u.word_s + 0.8 * u.word_s, u.confidence, n)
            for n, u in enumerate(script.utterances) for i, w in enumerate(u.words)
        ]
        ep = conn.q("endpointing", "10")
        self.endpointing_s = 0.0 if ep == "false" else int(ep or 10) / 1000
        self.interim = conn.q("interim_results") == "true"
        self.vad = conn.q("vad_events") == "true"
        ue = conn.q("utterance_end_ms")
        self.utterance_end_s = int(ue) / 1000 if ue and self.interim else None
        self.smart = conn.q("smart_format") == "true" or conn.q("punctuate") == "true"
        self.request_id = str(uuid.uuid4())
        self.heard = self.final = 0  # words heard so far / words already in a final
        self.cursor = 0.0  # end of the last final's window
        self.started: set[int] = set()
        self.ended: set[int] = set()
        self.queue: asyncio.Queue[tuple[float, object]] = asyncio.Queue()

    def out(self, msg: object) -> None:
        due = asyncio.get_running_loop().time() + self.script.result_latency_s
        self.queue.put_nowait((due, msg))

    def results(self, words: list[_Word], t_end: float, *, is_final: bool, speech_final: bool = False,
                from_finalize: bool = False) -> dict[str, Any]:
        text = " ".join(w.text if self.smart else w.text.lower().strip(".,?!;:") for w in words)
        conf = min((w.confidence for w in words), default=0.0)
        return {
            "type": "Results", "channel_index": [0, 1], "start": round(self.cursor, 3),
            "duration": round(max(0.0, t_end - self.cursor), 3), "is_final": is_final,
            "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": conf,
                                          "words": [w.as_json() for w in words]}]},
            "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO,
                         "model_uuid": "6b28e919-8427-4f32-9847-492e2efd7daf"},
        }

    def finalize(self, t: float, *, speech_final: bool, from_finalize: bool) -> None:
        self.out(self.results(self.words[self.final:self.heard], t, is_final=True,
                              speech_final=speech_final, from_finalize=from_finalize))
        self.final, self.cursor = self.heard, t

    def advance(self, t: float) -> None:
        for n, u in enumerate(self.script.utterances):
            if self.vad and n not in self.started and t >= u.start_s:
                self.started.add(n)
                self.out({"type": "SpeechStarted", "channel": [0, 1], "timestamp": u.start_s})
        before = self.heard
        while self.heard < len(self.words) and self.words[self.heard].end <= t:
            self.heard += 1
        if self.interim and self.heard > before and self.heard > self.final:
            self.out(self.results(self.words[self.final:self.heard], t, is_final=False))
        if self.heard > self.final:
            quiet_until = self.words[self.heard - 1].end + self.endpointing_s
            nxt = self.words[self.heard].start if self.heard < len(self.words) else float("inf")
            if t >= quiet_until and nxt >= quiet_until:
                self.finalize(quiet_until, speech_final=True, from_finalize=False)
        if self.utterance_end_s is not None:
            for n in {w.utt for w in self.words[:self.final]} - self.ended:
                last = max(w.end for w in self.words if w.utt == n)
                if t >= last + self.utterance_end_s:
                    self.ended.add(n)
                    self.out({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last, 3)})

    def close_stream(self, t: float) -> None:
        self.advance(t)
        if self.heard > self.final:
            self.finalize(t, speech_final=False, from_finalize=False)
        self.out({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                  "sha256": "0" * 64, "created": "2026-01-01T00:00:00.000Z", "duration": round(t, 3),
                  "channels": 1})
        self.out(_CLOSE)


class DeepgramListenFake(FakeServer):
    """``script``: one Script for every connection, or one per connection (the last one repeats)."""

    def __init__(self, script: Script | Sequence[Script] = Script(), *, api_key: str = "test-key",
                 faults: ListenFaults = ListenFaults()) -> None:
        super().__init__()
        self.scripts = [script] if isinstance(script, Script) else list(script)
        self.api_key, self.faults = api_key, faults
        self.connections: list[ListenConn] = []
        self.rejected: list[int] = []  # statuses of refused upgrades
        self._dropped = False
        self._refused = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)

    @property
    def audio_bytes(self) -> int:
        return sum(len(c.audio) for c in self.connections)

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.rejected.append(401)
            return web.json_response({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."},
                                     status=401)
        if self._dropped and self._refused < self.faults.refuse_reconnects:
            self._refused += 1
            self.rejected.append(503)
            return web.json_response({"err_code": "UNAVAILABLE"}, status=503)
        await asyncio.sleep(self.faults.slow_start_s)
        query: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, []).append(v)
        conn = ListenConn(query=query, headers=dict(request.headers))
        self.connections.append(conn)
        session = _Session(conn, self.scripts[min(len(self.connections) - 1, len(self.scripts) - 1)])
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sender = asyncio.create_task(self._send_loop(ws, session))
        try:
            await self._receive_loop(request, ws, conn, session)
        finally:
            if conn.ended == "close_stream":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender), 5)
            sender.cancel()
            conn.ended = conn.ended or "client"
        return ws

    async def _receive_loop(self, request: web.Request, ws: web.WebSocketResponse, conn: ListenConn,
                            session: _Session) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                conn.audio += msg.data
                session.advance(conn.audio_s)
                drop = self.faults.drop_after_s
                if drop is not None and not self._dropped and conn.audio_s >= drop:
                    self._dropped, conn.ended = True, "dropped"
                    if request.transport is not None:
                        request.transport.abort()  # a network drop: no close frame, the client sees 1006
                    return
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type", "")
                conn.controls.append(kind)
                if kind == "Finalize":
                    session.advance(conn.audio_s)
                    session.finalize(conn.audio_s, speech_final=False, from_finalize=True)
                elif kind == "CloseStream":
                    conn.ended = "close_stream"
                    session.close_stream(conn.audio_s)
                    return

    async def _send_loop(self, ws: web.WebSocketResponse, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, msg = await session.queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if ws.closed:
                return
            if msg is _CLOSE:
                await ws.close()
                return
            assert isinstance(msg, dict)
            session.conn.sent.append(msg)
            with contextlib.suppress(ConnectionError):
                await ws.send_json(msg)
