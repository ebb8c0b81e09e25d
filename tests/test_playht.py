"""adapters/playht.py through the real pyht SDK against the loopback fake (tests/fakes/playht.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from adapters.playht import PlayHtError, PlayHtTts, from_env
from engine.events import Speak
from tests.fakes import PlayHtFake, PlayHtFaults, wait_for

KEY = "pht_FAKE_SECRET_31337"
USER = "user-42"
VOICE = "s3://voice-cloning-zero-shot/fake/manifest.json"
TEXT = "Your shipment is on time."


def speak(text: str = TEXT) -> Speak:
    return Speak(t_ms=0, seq=4, text=text)


def fake(**kwargs: object) -> PlayHtFake:
    return PlayHtFake(api_key=KEY, user_id=USER, **kwargs)  # type: ignore[arg-type]


def tts(server: PlayHtFake, **kwargs: object) -> PlayHtTts:
    return PlayHtTts(KEY, USER, voice=VOICE, base_url=server.url, **kwargs)  # type: ignore[arg-type]


async def collect(gen: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in gen]


async def test_streams_all_audio_in_20_ms_multiples() -> None:
    async with fake(chunk_bytes=777) as server:
        adapter = tts(server)
        chunks = await collect(adapter.synthesize(speak()))
        again = await collect(adapter.synthesize(speak("Anything else?")))
        await adapter.aclose()
    assert all(len(c) % 160 == 0 for c in chunks + again)
    assert sum(map(len, chunks)) == -(-server.audio_for(TEXT) // 160) * 160
    assert server.auth_calls == 1  # the coordinates are cached across Speaks
    body = server.requests[0].body
    assert body["output_format"] == "mulaw" and body["sample_rate"] == 8000
    assert body["voice"] == VOICE and body["voice_engine"] == "Play3.0-mini" and body["text"] == [TEXT]
    assert server.requests[0].headers["accept"] == "audio/basic"
    assert KEY not in str(server.requests[0].headers)  # the coordinates' token is the credential


async def test_first_audio_comes_after_the_ttfb() -> None:
    async with fake(ttfb_s=0.3) as server:
        adapter = tts(server)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gen = adapter.synthesize(speak())
        await anext(gen)
        assert loop.time() - t0 >= 0.3
        await gen.aclose()
        await adapter.aclose()


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_closing_the_generator_closes_the_http_stream(how: str) -> None:
    long = "a long sentence " * 10
    async with fake(chunk_bytes=800, chunk_delay_s=0.05) as server:
        adapter = tts(server)
        got: list[bytes] = []
        if how == "aclose":
            gen = adapter.synthesize(speak(long))
            got.append(await anext(gen))
            await asyncio.wait_for(gen.aclose(), 2)
        else:
            async def consume() -> None:
                async for c in adapter.synthesize(speak(long)):
                    got.append(c)

            task = asyncio.create_task(consume())
            await wait_for(lambda: bool(got))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2)
        n = len(got)
        await wait_for(lambda: server.requests[0].ended == "client")
        await adapter.aclose()
    assert len(got) == n
    assert server.requests[0].audio_bytes < server.audio_for(long)


async def test_http_500_raises_a_safe_error() -> None:
    async with fake(faults=PlayHtFaults(status=500)) as server:
        adapter = tts(server)
        with pytest.raises(PlayHtError) as err:
            await collect(adapter.synthesize(speak()))
        await adapter.aclose()
    assert str(err.value) == "playht: HTTP 500"
    assert KEY not in repr(err.value) and err.value.__cause__ is None


async def test_truncated_stream_raises_after_the_partial_audio() -> None:
    async with fake(faults=PlayHtFaults(truncate=True), chunk_bytes=400) as server:
        adapter = tts(server)
        got: list[bytes] = []
        with pytest.raises(PlayHtError, match=r"playht: stream broken after \d+ ms") as err:
            async for c in adapter.synthesize(speak()):
                got.append(c)
        await adapter.aclose()
    assert 0 < sum(map(len, got)) < server.audio_for(TEXT)
    assert KEY not in str(err.value)


async def test_bad_credentials_fail_at_sdk_auth_with_a_safe_error() -> None:
    async with PlayHtFake(api_key="another-key", user_id=USER) as server:
        adapter = tts(server)
        with pytest.raises(PlayHtError) as err:
            await collect(adapter.synthesize(speak()))
        await adapter.aclose()
    assert str(err.value) == "playht: sdk-auth HTTP 401"
    assert KEY not in repr(err.value)


def test_from_env_needs_key_and_user() -> None:
    adapter = from_env({"PLAYHT_API_KEY": KEY, "PLAYHT_USER_ID": USER, "PLAYHT_BASE_URL": "http://127.0.0.1:9/"},
                       voice=VOICE)
    assert adapter.base_url == "http://127.0.0.1:9" and adapter.voice_engine == "Play3.0-mini"
    assert PlayHtTts.REQUIRED_ENV == ("PLAYHT_API_KEY", "PLAYHT_USER_ID")
    with pytest.raises(LookupError, match="PLAYHT_USER_ID") as err:
        from_env({"PLAYHT_API_KEY": KEY}, voice=VOICE)
    assert KEY not in str(err.value)


async def test_key_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake() as server:
        adapter = tts(server)
        await collect(adapter.synthesize(speak()))
        await adapter.aclose()
    async with fake(faults=PlayHtFaults(status=500)) as server:
        adapter = tts(server)
        with pytest.raises(PlayHtError):
            await collect(adapter.synthesize(speak()))
        await adapter.aclose()
    assert KEY not in caplog.text
