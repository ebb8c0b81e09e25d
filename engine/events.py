"""Every event and effect of a call, and their one JSON envelope.

Rules:
- Inputs are facts from the world (``kind="input"``); effects are the machine's orders (``kind="effect"``).
- Every value is frozen, keyword-only and checked when built: a bad event cannot be built, so it never
  reaches the log. No floats of seconds, no datetimes: every instant is ``t_ms`` since call start.
- ``seq`` is the event's place in the call's log. The machine assigns it (inputs as they are fed, effects as
  they are emitted), so live runs and replays number events identically. ``seq == 0`` means "not yet fed".
- ``cause`` is the seq of the event this one answers: LlmToken -> its StartLlm, TtsAudio -> its Speak,
  ToolResult -> its CallTool, TimerFired -> its SetTimer, PlaybackMark -> its SendMark.
- Concrete classes are final: don't subclass them. The registry below maps ``type`` names to classes.
- A barge-in cancels in-flight work only through explicit effects (ClearPlayback, CancelLlm, CancelTts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: The log's format, recorded per call. 1: every StartLlm row holds its whole context. 2: a StartLlm row holds
#: only the messages new since the call's previous request (engine/store.py encodes and rebuilds them).
#: 3: the agent's CLOSING state (an Ignored may say "closing") and RuntimeFault. Logs of versions 1 and 2
#: still load and reproduce (replay/reproduce.py reads their Ignored effects as those versions wrote them).
SCHEMA_VERSION = 3

Kind = Literal["input", "effect"]

# The phone's audio, which every duration_ms measures: mu-law 8 kHz mono, one byte a sample, in 20 ms frames
# (Twilio Media Streams sends and takes exactly this: shared/reference/protocols.md, section 5).
SAMPLE_RATE = 8000
BYTES_PER_MS = SAMPLE_RATE // 1000  # 8
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS  # 160


class EventError(ValueError):
    """An event or a log record is malformed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    t_ms: int
    seq: int = 0
    cause: int | None = None
    kind: ClassVar[Kind]

    def __post_init__(self) -> None:
        if type(self.t_ms) is not int or self.t_ms < 0:
            raise EventError(f"{type(self).__name__}.t_ms must be an int >= 0, got {self.t_ms!r}")
        if type(self.seq) is not int or self.seq < 0:
            raise EventError(f"{type(self).__name__}.seq must be an int >= 0, got {self.seq!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Input(Event):
    """A fact from the world. The runtime stamps ``t_ms`` when it arrives; adapters may leave it 0."""

    kind: ClassVar[Kind] = "input"


@dataclass(frozen=True, slots=True, kw_only=True)
class Effect(Event):
    """Machine output. A barge-in cancels in-flight work only by explicit CancelLlm/CancelTts."""

    kind: ClassVar[Kind] = "effect"


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallRef:
    """One tool call inside an assistant message, as OpenAI-compatible APIs carry it."""

    id: str
    name: str
    arguments: str  # JSON text, exactly as the LLM produced it


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One chat message as the LLM sees it."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: tuple[ToolCallRef, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant", "tool"):
            raise EventError(f"Message.role must be system|user|assistant|tool, got {self.role!r}")

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """A tool offered to the LLM. ``parameters`` is JSON Schema as JSON text (kept as text: frozen, exact)."""

    name: str
    description: str
    parameters: str = '{"type": "object", "properties": {}}'

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": json.loads(self.parameters),
            },
        }


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(Input):
    """The call is connected. ``seed`` drives every choice the machine makes (filler phrases)."""

    call_sid: str = ""
    stream_sid: str = ""
    params: dict[str, str] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(Input):
    reason: str = "stop"  # stop | ws_closed_without_stop | hangup | shutdown | error


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted(Input):
    source: str = "vad"  # vad (local) | stt (the STT's own VAD)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStopped(Input):
    source: str = "vad"
    #: When the speech really ended (the VAD reports the stop only after its hangover): latency's origin.
    end_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript(Input):
    text: str
    is_final: bool
    speech_final: bool = False
    confidence: float = 1.0
    start_ms: int | None = None  # the words' own timing, in call time, where the STT gives it
    end_ms: int | None = None

    def __post_init__(self) -> None:
        Input.__post_init__(self)
        if self.speech_final and not self.is_final:
            raise EventError("Transcript.speech_final implies is_final")


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceEnd(Input):
    last_word_end_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Dtmf(Input):
    digit: str

    def __post_init__(self) -> None:
        Input.__post_init__(self)
        if len(self.digit) != 1 or self.digit not in "0123456789*#ABCD":
            raise EventError(f"Dtmf.digit must be one of 0-9 * # A-D, got {self.digit!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmToken(Input):
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmToolCall(Input):
    tool_call_id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmDone(Input):
    finish_reason: str = "stop"


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmError(Input):
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsAudio(Input):
    """A chunk of synthesized audio is ready to send (the bytes stay in the runtime, not in the log)."""

    duration_ms: int

    def __post_init__(self) -> None:
        Input.__post_init__(self)
        if type(self.duration_ms) is not int or self.duration_ms <= 0:
            raise EventError(f"TtsAudio.duration_ms must be an int > 0, got {self.duration_ms!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsDone(Input):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsError(Input):
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackMark(Input):
    """Twilio echoed a mark: all audio queued before it has played (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult(Input):
    name: str
    tool_call_id: str = ""
    body: str = ""  # what the LLM will read (JSON text where the tool returned JSON)
    ok: bool = True
    error: str | None = None  # timeout | http_500 | redirect | not_json | too_large | exception | cancelled
    cached: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Input):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderNotice(Input):
    """Something an adapter wants on the record (socket dropped, reconnected, retried). No turn effect."""

    provider: str
    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeFault(Input):
    """Our side must end the call: ``error`` (this call's code failed: the fallback line, then Hangup) or
    ``shutdown`` (the server is stopping: Hangup now). Logged like any input, so the caller's last line and
    the hang-up are on the record and replay."""

    reason: str = "error"  # error | shutdown


# ---------------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True, kw_only=True)
class StartLlm(Effect):
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    preemptive: bool = False  # started during the endpointing wait, before the turn is confirmed

    def token(self, *, t_ms: int, text: str) -> LlmToken:
        return LlmToken(t_ms=t_ms, cause=self.seq, text=text)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelLlm(Effect):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Speak(Effect):
    text: str
    purpose: str = "reply"  # reply | greeting | filler | tool_message | reprompt | goodbye | fallback | resume


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTts(Effect):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAudio(Effect):
    """Send the audio of TtsAudio ``cause`` to the caller (the machine decides; late audio is dropped)."""

    duration_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMark(Effect):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearPlayback(Effect):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTool(Effect):
    name: str
    arguments: str
    tool_call_id: str = ""

    def result(self, *, t_ms: int, body: str, ok: bool = True, error: str | None = None,
               cached: bool = False) -> ToolResult:
        return ToolResult(t_ms=t_ms, cause=self.seq, name=self.name, tool_call_id=self.tool_call_id,
                          body=body, ok=ok, error=error, cached=cached)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTool(Effect):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer(Effect):
    name: str
    at_ms: int

    def fired(self, *, t_ms: int | None = None) -> TimerFired:
        return TimerFired(t_ms=self.at_ms if t_ms is None else t_ms, cause=self.seq, name=self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTimer(Effect):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Hangup(Effect):
    reason: str = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer(Effect):
    to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Respond(Effect):
    """Answer the caller's turn ``turn`` (their words, or a keypress): marks where each turn starts."""

    turn: int
    caller: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EnterNode(Effect):
    """The flow moved to another node (nothing to carry out; on the record for timelines)."""

    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignored(Effect):
    """An input the machine did not act on, with a stable snake_case reason. ``cause`` is its seq."""

    event: str
    state: str
    reason: str


# ---------------------------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        CallStarted, CallEnded, SpeechStarted, SpeechStopped, Transcript, UtteranceEnd, Dtmf,
        LlmToken, LlmToolCall, LlmDone, LlmError, TtsAudio, TtsDone, TtsError, PlaybackMark,
        ToolResult, TimerFired, ProviderNotice, RuntimeFault,
        StartLlm, CancelLlm, Speak, CancelTts, SendAudio, SendMark, ClearPlayback, CallTool,
        CancelTool, SetTimer, CancelTimer, Hangup, Transfer, Respond, EnterNode, Ignored,
    )
}
