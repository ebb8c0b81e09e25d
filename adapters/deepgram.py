"""Deepgram: live STT (listen v1 WebSocket) through deepgram-sdk, and what Aura TTS (adapters/aura.py) shares.

Rules:
- Imports engine.events and deepgram-sdk (plus websockets, the SDK's transport, for its close errors).
- STT translates Deepgram messages into SpeechStarted(source="stt") / Transcript / UtteranceEnd and nothing
  more; turn-taking is the machine's. Events carry ``t_ms=0`` (the runtime stamps arrival); word timings
  become call time: ``t0_ms`` + where this connection's audio began in the stream + Deepgram's seconds.
- A dropped STT socket is a ProviderNotice, not an error: we reconnect (backoff 0, 200, 500 ms) and resend
  the audio after the last final result (what Deepgram may not have transcribed), gap included, but at most
  ``RESEND_TAIL_MS`` of it (what is skipped is in the notice) and at most ``CATCHUP_RATE`` x real time:
  Deepgram takes audio no faster (developers.deepgram.com/docs/recovering-from-connection-errors-and-
  timeouts-when-live-streaming-audio). Audio and Finalize that come meanwhile queue behind, in order.
- No key in any event or exception text: SDK errors are replaced by our own short messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import AsyncV1SocketClient as ListenSocket

from adapters.env import need as _need
from engine.events import BYTES_PER_MS, Input, ProviderNotice, SpeechStarted, Transcript, UtteranceEnd

#: The SDK modules that call websockets' connect through a name of their own: ``client.py`` is what
#: ``client.listen.v1.connect`` / ``client.speak.v1.connect`` run, ``raw_client.py`` the raw variant
#: (deepgram/transport.py's ``_TARGET_MODULES`` patches the same names to swap the transport).
_SOCKET_MODULES = ("deepgram.listen.v1.client", "deepgram.listen.v1.raw_client",
                   "deepgram.speak.v1.client", "deepgram.speak.v1.raw_client")


def _no_deflate() -> None:
    """mu-law barely compresses, so offering permessage-deflate only costs CPU (bench/README.md): every
    module's connect gets ``compression=None`` and the handshake offers no extension. The SDK has no option."""
    for name in _SOCKET_MODULES:
        module = importlib.import_module(name)
        connect: Any = getattr(module, "websockets_client_connect", None)
        # websockets' own connect only: not twice, and not a transport the SDK's install_transport put there
        if getattr(connect, "__module__", "").startswith("websockets"):
            module.websockets_client_connect = functools.partial(connect, compression=None)  # type: ignore[attr-defined]


_no_deflate()

Emit = Callable[[Input], None]

REQUIRED_ENV = ("DEEPGRAM_API_KEY",)
#: Reference 2.4: send KeepAlive every 3-5 s while no audio flows; Deepgram closes after 10 s (NET-0001).
KEEPALIVE_S = 3.0
RECONNECT_BACKOFF_S = (0.0, 0.2, 0.5)  # three tries inside ~1 s: the caller is mid-sentence
CONNECT_TIMEOUT_S = 5.0  # first connection
RECONNECT_TIMEOUT_S = 1.0  # each reconnect attempt
CLOSE_WAIT_S = 1.5  # after CloseStream: Deepgram sends the last finals and Metadata, then closes
HISTORY_CAP_BYTES = 30_000 * BYTES_PER_MS  # audio kept since the last final (Deepgram finalizes well before)
RESEND_CHUNK_BYTES = 1600  # 200 ms a frame when catching up
#: Resent after a drop: at most this much (at 1.25x the backlog drains at 0.25x, so 2 s of it lags 8 s).
RESEND_TAIL_MS = 2000
CATCHUP_RATE = 1.25  # x real time: the most Deepgram takes (the recovery doc above)


class DeepgramError(Exception):
    """A Deepgram failure. The message is short and never holds the key."""


