"""Flow nodes in the machine: routes by tool result, by DTMF and by the LLM's goto; context strategies."""

from __future__ import annotations

import json

import pytest

from engine import events as ev
from tests.helpers import MachineDriver, flow

TOOLS = {"check": {"description": "Check a slot", "function": "tests.toolfuncs:echo"}}
NODES = {
    "ask": {"instructions": "Ask for a date.", "tools": ["check"], "goto": ["human"],
            "on_tool": {"check": {"field": "available", "cases": {"true": "confirm"}, "default": "ask"}},
            "on_dtmf": {"9": "human"}},
    "confirm": {"instructions": "Confirm it.", "say": "It's free. Shall I book it?", "context": "reset",
                "summary": "The caller wants Tuesday at 10."},
    "human": {"transfer": {"to": "+15550100", "say": "Transferring you."}},
}
NODE_FLOW = flow(tools=TOOLS, start_node="ask", nodes=NODES)


def ask_and_call_tool(c: MachineDriver) -> ev.CallTool:
    c.say(1000, "Tuesday at 10 please.")
    c.fire("endpoint")
    c.feed(ev.LlmToolCall(t_ms=2300, cause=c.llm, tool_call_id="t1", name="check", arguments="{}"))
    c.feed(ev.LlmDone(t_ms=2301, cause=c.llm, finish_reason="tool_calls"))
    return c.last(ev.CallTool)


@pytest.mark.parametrize(("body", "node"), [
    ('{"available": true}', "confirm"),
    ('{"available": false}', "ask"),
    ('{"other": 1}', "ask"),
    ("not json", "ask"),
])
def test_a_tool_result_field_picks_the_next_node(body: str, node: str) -> None:
    c = MachineDriver(NODE_FLOW)
    call = ask_and_call_tool(c)
    c.feed(call.result(t_ms=2500, body=body))
    assert c.m.view.node == node and c.all(ev.EnterNode)[-1].node == node


def test_entering_a_reset_node_keeps_only_its_summary() -> None:
    c = MachineDriver(NODE_FLOW)
    c.feed(ask_and_call_tool(c).result(t_ms=2500, body='{"available": true}'))
    speak = c.last(ev.Speak)
    assert (speak.text, c.state) == ("It's free. Shall I book it?", "speaking")
    history = [m.content for m in c.m.view.messages[1:]]
    assert history == ["(Summary of the call so far: The caller wants Tuesday at 10.)"]
    assert c.m.view.messages[0].content.endswith("Confirm it.")


def test_goto_moves_to_a_listed_node_and_is_answered_by_the_machine() -> None:
    c = MachineDriver(NODE_FLOW)
    c.say(1000, "Can I talk to a person?")
    c.fire("endpoint")
    offered = [t.name for t in c.last(ev.StartLlm).tools]
    assert offered == ["check", "goto"]
    c.feed(ev.LlmToolCall(t_ms=2300, cause=c.llm, tool_call_id="g1", name="goto", arguments='{"target": "human"}'))
    effects = c.feed(ev.LlmDone(t_ms=2301, cause=c.llm, finish_reason="tool_calls"))
    assert not [e for e in effects if isinstance(e, ev.CallTool)]  # never reaches the tool runner
    assert c.m.view.node == "human" and [e.text for e in effects if isinstance(e, ev.Speak)] == ["Transferring you."]
    c.play(c.last(ev.Speak), 2400)
    assert c.last(ev.Transfer).to == "+15550100" and c.state == "ended"


def test_goto_to_an_unlisted_node_is_told_to_the_llm() -> None:
    c = MachineDriver(NODE_FLOW)
    c.say(1000, "Book it.")
    c.fire("endpoint")
    c.feed(ev.LlmToolCall(t_ms=2300, cause=c.llm, tool_call_id="g1", name="goto", arguments='{"target": "confirm"}'))
    c.feed(ev.LlmDone(t_ms=2301, cause=c.llm, finish_reason="tool_calls"))
    assert c.m.view.node == "ask"
    last = c.last(ev.StartLlm).messages[-1]
    assert (last.role, json.loads(last.content or "{}")) == ("tool", {"error": "no step 'confirm'"})


def test_a_tool_the_node_does_not_offer_is_refused() -> None:
    f = flow(tools={**TOOLS, "other": {"description": "x", "function": "tests.toolfuncs:echo"}},
             start_node="ask", nodes=NODES)
    c = MachineDriver(f)
    c.say(1000, "Hi.")
    c.fire("endpoint")
    c.feed(ev.LlmToolCall(t_ms=2300, cause=c.llm, tool_call_id="o1", name="other", arguments="{}"))
    c.feed(ev.LlmDone(t_ms=2301, cause=c.llm, finish_reason="tool_calls"))
    assert not c.all(ev.CallTool)
    assert "unknown tool 'other'" in (c.last(ev.StartLlm).messages[-1].content or "")


def test_dtmf_route_interrupts_whatever_the_agent_was_doing() -> None:
    c = MachineDriver(NODE_FLOW)
    c.say(1000, "Tuesday please.")
    c.fire("endpoint")
    c.answer(2300, "Let me see what we have on Tuesday. ", done=False)
    c.feed(ev.TtsAudio(t_ms=2400, cause=c.last(ev.Speak).seq, duration_ms=500))
    effects = c.feed(ev.Dtmf(t_ms=2500, digit="9"))
    kinds = [type(e).__name__ for e in effects]
    assert kinds[:3] == ["ClearPlayback", "CancelTts", "CancelLlm"]
    assert "EnterNode" in kinds and c.m.view.node == "human"


def test_an_unrouted_digit_in_listening_is_the_callers_words() -> None:
    c = MachineDriver(NODE_FLOW)
    c.feed(ev.Dtmf(t_ms=500, digit="4"))
    c.feed(ev.Dtmf(t_ms=700, digit="2"))
    c.fire("endpoint")
    assert c.all(ev.Respond)[-1].caller == "4 2"
