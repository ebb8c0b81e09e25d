"""adapters/groq.py through the real groq SDK against the loopback fake (tests/fakes/groq.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from adapters.groq import GroqLlm, from_env
from adapters.reasoning import ALLOWANCE, ThinkFilter, reasoning_for
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
    # the reply's 99 tokens plus the allowance of gpt-oss's low-latency default effort
    assert body["temperature"] == 0.5 and body["max_completion_tokens"] == 99 + ALLOWANCE["low"]
    assert body["reasoning_effort"] == "low"
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
    reply = Reply("one two three four five six seven eight nine ten " * 5, token_delay_s=0.05, reasoning="")
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


# ---------------------------------------------------------------------------------------------- reasoning


async def test_the_default_model_reasons_at_low_effort_within_a_budget_for_reasoning_and_reply() -> None:
    """gpt-oss reasons at medium unless told (groq SDK reasoning_effort docstring) and its reasoning comes out
    of max_completion_tokens: at medium the fake spends more than the old 256-token budget, leaving nothing
    to say. The default settings must still answer aloud."""
    async with GroqFake([Reply("Your shipment is on time.")], api_key=KEY) as fake:
        events = await run(fake)
    (req,) = fake.requests
    assert req.body["reasoning_effort"] == "low"
    assert req.body["max_completion_tokens"] == 256 + ALLOWANCE["low"]
    assert text_of(events) == "Your shipment is on time."
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="stop")


async def test_the_default_flow_answers_aloud_through_the_reasoning_fake() -> None:
    """The LLM that build_providers makes for a flow with every llm default, against the fake that streams
    reasoning deltas which consume the budget as Groq's do."""
    from callstate.providers import build_providers
    from engine.flow import Flow

    async with GroqFake([Reply("It arrives on Thursday.")], api_key=KEY) as fake:
        flow = Flow.model_validate({"name": "defaults", "system": "Be brief.", "stt": {"provider": "local"},
                                    "tts": {"provider": "local"}})
        llm = build_providers(flow, {"GROQ_API_KEY": KEY, "GROQ_BASE_URL": fake.url}).llm
        events: list[Input] = []
        try:
            await llm.stream(start_llm(), events.append)
        finally:
            await llm.aclose()  # type: ignore[attr-defined]
    assert fake.requests[0].chunks_sent > ALLOWANCE["low"] // 100  # reasoning deltas did stream first
    assert text_of(events) == "It arrives on Thursday."
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="stop")


async def test_reasoning_deltas_are_never_spoken() -> None:
    async with GroqFake([Reply("Yes, it left today.", reasoning=" The user asks about a parcel.")],
                        api_key=KEY) as fake:
        events = await run(fake, reasoning_effort="high")
    assert fake.requests[0].body["reasoning_effort"] == "high"
    assert fake.requests[0].chunks_sent >= 6 + 5  # role, 5 reasoning words, 5 content words
    assert text_of(events) == "Yes, it left today."
    assert not any("parcel" in repr(e) for e in events)


@pytest.mark.parametrize("effort", [None, "default"])
async def test_a_qwen3_model_never_speaks_its_think_block(effort: str | None) -> None:
    """qwen3's default reasoning_format is raw (<think> in the content) without tools (console.groq.com/
    docs/reasoning): the adapter asks for parsed reasoning, and drops any think block that still comes."""
    async with GroqFake([Reply("Sure, one moment.", reasoning=" secret plan")], api_key=KEY) as fake:
        events = await run(fake, model="qwen/qwen3-32b", reasoning_effort=effort)
    assert text_of(events) == "Sure, one moment."
    body = fake.requests[0].body
    assert body["reasoning_format"] == "parsed" and body["reasoning_effort"] == (effort or "none")


def test_think_blocks_are_cut_across_chunk_boundaries() -> None:
    f = ThinkFilter()
    parts = ["<th", "ink>I should", " greet</thi", "nk>Hello", " <", "b>world", "<think>x"]
    assert "".join(f.feed(p) for p in parts) + f.flush() == "Hello <b>world"
    g = ThinkFilter()
    assert g.feed("a <") == "a " and g.flush() == "<"  # a held '<' is released at the end


