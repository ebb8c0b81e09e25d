"""adapters/groq.py through the real groq SDK against the loopback fake (tests/fakes/groq.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from adapters.groq import GroqLlm, from_env
from engine.events import (
    Input,
    LlmDone,
    LlmError,
    LlmToken,
    LlmToolCall,
    Message,
    ProviderNotice,
    StartLlm,
    ToolSpec,
)
from tests.fakes import GroqFake, HttpError, Reply, ToolCall, wait_for

KEY = "gsk_FAKE_SECRET_4242"
LOOKUP = ToolSpec(name="lookup_booking", description="Find a booking by reference code",
                  parameters=json.dumps({"type": "object", "properties": {"ref": {"type": "string"}},
                                         "required": ["ref"]}))


def start_llm(*, seq: int = 7, tools: tuple[ToolSpec, ...] = ()) -> StartLlm:
    return StartLlm(t_ms=0, seq=seq, tools=tools, messages=(
        Message(role="system", content="You are brief."),
        Message(role="user", content="Is my shipment delayed?"),
    ))


async def run(fake: GroqFake, effect: StartLlm | None = None, **settings: object) -> list[Input]:
    llm = GroqLlm(KEY, base_url=fake.url, **settings)  # type: ignore[arg-type]
    events: list[Input] = []
    try:
        await llm.stream(effect or start_llm(), events.append)
    finally:
        await llm.aclose()
    assert_safe(events)
    return events


def assert_safe(events: list[Input]) -> None:
    """Every event answers its StartLlm, is unstamped, and never carries the key."""
    for e in events:
        assert e.cause == 7 and e.t_ms == 0
        assert KEY not in repr(e)


def text_of(events: list[Input]) -> str:
    return "".join(e.text for e in events if isinstance(e, LlmToken))


async def test_text_reply_streams_tokens_then_done() -> None:
    async with GroqFake([Reply("Your shipment is on time.")], api_key=KEY) as fake:
        events = await run(fake)
    assert text_of(events) == "Your shipment is on time."
    assert sum(isinstance(e, LlmToken) for e in events) == 5  # one event per content delta
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="stop")


async def test_request_carries_messages_tools_and_settings() -> None:
    async with GroqFake([Reply("Sure.")], api_key=KEY) as fake:
        await run(fake, start_llm(tools=(LOOKUP,)), model="openai/gpt-oss-120b", temperature=0.5,
                  max_tokens=99)
    (req,) = fake.requests
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    body = req.body
    assert body["model"] == "openai/gpt-oss-120b" and body["stream"] is True
    assert body["temperature"] == 0.5 and body["max_completion_tokens"] == 99
    assert body["messages"] == [{"role": "system", "content": "You are brief."},
                                {"role": "user", "content": "Is my shipment delayed?"}]
    assert body["tools"] == [LOOKUP.as_openai()]


async def test_tool_call_fragments_are_assembled_by_index() -> None:
    calls = [ToolCall("lookup_booking", '{"ref": "X7K2QP"}', id="call_a", fragments=4),
             ToolCall("get_weather", '{"city": "Lyon"}', id="call_b", fragments=2)]
    async with GroqFake([Reply("One moment.", tool_calls=calls)], api_key=KEY) as fake:
        events = await run(fake, start_llm(tools=(LOOKUP,)))
    tool_events = [e for e in events if isinstance(e, LlmToolCall)]
    assert [(e.tool_call_id, e.name, json.loads(e.arguments)) for e in tool_events] == [
        ("call_a", "lookup_booking", {"ref": "X7K2QP"}), ("call_b", "get_weather", {"city": "Lyon"})]
    assert text_of(events) == "One moment."
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="tool_calls")
    assert events.index(tool_events[0]) > max(i for i, e in enumerate(events) if isinstance(e, LlmToken))


async def test_first_token_waits_for_the_ttft() -> None:
    async with GroqFake([Reply("Hello there.", ttft_s=0.3)], api_key=KEY) as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first: list[float] = []

        def emit(e: Input) -> None:
            if isinstance(e, LlmToken) and not first:
                first.append(loop.time() - t0)

        await llm.stream(start_llm(), emit)
        await llm.aclose()
    assert first and first[0] >= 0.3


async def test_cancel_mid_stream_closes_the_stream_and_emits_nothing_after() -> None:
    reply = Reply("one two three four five six seven eight nine ten " * 5, token_delay_s=0.05)
    async with GroqFake([reply], api_key=KEY) as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        events: list[Input] = []
        task = asyncio.create_task(llm.stream(start_llm(), events.append))
        await wait_for(lambda: len(events) >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        n = len(events)
        await wait_for(lambda: fake.requests[0].disconnected)
        await asyncio.sleep(0.2)
        await llm.aclose()
    assert len(events) == n and not any(isinstance(e, LlmDone | LlmError) for e in events)
    assert fake.requests[0].chunks_sent < 20


async def test_429_honours_retry_after_once_then_succeeds() -> None:
    async with GroqFake([HttpError(429, retry_after="0.1"), Reply("Fine.")], api_key=KEY) as fake:
        events = await run(fake)
    assert events[0] == ProviderNotice(t_ms=0, cause=7, provider="groq", what="retry",
                                       detail="429 after 0.1 s")
    assert text_of(events) == "Fine." and isinstance(events[-1], LlmDone)
    assert len(fake.requests) == 2


async def test_429_retry_after_ms_is_preferred() -> None:
    async with GroqFake([HttpError(429, retry_after="1", retry_after_ms="50"), Reply("Fine.")],
                        api_key=KEY) as fake:
        events = await run(fake)
    assert events[0].detail == "429 after 0.05 s"  # type: ignore[attr-defined]


async def test_429_with_a_long_retry_after_gives_up_at_once() -> None:
    async with GroqFake([HttpError(429, retry_after="5"), Reply("Too late.")], api_key=KEY) as fake:
        events = await run(fake)
    assert events == [LlmError(t_ms=0, cause=7, message="groq: 429, retry-after 5 s too long")]
    assert len(fake.requests) == 1


async def test_second_429_is_an_error() -> None:
    script = [HttpError(429, retry_after="0"), HttpError(429, retry_after="0")]
    async with GroqFake(script, api_key=KEY) as fake:
        events = await run(fake)
    assert [type(e) for e in events] == [ProviderNotice, LlmError]


async def test_500_is_retried_once_immediately() -> None:
    async with GroqFake([HttpError(500), Reply("Back.")], api_key=KEY) as fake:
        events = await run(fake)
    assert events[0] == ProviderNotice(t_ms=0, cause=7, provider="groq", what="retry", detail="500 after 0 s")
    assert text_of(events) == "Back." and isinstance(events[-1], LlmDone)


async def test_500_twice_is_an_llm_error() -> None:
    async with GroqFake([HttpError(500), HttpError(503)], api_key=KEY) as fake:
        events = await run(fake)
    assert [type(e) for e in events] == [ProviderNotice, LlmError]
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: 503")
    assert len(fake.requests) == 2


@pytest.mark.parametrize("how", ["abort", "eof"])
async def test_truncated_stream_after_tokens_is_an_error_and_not_retried(how: str) -> None:
    async with GroqFake([Reply("one two three four", truncate_after=3, truncate_how=how)],  # type: ignore[arg-type]
                        api_key=KEY) as fake:
        events = await run(fake)
    assert text_of(events) == "one two"
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: truncated stream")
    assert len(fake.requests) == 1


async def test_truncated_stream_before_any_token_is_retried() -> None:
    async with GroqFake([Reply("lost", truncate_after=1), Reply("Found.")], api_key=KEY) as fake:
        events = await run(fake)
    assert isinstance(events[0], ProviderNotice) and events[0].detail == "truncated stream after 0 s"
    assert text_of(events) == "Found."


async def test_in_stream_error_object_is_an_llm_error() -> None:
    async with GroqFake([Reply("one two three", error_after=2)], api_key=KEY) as fake:
        events = await run(fake)
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: stream error: fake stream error")
    assert len(fake.requests) == 1


async def test_slow_first_byte_past_the_timeout_is_retried() -> None:
    async with GroqFake([Reply("late", first_byte_s=1.5), Reply("On time.")], api_key=KEY) as fake:
        events = await run(fake, timeout_s=0.3)
    assert events[0] == ProviderNotice(t_ms=0, cause=7, provider="groq", what="retry",
                                       detail="timeout after 0 s")
    assert text_of(events) == "On time."


async def test_slow_first_byte_twice_is_an_llm_error() -> None:
    async with GroqFake([Reply("late", first_byte_s=1.5), Reply("late", first_byte_s=1.5)],
                        api_key=KEY) as fake:
        events = await run(fake, timeout_s=0.3)
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: timeout")


async def test_bad_key_is_an_llm_error_that_does_not_show_the_key() -> None:
    async with GroqFake([Reply("never")], api_key="another-key") as fake:
        events = await run(fake)
    assert events == [LlmError(t_ms=0, cause=7, message="groq: HTTP 401: Invalid API Key")]


async def test_connection_refused_is_retried_then_an_llm_error() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = GroqLlm(KEY, base_url=f"http://127.0.0.1:{port}")
    events: list[Input] = []
    await llm.stream(start_llm(), events.append)
    await llm.aclose()
    assert_safe(events)
    assert [type(e) for e in events] == [ProviderNotice, LlmError]
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: connection error")


def test_from_env_reads_key_and_base_url() -> None:
    llm = from_env({"GROQ_API_KEY": KEY, "GROQ_BASE_URL": "http://127.0.0.1:9"}, model="qwen/qwen3-32b")
    assert llm.model == "qwen/qwen3-32b"
    assert str(llm._client.base_url).startswith("http://127.0.0.1:9")
    assert GroqLlm.REQUIRED_ENV == ("GROQ_API_KEY",)
    with pytest.raises(LookupError, match="GROQ_API_KEY"):
        from_env({})


async def test_key_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with GroqFake([HttpError(500), Reply("Hi.")], api_key=KEY) as fake:
        await run(fake)
    async with GroqFake([Reply("never")], api_key="another-key") as fake:
        await run(fake)
    assert caplog.records and KEY not in caplog.text


# ---------------------------------------------------------------------------------------------- warm-up (issue 15)


async def test_warm_opens_the_connection_the_first_request_then_uses() -> None:
    """The runtime warms at call start; the caller's first turn must find that connection, not open one."""
    async with GroqFake(api_key=KEY, script=[Reply("Yes.")]) as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        try:
            assert (await llm.warm()).startswith("ready in ")
            events: list[Input] = []
            await llm.stream(start_llm(), events.append)
        finally:
            await llm.aclose()
    assert fake.model_lists == 1 and text_of(events) == "Yes."
    warm_peer, request_peer = fake.peers
    assert warm_peer == request_peer  # one TCP connection for both


async def test_warm_with_a_bad_key_says_so_without_the_key() -> None:
    async with GroqFake(api_key="another-key") as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        try:
            detail = await llm.warm()
        finally:
            await llm.aclose()
    assert detail == "HTTP 401" and fake.model_lists == 1
