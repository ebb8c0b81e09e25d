"""YAML flows: the whole agent (who it is, what it may do, how it takes turns).

Rules:
- The schema is pydantic v2; ``turn_taking`` is engine/policy.py's dataclasses, same names, same defaults.
- Unknown keys are errors. Loading (with file:line:column errors) lives in ``engine/flowload.py``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import policy
from engine.events import ToolSpec

for _cls in (policy.EndpointRule, policy.Endpointing, policy.BargeIn, policy.Filler, policy.Idle,
             policy.Streaming, policy.TurnTaking):
    setattr(_cls, "__pydantic_config__", ConfigDict(extra="forbid"))  # noqa: B010 (a class attribute pydantic reads)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(BaseModel):
    """A provider chosen by name, with its options: ``{provider: NAME, OPTION: value, ...}``.

    Opaque to the core: the names, options and defaults live in callstate/providers.py, which the flow
    loader is handed to check them (engine/ imports nothing from there). ``provider: null`` (or no
    ``provider``) means the registry's default for that kind.
    """

    model_config = ConfigDict(extra="allow")

    provider: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        """Everything but the name, as written in the flow."""
        return dict(self.model_extra or {})


class Webhook(Strict):
    url: str
    method: Literal["POST", "GET"] = "POST"
    headers: dict[str, str] = {}
    timeout_ms: int = Field(3000, gt=0)
    cache_ttl_s: int = Field(0, ge=0)
    secret: str | None = None


class DelayMessage(Strict):
    after_ms: int = Field(gt=0)
    text: str


class ToolMessages(Strict):
    """Spoken messages staged like Vapi's: on_start, on_delay (only if the result is slower), on_error."""

    on_start: str | None = None
    on_delay: list[DelayMessage] = []
    on_error: str | None = None


class Tool(Strict):
    description: str
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    webhook: Webhook | None = None
    function: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    messages: ToolMessages = ToolMessages()

    @model_validator(mode="after")
    def _one_target(self) -> Tool:
        if self.webhook is not None and self.function is not None:
            raise ValueError("a tool takes one of `webhook` or `function`, not both")
        if self.webhook is None and self.function is None:
            raise ValueError("a tool needs a `webhook` or a `function`")
        return self


class ToolRoute(Strict):
    """Where a node goes when a tool returns: by a field of the result, else ``default``."""

    field: str | None = None
    cases: dict[str, str] = {}
    default: str | None = None


class TransferAction(Strict):
    to: str
    say: str | None = None


class Node(Strict):
    instructions: str = ""
    say: str | None = None  # spoken on entering the node
    tools: list[str] = []
    on_tool: dict[str, str | ToolRoute] = {}
    on_dtmf: dict[str, str] = {}
    goto: list[str] = []  # targets the LLM may move to with the built-in `goto` tool
    context: Literal["keep", "reset"] = "keep"
    summary: str | None = None  # the line that replaces the history when context is reset
    end: str | None = None  # goodbye line: entering this node ends the call
    transfer: TransferAction | None = None


class ScriptedReply(Strict):
    """One scripted LLM answer for the offline (`local`) LLM: text, or a tool call, or both."""

    text: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] = {}


class LocalLatency(Strict):
    """How slowly the live `local` providers answer, standing in for hosted ones (the seed's budget)."""

    stt_final_ms: int = Field(150, ge=0)  # VAD stop (Finalize) to the final transcript
    llm_first_token_ms: int = Field(200, ge=0)
    llm_token_ms: int = Field(20, ge=0)
    tts_first_byte_ms: int = Field(100, ge=0)


class LocalScript(Strict):
    """What the offline providers say: caller lines (STT) and agent replies (LLM), in order."""

    caller: list[str] = []
    replies: list[ScriptedReply] = []
    latency: LocalLatency = LocalLatency()


class Fallback(Strict):
    llm: str = "Sorry, I'm having trouble right now. Could you say that again?"
    tool: str = "Sorry, I couldn't look that up right now."


class Flow(Strict):
    name: str
    greeting: str | None = None
    system: str = "You are a helpful phone agent. Keep answers short and spoken."
    llm: ProviderConfig = ProviderConfig()
    stt: ProviderConfig = ProviderConfig()
    tts: ProviderConfig = ProviderConfig()
    turn_taking: policy.TurnTaking = policy.TurnTaking()
    fillers: list[str] = ["One moment.", "Let me see.", "Just a second."]
    reprompts: list[str] = ["Are you still there?"]
    goodbye: str = "Thanks for calling. Goodbye."
    fallback: Fallback = Fallback()
    tools: dict[str, Tool] = {}
    start_node: str | None = None
    nodes: dict[str, Node] = {}
    local: LocalScript = LocalScript()

    def tool_specs(self, names: list[str] | None = None) -> tuple[ToolSpec, ...]:
        chosen = self.tools if names is None else {n: self.tools[n] for n in names if n in self.tools}
        return tuple(
            ToolSpec(name=n, description=t.description, parameters=json.dumps(t.parameters, sort_keys=True))
            for n, t in chosen.items()
        )


DEFAULT_FLOW = Flow(name="default", greeting="Hi! How can I help you today?")
