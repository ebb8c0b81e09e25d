"""adapters/deepgram.py through the real deepgram-sdk against the loopback fakes (tests/fakes/deepgram_*)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from typing import Any

import aiohttp
import pytest
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse

from adapters.aura import DeepgramTts
from adapters.deepgram import DeepgramError, DeepgramStt, DeepgramSttSession, decode, environment
from engine.events import Input, ProviderNotice, Speak, SpeechStarted, Transcript, UtteranceEnd
from tests.fakes import (
    DeepgramListenFake,
    DeepgramSpeakFake,
    ListenFaults,
    Script,
    SpeakFaults,
    Utterance,
    wait_for,
)

KEY = "dg_FAKE_SECRET_777"
FRAME = 160
SHIPMENT = Utterance(words=["Is", "my", "shipment", "delayed?"], start_s=0.5)  # words end 0.74 .. 1.64 s


def audio(seconds: float, seed: int = 0) -> bytes:
    """Recognizable audio: a seeded random byte stream, so a test can find every byte in the fake."""
    return random.Random(seed).randbytes(int(seconds * 8000))


async def feed(session: DeepgramSttSession, data: bytes, pause_s: float = 0.001) -> None:
    for i in range(0, len(data), FRAME):
        await session.send_audio(data[i:i + FRAME])
        await asyncio.sleep(pause_s)


def assert_safe(events: list[Input]) -> None:
    for e in events:
        assert e.t_ms == 0 and e.cause is None
        assert KEY not in repr(e)


def finals(events: list[Input]) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and e.is_final]


def notices(events: list[Input]) -> list[tuple[str, str]]:
    return [(e.what, e.detail) for e in events if isinstance(e, ProviderNotice)]


# ---------------------------------------------------------------------------------------------- decode


def parse(msg: dict[str, Any]) -> object:
    return construct_type(type_=V1SocketClientResponse, object_=msg)  # type: ignore[arg-type]


def results(text: str, *, is_final: bool, speech_final: bool = False) -> dict[str, Any]:
    words = [{"word": "yes", "start": 1.2, "end": 1.5, "confidence": 0.9, "punctuated_word": "Yes."}]
    return {"type": "Results", "channel_index": [0, 1], "start": 1.0, "duration": 1.0, "is_final": is_final,
            "speech_final": speech_final, "channel": {"alternatives": [
                {"transcript": text, "confidence": 0.91, "words": words if text else []}]},
            "metadata": {"request_id": "r", "model_info": {"name": "n", "version": "v", "arch": "a"},
                         "model_uuid": "u"}}


@pytest.mark.parametrize(("msg", "expected"), [
    (results("Yes.", is_final=False), Transcript(t_ms=0, text="Yes.", is_final=False, confidence=0.91,
                                                 start_ms=5200, end_ms=5500)),
    (results("Yes.", is_final=True, speech_final=True),
     Transcript(t_ms=0, text="Yes.", is_final=True, speech_final=True, confidence=0.91, start_ms=5200,
                end_ms=5500)),
    (results("", is_final=False), None),  # empty interim: silence
    (results("", is_final=True), None),  # empty final without speech_final: silence
    (results("", is_final=True, speech_final=True),
     Transcript(t_ms=0, text="", is_final=True, speech_final=True, confidence=0.91)),
    ({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 9.54}, SpeechStarted(t_ms=0, source="stt")),
    ({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 12.31}, UtteranceEnd(t_ms=0,
                                                                                        last_word_end_ms=16310)),
    ({"type": "Metadata", "transaction_key": "deprecated", "request_id": "r", "sha256": "0", "created": "c",
      "duration": 1.0, "channels": 1}, None),
])
def test_decode_maps_recorded_messages(msg: dict[str, Any], expected: Input | None) -> None:
    assert decode(parse(msg), base_ms=4000) == expected


def test_environment_maps_a_base_url_to_http_and_ws() -> None:
    env = environment("http://127.0.0.1:8765/")
    assert (env.base, env.production) == ("http://127.0.0.1:8765", "ws://127.0.0.1:8765")
    env = environment("wss://dg.example.internal")
    assert (env.base, env.production) == ("https://dg.example.internal", "wss://dg.example.internal")


def test_from_env_needs_the_key() -> None:
    stt = DeepgramStt.from_env({"DEEPGRAM_API_KEY": KEY, "DEEPGRAM_BASE_URL": "http://127.0.0.1:9"},
                               keyterms=["Acme"])
    assert stt.query["keyterm"] == ["Acme"]
    with pytest.raises(LookupError, match="DEEPGRAM_API_KEY") as err:
        DeepgramTts.from_env({"DEEPGRAM_BASE_URL": "http://127.0.0.1:9"})
    assert DeepgramStt.REQUIRED_ENV == DeepgramTts.REQUIRED_ENV == ("DEEPGRAM_API_KEY",)
    assert KEY not in str(err.value)


# ---------------------------------------------------------------------------------------------- STT


async def test_session_turns_a_script_into_events_in_call_time() -> None:
    async with DeepgramListenFake(Script([SHIPMENT]), api_key=KEY) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session(params={}, t0_ms=1000)
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, audio(3.0))
        await wait_for(lambda: any(isinstance(e, UtteranceEnd) for e in events))
        await session.close()
    assert_safe(events)
    assert events[0] == SpeechStarted(t_ms=0, source="stt")
    interims = [e.text for e in events if isinstance(e, Transcript) and not e.is_final]
    assert interims == ["Is", "Is my", "Is my shipment", "Is my shipment delayed?"]
    assert finals(events) == [Transcript(t_ms=0, text="Is my shipment delayed?", is_final=True,
                                         speech_final=True, confidence=0.97, start_ms=1500, end_ms=2640)]
    assert events[-1] == UtteranceEnd(t_ms=0, last_word_end_ms=2640)
    assert fake.connections[0].controls == ["CloseStream"] and fake.connections[0].ended == "close_stream"


async def test_query_params_and_auth_header() -> None:
    async with DeepgramListenFake(api_key=KEY) as fake:
        stt = DeepgramStt(KEY, base_url=fake.url, keyterms=["Acme", "refund"], endpointing_ms=450,
                          utterance_end_ms=1200, language="en-GB")
        session = stt.session(params={"caller": "+15550100"})
        await session.start(lambda e: None)
        await session.close()
    conn = fake.connections[0]
    assert conn.headers["Authorization"] == f"Token {KEY}"
    assert conn.query == {
        "model": ["nova-3"], "language": ["en-GB"], "encoding": ["mulaw"], "sample_rate": ["8000"],
        "channels": ["1"], "interim_results": ["true"], "endpointing": ["450"], "utterance_end_ms": ["1200"],
        "vad_events": ["true"], "smart_format": ["true"], "keyterm": ["Acme", "refund"],
    }


async def test_speech_stopped_sends_finalize_and_the_final_follows() -> None:
    async with DeepgramListenFake(Script([SHIPMENT]), api_key=KEY) as fake:
        session = DeepgramStt(KEY, base_url=fake.url, endpointing_ms=5000).session(t0_ms=0)
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, audio(1.8))
        await wait_for(lambda: any(isinstance(e, Transcript) and "delayed" in e.text for e in events))
        await session.speech_stopped()
        await wait_for(lambda: bool(finals(events)))
        await session.close()
    assert "Finalize" in fake.connections[0].controls
    (final,) = finals(events)
    assert final.text == "Is my shipment delayed?" and not final.speech_final


async def test_close_flushes_words_heard_so_far_and_nothing_comes_after() -> None:
    async with DeepgramListenFake(Script([SHIPMENT]), api_key=KEY) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, audio(1.2))  # "Is my" heard, no endpoint yet
        await session.close()
        n = len(events)
        await session.send_audio(b"\xff" * FRAME)  # after close: ignored
        await asyncio.sleep(0.1)
    assert [e.text for e in finals(events)] == ["Is my"]
    assert len(events) == n


async def test_keepalive_only_while_no_audio_is_sent() -> None:
    async with DeepgramListenFake(api_key=KEY) as fake:
        session = DeepgramStt(KEY, base_url=fake.url, keepalive_s=0.5).session()
        await session.start(lambda e: None)
        await feed(session, b"\xff" * FRAME * 30, pause_s=0.02)  # silence is audio too
        during_audio = fake.connections[0].controls.count("KeepAlive")
        await wait_for(lambda: fake.connections[0].controls.count("KeepAlive") >= 2)
        await session.close()
    assert during_audio == 0


async def test_latency_of_slow_start_and_late_results_is_visible() -> None:
    script = Script([SHIPMENT], result_latency_s=0.3)
    async with DeepgramListenFake(script, api_key=KEY, faults=ListenFaults(slow_start_s=0.3)) as fake:
        loop = asyncio.get_running_loop()
        session = DeepgramStt(KEY, base_url=fake.url).session()
        t0 = loop.time()
        arrivals: list[float] = []
        await session.start(lambda e: arrivals.append(loop.time()))
        assert loop.time() - t0 >= 0.3
        t1 = loop.time()
        await feed(session, audio(1.0), pause_s=0)
        await wait_for(lambda: bool(arrivals))
        await session.close()
    assert arrivals[0] - t1 >= 0.3


async def test_bad_key_fails_start_with_a_safe_message() -> None:
    async with DeepgramListenFake(api_key="another-key") as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        with pytest.raises(DeepgramError) as err:
            await session.start(lambda e: None)
    assert str(err.value) == "deepgram stt: connect failed: HTTP 401"
    assert KEY not in repr(err.value) and err.value.__cause__ is None


async def test_dropped_socket_reconnects_and_resends_what_was_not_final() -> None:
    first = Script([Utterance(["Hello", "there."], start_s=0.2)])  # final covers 0 .. 1.04 s
    second = Script([Utterance(["Where", "is", "it?"], start_s=0.5)])  # in the new socket's own time
    sent = audio(3.0, seed=1)
    async with DeepgramListenFake([first, second], api_key=KEY,
                                  faults=ListenFaults(drop_after_s=1.5)) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session(t0_ms=500)
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, sent, pause_s=0.002)
        await wait_for(lambda: fake.audio_bytes - len(fake.connections[0].audio) == len(sent) - 8320)
        await wait_for(lambda: len(finals(events)) == 2)
        await session.close()
    assert_safe(events)
    one, two = fake.connections
    assert one.ended == "dropped" and len(one.audio) >= 8320
    assert bytes(one.audio) == sent[:len(one.audio)]
    assert bytes(two.audio) == sent[8320:]  # from the end of the last final: every byte reached Deepgram
    (dropped, why), (reconnected, detail) = notices(events)
    assert (dropped, reconnected) == ("stt_dropped", "stt_reconnected") and why == "code 1006"
    resent = int(re.fullmatch(r"resending (\d+) ms at 1.25x", detail).group(1))  # type: ignore[union-attr]
    assert resent >= 1500 - 1040
    hello, where = finals(events)
    assert (hello.text, hello.start_ms) == ("Hello there.", 500 + 200)
    assert (where.text, where.start_ms) == ("Where is it?", 500 + 1040 + 500)  # mapped past the resend


async def test_reconnect_backs_off_while_refused() -> None:
    faults = ListenFaults(drop_after_s=0.5, refuse_reconnects=2)
    async with DeepgramListenFake(api_key=KEY, faults=faults) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, audio(1.0))
        await wait_for(lambda: len(notices(events)) == 2)
        await feed(session, audio(0.2))
        await session.close()
    assert fake.rejected == [503, 503]
    assert [n[0] for n in notices(events)] == ["stt_dropped", "stt_reconnected"]
    assert fake.audio_bytes >= int(1.2 * 8000)


async def test_reconnect_gives_up_after_three_refusals() -> None:
    faults = ListenFaults(drop_after_s=0.5, refuse_reconnects=10)
    async with DeepgramListenFake(api_key=KEY, faults=faults) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, audio(1.0))
        await wait_for(lambda: len(notices(events)) == 2)
        await session.send_audio(b"\xff" * FRAME)  # still accepted, never raises
        await session.speech_stopped()
        await session.close()
    assert notices(events) == [("stt_dropped", "code 1006"), ("stt_failed", "3 reconnects failed")]
    assert fake.rejected == [503, 503, 503]


# ---------------------------------------------------------------------------------------------- TTS


def speak(text: str = "Your shipment is on time.") -> Speak:
    return Speak(t_ms=0, seq=12, text=text)


async def test_tts_streams_all_audio_in_20_ms_multiples() -> None:
    async with DeepgramSpeakFake(api_key=KEY, chunk_bytes=999) as fake:
        tts = DeepgramTts(KEY, voice="aura-2-orion-en", base_url=fake.url)
        chunks = [c async for c in tts.synthesize(speak())]
    assert chunks and all(len(c) % FRAME == 0 for c in chunks)
    expected = fake.audio_for(speak().text)
    assert sum(map(len, chunks)) == -(-expected // FRAME) * FRAME  # the last partial frame is padded
    conn = fake.connections[0]
    assert conn.query == {"model": "aura-2-orion-en", "encoding": "mulaw", "sample_rate": "8000"}
    assert conn.texts == [speak().text] and conn.controls == ["Speak", "Flush"]
    assert conn.headers["Authorization"] == f"Token {KEY}"


async def test_tts_first_audio_comes_after_the_ttfb() -> None:
    async with DeepgramSpeakFake(api_key=KEY, ttfb_s=0.3) as fake:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gen = DeepgramTts(KEY, base_url=fake.url).synthesize(speak())
        await anext(gen)
        assert loop.time() - t0 >= 0.3
        await gen.aclose()


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_tts_stops_at_once_when_closed(how: str) -> None:
    async with DeepgramSpeakFake(api_key=KEY, chunk_bytes=800, chunk_delay_s=0.05) as fake:
        tts = DeepgramTts(KEY, base_url=fake.url)
        got: list[bytes] = []

        async def consume() -> None:
            async for c in tts.synthesize(speak("a long sentence " * 10)):
                got.append(c)

        if how == "aclose":
            gen = tts.synthesize(speak("a long sentence " * 10))
            got.append(await anext(gen))
            await asyncio.wait_for(gen.aclose(), 2)
        else:
            task = asyncio.create_task(consume())
            await wait_for(lambda: bool(got))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2)
        n = len(got)
        await wait_for(lambda: fake.connections[0].ended == "cleared")  # Clear: the socket stays for the next
        await tts.aclose()
    assert len(got) == n
    assert fake.connections[0].controls == ["Speak", "Flush", "Clear"]
    assert fake.connections[0].audio_bytes < fake.audio_for("a long sentence " * 10)


async def test_tts_http_500_raises_a_safe_error() -> None:
    async with DeepgramSpeakFake(api_key=KEY, faults=SpeakFaults(status=500)) as fake:
        with pytest.raises(DeepgramError) as err:
            [c async for c in DeepgramTts(KEY, base_url=fake.url).synthesize(speak())]
    assert str(err.value) == "deepgram tts: connect failed: HTTP 500"
    assert KEY not in repr(err.value)


async def test_tts_truncated_stream_raises_after_the_partial_audio() -> None:
    async with DeepgramSpeakFake(api_key=KEY, faults=SpeakFaults(truncate=True)) as fake:
        got: list[bytes] = []
        with pytest.raises(DeepgramError, match="stream ended early") as err:
            async for c in DeepgramTts(KEY, base_url=fake.url).synthesize(speak()):
                got.append(c)
    assert 0 < sum(map(len, got)) < fake.audio_for(speak().text)
    assert KEY not in str(err.value)


async def test_tts_bad_key_raises_a_safe_error() -> None:
    async with DeepgramSpeakFake(api_key="another-key") as fake:
        with pytest.raises(DeepgramError, match="HTTP 401") as err:
            await anext(DeepgramTts(KEY, base_url=fake.url).synthesize(speak()))
    assert KEY not in repr(err.value) and KEY not in json.dumps(str(err.value))


async def test_key_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with DeepgramListenFake(Script([SHIPMENT]), api_key=KEY) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        await session.start(lambda e: None)
        await feed(session, audio(2.0))
        await session.close()
    async with DeepgramSpeakFake(api_key="another-key") as fake:
        with pytest.raises(DeepgramError):
            await anext(DeepgramTts(KEY, base_url=fake.url).synthesize(speak()))
    assert caplog.records and KEY not in caplog.text


# ---------------------------------------------------------------------------------------------- handshake


async def test_no_socket_offers_permessage_deflate() -> None:
    """What the SDK really sends through the adapter (the patch used to miss the modules the SDK calls)."""
    async with DeepgramListenFake(Script(), api_key=KEY) as listen, DeepgramSpeakFake(api_key=KEY) as speak_:
        session = DeepgramStt(KEY, base_url=listen.url).session()
        await session.start(lambda e: None)
        await session.close()
        async for _ in DeepgramTts(KEY, base_url=speak_.url).synthesize(speak("Hi.")):
            pass
    for conn in (*listen.connections, *speak_.connections):
        headers = {k.lower(): v for k, v in conn.headers.items()}
        assert headers["upgrade"].lower() == "websocket"
        assert "sec-websocket-extensions" not in headers, headers["sec-websocket-extensions"]
    assert listen.connections and speak_.connections


async def test_reconnect_resends_a_bounded_tail_at_most_1_25x_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deepgram takes audio at most ~1.25x real time (its recovery doc); the fake records how far ahead of
    that a client ever was. Audio older than the tail is skipped, and the notice says how much."""
    import adapters.deepgram as dg

    monkeypatch.setattr(dg, "RESEND_TAIL_MS", 800)
    sent = audio(2.0, seed=3)
    async with DeepgramListenFake(Script(), api_key=KEY, faults=ListenFaults(drop_after_s=1.2)) as fake:
        session = DeepgramStt(KEY, base_url=fake.url).session()
        events: list[Input] = []
        await session.start(events.append)
        await feed(session, sent, pause_s=0.02)  # a phone line: real time
        await session.close()
    one, two = fake.connections
    (_, _), (reconnected, detail) = notices(events)
    m = re.fullmatch(r"resending (\d+) ms at 1.25x, (\d+) ms older skipped", detail)
    assert reconnected == "stt_reconnected" and m is not None, detail
    skipped = int(m.group(2)) * 8
    assert int(m.group(1)) == 800 and skipped >= len(one.audio) - 800 * 8
    assert bytes(two.audio) == sent[skipped:]  # the tail, then the live audio, in order
    assert two.ahead_s <= 0.01 < one.ahead_s + 1  # never ahead of the rate (the first socket had no backlog)


async def test_the_fake_answers_finalize_only_with_audio_to_finalize() -> None:
    """docs/finalize: the from_finalize response "typically occurs when there is a noticeable amount of
    audio buffered"; the fake sends nothing for a Finalize with no audio since the last final."""
    async with DeepgramListenFake(Script(), api_key=KEY) as fake, aiohttp.ClientSession() as http:
        url = f"{fake.ws_url}/v1/listen?encoding=mulaw&sample_rate=8000&interim_results=true"
        async with http.ws_connect(url, headers={"Authorization": f"Token {KEY}"}) as ws:
            await ws.send_json({"type": "Finalize"})
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive(timeout=0.3)
            await ws.send_bytes(b"\xff" * 1600)
            await ws.send_json({"type": "Finalize"})
            msg = await ws.receive_json(timeout=2)
            assert msg["type"] == "Results" and msg["is_final"] and msg["from_finalize"]
            await ws.send_json({"type": "Finalize"})  # nothing new since that final
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive(timeout=0.3)
