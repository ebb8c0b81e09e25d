"""Bench-only loopback providers with fixed delays, timestamping everything on the load generator's clock.

Three fakes speak the real wire protocols, so the engine under test runs its real adapters (deepgram-sdk
listen and speak, the groq SDK) unchanged; only DEEPGRAM_BASE_URL / GROQ_BASE_URL point here:

- ``DeepgramFake`` serves ``ws /v1/listen`` in "utterance mode" and ``ws /v1/speak``. Listen: a VAD
  (adapters/vad.py) cuts the audio the engine forwards into utterances; the nth utterance of a stream is
  transcribed as ``Caller <stream> line <n>: where is my parcel?``. When the final goes out is the STT's
  latency profile:
    * ``after="speech_end"``: ``final_ms`` after the frame holding the end of speech *reached the fake*
      (so any lag in the engine's forwarding of audio counts against the engine). Finalize is recorded
      and otherwise ignored. The VAD's hangover (140 ms) must stay under ``final_ms``: every packaged
      fixture is one utterance at 120-140 ms (their inner pauses are 100 ms).
    * ``after="finalize"``: ``final_ms`` after a Finalize arrives (the engine sends it at its own VAD stop);
      with no Finalize, ``final_ms`` after ``endpointing`` ms of silence (the stream's query), as Deepgram's
      own endpointing does.
  An interim with the first words goes out 300 ms into each utterance, a SpeechStarted at its onset
  (``vad_events``), and nothing for silence. Speak: after ``ttfb_ms`` from Flush, ``ms_per_char`` of tone a
  character, in ``chunk_bytes`` binary frames, then Flushed.
- ``GroqFake`` streams SSE chat completions: the first content chunk, ``ttft_ms`` after the request
  arrived, is a whole first clause naming the caller's stream and line (``Okay caller 7 line 3 is on its
  way.``), then ``rest`` word by word, ``token_ms`` apart (``whole_first=False``: the first clause word by
  word too).

The tags in the texts let the harness join a caller's line to its STT utterance, LLM request and TTS
request. The fakes reuse tests/fakes/base.py (server, tone) and never edit tests/.

Sources: the wire shapes are those of tests/fakes (each cites its SDK file or doc): listen messages per
deepgram-sdk ``listen/v1/types``, speak per ``speak/v1/socket_client.py``, SSE chunks per the groq SDK's
``types/chat/chat_completion_chunk.py``. The delays are the bench's profile, not the services'. Left out on
purpose, since the bench measures the engine: the services' limits (audio at 1.25x, Aura's 15 streams and
20 Flushes a minute: the engine runs with DEEPGRAM_TTS_MAX_STREAMS high) and reasoning tokens (a gpt-oss
reply at low effort spends some before its first content token: provider time, inside ``llm_ttft_ms`` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.vad import Vad, VadParams
from tests.fakes.base import FakeServer, tone

API_KEY = "bench-key"
FRAME_BYTES = 160
MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}
_TAG = re.compile(r"[Cc]aller (\d+) line (\d+)")


def tag_of(text: str) -> tuple[int, int] | None:
    m = _TAG.search(text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class Utt:
    """One utterance of one listen stream, on the load generator's loop clock (seconds)."""

    stream: int
    line: int
    start_ms: int  # stream time of the first voiced frame
    stop_ms: int | None = None  # stream time of the end of the last voiced frame
    end_arrival: float | None = None  # when the frame ending at stop_ms reached the fake
    finalize_arrival: float | None = None
    due: float | None = None  # when the final was due
    final_sent: float | None = None  # when it was actually written to the socket


@dataclass
class ListenStream:
    index: int
    query: dict[str, str]
    utts: list[Utt] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)


