"""YAML flows: the whole agent (who it is, what it may do, how it takes turns).

Rules:
- The schema is pydantic v2; ``turn_taking`` is engine/policy.py's dataclasses, same names, same defaults.
- Unknown keys are errors. Loading (with file:line:column errors) lives in ``engine/flowload.py``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

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
    #: The tool's HTTP endpoint (http:// or https://); ${VAR} reads it from the environment.
    url: str
    #: POST sends the arguments as a JSON body; GET sends them as query parameters.
    method: Literal["POST", "GET"] = "POST"
    #: Headers added to every request, e.g. Authorization: Bearer ${API_KEY}.
    headers: dict[str, str] = {}
    #: No answer in this long is a failed result (error: timeout).
    timeout_ms: int = Field(3000, gt=0)
    #: Reuse a result for the same arguments for this many seconds (0: never).
    cache_ttl_s: int = Field(0, ge=0)
    #: Sign each request with X-Callstate-Signature (HMAC-SHA256 of t.payload) using this secret.
    secret: str | None = None


class DelayMessage(Strict):
    #: Say the text if the tool has not answered this long after it was called.
    after_ms: int = Field(gt=0)
    #: What the agent says while the tool runs.
    text: str


class ToolMessages(Strict):
    """Spoken messages staged like Vapi's: on_start, on_delay (only if the result is slower), on_error."""

    #: Said as the tool is called.
    on_start: str | None = None
    #: Said while a slow tool runs, each after its own after_ms (only if the result is later).
    on_delay: list[DelayMessage] = []
    #: Said when the tool fails (timeout, HTTP error, not JSON); default: fallback.tool.
    on_error: str | None = None


class Tool(Strict):
    #: What the tool does, for the LLM: it decides when to call it from this.
    description: str
    #: JSON Schema (type: object) of the arguments the LLM must send; checked by engine validate.
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    #: Call an HTTP endpoint with the arguments (the webhook contract is in README).
    webhook: Webhook | None = None
    #: Call a Python function instead, as module:function (sync or async, keyword arguments).
    function: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    #: What the agent says around the call: on_start, on_delay, on_error.
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

    #: The field of the tool's JSON result to route on.
    field: str | None = None
    #: Value of that field (as text) -> the node to go to.
    cases: dict[str, str] = {}
    #: The node to go to when no case matches.
    default: str | None = None


class TransferAction(Strict):
    #: The number (E.164, e.g. +15550100) or SIP address to transfer the call to.
    to: str
    #: Said before the transfer.
    say: str | None = None


class Node(Strict):
    #: Added to the system prompt while the call is in this node.
    instructions: str = ""
    #: Said on entering the node.
    say: str | None = None
    #: The flow's tools the LLM may call in this node.
    tools: list[str] = []
    #: Tool name -> the node to go to when it returns (or a route by a field of its result).
    on_tool: dict[str, str | ToolRoute] = {}
    #: Keypad digit -> the node to go to when the caller presses it.
    on_dtmf: dict[str, str] = {}
    #: Nodes the LLM may move to with the built-in goto tool.
    goto: list[str] = []
    #: keep: the LLM keeps the conversation so far; reset: it starts over from summary.
    context: Literal["keep", "reset"] = "keep"
    #: With context: reset, the line that replaces the history.
    summary: str | None = None
    #: A goodbye line: entering this node says it and ends the call.
    end: str | None = None
    #: Entering this node transfers the call.
    transfer: TransferAction | None = None


class ScriptedReply(Strict):
    """One scripted LLM answer for the offline (`local`) LLM: text, or a tool call, or both."""

    #: What the scripted LLM says.
    text: str | None = None
    #: A tool the scripted LLM calls (before or instead of text).
    tool: str | None = None
    #: The arguments of that tool call.
    arguments: dict[str, Any] = {}


class LocalLatency(Strict):
    """How slowly the live `local` providers answer, standing in for hosted ones (the seed's budget)."""

    #: From the end of speech (VAD stop) to the local STT's final transcript.
    stt_final_ms: int = Field(150, ge=0)
    #: From the request to the local LLM's first token.
    llm_first_token_ms: int = Field(200, ge=0)
    #: Between the local LLM's tokens.
    llm_token_ms: int = Field(20, ge=0)
    #: From a line to the local TTS's first audio.
    tts_first_byte_ms: int = Field(100, ge=0)


class LocalScript(Strict):
    """What the offline providers say: caller lines (STT) and agent replies (LLM), in order."""

    #: provider: local STT: the caller's words, one line per utterance the VAD hears.
    caller: list[str] = []
    #: provider: local LLM: its answers, in order (text, or a tool call).
    replies: list[ScriptedReply] = []
    #: How slowly the local providers answer, standing in for hosted ones.
    latency: LocalLatency = LocalLatency()


