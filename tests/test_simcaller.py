"""callstate/simcaller.py against a tiny echo agent served by adapters/twilio.create_app on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator

from adapters.audio import load_fixture, power_db
from adapters.twilio import CallInfo, TwilioPhone, create_app
from callstate.simcaller import CallerLine, SimCaller
from engine.events import CallEnded, Dtmf, Input, PlaybackMark

REPLY = load_fixture("shipment_2")[:8000]  # 1 s of real speech
SPEECH = load_fixture("shipment_1")  # 1.69 s
VOICED_DB = -45.0  # fixtures' speech frames sit at -40..-15 dBFS; the caller's silence is 0xFF (-inf)


class EchoAgent:
    """A CallHandle that answers ~1 s of caller speech, once the caller goes quiet, with audio + a mark.

    While its reply plays (until its mark comes back), 200 ms of caller speech is a barge-in: it clears.
    """

    def __init__(self, phone: TwilioPhone, *, reply: bytes, greeting: bytes | None, hangup_after: int | None) -> None:
        self.phone, self.reply, self.hangup_after = phone, reply, hangup_after
        self.events: list[Input] = []
        self.voiced = self.quiet = self.replies = 0
        self.playing: str | None = None  # the mark of the reply being played
        self.ended = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        if greeting is not None:
            self._say(greeting)

    def _say(self, audio: bytes) -> None:
        self.replies += 1
        self.playing = f"reply-{self.replies}"
        self.tasks.append(asyncio.get_running_loop().create_task(self._send(audio, self.playing)))

    async def _send(self, audio: bytes, mark: str) -> None:
        await self.phone.send_audio(audio)
        await self.phone.send_mark(mark)

    def audio_in(self, mulaw: bytes) -> None:
        if power_db(mulaw) > VOICED_DB:
            self.voiced, self.quiet = self.voiced + 1, 0
        else:
            self.quiet += 1
        if self.playing and self.voiced >= 10 and not self.quiet:
            self.playing, self.voiced = None, 0
            self.tasks.append(asyncio.get_running_loop().create_task(self.phone.clear()))
        elif not self.playing and self.voiced >= 40 and self.quiet >= 10:  # ~1 s of speech, then 200 ms quiet
            self.voiced = 0
            self._say(self.reply)

    def emit(self, event: Input) -> None:
        self.events.append(event)
        if isinstance(event, PlaybackMark):
            if event.name == self.playing:
                self.playing = None
            if self.hangup_after is not None and event.name == f"reply-{self.hangup_after}":
                self.tasks.append(asyncio.get_running_loop().create_task(self.phone.hangup()))
        if isinstance(event, CallEnded):
            self.ended.set()

    async def wait(self) -> None:
        await self.ended.wait()


class Agents:
    def __init__(self, *, reply: bytes = REPLY, greeting: bytes | None = None, hangup_after: int | None = None,
                 silent: bool = False) -> None:
        self.kw = {"reply": b"" if silent else reply, "greeting": greeting, "hangup_after": hangup_after}
        self.silent = silent
        self.calls: list[tuple[CallInfo, EchoAgent]] = []

    async def __call__(self, info: CallInfo, phone: TwilioPhone) -> EchoAgent:
        agent = EchoAgent(phone, **self.kw)  # type: ignore[arg-type]
        if self.silent:
            agent.voiced = -10**9  # never answers
        self.calls.append((info, agent))
        return agent

    @property
    def agent(self) -> EchoAgent:
        return self.calls[0][1]


@asynccontextmanager
async def echo_server(agents: Agents, **app_kw: Any) -> AsyncIterator[str]:
    app_kw.setdefault("auth_token", None)
    runner = web.AppRunner(create_app(on_call=agents, **app_kw), shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/media"
    finally:
        await runner.cleanup()


def marks_of(agent: EchoAgent) -> list[str]:
    return [e.name for e in agent.events if isinstance(e, PlaybackMark)]


async def test_two_turns_marks_echoed_after_playback_and_voice_to_voice_recorded() -> None:
    agents = Agents()
    async with echo_server(agents) as url:
        lines = [CallerLine(audio=SPEECH, gap_ms=300), CallerLine(audio=SPEECH, gap_ms=300)]
        result = await SimCaller(url, lines=lines, params={"script": "t1"}, greeting=False, timeout_s=20).run()
    info, agent = agents.calls[0]
    assert info.params == {"script": "t1"} and info.call_sid.startswith("CA") and info.stream_sid.startswith("MZ")
    assert [name for name, _ in result.marks_echoed] == ["reply-1", "reply-2"] == marks_of(agent)
    assert result.agent_audio_bytes == 2 * len(REPLY) and result.clears == 0
    for line, (_, echoed_ms) in zip(result.lines, result.marks_echoed, strict=True):
        assert line.speech_end_ms is not None and line.first_agent_ms is not None
        # The agent waits for 200 ms of quiet, then answers at once: the caller hears it ~200-250 ms later.
        assert line.voice_to_voice_ms is not None and 150 <= line.voice_to_voice_ms <= 800
        # A mark comes back once its 1 s of audio has played, not when it was received.
        assert 900 <= echoed_ms - line.first_agent_ms <= 1600
    second = result.lines[1]
    assert second.started_ms is not None and second.started_ms >= result.marks_echoed[0][1] + 300 - 40
    assert agent.events[-1] == CallEnded(t_ms=0, reason="stop")
    assert not result.server_closed and not result.timed_out and not result.hung_up
    assert abs(result.frames_sent - result.duration_ms / 20) <= 5  # one frame per 20 ms, the whole call


async def test_first_line_waits_for_the_greeting_to_finish() -> None:
    agents = Agents(greeting=REPLY)
    async with echo_server(agents) as url:
        result = await SimCaller(url, lines=[CallerLine(audio=SPEECH, gap_ms=400)], timeout_s=20).run()
    started = result.lines[0].started_ms
    assert started is not None and 1000 + 400 - 40 <= started <= 1000 + 400 + 300
    assert [n for n, _ in result.marks_echoed] == ["reply-1", "reply-2"]  # the greeting, then the answer


async def test_barge_in_gets_a_clear_and_pending_marks_echo_at_once() -> None:
    long_reply = load_fixture("shipment_2") * 2  # 5.5 s: still playing when the caller barges in
    agents = Agents(reply=long_reply)
    async with echo_server(agents) as url:
        lines = [CallerLine(audio=SPEECH, gap_ms=200), CallerLine(audio=SPEECH, barge_in_after_ms=800, hangup=True)]
        result = await SimCaller(url, lines=lines, greeting=False, timeout_s=30).run()
    first, barge = result.lines
    assert result.clears == 1
    assert first.first_agent_ms is not None and barge.started_ms is not None
    assert 800 - 40 <= barge.started_ms - first.first_agent_ms <= 800 + 200
    (name, echoed_ms), *_ = result.marks_echoed
    assert name == "reply-1"
    # Flushed by the clear well before its 5.5 s of audio could have played.
    assert echoed_ms - first.first_agent_ms < 2500
    # Paced sending: what the clear found unsent never left the server.
    assert result.agent_audio_bytes < len(long_reply) // 2
    assert marks_of(agents.agent)[0] == "reply-1"


async def test_dtmf_then_hangup_line() -> None:
    agents = Agents()
    async with echo_server(agents) as url:
        result = await SimCaller(url, lines=[CallerLine(dtmf="12#", hangup=True, gap_ms=100)], greeting=False,
                                 timeout_s=10).run()
    agent = agents.agent
    assert [e.digit for e in agent.events if isinstance(e, Dtmf)] == ["1", "2", "#"]
    assert agent.events[-1] == CallEnded(t_ms=0, reason="stop")
    assert result.hung_up and result.lines[0].speech_end_ms is not None and result.duration_ms < 1000
    assert [type(e).__name__ for e in agent.events].count("CallEnded") == 1


async def test_server_hanging_up_ends_the_call() -> None:
    agents = Agents(hangup_after=1)  # no REST: the phone closes the socket once reply-1 has played
    async with echo_server(agents) as url:
        lines = [CallerLine(audio=SPEECH, gap_ms=200), CallerLine(audio=SPEECH)]
        result = await SimCaller(url, lines=lines, greeting=False, timeout_s=20).run()
    assert result.server_closed and not result.timed_out
    assert result.lines[1].started_ms is None  # never got to say it
    assert agents.agent.events[-1] == CallEnded(t_ms=0, reason="ws_closed_without_stop")


async def test_timeout_sends_stop() -> None:
    agents = Agents()
    async with echo_server(agents) as url:  # the caller waits for a greeting that never comes
        result = await SimCaller(url, lines=[CallerLine(audio=SPEECH)], timeout_s=0.5).run()
    assert result.timed_out and 480 <= result.duration_ms <= 1500
    assert agents.agent.events == [CallEnded(t_ms=0, reason="stop")]


async def test_signed_upgrade() -> None:
    token = "tw_FAKE_TOKEN"
    agents = Agents()
    public = "https://agent.example.com"
    signature = RequestValidator(token).compute_signature("wss://agent.example.com/media", {})
    async with echo_server(agents, auth_token=token, public_url=public) as url:
        result = await SimCaller(url, lines=[CallerLine(hangup=True, gap_ms=0)], greeting=False,
                                 signature=signature, timeout_s=5).run()
    assert result.hung_up and agents.calls


@pytest.mark.parametrize(("index", "line"), [
    (1, CallerLine(audio=SPEECH[:800], gap_ms=100, hangup=True)),
    (7, CallerLine(audio=SPEECH[:800], dtmf="9", gap_ms=100, hangup=True)),
    (8, CallerLine(dtmf="1#", gap_ms=100, hangup=True)),  # keys only
])
async def test_wire_format_is_twilios(index: int, line: CallerLine) -> None:
    """A raw server records every text frame: the caller must look exactly like Twilio (reference 1.2)."""
    got: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                got.append(json.loads(msg.data))
                if got[-1]["event"] == "start":  # play a 100 ms "greeting" and a mark
                    sid = got[-1]["streamSid"]
                    payload = base64.b64encode(b"\x10" * 160).decode()
                    for _ in range(5):
                        await ws.send_str(json.dumps({"event": "media", "streamSid": sid,
                                                      "media": {"payload": payload}}))
                    await ws.send_str(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "g"}}))
        return ws

    app = web.Application()
    app.router.add_get("/media", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"ws://127.0.0.1:{runner.addresses[0][1]}/media"
        caller = SimCaller(url, lines=[line], params={"a": "b"},
                           call_index=index, timeout_s=10)
        result = await caller.run()
    finally:
        await runner.cleanup()
    assert got[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = got[1]
    assert start["start"]["customParameters"] == {"a": "b"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["callSid"] == f"CA{index:032x}" and start["streamSid"] == f"MZ{index:032x}"
    assert [m["sequenceNumber"] for m in got[1:]] == [str(i) for i in range(1, len(got))]
    assert all(m["streamSid"] == start["streamSid"] for m in got[1:])
    media = [m["media"] for m in got if m["event"] == "media"]
    assert [m["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["timestamp"] for m in media] == [str(20 * i) for i in range(len(media))]
    audio = [base64.b64decode(m["payload"]) for m in media]
    assert all(len(a) == 160 for a in audio)
    assert b"".join(audio).count(SPEECH[:800]) == (1 if line.audio else 0)  # the line, once, framed as it was
    assert [m["mark"]["name"] for m in got if m["event"] == "mark"] == ["g"]  # echoed after 100 ms of play
    assert [m["dtmf"]["digit"] for m in got if m["event"] == "dtmf"] == list(line.dtmf or "")
    assert [m["event"] for m in got].count("stop") == 1
    assert result.hung_up and got[-1]["event"] == "stop" and got[-1]["stop"]["callSid"] == start["start"]["callSid"]
    assert result.agent_audio_bytes == 800 and not result.server_closed
