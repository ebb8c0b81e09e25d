"""The scripted LLM: answers picked from a list of replies, shared by the live `local` LLM
(adapters/local.py) and the offline driver (sim/offline.py), so both answer a request alike.

Rules:
- The answer depends on the request alone (the count of caller and tool messages in it), so a preemptive
  request that is cancelled and started again gets the same answer, and a replay needs no state.
- Imports engine.events only; a reply is anything with ``text``, ``tool`` and ``arguments`` (the flow's
  ``local.replies`` items).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine import events as ev


class Reply(Protocol):
    @property
    def text(self) -> str | None: ...
    @property
    def tool(self) -> str | None: ...
    @property
    def arguments(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Said:
    """A reply of the scripted LLM's own, once the script has run out."""

    text: str | None
    tool: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)


def scripted_reply(start: ev.StartLlm, replies: Sequence[Reply]) -> Reply:
    """The answer of a scripted LLM to one request."""
    answered = sum(1 for m in start.messages if m.role in ("user", "tool")) - 1
    if 0 <= answered < len(replies):
        return replies[answered]
    last_user = next((m.content for m in reversed(start.messages) if m.role == "user" and m.content), "")
    if not last_user:
        return Said(text="How can I help you?")
    return Said(text=f"I heard: {last_user.rstrip('.?!')}. Is there anything else?")


def reply_tokens(reply: Reply) -> list[str]:
    """Word-sized tokens, spaces kept, as LLM streams deliver them."""
    text = reply.text or ""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i < len(words) - 1]


def reply_tool_call(reply: Reply, start_seq: int) -> ev.LlmToolCall | None:
    if reply.tool is None:
        return None
    return ev.LlmToolCall(t_ms=0, cause=start_seq, tool_call_id=f"call_{start_seq}", name=reply.tool,
                          arguments=json.dumps(dict(reply.arguments), sort_keys=True))