class Fallback(Strict):
    #: Said when the LLM fails or times out.
    llm: str = "Sorry, I'm having trouble right now. Could you say that again?"
    #: Said when a tool fails and has no messages.on_error.
    tool: str = "Sorry, I couldn't look that up right now."


class Flow(Strict):
    #: The flow's name, as logged with each call.
    name: str
    #: The agent's first line when the call is answered (none: it waits for the caller).
    greeting: str | None = None
    #: The LLM's system prompt: who the agent is and how it speaks.
    system: str = "You are a helpful phone agent. Keep answers short and spoken."
    #: The LLM provider and its options, e.g. {provider: groq, model: openai/gpt-oss-20b}.
    llm: ProviderConfig = ProviderConfig()
    #: The speech-to-text provider and its options, e.g. {provider: deepgram, model: nova-3}.
    stt: ProviderConfig = ProviderConfig()
    #: The text-to-speech provider and its options, e.g. {provider: deepgram, voice: aura-2-thalia-en}.
    tts: ProviderConfig = ProviderConfig()
    #: When the agent takes its turn, yields to a barge-in, fills silence and reprompts.
    turn_taking: policy.TurnTaking = policy.TurnTaking()
    #: Phrases said (one per turn) when the answer is slow; chosen at random per call.
    fillers: list[str] = ["One moment.", "Let me see.", "Just a second."]
    #: Said after the caller has been silent for turn_taking.idle.reprompt_ms.
    reprompts: list[str] = ["Are you still there?"]
    #: Said before the agent hangs up (idle too long, or the call's time limit).
    goodbye: str = "Thanks for calling. Goodbye."
    #: What the agent says when the LLM or a tool fails.
    fallback: Fallback = Fallback()
    #: Tools the LLM may call, by name.
    tools: dict[str, Tool] = {}
    #: The node a call starts in (default: the first of nodes).
    start_node: str | None = None
    #: Conversation steps, by name: each with its instructions, tools and transitions.
    nodes: dict[str, Node] = {}
    #: What the keyless local providers say: the caller's lines, the scripted replies, their latency.
    local: LocalScript = LocalScript()

    #: Where the environment supplied values (engine/flowload.py sets it): key path -> the text as written,
    #: with its ``${VAR}``; and the values themselves. Empty for a flow built in code.
    _env_sources: dict[tuple[str | int, ...], str] = PrivateAttr(default_factory=dict)
    _env_values: tuple[str, ...] = PrivateAttr(default=())

    def __eq__(self, other: object) -> bool:
        # Where values came from (the two private attributes) is not part of what a flow is
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # as BaseModel: mutable, unhashable

    def set_env_sources(self, sources: dict[tuple[str | int, ...], str], values: tuple[str, ...]) -> None:
        self._env_sources, self._env_values = dict(sources), values

    def env_values(self) -> tuple[str, ...]:
        """The values this flow took from the environment: secrets, to mask wherever text leaves."""
        return self._env_values

    def log_record(self) -> dict[str, Any]:
        """The flow as a log may keep it: each value the environment supplied shown as written (``${VAR}``).
        Derived from the flow as it now is, so a copy with another provider is logged as it runs."""
        record = self.model_dump(mode="json")
        for path, text in self._env_sources.items():
            node: Any = record
            for step in path[:-1]:
                node = _child(node, step)
            last = path[-1] if path else None
            if isinstance(node, dict) and last in node:
                node[last] = text
            if isinstance(node, list) and isinstance(last, int) and last < len(node):  # a list item's value
                node[last] = text
        return record

    def env_paths(self) -> list[str]:
        """Where this flow holds a value from the environment, as key.paths (``tools.x.webhook.headers.A``)."""
        record = self.log_record()
        out = []
        for path in self._env_sources:
            node: Any = record
            for step in path:
                node = _child(node, step)
            if node is not None:
                out.append("".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip("."))
        return out

    def tool_specs(self, names: list[str] | None = None) -> tuple[ToolSpec, ...]:
        chosen = self.tools if names is None else {n: self.tools[n] for n in names if n in self.tools}
        return tuple(
            ToolSpec(name=n, description=t.description, parameters=json.dumps(t.parameters, sort_keys=True))
            for n, t in chosen.items()
        )


DEFAULT_FLOW = Flow(name="default", greeting="Hi! How can I help you today?")


def _child(node: Any, step: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(step)
    return node[step] if isinstance(node, list) and isinstance(step, int) and step < len(node) else None
