"""Issue 5, done when: the fakes and the serve app with the real Deepgram, Groq and Aura adapters; a call
driven by the simulated Twilio phone completes with a barge-in and a tool call, survives every provider
fault, and replay reproduces it.

The calls (tests/fakes/scenario.py) run in real time, concurrently, once for the module (~25 s); the
tests below read their logs. Faults that do not interfere share a call:
- clean: no fault;
- stt_drop_and_llm_retries: the Deepgram socket drops after the second line, Groq answers turn 1 with a
  429 (retry-after 0.3 s) and turn 2 with a 500 before succeeding, and is 1.5 s slow to its first byte in
  turn 4;
- llm_and_tts_failures: Groq fails turn 1 with 500 twice, truncates its stream in turn 3, and the Aura
  socket drops at the long answer's first sentence and its reconnect is refused with a 500;
- late_stt_speech_started: a short answer whose Deepgram SpeechStarted comes after the local VAD's stop
  (a regression call for 347e999 and 0c68d1b: the STT's SpeechStarted used to hold the floor for good,
  swallowing the reply, and the no_reply_over_caller invariant counted it as the caller speaking).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from adapters.audio import load_fixture
from adapters.deepgram import DeepgramStt
from engine import events as ev
from replay import invariants
from replay.reproduce import reproduce
from replay.turns import steps
from tests.fakes.base import wait_for
from tests.fakes.deepgram_listen import DeepgramListenFake, Lines, ListenFaults
from tests.fakes.deepgram_speak import SpeakFaults
from tests.fakes.groq import HttpError, Reply
from tests.fakes.scenario import (
    CALLER,
    DEEPGRAM_KEY,
    DELAY_MESSAGE,
    GROQ_KEY,
    KEYS,
    LONG_ANSWER,
    REPLIES,
    TRACKING,
    Outcome,
    Scenario,
    captured_logs,
    run,
)

SILENCE = b"\xff"
#: The fake-behaviour tests below stream at 10x real time to save time: the fake's 1.25x intake is off.
FAST = {"max_rate": None}
TRUNCATED = Reply("Of course, I'll text you.", ttft_s=0.4, truncate_after=3)  # role chunk, "Of", " course,"

SCENARIOS = [
    Scenario("clean"),
    Scenario("stt_drop_and_llm_retries", listen_faults=ListenFaults(drop_after_utterance=2), groq={
        **REPLIES,
        CALLER[0]: [HttpError(429, retry_after="0.3"), *REPLIES[CALLER[0]]],
        CALLER[1]: [HttpError(500), *REPLIES[CALLER[1]]],
        CALLER[3]: [Reply("Thanks for calling. Bye!", first_byte_s=1.5)],
    }),
    # The failures of turns 1 and 3 come after the turn is taken (delay_s, ttft_s): an LLM error during the
    # preemptive phase is dropped and the turn retried, which would only consume the next two items.
    Scenario("llm_and_tts_failures", groq={
        **REPLIES,
        CALLER[0]: [HttpError(500, delay_s=0.4), HttpError(500), HttpError(500), HttpError(500)],
        CALLER[2]: [TRUNCATED, TRUNCATED],
    }, speak_faults=SpeakFaults(drop_on_text="It's running a day late.", refuse_after_drop=500)),
]
#: A short answer ("Yes.", 0.3 s of speech) whose Deepgram SpeechStarted arrives 0.6 s after the speech began,
#: so after the local VAD's SpeechStopped.
LATE_SPEECH_STARTED = Scenario(
    "late_stt_speech_started", lines=(("shipment_1", CALLER[0]), ("stop", "Yes.")), barge_in_line=None,
    speech_started_latency_s=0.6, timeout_s=20.0,
    groq={CALLER[0]: REPLIES[CALLER[0]], "Yes.": [Reply("Great, I'll look it up.")]})
SCENARIOS.append(LATE_SPEECH_STARTED)
NAMES = [s.name for s in SCENARIOS]


@dataclass
class Calls:
    outcomes: dict[str, Outcome]
    logs: list[str]


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Calls:
    workdir = tmp_path_factory.mktemp("e2e")

    async def every_call() -> list[Outcome]:
        return await asyncio.gather(*(run(s, workdir) for s in SCENARIOS))

    with captured_logs() as logs:
        outcomes = asyncio.run(every_call())
    return Calls({o.scenario.name: o for o in outcomes}, logs)


# ---------------------------------------------------------------------------------------------- helpers


def turns(call: Outcome) -> Iterator[tuple[ev.Respond, list[ev.Event]]]:
    """Each Respond with the events up to the next one (or the end of the call)."""
    responds = call.of(ev.Respond)
    for r, nxt in zip(responds, [*responds[1:], None], strict=True):
        yield r, [e for e in call.log if r.seq < e.seq and (nxt is None or e.seq < nxt.seq)]


def heard(call: Outcome, speak: ev.Speak) -> bool:
    """Did any audio of this Speak go out to the phone?"""
    audio = {e.seq for e in call.of(ev.TtsAudio) if e.cause == speak.seq}
    return any(e.cause in audio for e in call.of(ev.SendAudio))


def spoken(events: list[ev.Event], purpose: str | None = None) -> list[ev.Speak]:
    return [e for e in events if isinstance(e, ev.Speak) and purpose in (None, e.purpose)]


def turn(call: Outcome, n: int) -> list[ev.Event]:
    return list(turns(call))[n - 1][1]


def notices(call: Outcome, provider: str) -> list[tuple[str, str]]:
    return [(e.what, e.detail) for e in call.of(ev.ProviderNotice) if e.provider == provider]


# ---------------------------------------------------------------------------------------------- every call


@pytest.mark.parametrize("name", NAMES)
def test_the_call_completes_and_its_log_reproduces(calls: Calls, name: str) -> None:
    call = calls.outcomes[name]
    assert not call.caller.timed_out and not call.caller.server_closed
    (ended,) = call.of(ev.CallEnded)
    assert ended.reason == "stop" and call.status == "ended"  # the caller hung up; the log was closed
    result = reproduce(call.flow, call.log, call_id=call.call_id)
    assert result.ok, result.divergence.describe(call.call_id)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", NAMES)
def test_the_call_keeps_every_invariant(calls: Calls, name: str) -> None:
    call = calls.outcomes[name]
    assert [str(v) for v in invariants.check(steps(call.flow, call.log), call.flow)] == []


@pytest.mark.parametrize("name", NAMES)
def test_every_caller_line_is_transcribed_and_answered_aloud(calls: Calls, name: str) -> None:
    call = calls.outcomes[name]
    said = [text for _, text in call.scenario.lines]
    assert call.listen.lines_heard == said  # the fake heard each line in the audio, once
    assert [r.caller for r in call.of(ev.Respond)] == said
    for respond, events in turns(call):
        answers = spoken(events)
        assert answers and any(heard(call, s) for s in answers), f"turn {respond.turn} got no audible answer"


def test_the_keys_reach_the_providers_and_nowhere_else(calls: Calls) -> None:
    for call in calls.outcomes.values():
        assert all(r.headers["Authorization"] == f"Bearer {GROQ_KEY}" for r in call.groq.requests)
        assert all(c.headers["Authorization"] == f"Token {DEEPGRAM_KEY}" for c in call.listen.connections)
        assert all(c.headers["Authorization"] == f"Token {DEEPGRAM_KEY}" for c in call.speak.connections)
        for key in KEYS:
            assert key.encode() not in call.db_bytes, f"{call.scenario.name}: a key is in the SQLite file"
    text = "\n".join(calls.logs)
    assert "callstate.server" in text and "websockets.client" in text  # the capture saw every logger
    for key in KEYS:
        assert key not in text


# ---------------------------------------------------------------------------------------------- the clean call


def test_the_caller_barges_in_over_the_long_answer(calls: Calls) -> None:
    call = calls.outcomes["clean"]
    (clear,) = call.of(ev.ClearPlayback)
    assert call.caller.clears == 1
    cut = [s for s in spoken(turn(call, 2), "reply") if s.text in LONG_ANSWER]
    assert cut and heard(call, cut[0]) and cut[0].seq < clear.seq  # the long answer was playing
    step = next(st for st in steps(call.flow, call.log) if clear in st.effects)
    assert step.before == "speaking" and step.after in ("interrupted", "listening")
    # the LLM is told what was heard: the answer cut at the barge-in, not the whole of it
    nxt = next(e for e in call.of(ev.StartLlm) if e.seq > clear.seq)
    said = [m.content for m in nxt.messages if m.role == "assistant" and m.content]
    assert said[-1] != LONG_ANSWER and LONG_ANSWER.startswith(said[-1].rstrip("."))
    assert call.listen.finals[2].text == CALLER[2]


def test_the_tool_is_called_through_the_slow_webhook_and_its_result_answered(calls: Calls) -> None:
    call = calls.outcomes["clean"]
    (tool,) = call.of(ev.CallTool)
    assert (tool.name, tool.arguments, tool.tool_call_id) == ("lookup_shipment", TRACKING, "call_lookup")
    (result,) = [e for e in call.of(ev.ToolResult) if e.cause == tool.seq]
    assert result.ok and '"status": "delayed"' in result.body and call.lookups == 1
    assert result.t_ms - tool.t_ms >= 1300  # slower than the on_delay message, which was said meanwhile
    (delay,) = [s for s in spoken(turn(call, 2), "tool_message")]
    assert delay.text == DELAY_MESSAGE and tool.t_ms + 800 <= delay.t_ms < result.t_ms and heard(call, delay)
    after = next(e for e in call.of(ev.StartLlm) if e.seq > result.seq)
    assert [m.content for m in after.messages if m.role == "tool"] == [result.body]
    request = next(r for r in call.groq.requests if any(m["role"] == "tool" for m in r.body["messages"]))
    assert request.body["tools"][0]["function"]["name"] == "lookup_shipment"


def test_a_clean_call_has_no_provider_trouble_on_record(calls: Calls) -> None:
    call = calls.outcomes["clean"]
    ready = {("stt", "open"), ("llm", "warm"), ("tts", "warm")}  # connections on the record, not trouble
    trouble = [n for n in call.of(ev.ProviderNotice) if (n.provider, n.what) not in ready]
    assert trouble == [] and call.of(ev.LlmError) == [] and call.of(ev.TtsError) == []
    (conn,) = call.listen.connections
    assert {k: conn.q(k) for k in ("model", "encoding", "sample_rate", "endpointing", "interim_results")} == {
        "model": "nova-3", "encoding": "mulaw", "sample_rate": "8000", "endpointing": "300",
        "interim_results": "true"}
    assert conn.ended == "close_stream"


def test_the_connections_are_open_before_the_first_line_ends_and_the_log_says_when(calls: Calls) -> None:
    """Issue 15: the first turn pays no connect. The STT socket, a pooled LLM connection and an Aura socket
    are opened at call start, and each opening is an input on the record (so replay sees it too)."""
    call = calls.outcomes["clean"]
    (stt_open,) = [n for n in call.of(ev.ProviderNotice) if (n.provider, n.what) == ("stt", "open")]
    (llm_warm,) = [n for n in call.of(ev.ProviderNotice) if (n.provider, n.what) == ("llm", "warm")]
    (tts_warm,) = [n for n in call.of(ev.ProviderNotice) if (n.provider, n.what) == ("tts", "warm")]
    first_stop = call.of(ev.SpeechStopped)[0]
    for notice in (stt_open, llm_warm, tts_warm):
        assert notice.seq < first_stop.seq and notice.detail.startswith("ready in ")
    assert call.groq.model_lists >= 1  # the warm-up went through the SDK to the fake, with the key


# ---------------------------------------------------------------------------------------------- faults


def test_the_call_speaks_every_line_over_one_warm_aura_socket(calls: Calls) -> None:
    """Opened as the call starts, before the greeting; Speak + Flush per line on it (issue 10)."""
    call = calls.outcomes["clean"]
    lines = [s for s in call.of(ev.Speak) if heard(call, s)]
    (conn,) = call.speak.connections
    assert len(lines) >= 8 and conn.controls.count("Flush") == len(call.of(ev.Speak))
    assert call.speak.warnings == 0 and call.speak.refused_429 == 0


def test_a_dropped_deepgram_socket_is_reconnected_and_later_lines_transcribed(calls: Calls) -> None:
    call = calls.outcomes["stt_drop_and_llm_retries"]
    assert [w for w, _ in notices(call, "deepgram")] == ["stt_dropped", "stt_reconnected"]
    first, second = call.listen.connections
    assert first.ended == "dropped" and second.ended == "close_stream"
    assert [(f.line, f.connection) for f in call.listen.finals] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    reconnected = next(e for e in call.of(ev.ProviderNotice) if e.what == "stt_reconnected")
    later = [e.text for e in call.of(ev.Transcript) if e.is_final and e.seq > reconnected.seq]
    assert later == CALLER[2:]


def test_a_groq_429_is_retried_after_its_retry_after(calls: Calls) -> None:
    call = calls.outcomes["stt_drop_and_llm_retries"]
    assert ("retry", "429 after 0.3 s") in notices(call, "groq")
    assert [s.text for s in spoken(turn(call, 1), "reply")] == ["Sure.", "What's the tracking number?"]


def test_a_groq_500_is_retried_once_at_once(calls: Calls) -> None:
    call = calls.outcomes["stt_drop_and_llm_retries"]
    assert ("retry", "500 after 0 s") in notices(call, "groq")
    assert [t.name for t in call.of(ev.CallTool)] == ["lookup_shipment"]
    assert call.of(ev.LlmError) == []


def test_a_slow_first_byte_is_covered_by_a_filler(calls: Calls) -> None:
    call = calls.outcomes["stt_drop_and_llm_retries"]
    events = turn(call, 4)
    (filler,) = spoken(events, "filler")
    reply = spoken(events, "reply")
    assert filler.text in call.flow.fillers and heard(call, filler)
    assert [s.text for s in reply] == ["Thanks for calling.", "Bye!"] and filler.seq < reply[0].seq
    start = next(e for e in call.of(ev.StartLlm) if e.seq < filler.seq and e.messages[-1].content == CALLER[3])
    first = next(e for e in call.of(ev.LlmToken) if e.cause == start.seq)
    assert first.t_ms - start.t_ms >= 1400


def test_groq_failing_twice_speaks_the_fallback_and_the_call_goes_on(calls: Calls) -> None:
    call = calls.outcomes["llm_and_tts_failures"]
    events = turn(call, 1)
    assert [e.message for e in events if isinstance(e, ev.LlmError)][-1] == "groq: 500"
    (fallback,) = spoken(events, "fallback")
    assert fallback.text == call.flow.fallback.llm and heard(call, fallback)
    assert [t.name for t in call.of(ev.CallTool)] == ["lookup_shipment"]  # turn 2 goes on as usual


def test_a_truncated_groq_stream_speaks_the_fallback(calls: Calls) -> None:
    call = calls.outcomes["llm_and_tts_failures"]
    events = turn(call, 3)
    assert "groq: truncated stream" in [e.message for e in events if isinstance(e, ev.LlmError)]
    (fallback,) = spoken(events, "fallback")
    assert heard(call, fallback) and spoken(events, "reply") == []  # "Of course," never made a clause
    assert [s.text for s in spoken(turn(call, 4), "reply")] == ["Thanks for calling.", "Bye!"]


def test_a_tts_500_skips_one_line_and_the_turn_goes_on(calls: Calls) -> None:
    call = calls.outcomes["llm_and_tts_failures"]
    assert len(call.speak.failed) == 1 and call.speak.connections[0].ended == "dropped"
    (error,) = call.of(ev.TtsError)
    failed = call.by_seq(error.cause)
    assert isinstance(failed, ev.Speak) and failed.text == "It's running a day late." and not heard(call, failed)
    assert ("error", "DeepgramError: deepgram tts: connect failed: HTTP 500") in notices(call, "tts")
    rest = [s for s in spoken(turn(call, 2), "reply") if s.seq > failed.seq]
    assert rest and heard(call, rest[0])  # the turn is shortened, not stopped


# ---------------------------------------------------------------------------------------------- the fake itself


async def transcribe(fake: DeepgramListenFake, audio: bytes, *,
                     finalize_at: frozenset[int] = frozenset()) -> list[ev.Input]:
    """Send ``audio`` through the real adapter (10x real time); Finalize after the frames in finalize_at.
    The fakes these tests check are made with FAST: no 1.25x intake limit, so 10x is taken as sent."""
    session = DeepgramStt(DEEPGRAM_KEY, base_url=fake.url).session(params={})
    events: list[ev.Input] = []
    await session.start(events.append)
    for n, i in enumerate(range(0, len(audio), 160)):
        await session.send_audio(audio[i:i + 160])
        if n in finalize_at:
            await session.speech_stopped()
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.3)
    await session.close()
    return events


def quiet(seconds: float) -> bytes:
    return SILENCE * int(seconds * 8000)


async def test_the_listen_fake_transcribes_the_nth_utterance_as_the_nth_line() -> None:
    one, cough, two = load_fixture("shipment_1"), load_fixture("cough"), load_fixture("shipment_4")
    audio = quiet(0.5) + one + quiet(1.2) + cough + quiet(1.2) + two + quiet(1.5)
    async with DeepgramListenFake(Lines(["Is it late?", "No, that's all. Thanks, bye."], final_latency_s=0),
                                  api_key=DEEPGRAM_KEY, **FAST) as fake:
        events = await transcribe(fake, audio)
    finals = [e for e in events if isinstance(e, ev.Transcript) and e.is_final]
    assert [(f.text, f.speech_final) for f in finals] == [("Is it late?", True), ("No, that's all. Thanks, bye.", True)]
    # word timings come from where the speech was: 0.5 s + the fixture's length, to the frame
    assert finals[0].start_ms == 500 and abs(finals[0].end_ms - (500 + len(one) // 8)) <= 20  # type: ignore[operator]
    second_at = 500 + len(one) // 8 + 1200 + len(cough) // 8 + 1200
    assert abs(finals[1].start_ms - second_at) <= 20  # type: ignore[operator]
    interims = [e.text for e in events if isinstance(e, ev.Transcript) and not e.is_final]
    assert interims[0] == "Is" and interims[-1] == "No, that's all. Thanks, bye."
    assert len([e for e in events if isinstance(e, ev.SpeechStarted)]) == 3  # the cough too: it is sound
    ends = [e.last_word_end_ms for e in events if isinstance(e, ev.UtteranceEnd)]
    assert ends == [f.end_ms for f in finals]
    assert fake.lines_heard == ["Is it late?", "No, that's all. Thanks, bye."]


async def test_a_finalize_flushes_the_line_at_once_or_only_the_words_heard_so_far() -> None:
    line = load_fixture("shipment_2")  # 2.76 s of "The tracking number is 4 5 1 9 9 2."
    audio = quiet(0.3) + line + quiet(1.2)
    mid = (2400 + 1200 * 8) // 160  # 1.2 s into the speech
    after = (2400 + len(line) + 800) // 160  # 100 ms into the silence after it
    async with DeepgramListenFake(Lines(["The tracking number is 4 5 1 9 9 2."], final_latency_s=0),
                                  api_key=DEEPGRAM_KEY, **FAST) as fake:
        events = await transcribe(fake, audio, finalize_at=frozenset({mid, after}))
    finals = [(e.text, e.speech_final) for e in events if isinstance(e, ev.Transcript) and e.is_final]
    assert finals == [("The tracking number is", False), ("4 5 1 9 9 2.", True)]
    assert [f.from_finalize for f in fake.finals] == [True, True]
    assert fake.connections[0].controls == ["Finalize", "Finalize", "CloseStream"]


async def test_a_socket_dropped_mid_line_goes_on_with_that_line_after_the_reconnect(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # This checks the fake's resumption at 10x real time; the adapter's 1.25x catch-up is test_deepgram's.
    monkeypatch.setattr("adapters.deepgram.CATCHUP_RATE", 100.0)
    noise = random.Random(5).randbytes(80)  # loud frames: speech to the fake
    speech = bytes(b for _ in range(200) for b in noise)[: 2 * 8000]  # 2 s of "speech"
    audio = quiet(0.3) + speech + quiet(1.5) + speech + quiet(1.5)
    async with DeepgramListenFake(Lines(["First line here.", "Second line here."], final_latency_s=0),
                                  api_key=DEEPGRAM_KEY, faults=ListenFaults(drop_after_s=1.0), **FAST) as fake:
        events = await transcribe(fake, audio)
        await wait_for(lambda: len(fake.connections) == 2)
    assert [n.what for n in events if isinstance(n, ev.ProviderNotice)] == ["stt_dropped", "stt_reconnected"]
    assert fake.lines_heard == ["First line here.", "Second line here."]
    assert [f.connection for f in fake.finals] == [1, 1]  # the cut line was heard again whole, once


def test_a_late_stt_speech_started_does_not_swallow_the_reply(calls: Calls) -> None:
    """Regression (347e999): the STT's SpeechStarted held the floor with no stop to follow, so the endpoint
    timer was ignored, the reply was held unspoken and the call went silent."""
    call = calls.outcomes[LATE_SPEECH_STARTED.name]
    first = next(r for r in call.of(ev.Respond) if r.turn == 1)
    speech = [e for e in call.log if isinstance(e, ev.SpeechStarted | ev.SpeechStopped) and e.seq > first.seq]
    assert [(type(e).__name__, e.source) for e in speech][:3] == [
        ("SpeechStarted", "vad"), ("SpeechStopped", "vad"), ("SpeechStarted", "stt")]  # the race happened
    answers = spoken(turn(call, 2), "reply")
    assert [s.text for s in answers] == ["Great, I'll look it up."] and heard(call, answers[0])
    assert not call.caller.timed_out