class _Listen:
    """One listen connection's recognizer."""

    def __init__(self, fake: DeepgramFake, ws: web.WebSocketResponse, stream: ListenStream) -> None:
        self.fake, self.ws, self.s = fake, ws, stream
        self.loop = asyncio.get_running_loop()
        ep = stream.query.get("endpointing", "300")
        self.endpointing_ms = 10 if ep == "false" else int(ep)
        hangover = 140 if fake.after == "speech_end" else self.endpointing_ms
        self.vad = Vad(VadParams(stop_ms=hangover))
        self.frames = 0
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=64)  # (frame end ms, arrival)
        self.cur: Utt | None = None
        self.transcribed = False
        self.interim_sent = False
        self.cursor = 0.0
        self.request_id = str(uuid.uuid4())
        self.tasks: set[asyncio.Task[None]] = set()

    def text(self, utt: Utt) -> str:
        return f"Caller {utt.stream} line {utt.line}: where is my parcel?"

    def audio(self, data: bytes, now: float) -> None:
        for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES):
            t = self.frames * 20
            self.frames += 1
            self.arrivals.append((t + 20, now))
            change = self.vad.feed(data[i:i + FRAME_BYTES], t)
            if change == "start":
                assert self.vad.start_ms is not None
                self.cur = Utt(stream=self.s.index, line=len(self.s.utts) + 1, start_ms=self.vad.start_ms)
                self.s.utts.append(self.cur)
                self.transcribed = self.interim_sent = False
                self._send_at(now, {"type": "SpeechStarted", "channel": [0, 1],
                                    "timestamp": self.cur.start_ms / 1000})
            if self.cur is not None and self.vad.in_speech and not self.interim_sent \
                    and t + 20 - self.cur.start_ms >= 300:
                self.interim_sent = True
                words = self.text(self.cur).split()[:2]
                self._send_at(now, self._results(words, self.cur.start_ms, t + 20, is_final=False))
            if change == "stop" and self.cur is not None:
                assert self.vad.stop_ms is not None
                self.cur.stop_ms = self.vad.stop_ms
                self.cur.end_arrival = next((a for end, a in self.arrivals if end == self.vad.stop_ms), now)
                if not self.transcribed:
                    base = self.cur.end_arrival if self.fake.after == "speech_end" else now
                    self._final(self.cur, base + self.fake.final_ms / 1000, speech_final=True)

    def finalize(self, now: float) -> None:
        if self.cur is None:
            return
        self.cur.finalize_arrival = self.cur.finalize_arrival or now
        if self.fake.after == "finalize" and not self.transcribed and self.vad.in_speech:
            self._final(self.cur, now + self.fake.final_ms / 1000, speech_final=False, from_finalize=True)

    def _final(self, utt: Utt, due: float, *, speech_final: bool, from_finalize: bool = False) -> None:
        self.transcribed = True
        utt.due = due
        end_ms = utt.stop_ms if utt.stop_ms is not None else self.frames * 20
        msg = self._results(self.text(utt).split(), utt.start_ms, end_ms, is_final=True,
                            speech_final=speech_final, from_finalize=from_finalize)
        self._send_at(due, msg, utt)

    def _results(self, words: list[str], start_ms: int, end_ms: int, *, is_final: bool,
                 speech_final: bool = False, from_finalize: bool = False) -> dict[str, Any]:
        span = max(1, end_ms - start_ms) / 1000 / max(1, len(words))
        ws = [{"word": w.lower().strip(".,?!:"), "start": round(start_ms / 1000 + i * span, 3),
               "end": round(start_ms / 1000 + (i + 0.8) * span, 3), "confidence": 0.97, "punctuated_word": w}
              for i, w in enumerate(words)]
        start = self.cursor
        if is_final:
            self.cursor = end_ms / 1000
        return {"type": "Results", "channel_index": [0, 1], "start": round(start, 3),
                "duration": round(max(0.0, end_ms / 1000 - start), 3), "is_final": is_final,
                "speech_final": speech_final, "from_finalize": from_finalize,
                "channel": {"alternatives": [{"transcript": " ".join(words), "confidence": 0.97, "words": ws}]},
                "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO,
                             "model_uuid": "6b28e919-8427-4f32-9847-492e2efd7daf"}}

    def _send_at(self, due: float, msg: dict[str, Any], utt: Utt | None = None) -> None:
        task = self.loop.create_task(self._later(due, json.dumps(msg), utt))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, due: float, text: str, utt: Utt | None) -> None:
        wait = due - self.loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.ws.closed:
            return
        if utt is not None:
            utt.final_sent = self.loop.time()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


@dataclass
class SpeakReq:
    text: str
    tag: tuple[int, int] | None
    connected: float
    flush: float | None = None
    first_audio: float | None = None


@dataclass
class LlmReq:
    tag: tuple[int, int] | None
    arrived: float
    first_token: float | None = None
    done: float | None = None
    cancelled: bool = False