def environment(base_url: str | None) -> DeepgramClientEnvironment:
    """The SDK environment for ``base_url`` (http(s):// or ws(s)://; a fake or a self-hosted Deepgram)."""
    if not base_url:
        return DeepgramClientEnvironment.PRODUCTION
    url = base_url.rstrip("/")
    scheme, _, rest = url.partition("://")
    secure = scheme in ("https", "wss")
    http, ws = f"{'https' if secure else 'http'}://{rest}", f"{'wss' if secure else 'ws'}://{rest}"
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


def decode(msg: Any, base_ms: int) -> Input | None:
    """One SDK-parsed listen message -> an event, or None. ``base_ms``: call time of this stream's 0 s."""
    kind = getattr(msg, "type", None)
    if kind == "SpeechStarted":
        return SpeechStarted(t_ms=0, source="stt")
    if kind == "UtteranceEnd":
        return UtteranceEnd(t_ms=0, last_word_end_ms=base_ms + round(msg.last_word_end * 1000))
    if kind != "Results" or not msg.channel.alternatives:
        return None  # Metadata and anything newer carry nothing the machine needs
    alt = msg.channel.alternatives[0]
    text, is_final = alt.transcript.strip(), bool(msg.is_final)
    speech_final = is_final and bool(msg.speech_final)
    if not text and not speech_final:  # reference 2.3: empty results are silence, unless they end speech
        return None
    words = alt.words or []
    return Transcript(
        t_ms=0, text=text, is_final=is_final, speech_final=speech_final, confidence=float(alt.confidence),
        start_ms=base_ms + round(words[0].start * 1000) if words else None,
        end_ms=base_ms + round(words[-1].end * 1000) if words else None,
    )


async def _open(stack: AsyncExitStack, connect: Any, timeout_s: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(stack.enter_async_context(connect), timeout_s)
    except ApiError as e:  # its text holds the (redacted) request headers: never pass it on
        raise DeepgramError(f"deepgram {what}: connect failed: HTTP {e.status_code}") from None
    except Exception as e:
        raise DeepgramError(f"deepgram {what}: connect failed: {type(e).__name__}") from None


async def _shut(stack: AsyncExitStack | None) -> None:
    if stack is not None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(stack.aclose(), 1.0)



class DeepgramStt:
    """``engine.ports.Stt``: one listen session per call."""

    REQUIRED_ENV = REQUIRED_ENV
    #: In the caller's long silences, 100 ms a message instead of 20 (engine.ports.Stt): a fifth of the socket
    #: writes. Deepgram recommends 20-250 ms a message (github.com/orgs/deepgram/discussions/224).
    batch_frames = 5

    def __init__(self, api_key: str, *, model: str = "nova-3", language: str = "en-US",
                 keyterms: Sequence[str] = (), endpointing_ms: int = 300, utterance_end_ms: int = 1000,
                 base_url: str | None = None, keepalive_s: float = KEEPALIVE_S) -> None:
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment(base_url))
        self.keepalive_s = keepalive_s
        #: Silence goes frame by frame until Deepgram's endpointing and UtteranceEnd could have fired.
        self.batch_after_ms = max(endpointing_ms, utterance_end_ms) + 200
        self.query: dict[str, Any] = {
            "model": model, "language": language, "encoding": "mulaw", "sample_rate": 8000, "channels": 1,
            "interim_results": True, "endpointing": endpointing_ms, "utterance_end_ms": utterance_end_ms,
            "vad_events": True, "smart_format": True,
            "keyterm": list(keyterms) or None,  # the SDK repeats the param per term (nova-3 only)
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str], **settings: Any) -> DeepgramStt:
        return cls(_need(env, "DEEPGRAM_API_KEY"), base_url=env.get("DEEPGRAM_BASE_URL") or None, **settings)

    def session(self, *, params: Mapping[str, str] | None = None, t0_ms: int = 0) -> DeepgramSttSession:
        """``params`` (the call's custom parameters) are not sent: they may hold caller data."""
        return DeepgramSttSession(self._client, self.query, t0_ms=t0_ms, keepalive_s=self.keepalive_s)


