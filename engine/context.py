"""The conversation as the LLM sees it, rebuilt from events by the machine.

Rules:
- Only what the caller heard goes in: an interrupted assistant turn keeps the played text, never the rest.
- Every tool call gets a tool message (a cancelled one says so), so the history is always valid for
  OpenAI-compatible APIs, which reject an assistant tool call with no answer.
"""

from __future__ import annotations

from engine.events import Message, ToolCallRef


class Context:
    def __init__(self, system: str) -> None:
        self.system = system
        self.history: list[Message] = []

    def set_system(self, system: str) -> None:
        self.system = system

    def reset(self, summary: str) -> None:
        """Drop the history for a new node, keeping one summary line as the only memory."""
        self.history = [Message(role="user", content=f"(Summary of the call so far: {summary})")] if summary else []

    def add_user(self, text: str) -> None:
        if text.strip():
            self.history.append(Message(role="user", content=text.strip()))

    def add_assistant(self, text: str, tool_calls: tuple[ToolCallRef, ...] = ()) -> None:
        if text.strip() or tool_calls:
            self.history.append(Message(role="assistant", content=text.strip() or None, tool_calls=tool_calls))

    def add_tool_result(self, tool_call_id: str, body: str) -> None:
        self.history.append(Message(role="tool", tool_call_id=tool_call_id, content=body))

    def messages(self, pending_user: str = "") -> tuple[Message, ...]:
        msgs = [Message(role="system", content=self.system), *self.history]
        if pending_user.strip():
            msgs.append(Message(role="user", content=pending_user.strip()))
        return tuple(msgs)

    def caller_lines(self) -> list[str]:
        return [m.content for m in self.history if m.role == "user" and m.content]
