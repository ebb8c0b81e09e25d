"""The agent's actions: the start of the call, a turn's answer, tools, flow nodes and the end of the call.

Rules:
- Tool results go into the context before anything else happens, so the LLM always sees them.
- A node change first stops what the agent was doing (playback, LLM, tools), then enters the node:
  its fixed line, its end or transfer action, or a fresh LLM answer under its instructions.
- The built-in ``goto`` tool is answered by the machine itself; it never reaches the tool runner.
- The call ends through ``begin_closing`` (the last line plays in CLOSING, then Hangup or Transfer) or at
  once through ``end_everything`` (the caller is gone): either way nothing is left in flight.
"""

from __future__ import annotations

import json

from engine import events as ev
from engine.call import Call
from engine.flow import ToolRoute
from engine.llm import GOTO, cancel_llm, pump_reply, speak_rest, start_llm, system_prompt
from engine.output import commit_reply, played, say, speak, stop_playback
from engine.records import Closing, PendingTool
from engine.states import CallState


def start_call(c: Call) -> None:
    if c.flow.start_node:
        enter_node(c, c.flow.start_node, first=True)
        if c.state != CallState.LISTENING:
            return
    if c.flow.greeting:
        say(c, c.flow.greeting, "greeting")
    elif c.state == CallState.LISTENING:
        c.set_timer("idle", c.now + c.tt.idle.reprompt_ms)


def new_turn(c: Call, caller: str) -> None:
    """A caller turn is taken (their words, or a key): it is numbered, and the answer starts afresh."""
    c.turn_count += 1
    c.emit(ev.Respond, turn=c.turn_count, caller=caller)
    c.reply.filler_used = False
    c.reply.started = False
    c.reply.heard = []
    c.reply.llm_rounds = 0
    arm_filler(c)


def arm_filler(c: Call) -> None:
    if c.tt.filler.enabled and c.flow.fillers and not c.reply.filler_used:
        c.set_timer("filler", c.now + c.tt.filler.after_ms)


# ---------------------------------------------------------------------------------------- the answer


def finish_llm(c: Call) -> None:
    """The response is complete: speak its rest, then run its tool calls or let the caller have the floor."""
    calls, text = c.output.calls, "".join(c.output.text)
    c.llm = None
    if not c.caller_speaking:
        speak_rest(c)
    if calls:
        refs = tuple(ev.ToolCallRef(id=x.tool_call_id, name=x.name, arguments=x.arguments) for x in calls)
        c.context.add_assistant(text, refs)
        c.reply.heard = []  # the text is in the context with its tool calls already
        run_tool_calls(c, calls)
    else:
        check_idle_playback(c)


def release_reply(c: Call) -> None:
    """The caller stopped without taking the floor: what the agent held back may play now."""
    pump_reply(c)
    if c.llm is None and c.output.done:
        speak_rest(c)
    check_idle_playback(c)


def check_idle_playback(c: Call) -> None:
    """After anything that can finish playback: count what was heard; when nothing is left to play, end
    the agent's turn (or, when closing, the call)."""
    for s in c.playback.pop_finished():
        played(c, s)
    if c.playback.active:
        return
    if c.state == CallState.CLOSING:
        return finish_closing(c)
    idle = c.llm is None and not c.tools
    if (c.state == CallState.SPEAKING and idle and not c.output.buffer) or \
            (c.state == CallState.THINKING and idle and c.output.done):  # an empty reply
        commit_reply(c)
        c.fire("reply_done")
        if not c.caller_speaking:
            c.set_timer("idle", c.now + c.tt.idle.reprompt_ms)


# ---------------------------------------------------------------------------------------------- tools


def tool_error_body(error: str) -> str:
    return json.dumps({"error": error})


def run_tool_calls(c: Call, calls: list[ev.LlmToolCall]) -> None:
    target = None
    node = c.node_cfg()
    for x in calls:
        if x.name == GOTO and node is not None and node.goto:
            target = goto_target(c, x)
        elif x.name not in c.flow.tools or (node and x.name not in node.tools):
            c.context.add_tool_result(x.tool_call_id, tool_error_body(f"unknown tool {x.name!r}"))
        else:
            run_tool(c, x)
    if target is not None:
        cancel_tools(c, "cancelled: moved to another step")
        return enter_node(c, target)
    if c.tools:
        c.fire("call_tool")
    else:
        start_llm(c)  # only unknown tools: let the LLM see the errors and answer


