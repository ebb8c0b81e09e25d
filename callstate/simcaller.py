"""A simulated phone caller: plays Twilio's side of a Media Stream against our ``/media`` socket.

Rules:
- It speaks the wire as Twilio does (reference 1.2): ``connected``, ``start``, then one 160-byte ``media`` frame
  per 20 ms of wall time for the whole call, speech or silence, with sequenceNumber / chunk / timestamp
  counting up, and ``stop`` at the end.
- It models the phone's playback (reference 1.4): agent media is queued and played in real time, 20 ms a tick;
  a mark is echoed once everything queued before it has played; ``clear`` drops the queued audio and echoes
  every pending mark at once.
- Turn-taking is a script of CallerLine: a line waits until the agent has finished speaking (playback idle for
  ``gap_ms`` after agent audio played) or barges in ``barge_in_after_ms`` into the agent's audio.
- Deterministic apart from wall time: fixed sids, no randomness; the clock is the loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("callstate.simcaller")

FRAME_BYTES = 160  # 20 ms of mu-law 8 kHz, Twilio's frame
FRAME_S = 0.020
SILENCE_FRAME = b"\xff" * FRAME_BYTES  # mu-law zero, what a quiet phone line sends
CLOSE_TIMEOUT_S = 2.0  # our close handshake must not wait for the server's call to wind down


@dataclass(frozen=True)
class CallerLine:
    """One thing the caller says (mu-law 8 kHz ``audio``), optionally keys (``dtmf``) first, then maybe hangs up."""

    audio: bytes = b""
    gap_ms: int = 600  # wait this long after the agent finished speaking
    barge_in_after_ms: int | None = None  # instead: start this long after agent audio began playing
    dtmf: str | None = None  # digits sent (as dtmf messages) when the line starts
    hangup: bool = False  # send stop and close right after this line


@dataclass
class LineResult:
    started_ms: int | None = None  # ms since the call started (``start`` sent)
    speech_end_ms: int | None = None  # when the line's last frame went out
    first_agent_ms: int | None = None  # first agent media frame received after speech_end_ms

    @property
    def voice_to_voice_ms(self) -> int | None:
        """Voice-to-voice as the caller experiences it: first agent frame - end of the caller's speech."""
        if self.speech_end_ms is None or self.first_agent_ms is None:
            return None
        return self.first_agent_ms - self.speech_end_ms


@dataclass
class SimResult:
    lines: list[LineResult]
    agent_audio_bytes: int = 0
    agent_frames: int = 0
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[tuple[str, int]] = field(default_factory=list)  # (name, ms since call start)
    clears: int = 0
    frames_sent: int = 0
    server_closed: bool = False  # the server closed the socket before we sent stop
    hung_up: bool = False  # a line with hangup=True ended the call
    timed_out: bool = False
    duration_ms: int = 0


