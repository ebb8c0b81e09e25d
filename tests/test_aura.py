"""adapters/aura.py: warm Aura speak sockets reused line after line, within Deepgram's documented limits
(the fake, tests/fakes/deepgram_speak.py, enforces them: 429 past the concurrent streams, a Warning and no
audio past 20 Flushes a socket in 60 s)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from adapters.aura import FLUSH_LIMIT, DeepgramTts
from engine.events import Speak
from tests.fakes import DeepgramSpeakFake, SpeakFaults, wait_for

KEY = "dg_FAKE_SECRET_777"


def line(i: int, text: str = "Sure, one moment.") -> Speak:
    return Speak(t_ms=0, seq=i, text=text)


async def say(tts: DeepgramTts, speak: Speak) -> int:
    return sum([len(c) async for c in tts.synthesize(speak)])


def whole(fake: DeepgramSpeakFake, text: str) -> int:
    return -(-fake.audio_for(text) // 160) * 160


async def test_one_socket_serves_line_after_line() -> None:
    async with DeepgramSpeakFake(api_key=KEY) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url)
        for i in range(5):
            assert await say(tts, line(i)) == whole(fake, line(i).text)
        await tts.aclose()
    (conn,) = fake.connections
    assert conn.controls == ["Speak", "Flush"] * 5 and conn.lines == 5


async def test_warm_opens_the_socket_the_first_line_uses() -> None:
    async with DeepgramSpeakFake(api_key=KEY) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url)
        await tts.warm()
        assert len(fake.connections) == 1 and fake.connections[0].controls == []
        await say(tts, line(1))
        await tts.aclose()
    assert len(fake.connections) == 1 and tts.connects == 1


async def test_a_cut_line_is_cleared_and_the_next_line_has_none_of_its_audio() -> None:
    long = "a long sentence that goes on " * 6
    async with DeepgramSpeakFake(api_key=KEY, chunk_bytes=800, chunk_delay_s=0.02) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url)
        gen = tts.synthesize(line(1, long))
        await anext(gen)
        await gen.aclose()  # barge-in: the runtime closes the line's iterator
        assert await say(tts, line(2, "Yes?")) == whole(fake, "Yes?")
        await tts.aclose()
    (conn,) = fake.connections
    assert conn.controls == ["Speak", "Flush", "Clear", "Speak", "Flush"]


async def test_a_dropped_socket_is_replaced_and_the_line_sent_again() -> None:
    async with DeepgramSpeakFake(api_key=KEY, faults=SpeakFaults(drop_on_speak=(2,))) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url)
        sizes = [await say(tts, line(i)) for i in range(3)]
        await tts.aclose()
    assert sizes == [whole(fake, line(0).text)] * 3
    assert [c.ended for c in fake.connections] == ["dropped", "done"] and tts.connects == 2


async def test_concurrent_lines_stay_under_the_stream_cap() -> None:
    """20 lines at once against a project cap of 15: the 16th socket would get a 429."""
    async with DeepgramSpeakFake(api_key=KEY, ttfb_s=0.05, max_streams=15) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url, max_streams=15)
        sizes = await asyncio.gather(*(say(tts, line(i)) for i in range(20)))
        await tts.aclose()
    assert sizes == [whole(fake, line(0).text)] * 20
    assert fake.refused_429 == 0 and fake.peak_open <= 15


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_a_ten_minute_chatty_call_stays_inside_the_limits() -> None:
    """A clause every 1.5 s for 10 minutes (400 Flushes, twice the 20 a minute one socket may send), every
    tenth cut by a barge-in, on a virtual clock shared by the adapter and the fake."""
    clock = Clock()
    async with DeepgramSpeakFake(api_key=KEY, clock=clock) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url, clock=clock)
        heard = 0
        while clock.t < 600:
            i = round(clock.t / 1.5)
            if i % 10 == 9:
                gen = tts.synthesize(line(i, "I was going to say something long " * 3))
                await anext(gen)
                await gen.aclose()
            else:
                assert await say(tts, line(i)) == whole(fake, line(i).text)
                heard += 1
            clock.t += 1.5
        await tts.aclose()
    assert heard == 360 and fake.flushes == 400
    assert fake.warnings == 0 and fake.refused_429 == 0  # inside both documented limits
    assert len(fake.connections) <= 4 and fake.peak_open <= 3  # a few sockets, not one per line
    assert all(c.ended in ("done", "cleared") for c in fake.connections)


async def test_the_fake_enforces_the_documented_limits() -> None:
    """Straight over the wire: the 16th concurrent socket gets 429; the 21st Flush in 60 s a Warning."""
    async with DeepgramSpeakFake(api_key=KEY, ms_per_char=1) as fake:
        url = f"{fake.ws_url}/v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000"
        auth = {"Authorization": f"Token {KEY}"}
        async with aiohttp.ClientSession() as http:
            socks = [await http.ws_connect(url, headers=auth) for _ in range(15)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=auth)
            assert refused.value.status == 429
            ws = socks[0]
            await ws.receive_json()  # Metadata
            replies = []
            for _ in range(FLUSH_LIMIT + 1):
                await ws.send_json({"type": "Speak", "text": "Hi."})
                await ws.send_json({"type": "Flush"})
                while (msg := await ws.receive()).type is aiohttp.WSMsgType.BINARY:
                    pass
                replies.append(json.loads(msg.data)["type"])
            assert replies == ["Flushed"] * FLUSH_LIMIT + ["Warning"]
            for s in socks:
                await s.close()
        await wait_for(lambda: fake.open_now == 0)


def test_the_stream_cap_comes_from_the_environment_and_a_bad_one_is_one_line() -> None:
    base = {"DEEPGRAM_API_KEY": KEY, "DEEPGRAM_BASE_URL": "http://127.0.0.1:9"}
    assert DeepgramTts.from_env(base).max_streams == 15
    assert DeepgramTts.from_env({**base, "DEEPGRAM_TTS_MAX_STREAMS": "45"}).max_streams == 45
    with pytest.raises(ValueError, match=r"^DEEPGRAM_TTS_MAX_STREAMS must be a whole number"):
        DeepgramTts.from_env({**base, "DEEPGRAM_TTS_MAX_STREAMS": "lots"})