class DeepgramFake(FakeServer):
    """``/v1/listen`` (utterance mode) and ``/v1/speak`` on one port, as DEEPGRAM_BASE_URL expects."""

    def __init__(self, *, after: str = "speech_end", final_ms: int = 150, ttfb_ms: int = 100,
                 ms_per_char: int = 15, chunk_bytes: int = 1600) -> None:
        super().__init__()
        assert after in ("speech_end", "finalize")
        self.after, self.final_ms = after, final_ms
        self.ttfb_ms, self.ms_per_char, self.chunk_bytes = ttfb_ms, ms_per_char, chunk_bytes
        self.streams: list[ListenStream] = []
        self.speaks: list[SpeakReq] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_get("/v1/speak", self._speak)

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Token {API_KEY}":
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        stream = ListenStream(index=len(self.streams) + 1, query=dict(request.query))
        self.streams.append(stream)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        rec = _Listen(self, ws, stream)
        try:
            async for msg in ws:
                now = loop.time()
                if msg.type == WSMsgType.BINARY:
                    rec.audio(msg.data, now)
                elif msg.type == WSMsgType.TEXT:
                    kind = json.loads(msg.data).get("type", "")
                    stream.controls.append(kind)
                    if kind == "Finalize":
                        rec.finalize(now)
                    elif kind == "CloseStream":
                        await ws.send_json({"type": "Metadata", "transaction_key": "deprecated",
                                            "request_id": rec.request_id, "sha256": "0" * 64,
                                            "created": "2026-01-01T00:00:00.000Z",
                                            "duration": rec.frames / 50, "channels": 1})
                        await ws.close()
                        break
        finally:
            for task in list(rec.tasks):
                task.cancel()
        return ws

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        """One socket, many lines (adapters/aura.py): each Flush is a line of the text since the previous
        Flush, voiced in order, then ``Flushed``; Clear drops what is queued or playing and answers
        ``Cleared`` (tests/fakes/deepgram_speak.py and its sources)."""
        if request.headers.get("Authorization") != f"Token {API_KEY}":
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        loop = asyncio.get_running_loop()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connected = loop.time()
        await ws.send_json({"type": "Metadata", "request_id": "bench-speak", "model_name": "aura-2",
                            "model_version": "2025-01-01.0", "model_uuid": "0b4a8e9a-0000-4000-8000-000000000000"})
        text, flushes = "", 0
        speaker: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = data.get("type")
                if kind == "Speak":
                    text += data.get("text", "")
                elif kind == "Flush":
                    req = SpeakReq(text=text, tag=tag_of(text), connected=connected, flush=loop.time())
                    self.speaks.append(req)
                    text = ""
                    speaker = asyncio.create_task(self._say(ws, req, flushes, speaker))
                    flushes += 1
                elif kind == "Clear":
                    text = ""
                    if speaker is not None:
                        speaker.cancel()
                    await ws.send_json({"type": "Cleared", "sequence_id": flushes})
                elif kind == "Close":
                    break
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()
        return ws

    async def _say(self, ws: web.WebSocketResponse, req: SpeakReq, seq: int,
                   before: asyncio.Task[None] | None) -> None:
        if before is not None:  # lines are voiced in order: this one after the previous (cut or not)
            await asyncio.wait([before])
        loop = asyncio.get_running_loop()
        assert req.flush is not None
        wait = req.flush + self.ttfb_ms / 1000 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        audio = tone(len(req.text) * self.ms_per_char * 8)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(0, len(audio), self.chunk_bytes):
                if i == 0:
                    req.first_audio = loop.time()
                await ws.send_bytes(audio[i:i + self.chunk_bytes])
                await asyncio.sleep(0)
            await ws.send_json({"type": "Flushed", "sequence_id": seq})


class GroqFake(FakeServer):
    """``POST /openai/v1/chat/completions``: a whole first clause after ``ttft_ms``, then ``rest`` word by word."""

    def __init__(self, *, ttft_ms: int = 200, token_ms: int = 5, rest: str = "It arrives Thursday.",
                 whole_first: bool = True) -> None:
        super().__init__()
        self.ttft_ms, self.token_ms, self.rest, self.whole_first = ttft_ms, token_ms, rest, whole_first
        self.requests: list[LlmReq] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/chat/completions", self._completions)
        app.router.add_get("/openai/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        """The adapter's connection warm-up (groq SDK resources/models.py: ``GET /openai/v1/models``)."""
        return web.json_response({"object": "list", "data": [
            {"id": "openai/gpt-oss-20b", "object": "model", "created": 1754438400, "owned_by": "OpenAI"}]})

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1767225600,
               "model": "openai/gpt-oss-20b",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(obj)}\n\n".encode()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": {"message": "Invalid API Key"}}, status=401)
        body = await request.json()
        users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
        tag = tag_of(users[-1]) if users else None
        rec = LlmReq(tag=tag, arrived=arrived)
        self.requests.append(rec)
        first = f"Okay caller {tag[0]} line {tag[1]} is on its way." if tag else "Okay, it is on its way."
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await resp.write(self._chunk({"role": "assistant", "content": ""}))
            wait = arrived + self.ttft_ms / 1000 - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            rec.first_token = loop.time()
            words = self.rest.split()
            if self.whole_first:
                await resp.write(self._chunk({"content": first}))
            else:
                words = first.split() + words
                await resp.write(self._chunk({"content": words.pop(0)}))
            for word in words:
                await asyncio.sleep(self.token_ms / 1000)
                await resp.write(self._chunk({"content": " " + word}))
            await resp.write(self._chunk({}, "stop"))
            await resp.write(b"data: [DONE]\n\n")
            rec.done = loop.time()
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            rec.cancelled = True
            raise
        return resp
