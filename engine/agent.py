"""The agent's side of the machine: greeting, tools, flow nodes, DTMF routing and the end of the call.

Rules:
- Tool results go into the context before anything else happens, so the LLM always sees them.
- A node change first stops what the agent was doing (playback, LLM, tools), then enters the node:
  its fixed line, its end or transfer action, or a fresh LLM answer under its instructions.
- The built-in ``goto`` tool is answered by the machine itself; it never reaches the tool runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import events as ev
from engine.flow import Node, ToolRoute

if TYPE_CHECKING:
    from engine.machine import CallMachine

GOTO = "goto"


@dataclass(slots=True)
class PendingTool:
    name: str
    tool_call_id: str


class AgentActions:
    #: LLM requests in one caller turn (tool round trips included) before the fallback line: a guard
    #: against a model that keeps calling tools.
    MAX_LLM_ROUNDS = 5

    def init_agent_state(self: CallMachine) -> None:
        self.started = False
        self.pending_tools: dict[int, PendingTool] = {}
        self.closing: tuple[type[ev.Effect], dict[str, str]] | None = None
        self.node: str | None = None

    def agent_busy(self: CallMachine) -> bool:
        """Is there agent activity a caller could interrupt?"""
        return self.state in ("thinking", "speaking", "tool_pending")

    def node_cfg(self: CallMachine) -> Node | None:
        return self.flow.nodes.get(self.node) if self.node else None

    def start_call(self: CallMachine) -> None:
        if self.flow.start_node:
            self.enter_node(self.flow.start_node, first=True)
            if self.state != "listening":
                return
        if self.flow.greeting:
            self.say(self.flow.greeting, "greeting")
        elif self.state == "listening":
            self.set_timer("idle", self.now + self.tt.idle.reprompt_ms)

    def system_prompt(self: CallMachine) -> str:
        node = self.node_cfg()
        if node is None or not node.instructions:
            return self.flow.system
        return f"{self.flow.system}\n\n{node.instructions}"

    def offered_tools(self: CallMachine) -> tuple[ev.ToolSpec, ...]:
        node = self.node_cfg()
        specs = self.flow.tool_specs(None if node is None else node.tools)
        if node is not None and node.goto:
            params = {"type": "object", "required": ["target"],
                      "properties": {"target": {"type": "string", "enum": sorted(node.goto)}}}
            specs += (ev.ToolSpec(name=GOTO, description="Move the conversation to another step.",
                                  parameters=json.dumps(params, sort_keys=True)),)
        return specs

    # ------------------------------------------------------------------------------ tools

    def run_tool_calls(self: CallMachine, calls: list[ev.LlmToolCall]) -> None:
        target = None
        for c in calls:
            if c.name == GOTO and self.node_cfg() is not None and self.node_cfg().goto:  # type: ignore[union-attr]
                target = self.goto_target(c)
            elif c.name not in self.flow.tools or (self.node_cfg() and c.name not in self.node_cfg().tools):  # type: ignore[union-attr]
                self.context.add_tool_result(c.tool_call_id, self.tool_error_body(f"unknown tool {c.name!r}"))
            else:
                self.run_tool(c)
        if target is not None:
            self.cancel_tools("cancelled: moved to another step")
            return self.enter_node(target)
        if self.pending_tools:
            self.fire("call_tool")
        else:
            self.start_llm()  # only unknown tools: let the LLM see the errors and answer

    def goto_target(self: CallMachine, c: ev.LlmToolCall) -> str | None:
        try:
            target = json.loads(c.arguments or "{}").get("target")
        except (json.JSONDecodeError, AttributeError):
            target = None
        node = self.node_cfg()
        if node is None or target not in node.goto:
            self.context.add_tool_result(c.tool_call_id, self.tool_error_body(f"no step {target!r}"))
            return None
        self.context.add_tool_result(c.tool_call_id, json.dumps({"moved_to": target}))
        return target

    def run_tool(self: CallMachine, c: ev.LlmToolCall) -> None:
        tool = self.flow.tools[c.name]
        seq = self.emit(ev.CallTool, name=c.name, arguments=c.arguments, tool_call_id=c.tool_call_id).seq
        self.pending_tools[seq] = PendingTool(name=c.name, tool_call_id=c.tool_call_id)
        if tool.messages.on_start:
            self.speak(tool.messages.on_start, "tool_message")
        if tool.messages.on_delay:
            self.cancel_timer("filler")  # the tool's own staged messages replace the generic filler
            for i, msg in enumerate(tool.messages.on_delay):
                self.set_timer(f"tool_delay:{seq}:{i}", self.now + msg.after_ms)
        elif not self.filler_used and "filler" not in self.timers:
            self.arm_filler()

    def cancel_tools(self: CallMachine, why: str) -> None:
        for seq, tool in list(self.pending_tools.items()):
            self.cancelled.add(seq)
            self.emit(ev.CancelTool, cause=seq)
            self.context.add_tool_result(tool.tool_call_id, self.tool_error_body(why))
        self.pending_tools.clear()

    def on_ToolResult(self: CallMachine, e: ev.ToolResult) -> None:
        tool = self.pending_tools.pop(e.cause, None) if e.cause is not None else None
        if tool is None:
            return self.ignore("after_cancel" if e.cause in self.cancelled else "unknown_cause")
        for name in [n for n in self.timers if n.startswith(f"tool_delay:{e.cause}:")]:
            self.cancel_timer(name)
        self.context.add_tool_result(tool.tool_call_id, e.body)
        if not e.ok:
            msg = self.flow.tools[tool.name].messages.on_error or self.flow.fallback.tool
            self.speak(msg, "tool_message")
        target = self.route_after_tool(tool.name, e)
        if self.pending_tools:
            return
        if target is not None:
            return self.enter_node(target)
        self.fire("tool_returned")
        extra = " ".join(self.user_pending)
        if extra:  # the caller spoke while the tool ran
            self.context.add_user(extra)
            self.user_pending = []
        self.start_llm()
        self.arm_filler()

    def route_after_tool(self: CallMachine, name: str, e: ev.ToolResult) -> str | None:
        node = self.node_cfg()
        route = node.on_tool.get(name) if node is not None else None
        if route is None:
            return None
        if isinstance(route, str):
            return route
        return self.pick_case(route, e.body)

    @staticmethod
    def pick_case(route: ToolRoute, body: str) -> str | None:
        if route.field is None:
            return route.default
        try:
            value = json.loads(body).get(route.field)
        except (json.JSONDecodeError, AttributeError):
            return route.default
        key = json.dumps(value) if not isinstance(value, str) else value  # true/false/3 as YAML keys read them
        return route.cases.get(key, route.cases.get(str(value), route.default))

    # ------------------------------------------------------------------------------ nodes and DTMF

    def on_Dtmf(self: CallMachine, e: ev.Dtmf) -> None:
        node = self.node_cfg()
        target = node.on_dtmf.get(e.digit) if node is not None else None
        if target is not None and self.closing is None:
            self.stop_agent()
            return self.enter_node(target, caller=f"[pressed {e.digit}]")
        if self.state == "listening":  # keypad entry (a PIN, a number) is the caller's words
            self.user_pending.append(e.digit)
            self.cancel_timer("idle")
            return self.arm_endpoint()
        self.ignore("no_dtmf_route")

    def stop_agent(self: CallMachine) -> None:
        self.stop_playback(clear=True)
        self.cancel_llm()
        self.cancel_tools("cancelled: the caller chose another step")
        for name in ("filler", "endpoint", "barge_in", "false_interruption"):
            self.cancel_timer(name)
        self.commit_reply()

    def enter_node(self: CallMachine, name: str, *, first: bool = False, caller: str | None = None) -> None:
        """Move to node ``name``; ``caller`` is set when the caller's own choice (a key) moved it."""
        node = self.flow.nodes[name]
        self.node = name
        self.emit(ev.EnterNode, node=name)
        self.context.set_system(self.system_prompt())
        if node.context == "reset" and not first:
            self.context.reset(node.summary or "; ".join(self.context.caller_lines()))
        if caller is not None:
            self.new_turn(caller)
        if node.end is not None:
            return self.close_call(node.end, ev.Hangup, reason="flow_end")
        if node.transfer is not None:
            return self.close_call(node.transfer.say or "", ev.Transfer, to=node.transfer.to)
        if first:
            if node.say:
                self.say(node.say, "greeting")
            return
        if node.say:
            self.say(node.say, "reply")
        else:
            if self.state != "thinking":
                self.fire("redirect")
            self.start_llm()

    # ------------------------------------------------------------------------------ the end

    def close_call(self: CallMachine, text: str, action: type[ev.Effect], **fields: str) -> None:
        """Say a last line (if any), then hang up or transfer once it has played."""
        if self.closing is not None:
            return
        self.stop_agent()
        self.closing = (action, fields)
        if text:
            self.say(text, "goodbye")
        else:
            self.fire("announce")
            self.finish_closing()

    def finish_closing(self: CallMachine) -> None:
        assert self.closing is not None
        action, fields = self.closing
        self.end_everything()
        self.emit(action, **fields)
        self.fire("end")