def goto_target(c: Call, x: ev.LlmToolCall) -> str | None:
    try:
        target = json.loads(x.arguments or "{}").get("target")
    except (json.JSONDecodeError, AttributeError):
        target = None
    node = c.node_cfg()
    if node is None or target not in node.goto:
        c.context.add_tool_result(x.tool_call_id, tool_error_body(f"no step {target!r}"))
        return None
    c.context.add_tool_result(x.tool_call_id, json.dumps({"moved_to": target}))
    return str(target)


def run_tool(c: Call, x: ev.LlmToolCall) -> None:
    tool = c.flow.tools[x.name]
    seq = c.emit(ev.CallTool, name=x.name, arguments=x.arguments, tool_call_id=x.tool_call_id).seq
    c.tools[seq] = PendingTool(name=x.name, tool_call_id=x.tool_call_id)
    if tool.messages.on_start:
        speak(c, tool.messages.on_start, "tool_message")
    if tool.messages.on_delay:
        c.cancel_timer("filler")  # the tool's own staged messages replace the generic filler
        for i, msg in enumerate(tool.messages.on_delay):
            c.set_timer(f"tool_delay:{seq}:{i}", c.now + msg.after_ms)
    elif not c.reply.filler_used and "filler" not in c.timers:
        arm_filler(c)


def cancel_tools(c: Call, why: str) -> None:
    for seq, tool in list(c.tools.items()):
        c.cancelled.add(seq)
        c.emit(ev.CancelTool, cause=seq)
        c.context.add_tool_result(tool.tool_call_id, tool_error_body(why))
    c.tools.clear()


def route_after_tool(c: Call, name: str, body: str) -> str | None:
    node = c.node_cfg()
    route = node.on_tool.get(name) if node is not None else None
    if route is None or isinstance(route, str):
        return route
    return pick_case(route, body)


def pick_case(route: ToolRoute, body: str) -> str | None:
    if route.field is None:
        return route.default
    try:
        value = json.loads(body).get(route.field)
    except (json.JSONDecodeError, AttributeError):
        return route.default
    key = json.dumps(value) if not isinstance(value, str) else value  # true/false/3 as YAML keys read them
    return route.cases.get(key, route.cases.get(str(value), route.default))


# ---------------------------------------------------------------------------------------------- nodes


def stop_agent(c: Call) -> None:
    """Stop everything the agent is doing (a node change, the start of closing)."""
    stop_playback(c, clear=True)
    cancel_llm(c)
    cancel_tools(c, "cancelled: the caller chose another step")
    for name in ("filler", "endpoint", "barge_in", "false_interruption"):
        c.cancel_timer(name)
    commit_reply(c)


def enter_node(c: Call, name: str, *, first: bool = False, caller: str | None = None) -> None:
    """Move to node ``name``; ``caller`` is set when the caller's own choice (a key) moved it."""
    node = c.flow.nodes[name]
    c.node = name
    c.emit(ev.EnterNode, node=name)
    c.context.set_system(system_prompt(c))
    if node.context == "reset" and not first:
        c.context.reset(node.summary or "; ".join(c.context.caller_lines()))
    if caller is not None:
        new_turn(c, caller)
    if node.end is not None:
        return begin_closing(c, node.end, ev.Hangup, reason="flow_end")
    if node.transfer is not None:
        return begin_closing(c, node.transfer.say or "", ev.Transfer, to=node.transfer.to)
    if first:
        if node.say:
            say(c, node.say, "greeting")
        return
    if node.say:
        say(c, node.say, "reply")
    else:
        if c.state != CallState.THINKING:
            c.fire("redirect")
        start_llm(c)


# ------------------------------------------------------------------------------------------- the end


def begin_closing(c: Call, text: str, action: type[ev.Hangup] | type[ev.Transfer], *, purpose: str = "goodbye",
                  **fields: str) -> None:
    """Say a last line (if any), then hang up or transfer once it has played."""
    if c.state == CallState.CLOSING:
        return
    stop_agent(c)
    c.closing = Closing(action, fields)
    c.fire("close")
    if text:
        speak(c, text, purpose)
    else:
        finish_closing(c)


def finish_closing(c: Call) -> None:
    assert c.closing is not None
    end_everything(c)
    c.emit(c.closing.action, **c.closing.fields)
    c.fire("end")


def end_everything(c: Call) -> None:
    """Answer or cancel every open request, so nothing is left in flight at call end."""
    stop_playback(c, clear=False)
    cancel_llm(c)
    cancel_tools(c, "cancelled: the call ended")
    for name in list(c.timers):
        c.cancel_timer(name)