@pytest.mark.parametrize(("model", "effort", "error"), [
    ("openai/gpt-oss-20b", "none", "'none' is not one of low, medium, high for openai/gpt-oss-20b"),
    ("qwen/qwen3-32b", "high", "'high' is not one of none, default for qwen/qwen3-32b"),
    ("llama-3.3-70b-versatile", "low", "llama-3.3-70b-versatile does not reason; remove it"),
    ("some/new-model", "extreme", "'extreme' is not one of none, default, low, medium, high"),
])
def test_an_effort_the_family_does_not_take_is_refused_in_one_line(model: str, effort: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        GroqLlm(KEY, model=model, reasoning_effort=effort)
    assert "\n" not in str(info.value)


def test_each_family_gets_its_default_effort_and_allowance() -> None:
    assert reasoning_for("openai/gpt-oss-120b").request == {"reasoning_effort": "low"}
    assert reasoning_for("qwen/qwen3.8-27b", "medium").allowance == ALLOWANCE["medium"]
    assert reasoning_for("llama-3.1-8b-instant") == reasoning_for("some/new-model")  # nothing sent, nothing added
    assert reasoning_for("llama-3.1-8b-instant").request == {}


async def test_length_speaks_what_came_and_puts_it_on_record(caplog: pytest.LogCaptureFixture) -> None:
    long = "one two three four five six seven eight nine ten eleven twelve"
    async with GroqFake([Reply(long, reasoning=" hm")], api_key=KEY) as fake:
        events = await run(fake, max_tokens=5, reasoning_effort="low")
    assert text_of(events) == long  # 1 reasoning token and 12 words fit in 5 + 512
    async with GroqFake([Reply(long, reasoning=" hm" * 514)], api_key=KEY) as fake:
        events = await run(fake, max_tokens=5, reasoning_effort="low")
    assert text_of(events) == "one two three"  # 517 - 514 tokens of reply
    assert events[-2] == ProviderNotice(t_ms=0, cause=7, provider="groq", what="length",
                                        detail="reply cut at max_completion_tokens=517 (reasoning_effort=low)")
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="length")
    assert "max_completion_tokens=517" in caplog.text


async def test_length_with_nothing_said_is_an_llm_error() -> None:
    """A budget spent on reasoning alone: the flow's fallback line, not silence."""
    async with GroqFake([Reply("never said", reasoning=" hm" * 800)], api_key=KEY) as fake:
        events = await run(fake, reasoning_effort="low")
    assert events == [LlmError(t_ms=0, cause=7, message="groq: length: 768 tokens ran out before a reply "
                                                      "(reasoning_effort=low)")]


async def test_a_cut_tool_call_is_not_run() -> None:
    call = ToolCall("lookup_booking", '{"ref": "X7K2QP"}')
    async with GroqFake([Reply("Let me see.", tool_calls=[call], reasoning=" hm" * 513)], api_key=KEY) as fake:
        events = await run(fake, start_llm(tools=(LOOKUP,)), max_tokens=5, reasoning_effort="low")
    assert text_of(events) == "Let me see."  # 516 of 517 tokens: the call's tokens do not fit
    assert not any(isinstance(e, LlmToolCall) for e in events)
    assert events[-1] == LlmDone(t_ms=0, cause=7, finish_reason="length")


async def test_x_groq_error_is_an_llm_error() -> None:
    """x_groq.error: "An error string indicating why a stream was stopped early" (groq SDK chunk types)."""
    async with GroqFake([Reply("Half an ans", stopped_early="model overloaded")], api_key=KEY) as fake:
        events = await run(fake)
    assert events[-1] == LlmError(t_ms=0, cause=7, message="groq: stream stopped early: model overloaded")
    assert not any(isinstance(e, LlmDone) for e in events) and len(fake.requests) == 1


def test_a_flow_sets_reasoning_effort_and_a_wrong_one_is_a_placed_one_line_error() -> None:
    from callstate.flows import check_text
    from callstate.providers import options

    flow = "name: x\nsystem: hi\nllm:\n  provider: groq\n  model: {model}\n  reasoning_effort: {effort}\n"
    good = check_text(flow.format(model="openai/gpt-oss-120b", effort="medium"))
    assert good.errors == [] and good.flow is not None
    assert options("llm", good.flow.llm).reasoning_effort == "medium"  # type: ignore[attr-defined]
    bad = check_text(flow.format(model="openai/gpt-oss-20b", effort="none"))
    assert bad.errors == ["<flow>:3:1 llm: reasoning_effort: 'none' is not one of low, medium, high for "
                          "openai/gpt-oss-20b"]


# ---------------------------------------------------------------------------------------------- warm-up (issue 15)


async def test_warm_opens_the_connection_the_first_request_then_uses() -> None:
    """The runtime warms at call start; the caller's first turn must find that connection, not open one."""
    async with GroqFake(api_key=KEY, script=[Reply("Yes."), Reply("No.")]) as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        try:
            assert await llm.warm() == ""
            events: list[Input] = []
            await llm.stream(start_llm(), events.append)
            await llm.stream(start_llm(), events.append)  # the next turn: the same connection again
        finally:
            await llm.aclose()
    assert fake.model_lists == 1 and text_of(events) == "Yes.No."
    warm_peer, *request_peers = fake.peers
    assert request_peers == [warm_peer, warm_peer]  # one TCP connection for all three


async def test_warm_with_a_bad_key_says_so_without_the_key() -> None:
    async with GroqFake(api_key="another-key") as fake:
        llm = GroqLlm(KEY, base_url=fake.url)
        try:
            detail = await llm.warm()
        finally:
            await llm.aclose()
    assert detail == "HTTP 401" and fake.model_lists == 1
