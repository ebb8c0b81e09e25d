"""Contract tests against the real services: ``pytest -m live`` (README, "Checking the real services").

Each test runs an adapter against the vendor itself and asserts what the fake-based tests assert of the
fakes, so a user with keys checks in one command that the fakes' picture of the services still holds.
Without a service's keys its tests skip, saying which variable is missing; the default run (CI) leaves
the ``live`` marker out altogether (pyproject.toml addopts). No key is printed: only names.
"""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest

from adapters.audio import load_fixture
from engine.events import (
    FRAME_BYTES,
    Input,
    LlmDone,
    LlmError,
    LlmToken,
    LlmToolCall,
    Message,
    Speak,
    StartLlm,
    Transcript,
)
from tests.test_groq import LOOKUP  # the tool the fake-based tests call

pytestmark = pytest.mark.live


def need(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"live: {', '.join(missing)} not set")
    return {n: os.environ[n] for n in names}


# ---------------------------------------------------------------------------------------------- Deepgram


async def test_deepgram_transcribes_the_committed_speech_fixture() -> None:
    """adapters/audio/shipment_1.ulaw (espeak-ng: "Hi, is my shipment delayed?") at real time, then Finalize:
    finals with the words, in call time, as tests/test_deepgram.py asserts of the fake."""
    from adapters.deepgram import DeepgramStt

    env = need("DEEPGRAM_API_KEY")
    session = DeepgramStt.from_env(env).session(t0_ms=0)
    events: list[Input] = []
    await session.start(events.append)
    audio = load_fixture("shipment_1") + b"\xff" * 8000  # and a second of silence
    for i in range(0, len(audio), FRAME_BYTES):
        await session.send_audio(audio[i:i + FRAME_BYTES])
        await asyncio.sleep(0.02)  # real time: what a phone line sends
    await session.speech_stopped()
    await asyncio.sleep(1.5)
    await session.close()
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final and e.text]
    text = " ".join(f.text for f in finals).lower()
    assert "shipment" in text and "delayed" in text
    for f in finals:
        assert f.start_ms is not None and f.end_ms is not None and 0 <= f.start_ms <= f.end_ms
        assert f.end_ms <= len(audio) // 8 + 100  # inside the audio sent


async def test_aura_speaks_mulaw_8k_line_after_line_over_one_socket() -> None:
    from adapters.aura import DeepgramTts

    env = need("DEEPGRAM_API_KEY")
    tts = DeepgramTts.from_env(env)
    try:
        sizes = []
        for i, text in enumerate(["Your shipment is on time.", "Anything else?"]):
            chunks = [c async for c in tts.synthesize(Speak(t_ms=0, seq=i, text=text))]
            assert chunks and all(len(c) % FRAME_BYTES == 0 for c in chunks)
            audio = b"".join(chunks)
            assert len(set(audio)) > 16  # speech, not a constant (silence is 0xFF)
            sizes.append(len(audio))
        assert 0.5 * 8000 < sizes[0] < 5 * 8000 and 0.3 * 8000 < sizes[1] < 4 * 8000  # plausible seconds
        assert tts.connects == 1
    finally:
        await tts.aclose()


# ---------------------------------------------------------------------------------------------- Groq




async def _stream(effect: StartLlm) -> list[Input]:
    from adapters.groq import GroqLlm

    llm = GroqLlm.from_env(need("GROQ_API_KEY"))  # the default model and effort, as a default flow runs
    events: list[Input] = []
    try:
        await llm.stream(effect, events.append)
    finally:
        await llm.aclose()
    return events


async def test_groq_default_model_answers_aloud() -> None:
    events = await _stream(StartLlm(t_ms=0, seq=1, messages=(
        Message(role="system", content="You are a phone agent. Answer in one short sentence."),
        Message(role="user", content="Hello, are you open on Sundays?"))))
    assert not any(isinstance(e, LlmError) for e in events), events
    text = "".join(e.text for e in events if isinstance(e, LlmToken))
    assert text.strip() and "<think>" not in text
    assert isinstance(events[-1], LlmDone) and events[-1].finish_reason == "stop"


async def test_groq_default_model_streams_a_tool_call() -> None:
    events = await _stream(StartLlm(t_ms=0, seq=1, tools=(LOOKUP,), messages=(
        Message(role="system", content="You are a booking agent. Use lookup_booking for any reference."),
        Message(role="user", content="My booking reference is X7K2QP. Is it confirmed?"))))
    calls = [e for e in events if isinstance(e, LlmToolCall)]
    assert calls and calls[0].name == "lookup_booking" and calls[0].tool_call_id
    assert json.loads(calls[0].arguments)["ref"].upper() == "X7K2QP"
    assert isinstance(events[-1], LlmDone) and events[-1].finish_reason == "tool_calls"


# ---------------------------------------------------------------------------------------------- Twilio


async def test_twilio_token_is_the_accounts_and_signs_what_the_app_accepts() -> None:
    """The token is the account's current one (the REST API accepts it), and a webhook signed with it the
    way Twilio signs (its SDK's RequestValidator) passes our check, while a tampered one does not. Twilio
    itself cannot be made to sign a request for a test; this checks the key and our side of the scheme."""
    from twilio.request_validator import RequestValidator
    from twilio.rest import Client

    from adapters.twilio import create_app

    env = need("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
    account = Client(env["TWILIO_ACCOUNT_SID"], env["TWILIO_AUTH_TOKEN"]).api.v2010.accounts(
        env["TWILIO_ACCOUNT_SID"]).fetch()
    assert account.sid == env["TWILIO_ACCOUNT_SID"]

    async def on_call(info: object, phone: object) -> object:
        raise AssertionError("no call here")

    public = "https://agent.example.com"
    form = {"CallSid": "CA" + "0" * 32, "From": "+15550100", "To": "+15550199"}
    sig = RequestValidator(env["TWILIO_AUTH_TOKEN"]).compute_signature(public + "/twiml", form)
    runner = aiohttp.web.AppRunner(create_app(on_call=on_call, auth_token=env["TWILIO_AUTH_TOKEN"],  # type: ignore[arg-type]
                                              public_url=public))
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/twiml", data=form,
                              headers={"X-Twilio-Signature": sig}) as ok:
                assert ok.status == 200
            async with s.post(f"http://127.0.0.1:{port}/twiml", data={**form, "From": "+19990000"},
                              headers={"X-Twilio-Signature": sig}) as bad:
                assert bad.status == 403
    finally:
        await runner.cleanup()