class SimCaller:
    """``await SimCaller(url, lines=[...]).run()`` -> SimResult. ``url`` is ws://127.0.0.1:PORT/media."""

    def __init__(self, url: str, *, lines: Sequence[CallerLine], params: Mapping[str, str] | None = None,
                 signature: str | None = None, timeout_s: float = 60.0, greeting: bool = True,
                 call_index: int = 1) -> None:
        self.url, self.lines, self.params = url, list(lines), dict(params or {})
        self.signature, self.timeout_s = signature, timeout_s
        # greeting=False: the agent speaks second, so the first line starts gap_ms after the call starts.
        self.greeting = greeting
        self.call_sid, self.stream_sid = f"CA{call_index:032x}", f"MZ{call_index:032x}"
        self.account_sid = f"AC{0:032x}"
        self.result = SimResult(lines=[LineResult() for _ in self.lines])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._seq = 0  # sequenceNumber of the last message we sent
        self._playback: deque[bytes | str] = deque()  # agent audio not yet played, and mark names
        self._queued_audio = 0
        self._busy_until_ms = 0  # when the frame being played finishes
        self._played_since_line = not greeting  # agent audio played since our last line (or the call start)
        self._agent_started_ms: int | None = None  # when the agent's current turn began playing
        self._line = 0  # index of the next line to start
        self._speech: bytes | None = None  # what is left of the line being spoken
        self._closing = False
        self._receiver: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------ run

    async def run(self) -> SimResult:
        loop = self._loop = asyncio.get_running_loop()
        headers = {"X-Twilio-Signature": self.signature} if self.signature else {}
        timeout = aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S)
        async with aiohttp.ClientSession() as session, session.ws_connect(
                self.url, headers=headers, timeout=timeout, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            self._t0 = loop.time()
            await self._send(ws, "start", {"start": {
                "accountSid": self.account_sid, "callSid": self.call_sid, "streamSid": self.stream_sid,
                "tracks": ["inbound"], "customParameters": self.params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
            receiver = self._receiver = loop.create_task(self._receive(ws))
            try:
                await self._talk(ws)
            finally:
                self._closing = True
                if not ws.closed:
                    await ws.close()
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
        self.result.duration_ms = self._now_ms()
        return self.result

    async def _talk(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The phone's 20 ms tick: play, follow the script, send one frame, until the call is over."""
        loop = self._loop
        assert loop is not None
        n = 0
        # A receiver that died (the server sent something unreadable) ends the call; run() re-raises its error.
        while not self.result.server_closed and not (self._receiver and self._receiver.done()):
            now = self._now_ms()
            if now >= self.timeout_s * 1000:
                self.result.timed_out = True
                log.info("simcaller %s: timed out after %.0f s", self.call_sid, self.timeout_s)
                await self._stop(ws)
                return
            await self._play_tick(ws, now)
            if not await self._script(ws, now):
                await self._stop(ws)
                return
            frame = SILENCE_FRAME
            if self._speech is not None:
                frame, self._speech = self._speech[:FRAME_BYTES], self._speech[FRAME_BYTES:]
                frame += SILENCE_FRAME[len(frame):]
            await self._send(ws, "media", {"media": {
                "track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                "payload": base64.b64encode(frame).decode("ascii")}})
            self.result.frames_sent += 1
            if self._speech is not None and not self._speech and not await self._line_spoken(ws, now):
                return
            n += 1
            # Absolute schedule: a late tick is followed by catch-up frames, so chunk n is always ~n*20 ms.
            await asyncio.sleep(max(0.0, self._t0 + n * FRAME_S - loop.time()))

    async def _script(self, ws: aiohttp.ClientWebSocketResponse, now: int) -> bool:
        """Start the next line when its moment has come. False: nothing left to say, the call is over."""
        if self._speech is not None:
            return True
        if self._line >= len(self.lines):
            gap = self.lines[-1].gap_ms if self.lines else 600
            return not self._agent_done(now, gap)
        line = self.lines[self._line]
        if line.barge_in_after_ms is not None:
            ready = self._agent_started_ms is not None and now - self._agent_started_ms >= line.barge_in_after_ms
        else:
            ready = self._agent_done(now, line.gap_ms)
        if not ready:
            return True
        self.result.lines[self._line].started_ms = now
        for digit in line.dtmf or "":
            await self._send(ws, "dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})
        self._speech = line.audio
        if not line.audio:  # keys only: the line is over as soon as they are sent
            return await self._line_spoken(ws, now)
        return True

    async def _line_spoken(self, ws: aiohttp.ClientWebSocketResponse, now: int) -> bool:
        """The current line's last frame went out. False when the line hangs up."""
        line = self.lines[self._line]
        self.result.lines[self._line].speech_end_ms = now
        self._line += 1
        self._speech = None
        self._played_since_line, self._agent_started_ms = False, None
        if line.hangup:
            self.result.hung_up = True
            await self._stop(ws)
            return False
        return True

    def _agent_done(self, now: int, gap_ms: int) -> bool:
        """The agent finished speaking: its audio played since our last line, and playback idle for gap_ms."""
        return self._played_since_line and not self._queued_audio and now - self._busy_until_ms >= gap_ms

    # ------------------------------------------------------------------------------ the phone's speaker

    async def _play_tick(self, ws: aiohttp.ClientWebSocketResponse, now: int) -> None:
        # The frame played last tick has finished: marks now at the head have had all their audio played.
        self._busy_until_ms = min(self._busy_until_ms, now)
        await self._echo_head_marks(ws, now)
        budget = FRAME_BYTES
        while budget and self._playback and isinstance(self._playback[0], bytes):
            head = self._playback.popleft()
            assert isinstance(head, bytes)
            if len(head) > budget:
                self._playback.appendleft(head[budget:])
                head = head[:budget]
            budget -= len(head)
            self._queued_audio -= len(head)
        played = FRAME_BYTES - budget
        if played:
            self._busy_until_ms = now + played // 8
            self._played_since_line = True
            if self._agent_started_ms is None:
                self._agent_started_ms = now

    async def _echo_head_marks(self, ws: aiohttp.ClientWebSocketResponse, now: int) -> None:
        while self._playback and isinstance(self._playback[0], str) and now >= self._busy_until_ms:
            await self._echo(ws, str(self._playback.popleft()), now)

    async def _echo(self, ws: aiohttp.ClientWebSocketResponse, name: str, now: int) -> None:
        self.result.marks_echoed.append((name, now))
        await self._send(ws, "mark", {"mark": {"name": name}})

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: dict[str, Any] = json.loads(msg.data)
            event, now = data.get("event"), self._now_ms()
            if event == "media":
                audio = base64.b64decode(data["media"]["payload"])
                self._playback.append(audio)
                self._queued_audio += len(audio)
                self.result.agent_audio_bytes += len(audio)
                self.result.agent_frames += 1
                for line in self.result.lines:
                    if line.speech_end_ms is not None and line.first_agent_ms is None:
                        line.first_agent_ms = now
            elif event == "mark":
                name = data["mark"]["name"]
                self.result.marks_received.append(name)
                self._playback.append(name)
                if not self._queued_audio:  # nothing ahead of it: echoed straight away (reference 1.4)
                    await self._echo_head_marks(ws, now)
            elif event == "clear":
                self.result.clears += 1
                pending = [item for item in self._playback if isinstance(item, str)]
                self._playback.clear()
                self._queued_audio = 0
                self._busy_until_ms = min(self._busy_until_ms, now)  # the frame being played is cut too
                for name in pending:
                    await self._echo(ws, name, now)
        if not self._closing:
            self.result.server_closed = True

    # ------------------------------------------------------------------------------ wire

    def _now_ms(self) -> int:
        assert self._loop is not None
        return int((self._loop.time() - self._t0) * 1000)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, event: str, body: dict[str, Any]) -> None:
        if ws.closed:
            return
        self._seq += 1
        msg = {"event": event, "sequenceNumber": str(self._seq), "streamSid": self.stream_sid, **body}
        with contextlib.suppress(ConnectionError):  # the server hung up under us: the receiver records it
            await ws.send_str(json.dumps(msg, separators=(",", ":")))

    async def _stop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._closing:  # once: a hang-up line and the end of the script both land here
            return
        self._closing = True
        await self._send(ws, "stop", {"stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
