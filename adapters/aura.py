"""Deepgram Aura TTS over the speak v1 WebSocket: a few warm sockets, reused line after line.

Rules:
- A socket takes many lines: Speak + Flush per line, audio until ``Flushed``; Clear (then ``Cleared``) when
  the line is cancelled (barge-in), after which the socket takes the next line (speak/v1/socket_client.py:
  send_text, send_flush, send_clear, send_close on one connection).
- Limits kept (developers.deepgram.com): at most ``max_streams`` sockets open at once, per process (the API
  rate-limit page gives Aura-2 streaming "up to 15 concurrent" per project on Pay as You Go and Growth);
  at most 20 Flushes per socket in any 60 s ("tts-ws-flush", Limits: past that a Warning and no audio).
  A line goes to an idle socket with Flushes left, else to a new socket under the cap, else an idle socket
  whose Flushes are spent is closed and replaced; with every socket busy it waits ``ACQUIRE_WAIT_S``.
- An idle socket is closed after ``IDLE_CLOSE_S`` (it counts against the project's concurrency), so a
  process holds about as many sockets as it has lines in flight. ``warm()`` opens one ahead of the first
  line (the runtime calls it when a call starts).
- A socket that fails before a line's first audio is replaced and the line sent again, once; after audio
  went out the line fails (DeepgramError), as half a line from a retry would repeat words.
- Yields mu-law 8 kHz in 160-byte (20 ms) multiples as it arrives. No key in any error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.speak.v1.types import SpeakV1Text

from adapters.audio import FrameCutter
from adapters.deepgram import (
    BYTES_PER_MS,
    CONNECT_TIMEOUT_S,
    REQUIRED_ENV,
    DeepgramError,
    _open,
    _shut,
    environment,
)
from adapters.env import need as _need
from engine.events import Speak

log = logging.getLogger(__name__)

FLUSH_LIMIT = 20  # Flushes per socket ...
FLUSH_WINDOW_S = 60.0  # ... in any window this long (developers.deepgram.com/docs/tts-ws-flush)
MAX_STREAMS = 15  # concurrent Aura-2 streams per project (developers.deepgram.com/reference/api-rate-limits)
IDLE_CLOSE_S = 20.0  # an unused socket is closed after this long
ACQUIRE_WAIT_S = 2.0  # every socket busy: wait this long for one, then fail the line
CLEAR_WAIT_S = 1.0  # Clear sent: the socket is reused once Cleared comes, closed if it does not


class _Socket:
    def __init__(self, conn: Any, stack: AsyncExitStack) -> None:
        self.conn, self.stack = conn, stack
        self.flushes: deque[float] = deque()  # clock times of this socket's Flushes in the window
        self.idle_since = 0.0

    def flushes_left(self, now: float) -> int:
        while self.flushes and self.flushes[0] <= now - FLUSH_WINDOW_S:
            self.flushes.popleft()
        return FLUSH_LIMIT - len(self.flushes)


class DeepgramTts:
    """``engine.ports.Tts`` over Aura's speak socket, shared by every call of the process."""

    REQUIRED_ENV = REQUIRED_ENV

    def __init__(self, api_key: str, *, voice: str = "aura-2-thalia-en", base_url: str | None = None,
                 max_streams: int = MAX_STREAMS, idle_close_s: float = IDLE_CLOSE_S,
                 clock: Callable[[], float] | None = None) -> None:
        self.voice, self.max_streams, self.idle_close_s = voice, max_streams, idle_close_s
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment(base_url))
        self._clock = clock  # the Flush window's time (default: the loop's); a test can speed it up
        self._idle: list[_Socket] = []
        self._open = 0  # sockets open or opening, busy or idle
        self._clearing = 0  # sockets waiting for Cleared
        self._warming = 0  # warm() connects in flight
        self._freed: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.connects = 0  # sockets opened so far (a figure for tests and bench/)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **settings: Any) -> DeepgramTts:
        """DEEPGRAM_TTS_MAX_STREAMS: the project's Aura stream limit, where its plan has another one."""
        cap = env.get("DEEPGRAM_TTS_MAX_STREAMS") or ""
        if cap:
            if not cap.isdigit() or int(cap) < 1:
                raise ValueError("DEEPGRAM_TTS_MAX_STREAMS must be a whole number of streams, 1 or more")
            settings.setdefault("max_streams", int(cap))
        return cls(_need(env, "DEEPGRAM_API_KEY"), base_url=env.get("DEEPGRAM_BASE_URL") or None, **settings)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # ---------------------------------------------------------------------------------- Tts

    async def warm(self) -> None:
        """Open a socket ahead of the first line, unless an idle one can take it."""
        if any(s.flushes_left(self._now()) > 0 for s in self._idle) or self._open >= self.max_streams:
            return
        self._warming += 1
        try:
            with contextlib.suppress(DeepgramError):
                self._release(await self._connect())
        finally:
            self._warming -= 1
            self._wake()

    async def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        for attempt in (1, 2):
            sock = await self._acquire()
            frames = FrameCutter()
            try:
                await sock.conn.send_text(SpeakV1Text(text=effect.text))
                await sock.conn.send_flush()
                sock.flushes.append(self._now())
                while True:
                    msg = await sock.conn.recv()
                    if isinstance(msg, bytes):
                        if out := frames.cut(msg):
                            yield out
                        continue
                    kind = getattr(msg, "type", None)  # Flushed and Cleared share a shape: read the type
                    if kind == "Flushed":
                        self._release(sock)  # the line is whole: the socket serves the next one
                        break
                    if kind == "Warning":  # e.g. over the Flush limit: this socket is discarded below
                        raise DeepgramError(f"deepgram tts: warning {getattr(msg, 'code', '')[:40]}")
            except (GeneratorExit, asyncio.CancelledError):
                self._clearing += 1  # now: the next line, even at once, waits for this socket
                self._spawn(self._clear(sock))  # the line was cut: Clear, then the socket serves again
                raise
            except Exception as exc:
                await self._discard(sock)
                if frames.sent or attempt == 2:
                    if isinstance(exc, DeepgramError):
                        raise
                    raise DeepgramError(f"deepgram tts: stream ended early, after {frames.sent // BYTES_PER_MS} ms"
                                        ) from None
                log.info("deepgram tts: socket lost before audio (%s); again on a new one", type(exc).__name__)
                continue
            if tail := frames.tail():
                yield tail
            return

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        idle, self._idle = self._idle, []
        for sock in idle:
            await self._discard(sock)

    # ---------------------------------------------------------------------------------- the pool

    async def _acquire(self) -> _Socket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACQUIRE_WAIT_S
        while True:
            now = self._now()
            usable = [s for s in self._idle if s.flushes_left(now) > 0]
            if usable:
                sock = max(usable, key=lambda s: s.idle_since)  # the freshest: the others may expire
                self._idle.remove(sock)
                return sock
            if (self._clearing or self._warming) and loop.time() < deadline:  # a socket is nearly free
                await self._wait_freed(min(deadline, loop.time() + CLEAR_WAIT_S))
                continue
            if self._open < self.max_streams:
                return await self._connect()
            if self._idle:  # at the cap, and every idle socket has spent its Flushes: replace one
                await self._discard(self._idle.pop(0))
                continue
            if not await self._wait_freed(deadline):
                raise DeepgramError(f"deepgram tts: all {self.max_streams} streams busy")

    async def _wait_freed(self, until: float) -> bool:
        """Wait until a socket is released or closed, or the loop's time ``until``; False on timeout."""
        self._freed = self._freed or asyncio.Event()
        self._freed.clear()
        try:
            await asyncio.wait_for(self._freed.wait(), max(0.0, until - asyncio.get_running_loop().time()))
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> _Socket:
        self._open += 1
        stack = AsyncExitStack()
        try:
            connect = self._client.speak.v1.connect(model=self.voice, encoding="mulaw", sample_rate=8000)
            conn = await _open(stack, connect, CONNECT_TIMEOUT_S, "tts")
        except BaseException:
            self._open -= 1
            await _shut(stack)
            self._wake()
            raise
        self.connects += 1
        return _Socket(conn, stack)

    def _release(self, sock: _Socket) -> None:
        sock.idle_since = asyncio.get_running_loop().time()
        self._idle.append(sock)
        asyncio.get_running_loop().call_later(self.idle_close_s, self._expire, sock, sock.idle_since)
        self._wake()

    def _expire(self, sock: _Socket, idle_since: float) -> None:
        if sock in self._idle and sock.idle_since == idle_since:  # unused since it went idle
            self._idle.remove(sock)
            self._spawn(self._discard(sock))

    async def _discard(self, sock: _Socket) -> None:
        self._open -= 1
        self._wake()
        await _shut(sock.stack)

    async def _clear(self, sock: _Socket) -> None:
        """Clear the cut line; the socket serves again once Cleared comes (audio before it is dropped)."""
        try:
            async with asyncio.timeout(CLEAR_WAIT_S):
                await sock.conn.send_clear()
                while getattr(await sock.conn.recv(), "type", None) != "Cleared":
                    pass
        except Exception:
            await self._discard(sock)
            return
        finally:
            self._clearing -= 1
        self._release(sock)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()

