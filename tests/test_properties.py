"""Property tests: thousands of generated calls, every invariant of replay/invariants.py after every call,
and every call logged, read back and reproduced exactly."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import events as ev
from engine.flow import Flow, ScriptedReply
from engine.machine import CallMachine
from logstore.memory import MemoryStore
from replay import invariants
from replay.reproduce import reproduce
from replay.turns import steps
from sim.offline import OfflineCall
from sim.script import CallerTurn, CallScript, CannedTool, Latency

#: 500 in CI (the floor the project set); CALLSTATE_EXAMPLES=5000 for a deep run.
EXAMPLES = int(os.environ.get("CALLSTATE_EXAMPLES", "500"))

WORDS = ["yes", "no", "my", "shipment", "is", "it", "delayed", "tracking", "number", "4", "5", "19", "and",
         "um", "uh-huh", "okay", "stop", "wait", "hold", "on", "thanks", "Tuesday", "the", "so"]
sentence = st.builds(lambda ws, p: " ".join(ws) + p, st.lists(st.sampled_from(WORDS), min_size=1, max_size=7),
                     st.sampled_from(["", ".", "?", ",", "!"]))
reply_text = st.builds(lambda parts: " ".join(parts), st.lists(sentence, min_size=1, max_size=4))
gap = st.integers(0, 3000)
over = st.integers(0, 2500)

caller_turn = st.one_of(
    st.builds(CallerTurn, say=sentence, gap_ms=gap),
    st.builds(CallerTurn, say=sentence, barge_in_after_ms=over),
    st.builds(CallerTurn, noise_ms=st.integers(20, 700), gap_ms=gap),
    st.builds(CallerTurn, noise_ms=st.integers(20, 700), barge_in_after_ms=over),
    st.builds(CallerTurn, dtmf=st.sampled_from(list("0123456789*#")), gap_ms=gap),
    st.builds(CallerTurn, silence=st.just(True)),
)
latency = st.builds(
    Latency, vad_start_ms=st.integers(0, 150), vad_stop_ms=st.integers(0, 400),
    stt_interim_ms=st.integers(60, 700), stt_final_ms=st.integers(0, 900),
    llm_first_token_ms=st.integers(0, 1500), llm_token_ms=st.integers(0, 80),
    tts_first_byte_ms=st.integers(0, 900), tts_chunk_ms=st.integers(20, 600),
    tts_realtime_factor=st.floats(0.05, 1.5), tool_ms=st.integers(0, 3000), caller_wpm=st.integers(90, 260))
reply = st.one_of(
    st.builds(ScriptedReply, text=reply_text),
    st.builds(ScriptedReply, text=st.one_of(st.none(), sentence), tool=st.just("lookup"),
              arguments=st.just({"id": "451992"})),
    st.builds(ScriptedReply, text=st.just("")),
)
turn_taking = st.fixed_dictionaries({
    "endpointing": st.fixed_dictionaries({"on_punctuation_ms": st.integers(0, 800),
                                          "on_no_punctuation_ms": st.integers(0, 2500)}),
    "barge_in": st.fixed_dictionaries({
        "min_speech_ms": st.integers(50, 600), "min_words": st.integers(1, 3),
        "false_interruption_ms": st.integers(100, 3000), "resume_false_interruption": st.booleans()}),
    "filler": st.fixed_dictionaries({"after_ms": st.integers(100, 2000), "enabled": st.booleans()}),
    "idle": st.fixed_dictionaries({"reprompt_ms": st.integers(1000, 9000), "max_reprompts": st.integers(0, 2)}),
    "streaming": st.fixed_dictionaries({"first_clause": st.booleans(), "min_clause_words": st.integers(1, 4)}),
    "preemptive_generation": st.booleans(),
    "max_call_ms": st.integers(15_000, 90_000),
})
LOOKUP = {"description": "Find a shipment", "function": "tests.toolfuncs:echo",
          "messages": {"on_delay": [{"after_ms": 600, "text": "Let me check that."}], "on_error": "Sorry."}}
NODES = {
    "menu": {"instructions": "Menu.", "on_dtmf": {"1": "billing", "0": "operator", "9": "bye"},
             "goto": ["billing"], "tools": ["lookup"], "on_tool": {"lookup": {"field": "status",
                                                                            "cases": {"late": "billing"}}}},
    "billing": {"instructions": "Bills.", "say": "Billing here.", "tools": ["lookup"],
                "on_dtmf": {"#": "menu"}, "context": "reset"},
    "operator": {"transfer": {"to": "+15550100", "say": "Transferring you now."}},
    "bye": {"end": "Goodbye!"},
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[Flow, CallScript]:
    with_nodes = draw(st.booleans())
    flow = Flow.model_validate({
        "name": "generated", "greeting": draw(st.one_of(st.none(), st.just("Hi, how can I help?"))),
        "turn_taking": draw(turn_taking), "tools": {"lookup": LOOKUP},
        **({"start_node": "menu", "nodes": NODES} if with_nodes else {})})
    script = CallScript(
        seed=draw(st.integers(0, 2**31)), latency=draw(latency),
        caller=draw(st.lists(caller_turn, max_size=8)), replies=draw(st.lists(reply, max_size=8)),
        tools={"lookup": CannedTool(body=draw(st.sampled_from([{"status": "late"}, {"status": "on_time"}])),
                                    latency_ms=draw(st.integers(0, 3000)),
                                    error=draw(st.sampled_from([None, None, "timeout"])))})
    return flow, script


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_generated_calls_hold_every_invariant_and_reproduce_from_the_log(call: tuple[Flow, CallScript]) -> None:
    flow, script = call
    result = asyncio.run(OfflineCall(flow, script).run())
    assert result.state == "ended"
    violations = invariants.check(steps(flow, result.log), flow)
    assert violations == [], "\n".join(map(str, violations))
    store = MemoryStore()  # through the log's JSON and back: what replay reads is what was written
    store.open_call("c", started_at="2026-11-29T00:00:00+00:00", flow=flow.name)
    for e in result.log:
        store.append("c", e)
    store.close_call("c", outcome=result.outcome, ended_t_ms=result.log[-1].t_ms, turns=0)
    replayed = reproduce(flow, store.load("c"), call_id="c")
    assert replayed.ok, replayed.divergence and replayed.divergence.describe("c")


# ------------------------------------------------------------------------- arbitrary input (chaos)

cause = st.integers(1, 120)
chaos_input = st.one_of(
    st.builds(ev.SpeechStarted, t_ms=st.just(0)), st.builds(ev.SpeechStopped, t_ms=st.just(0)),
    st.builds(ev.Transcript, t_ms=st.just(0), text=sentence, is_final=st.booleans()),
    st.builds(ev.UtteranceEnd, t_ms=st.just(0)),
    st.builds(ev.Dtmf, t_ms=st.just(0), digit=st.sampled_from(list("0123456789*#"))),
    st.builds(ev.LlmToken, t_ms=st.just(0), cause=cause, text=sentence),
    st.builds(ev.LlmToolCall, t_ms=st.just(0), cause=cause, tool_call_id=st.just("c1"),
              name=st.sampled_from(["lookup", "goto", "nope"]),
              arguments=st.sampled_from(["{}", "x", '{"target": "billing"}'])),
    st.builds(ev.LlmDone, t_ms=st.just(0), cause=cause),
    st.builds(ev.LlmError, t_ms=st.just(0), cause=cause, message=st.just("x")),
    st.builds(ev.TtsAudio, t_ms=st.just(0), cause=cause, duration_ms=st.integers(1, 900)),
    st.builds(ev.TtsDone, t_ms=st.just(0), cause=cause),
    st.builds(ev.TtsError, t_ms=st.just(0), cause=cause, message=st.just("x")),
    st.builds(ev.PlaybackMark, t_ms=st.just(0), name=st.builds(lambda n: f"m{n}", cause)),
    st.builds(ev.ToolResult, t_ms=st.just(0), cause=cause, name=st.just("lookup"),
              body=st.just('{"status": "late"}'), ok=st.booleans()),
    st.builds(ev.TimerFired, t_ms=st.just(0), cause=cause,
              name=st.sampled_from(["endpoint", "barge_in", "filler", "idle", "false_interruption", "max_call"])),
    st.builds(ev.CallStarted, t_ms=st.just(0)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.tuples(st.integers(0, 3000), chaos_input), max_size=60))
def test_feed_never_raises_and_every_request_is_closed_at_call_end(with_nodes: bool, inputs: list) -> None:
    flow = Flow.model_validate({"name": "chaos", "greeting": "Hi.", "tools": {"lookup": LOOKUP},
                                **({"start_node": "menu", "nodes": NODES} if with_nodes else {})})
    machine = CallMachine(flow)
    log: list[ev.Event] = []
    t = 0
    for dt, e in [(0, ev.CallStarted(t_ms=0, seed=1)), *inputs, (1, ev.CallEnded(t_ms=0))]:
        t += dt
        stamped, effects = machine.step(ev_at(e, t))
        log += [stamped, *effects]
    assert machine.view.ended
    st_ = steps(flow, log)
    violations = invariants.requests_closed_at_end(st_, flow) + invariants.ended_after_call_ended(st_, flow)
    assert violations == []
    assert reproduce(flow, log).ok


def ev_at(e: ev.Input, t: int) -> ev.Input:
    from dataclasses import replace

    return replace(e, t_ms=t)