class DeepgramSttSession:
    """``engine.ports.SttSession`` over one listen socket at a time."""

    def __init__(self, client: AsyncDeepgramClient, query: dict[str, Any], *, t0_ms: int,
                 keepalive_s: float) -> None:
        self._client, self._query, self._t0_ms, self._keepalive_s = client, query, t0_ms, keepalive_s
        self._emit: Emit | None = None
        self._conn: ListenSocket | None = None  # None while reconnecting
        self._stack: AsyncExitStack | None = None
        self._pos = 0  # audio bytes taken from the runtime: the stream position
        self._offset = 0  # stream position where the current connection's audio begins
        self._history = bytearray()  # audio from _history_at to _pos, resent after a drop
        self._history_at = 0
        self._last_sent = 0.0  # loop time of the last audio or KeepAlive
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._sent = 0  # catching up: stream position sent so far (None of the rest goes out directly)
        self._catching_up: asyncio.Task[None] | None = None
        self._finalize_at: list[int] = []  # catching up: stream positions where a Finalize is due

    # ---------------------------------------------------------------------------------- SttSession

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        self._conn, self._stack = await self._connect(CONNECT_TIMEOUT_S)
        self._last_sent = asyncio.get_running_loop().time()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._keepalive())]

    async def send_audio(self, mulaw: bytes) -> None:
        if self._closing or not mulaw:
            return
        self._pos += len(mulaw)
        self._history += mulaw
        if len(self._history) > HISTORY_CAP_BYTES:
            self._trim(self._pos - HISTORY_CAP_BYTES)
        self._last_sent = asyncio.get_running_loop().time()
        conn = self._conn
        if conn is not None and self._catching_up is None:
            # A send into a dead socket is no loss: the reader sees the drop and the audio is resent.
            with contextlib.suppress(Exception):
                await conn.send_media(mulaw)

    async def speech_stopped(self) -> None:
        if self._catching_up is not None:
            self._finalize_at.append(self._pos)  # after the audio before it, as it would have gone
        elif self._conn is not None and not self._closing:
            with contextlib.suppress(Exception):
                await self._conn.send_finalize()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        runner, keepalive = self._tasks or (None, None)
        if keepalive is not None:
            keepalive.cancel()
        if self._catching_up is not None:  # the backlog first (CloseStream finishes what was sent)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._catching_up), CLOSE_WAIT_S)
            if self._catching_up is not None:
                self._catching_up.cancel()
        if self._conn is not None and runner is not None:
            with contextlib.suppress(Exception):
                await self._conn.send_close_stream()
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(runner), CLOSE_WAIT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._emit = None  # nothing after close
        await _shut(self._stack)
        self._conn = self._stack = None

    # ---------------------------------------------------------------------------------- internals

    def _send(self, event: Input) -> None:
        if self._emit is not None:
            self._emit(event)

    async def _connect(self, timeout_s: float) -> tuple[ListenSocket, AsyncExitStack]:
        stack = AsyncExitStack()
        try:
            return await _open(stack, self._client.listen.v1.connect(**self._query), timeout_s, "stt"), stack
        except BaseException:
            await _shut(stack)
            raise

    def _trim(self, upto: int) -> None:
        """Forget audio before stream position ``upto`` (already final, or past the cap)."""
        cut = min(upto, self._pos) - self._history_at
        if cut > 0:
            del self._history[:cut]
            self._history_at += cut

    async def _run(self) -> None:
        """Read the current socket; when it drops, reconnect and go on, until close()."""
        while True:
            why = await self._read(self._conn, self._t0_ms + self._offset // BYTES_PER_MS)
            if self._closing:
                return
            self._conn = None
            if self._catching_up is not None:
                self._catching_up.cancel()
                self._catching_up = None
            self._send(ProviderNotice(t_ms=0, provider="deepgram", what="stt_dropped", detail=why))
            await _shut(self._stack)
            self._stack = None
            if not await self._reconnect():
                if not self._closing:
                    self._send(ProviderNotice(t_ms=0, provider="deepgram", what="stt_failed",
                                              detail=f"{len(RECONNECT_BACKOFF_S)} reconnects failed"))
                return

    async def _read(self, conn: ListenSocket | None, base_ms: int) -> str:
        if conn is None:
            return "no socket"
        try:
            async for msg in conn:  # the SDK parses each text frame into its typed model
                if getattr(msg, "type", None) == "Results" and msg.is_final:
                    # Deepgram will not revisit audio up to a final's end: no need to resend it.
                    end_ms = round((msg.start + msg.duration) * 1000)
                    self._trim(self._offset + end_ms * BYTES_PER_MS)
                event = decode(msg, base_ms)
                if event is not None:
                    self._send(event)
        except websockets.exceptions.ConnectionClosed as e:
            return f"code {e.rcvd.code}" if e.rcvd is not None else "code 1006"
        except Exception as e:
            return type(e).__name__
        return "closed by server"

    async def _reconnect(self) -> bool:
        for delay in RECONNECT_BACKOFF_S:
            await asyncio.sleep(delay)
            if self._closing:
                return False
            try:
                conn, stack = await self._connect(RECONNECT_TIMEOUT_S)
            except DeepgramError:
                continue
            skipped = max(0, self._pos - RESEND_TAIL_MS * BYTES_PER_MS - self._history_at)
            self._trim(self._history_at + skipped)
            start = self._history_at
            # From here audio and Finalize queue in the history until _catch_up has sent what is due.
            self._conn, self._stack, self._offset, self._sent = conn, stack, start, start
            self._catching_up = asyncio.create_task(self._catch_up(conn))
            detail = f"resending {(self._pos - start) // BYTES_PER_MS} ms at {CATCHUP_RATE:g}x"
            if skipped:
                detail += f", {skipped // BYTES_PER_MS} ms older skipped"
            self._send(ProviderNotice(t_ms=0, provider="deepgram", what="stt_reconnected", detail=detail))
            if self._closing:  # close() came in meanwhile and found no socket to close
                self._catching_up.cancel()
                await _shut(stack)
                self._conn = self._stack = None
                return False
            return True
        return False

    async def _catch_up(self, conn: ListenSocket) -> None:
        """Send the history from ``_sent`` at most CATCHUP_RATE x real time, Finalizes in place; then hand
        the socket back to send_audio (no await between the last check and that)."""
        loop = asyncio.get_running_loop()
        t0, base = loop.time(), self._sent
        try:
            while True:
                while self._finalize_at and self._finalize_at[0] <= self._sent:
                    self._finalize_at.pop(0)
                    await conn.send_finalize()
                if self._sent >= self._pos:
                    self._catching_up = None
                    return
                n = min(RESEND_CHUNK_BYTES, self._pos - self._sent)
                due = t0 + (self._sent + n - base) / (BYTES_PER_MS * 1000 * CATCHUP_RATE)
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                    continue  # the history may have grown meanwhile: a fuller chunk
                self._sent = max(self._sent, self._history_at)  # past the history cap: what is left
                i = self._sent - self._history_at
                await conn.send_media(bytes(self._history[i:i + n]))
                self._sent += n
                self._last_sent = loop.time()
        except Exception:  # the socket died: the reader sees it and reconnects
            self._catching_up = None

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, self._last_sent + self._keepalive_s - loop.time()))
            if loop.time() - self._last_sent >= self._keepalive_s and self._conn is not None:
                self._last_sent = loop.time()
                with contextlib.suppress(Exception):
                    await self._conn.send_keep_alive()

