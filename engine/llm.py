"""What the LLM is asked, and its stream cut into speakable clauses.

Rules:
- The request is built in one place (``request``): the context as heard, the caller's pending words for a
  preemptive request, the node's tools. Whatever the log keeps of a request is decided there.
- A clause is spoken as soon as it is complete (policy.split_clause), never while the caller is talking:
  held text waits in LlmOutput.buffer until they stop.
- A preemptive request's output is held until its turn is confirmed on the same words, else cancelled.
"""

from __future__ import annotations

import json

from engine import events as ev
from engine import policy
from engine.call import Call
from engine.output import say, speak
from engine.records import LlmOutput, LlmRequest
from engine.states import CallState

#: The built-in tool that moves the flow to another node (answered by the machine, never run).
GOTO = "goto"
#: LLM requests in one caller turn (tool round trips included) before the fallback line: a guard against a
#: model that keeps calling tools.
MAX_LLM_ROUNDS = 5


def pending_words(c: Call) -> tuple[str, ...]:
    return tuple(policy.words(" ".join([*c.heard.finals, c.heard.interim])))


def system_prompt(c: Call) -> str:
    node = c.node_cfg()
    if node is None or not node.instructions:
        return c.flow.system
    return f"{c.flow.system}\n\n{node.instructions}"


def offered_tools(c: Call) -> tuple[ev.ToolSpec, ...]:
    node = c.node_cfg()
    specs = c.flow.tool_specs(None if node is None else node.tools)
    if node is not None and node.goto:
        params = {"type": "object", "required": ["target"],
                  "properties": {"target": {"type": "string", "enum": sorted(node.goto)}}}
        specs += (ev.ToolSpec(name=GOTO, description="Move the conversation to another step.",
                              parameters=json.dumps(params, sort_keys=True)),)
    return specs


def request(c: Call, *, preemptive: bool) -> tuple[tuple[ev.Message, ...], tuple[ev.ToolSpec, ...]]:
    """The messages and tools of a new request: the context, plus the caller's words so far if preemptive."""
    pending = " ".join([*c.heard.finals, c.heard.interim]) if preemptive else ""
    return c.context.messages(pending), offered_tools(c)


def start_llm(c: Call, *, preemptive: bool = False) -> None:
    cancel_llm(c)
    c.reply.llm_rounds += 0 if preemptive else 1
    if c.reply.llm_rounds > MAX_LLM_ROUNDS:
        return say(c, c.flow.fallback.llm, "fallback")
    c.output = LlmOutput()
    basis = pending_words(c) if preemptive else ()
    messages, tools = request(c, preemptive=preemptive)
    seq = c.emit(ev.StartLlm, messages=messages, tools=tools, preemptive=preemptive).seq
    c.llm = LlmRequest(seq=seq, preemptive=preemptive, basis=basis)


def cancel_llm(c: Call) -> None:
    if c.llm is not None:
        c.cancelled.add(c.llm.seq)
        c.emit(ev.CancelLlm, cause=c.llm.seq)
        c.llm = None


def answers_open_request(c: Call, e: ev.Input) -> bool:
    """Is ``e`` an answer of the request in flight? (Else it is recorded as ignored.)"""
    if c.llm is not None and e.cause is not None and e.cause == c.llm.seq:
        return True
    c.answered_late(e.cause)
    return False


def speak_reply(c: Call, text: str, purpose: str = "reply") -> None:
    c.cancel_timer("filler")
    c.reply.started = True
    speak(c, text, purpose)
    c.fire("first_clause")


def pump_reply(c: Call) -> None:
    """Speak every complete clause in the buffer (held while the caller is speaking)."""
    if c.caller_speaking or c.state not in (CallState.THINKING, CallState.SPEAKING):
        return
    while (cut := policy.split_clause(c.output.buffer, first=not c.reply.started, p=c.tt.streaming)) is not None:
        clause, c.output.buffer = cut
        speak_reply(c, clause)


def speak_rest(c: Call) -> None:
    """The finished response's unspoken rest, whole (the caller is not talking)."""
    if c.output.buffer.strip():
        speak_reply(c, c.output.buffer.strip())
        c.output.buffer = ""
