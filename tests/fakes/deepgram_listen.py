"""Fake Deepgram live STT: ``ws /v1/listen`` (reference section 2), in one of two modes.

Audio time is bytes received / 8000 (mu-law 8 kHz mono), per connection, as Deepgram's own timestamps are.

Script mode (``Script``): words timed in audio time. As it passes each scripted word the fake sends what
Deepgram would: SpeechStarted at an utterance's first word (``vad_events``), an interim Results per heard
word (``interim_results``), a final with ``speech_final`` once ``endpointing`` ms of silence follow the last
word, UtteranceEnd after ``utterance_end_ms``; ``Finalize`` flushes a ``from_finalize`` final.

Utterance mode (``Lines``): a phone caller speaks whenever they decide, so the fake listens to the audio
itself. A 20 ms frame louder than ``silence_dbfs`` is speech; speech separated by ``endpointing`` ms of
silence is one utterance, and the nth utterance of the fake (across reconnections) is transcribed as the
nth line. SpeechStarted at its first frame; interims from ``interim_after_s`` into the speech, revealing a
word per ``word_s``; a final (``speech_final``) after ``endpointing`` ms of silence, or at once on a
Finalize (``from_finalize``; all its words when the caller has gone quiet, else the words heard so far),
``final_latency_s`` after its trigger, with word timings taken from where the speech was in the audio;
UtteranceEnd ``utterance_end_ms`` after the last word. Speech shorter than ``min_speech_s`` (a cough) gets
no transcript. A Finalize with audio but no words to flush gets an empty ``from_finalize`` final.

Both modes: ``CloseStream`` flushes, sends Metadata and closes. Faults: drop the socket once (after N s of
audio, or after the nth transcribed utterance), slow start, refuse reconnects.

Message shapes follow deepgram-sdk's ``listen/v1/types`` (ListenV1Results, ListenV1SpeechStarted,
ListenV1UtteranceEnd, ListenV1Metadata: the ``type`` discriminator, ``channel.alternatives[].words``,
``metadata.model_info``), control messages its ``listen/v1/socket_client.py`` (send_finalize,
send_keep_alive, send_close_stream), the query what ``listen/v1/client.py`` connect() sends. What the
results say and when (interims per word, ``speech_final`` after ``endpointing`` ms of silence, UtteranceEnd
after ``utterance_end_ms``) follows Deepgram's endpointing and utterance-end docs; the timings themselves are
the fake's (a model). Not imposed: the 10 s NET-0001 close without audio or KeepAlive (docs/keep-alive),
the per-project stream cap (50 for Nova streaming, docs' api-rate-limits).

Limits and what they follow (developers.deepgram.com):
- Audio is taken at most ``max_rate`` (1.25) x real time per connection ("Recovering From Connection Errors
  & Timeouts When Live Streaming Audio"). Past ``burst_s`` ahead of that the fake takes each frame only when
  the rate allows it (its transcripts lag, as Deepgram's do) and records how far ahead the client was in
  ``ListenConn.ahead_s``. How much Deepgram buffers before it holds back is unknown: ``burst_s`` is a guess.
- Finalize is answered (a ``from_finalize`` final) only when audio came since the last final ("This
  response typically occurs when there is a noticeable amount of audio buffered", docs/finalize); with
  none, nothing is sent. What amount counts as noticeable is unknown: here, any frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.base import FakeServer

MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}
MODEL_UUID = "6b28e919-8427-4f32-9847-492e2efd7daf"
_CLOSE = object()  # sentinel in the send queue: close the socket after what is queued before it
FRAME_BYTES = 160  # 20 ms of mu-law 8 kHz
FRAME_S = 0.020


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
class Lines:
    """Utterance mode: the nth utterance heard in the audio is transcribed as ``lines[n]``."""

    lines: Sequence[str]
    final_latency_s: float = 0.15  # trigger (silence reached, Finalize received) -> the final leaves
    interim_latency_s: float = 0.0
    #: First voiced frame -> SpeechStarted leaves (Deepgram's VAD event is not instant). Messages leave in
    #: order, so what comes after it waits too.
    speech_started_latency_s: float = 0.0
    interim_after_s: float = 0.3  # the first interim (the first word) this far into the speech
    word_s: float = 0.3  # one more word per this much speech (espeak reads ~0.3 s a word)
    min_speech_s: float = 0.25  # shorter speech (a cough, a click) gets no transcript
    #: A frame at or below this mean power is silence. The SimCaller's silence is 0xFF (digital zero); phone
    #: line noise sits at -50..-55 dBFS and speech at -40..-15 dBFS.
    silence_dbfs: float = -45.0
    #: Silence that ends an utterance is ``endpointing``, but never less than this: Deepgram's default
    #: endpointing (10 ms) would cut a line at every gap between words.
    min_gap_s: float = 0.2
    #: A Finalize this long into silence flushes the whole line; earlier, only the words heard so far.
    quiet_s: float = 0.06
    confidence: float = 0.97


@dataclass(frozen=True)
class ListenFaults:
    drop_after_s: float | None = None  # abort the TCP socket (no close frame) once, after this much audio
    slow_start_s: float = 0.0  # wait this long before accepting each upgrade
    refuse_reconnects: int = 0  # after a drop, answer this many connection attempts with 503
    #: Utterance mode: abort the socket once, ``drop_delay_s`` of audio after the nth (1-based) transcribed
    #: utterance has ended (a drop between the caller's turns, whenever they fall in the call).
    drop_after_utterance: int | None = None
    drop_delay_s: float = 0.5


@dataclass
class ListenConn:
    """What one WebSocket connection carried."""

    query: dict[str, list[str]]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    controls: list[str] = field(default_factory=list)  # types of the text frames received, in order
    sent: list[dict[str, Any]] = field(default_factory=list)
    ended: str = ""  # close_stream | dropped | client
    opened_at: float = 0.0  # loop time the upgrade was accepted
    ahead_s: float = 0.0  # most audio the client sent ahead of max_rate x real time (past the burst)
    unfinalized: int = 0  # audio bytes since the last final (a Finalize with none gets no answer)

    def q(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, [default])[0]

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 8000


@dataclass(frozen=True)
class LineFinal:
    """Utterance mode: one final the fake sent for a line (a line may take several: Finalize mid-speech)."""

    line: int
    text: str
    connection: int  # index into ``connections``
    from_finalize: bool
    start_s: float  # the words' span, in the connection's audio time
    end_s: float


@dataclass(frozen=True)
class _Word:
    text: str
    start: float
    end: float
    confidence: float
    utt: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"word": self.text.lower().strip(".,?!;:"), "start": round(self.start, 3),
                "end": round(self.end, 3), "confidence": self.confidence, "punctuated_word": self.text}


# ------------------------------------------------------------------------------------------ a connection


class _Conn:
    """What both modes share: the query, the outgoing queue, the message shapes."""

    def __init__(self, conn: ListenConn) -> None:
        self.conn = conn
        ep = conn.q("endpointing", "10")
        self.endpointing_s: float | None = None if ep == "false" else int(ep or 10) / 1000
        self.interim = conn.q("interim_results") == "true"
        self.vad = conn.q("vad_events") == "true"
        ue = conn.q("utterance_end_ms")
        self.utterance_end_s = int(ue) / 1000 if ue and self.interim else None
        self.smart = conn.q("smart_format") == "true" or conn.q("punctuate") == "true"
        self.request_id = str(uuid.uuid4())
        self.cursor = 0.0  # end of the last final's window
        self.queue: asyncio.Queue[tuple[float, object]] = asyncio.Queue()

    def out(self, msg: object, latency_s: float = 0.0) -> None:
        self.queue.put_nowait((asyncio.get_running_loop().time() + latency_s, msg))

    def results(self, words: list[_Word], t_end: float, *, is_final: bool, speech_final: bool = False,
                from_finalize: bool = False) -> dict[str, Any]:
        if is_final:
            self.conn.unfinalized = 0  # what came before is final now
        text = " ".join(w.text if self.smart else w.text.lower().strip(".,?!;:") for w in words)
        conf = min((w.confidence for w in words), default=0.0)
        return {
            "type": "Results", "channel_index": [0, 1], "start": round(self.cursor, 3),
            "duration": round(max(0.0, t_end - self.cursor), 3), "is_final": is_final,
            "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": conf,
                                          "words": [w.as_json() for w in words]}]},
            "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO, "model_uuid": MODEL_UUID},
        }

    def speech_started(self, t: float, latency_s: float = 0.0) -> None:
        if self.vad:
            self.out({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(t, 3)}, latency_s)

    def utterance_end(self, last_word_end: float) -> None:
        self.out({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last_word_end, 3)})

    def metadata_and_close(self, t: float) -> None:
        self.out({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                  "sha256": "0" * 64, "created": "2026-01-01T00:00:00.000Z", "duration": round(t, 3),
                  "channels": 1})
        self.out(_CLOSE)

    # the receive loop's calls
    def audio(self, data: bytes, t: float) -> None: ...
    def finalize_now(self, t: float) -> None: ...
    def close_stream(self, t: float) -> None: ...
    def ended(self) -> None: ...


class _Session(_Conn):
    """Script mode: turns audio time into the messages Deepgram would send for the scripted words."""

    def __init__(self, conn: ListenConn, script: Script) -> None:
        super().__init__(conn)
        self.script = script
        self.words = [
            _Word(w, u.start_s + i * u.word_s, u.start_s + i * u.word_s + 0.8 * u.word_s, u.confidence, n)
            for n, u in enumerate(script.utterances) for i, w in enumerate(u.words)
        ]
        self.endpointing_s = self.endpointing_s or 0.0
        self.heard = self.final = 0  # words heard so far / words already in a final
        self.started: set[int] = set()
        self.ended_utts: set[int] = set()

    def out(self, msg: object, latency_s: float = 0.0) -> None:
        super().out(msg, self.script.result_latency_s)

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
            for n in {w.utt for w in self.words[:self.final]} - self.ended_utts:
                last = max(w.end for w in self.words if w.utt == n)
                if t >= last + self.utterance_end_s:
                    self.ended_utts.add(n)
                    self.utterance_end(last)

    def audio(self, data: bytes, t: float) -> None:
        self.advance(t)

    def finalize_now(self, t: float) -> None:
        self.advance(t)
        self.finalize(t, speech_final=False, from_finalize=True)

    def close_stream(self, t: float) -> None:
        self.advance(t)
        if self.heard > self.final:
            self.finalize(t, speech_final=False, from_finalize=False)
        self.metadata_and_close(t)


# ------------------------------------------------------------------------------------------ utterance mode


def _ulaw_to_linear(u: int) -> int:
    """G.711 mu-law decode (the fake's own, so it does not share a bug with adapters/audio.py)."""
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


_POWER = tuple(_ulaw_to_linear(u) ** 2 for u in range(256))
_FULL_SCALE = 32768**2


def frame_dbfs(frame: bytes) -> float:
    """Mean power of mu-law bytes in dB relative to full scale (digital silence: -120)."""
    power = sum(map(_POWER.__getitem__, frame)) / max(1, len(frame))
    return 10 * math.log10(power / _FULL_SCALE) if power else -120.0


@dataclass
class _Utt:
    start: float  # audio time of its first voiced frame
    last_voiced: float  # end of its last voiced frame
    line: int | None = None  # the line it speaks, once it is long enough to be words
    words: tuple[str, ...] = ()
    base: int = 0  # words of the line finalized before this utterance (a line resumed after a drop)
    done: int = 0  # words of the line in a final so far
    shown: int = 0  # words of the line shown in interims so far
    next_from: float = 0.0  # where the next final's first word begins
    ended: bool = False


class _LineSession(_Conn):
    """Utterance mode: detects speech in the received audio and transcribes it from ``Lines``."""

    def __init__(self, conn: ListenConn, cfg: Lines, fake: DeepgramListenFake, index: int) -> None:
        super().__init__(conn)
        self.cfg, self.fake, self.index = cfg, fake, index
        self.gap_s = max(self.endpointing_s or 0.3, cfg.min_gap_s)
        self.pending = bytearray()  # bytes of a frame not yet complete
        self.frames = 0
        self.utt: _Utt | None = None
        self.ue_due: tuple[float, float] | None = None  # (audio time it is due, last_word_end)

    @property
    def t(self) -> float:
        return self.frames * FRAME_S

    def audio(self, data: bytes, t: float) -> None:
        self.pending += data
        while len(self.pending) >= FRAME_BYTES:
            frame = bytes(self.pending[:FRAME_BYTES])
            del self.pending[:FRAME_BYTES]
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        t0 = self.t
        self.frames += 1
        t1 = self.t
        u = self.utt
        if frame_dbfs(frame) > self.cfg.silence_dbfs:
            if u is None or u.ended:
                self.ue_due = None  # speech again before utterance_end_ms: no UtteranceEnd for the last one
                u = self.utt = _Utt(start=t0, last_voiced=t1, next_from=t0)
                self.speech_started(t0, self.cfg.speech_started_latency_s)
            u.last_voiced = t1
            if u.line is None and (t1 - u.start >= self.cfg.min_speech_s or self.fake.resume is not None):
                self._attach(u)
            self._interim(u, t1)
        elif u is not None and not u.ended and t1 - u.last_voiced >= self.gap_s:
            self._end(u, t1)
        if self.ue_due is not None and t1 >= self.ue_due[0]:
            self.utterance_end(self.ue_due[1])
            self.ue_due = None

    def _attach(self, u: _Utt) -> None:
        taken = self.fake.take_line()
        if taken is not None:
            u.line, u.base = taken
            u.words = tuple(self.fake.lines_cfg.lines[u.line].split())  # type: ignore[union-attr]
            u.done = u.shown = u.base

    def _heard(self, u: _Utt, t1: float) -> int:
        """Words of the line said by now, at one per word_s (all of them only at a final)."""
        if t1 - u.start < self.cfg.interim_after_s:
            return u.base
        return min(len(u.words), u.base + max(1, int((t1 - u.start) / self.cfg.word_s)))

    def _timed(self, u: _Utt, upto: int, end: float) -> list[_Word]:
        """Words done..upto spread over the speech from where the last final stopped to ``end``."""
        n = upto - u.done
        if n <= 0:
            return []
        begin = min(u.next_from, end)
        slot = max(end - begin, 0.02 * n) / n
        words = []
        for j, text in enumerate(u.words[u.done:upto]):
            start = begin + j * slot
            stop = begin + (j + 0.85) * slot if j < n - 1 else begin + n * slot
            words.append(_Word(text, start, stop, self.cfg.confidence))
        return words

    def _interim(self, u: _Utt, t1: float) -> None:
        if not self.interim or u.line is None:
            return
        k = self._heard(u, t1)
        if k > u.shown and k > u.done:
            u.shown = k
            self.out(self.results(self._timed(u, k, t1), t1, is_final=False), self.cfg.interim_latency_s)

    def _final(self, u: _Utt | None, upto: int, t: float, *, speech_final: bool, from_finalize: bool) -> None:
        words = [] if u is None else self._timed(u, upto, u.last_voiced)
        self.out(self.results(words, t, is_final=True, speech_final=speech_final and bool(words),
                              from_finalize=from_finalize), self.cfg.final_latency_s)
        self.cursor = t
        if u is not None and words:
            assert u.line is not None
            self.fake.finals.append(LineFinal(line=u.line, text=" ".join(w.text for w in words),
                                              connection=self.index, from_finalize=from_finalize,
                                              start_s=words[0].start, end_s=words[-1].end))
            u.done, u.shown, u.next_from = upto, max(u.shown, upto), words[-1].end

    def _end(self, u: _Utt, t1: float) -> None:
        """``gap_s`` of silence after the speech: the utterance is over; flush it, UtteranceEnd later."""
        u.ended = True
        if u.line is None:
            return  # too short to be words
        if u.done < len(u.words):
            self._final(u, len(u.words), t1, speech_final=self.endpointing_s is not None, from_finalize=False)
        if u.done > u.base:
            if self.utterance_end_s is not None:
                self.ue_due = (u.next_from + self.utterance_end_s, u.next_from)
            self.fake.utterance_ended(self.conn, t1)

    def finalize_now(self, t: float) -> None:
        u = self.utt
        if u is None or u.ended or u.line is None or u.done >= len(u.words):
            return self._final(None, 0, self.t, speech_final=False, from_finalize=True)
        quiet = self.t - u.last_voiced >= self.cfg.quiet_s
        upto = len(u.words) if quiet else max(u.shown, u.done)
        self._final(u, upto, self.t, speech_final=quiet, from_finalize=True)

    def close_stream(self, t: float) -> None:
        u = self.utt
        if u is not None and not u.ended and u.line is not None and u.done < len(u.words):
            self._final(u, len(u.words), self.t, speech_final=False, from_finalize=False)
        self.metadata_and_close(self.t)

    def ended(self) -> None:
        """The socket is gone without CloseStream: a line cut mid-way goes on in the next connection."""
        u = self.utt
        if u is not None and not u.ended and u.line is not None and u.done < len(u.words):
            self.fake.resume = (u.line, u.done)


# ------------------------------------------------------------------------------------------ the server


class DeepgramListenFake(FakeServer):
    """``script``: one Script for every connection, or one per connection (the last one repeats), or
    ``Lines`` (utterance mode; the line count runs across connections, so use one fake per call)."""

    def __init__(self, script: Script | Sequence[Script] | Lines = Script(), *, api_key: str = "test-key",
                 faults: ListenFaults = ListenFaults(), max_rate: float | None = 1.25,
                 burst_s: float = 0.5) -> None:
        super().__init__()
        self.max_rate, self.burst_s = max_rate, burst_s
        self.lines_cfg = script if isinstance(script, Lines) else None
        self.scripts = [] if isinstance(script, Lines) else [script] if isinstance(script, Script) else list(script)
        self.api_key, self.faults = api_key, faults
        self.connections: list[ListenConn] = []
        self.rejected: list[int] = []  # statuses of refused upgrades
        self.finals: list[LineFinal] = []  # utterance mode: every final with words, in order
        self.next_line = 0  # utterance mode: the line the next utterance speaks
        self.resume: tuple[int, int] | None = None  # (line, words done) of a line cut by a dropped socket
        self.utterances_ended = 0
        self._drop_at: tuple[ListenConn, float] | None = None
        self._dropped = False
        self._refused = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)

    @property
    def audio_bytes(self) -> int:
        return sum(len(c.audio) for c in self.connections)

    @property
    def lines_heard(self) -> list[str]:
        """Utterance mode: the text finalized for each line, in line order (several finals joined)."""
        by_line: dict[int, list[str]] = {}
        for f in self.finals:
            by_line.setdefault(f.line, []).append(f.text)
        return [" ".join(by_line[n]) for n in sorted(by_line)]

    def take_line(self) -> tuple[int, int] | None:
        if self.resume is not None:
            taken, self.resume = self.resume, None
            return taken
        assert self.lines_cfg is not None
        if self.next_line >= len(self.lines_cfg.lines):
            return None
        self.next_line += 1
        return self.next_line - 1, 0

    def utterance_ended(self, conn: ListenConn, t: float) -> None:
        self.utterances_ended += 1
        if self.faults.drop_after_utterance == self.utterances_ended and not self._dropped:
            self._drop_at = (conn, t + self.faults.drop_delay_s)

    def _session(self, conn: ListenConn) -> _Conn:
        if self.lines_cfg is not None:
            return _LineSession(conn, self.lines_cfg, self, len(self.connections) - 1)
        return _Session(conn, self.scripts[min(len(self.connections) - 1, len(self.scripts) - 1)])

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
        conn = ListenConn(query=query, headers=dict(request.headers), opened_at=asyncio.get_running_loop().time())
        self.connections.append(conn)
        session = self._session(conn)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sender = asyncio.create_task(self._send_loop(ws, session))
        try:
            await self._receive_loop(request, ws, conn, session)
        finally:
            if conn.ended == "close_stream":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender), 5)
            else:
                session.ended()
            sender.cancel()
            conn.ended = conn.ended or "client"
        return ws

    def _drop_due(self, conn: ListenConn) -> bool:
        if self._dropped:
            return False
        drop = self.faults.drop_after_s
        if drop is not None and conn.audio_s >= drop:
            return True
        return self._drop_at is not None and self._drop_at[0] is conn and conn.audio_s >= self._drop_at[1]

    async def _receive_loop(self, request: web.Request, ws: web.WebSocketResponse, conn: ListenConn,
                            session: _Conn) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if self.max_rate is not None:  # at most max_rate x real time: the rest waits its turn
                    elapsed = asyncio.get_running_loop().time() - conn.opened_at
                    ahead = conn.audio_s + len(msg.data) / 8000 - self.max_rate * elapsed
                    conn.ahead_s = max(conn.ahead_s, ahead)
                    if ahead > self.burst_s:
                        await asyncio.sleep((ahead - self.burst_s) / self.max_rate)
                conn.audio += msg.data
                conn.unfinalized += len(msg.data)
                session.audio(msg.data, conn.audio_s)
                if self._drop_due(conn):
                    self._dropped, conn.ended = True, "dropped"
                    if request.transport is not None:
                        request.transport.abort()  # a network drop: no close frame, the client sees 1006
                    return
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type", "")
                conn.controls.append(kind)
                if kind == "Finalize" and conn.unfinalized:
                    session.finalize_now(conn.audio_s)
                elif kind == "CloseStream":
                    conn.ended = "close_stream"
                    session.close_stream(conn.audio_s)
                    return

    async def _send_loop(self, ws: web.WebSocketResponse, session: _Conn) -> None:
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
