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

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: The log's format, recorded per call. 1: every StartLlm row holds its whole context. 2: a StartLlm row holds
#: only the messages new since the call's previous request (engine/store.py encodes and rebuilds them).
SCHEMA_VERSION = 2

Kind = Literal["input", "effect"]


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
        ToolResult, TimerFired, ProviderNotice,
        StartLlm, CancelLlm, Speak, CancelTts, SendAudio, SendMark, ClearPlayback, CallTool,
        CancelTool, SetTimer, CancelTimer, Hangup, Transfer, Respond, EnterNode, Ignored,
    )
}
_BASE_FIELDS = ("t_ms", "seq", "cause")


def _data_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)


_FIELDS: dict[type, tuple[str, ...]] = {cls: _data_fields(cls) for cls in REGISTRY.values()}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_json(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise EventError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_from_json(item_tp, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise EventError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if origin is Literal:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EventError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        return tp(**{k: _from_json(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool, float) and type(value) is not tp:
        raise EventError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def to_record(call_id: str, event: Event) -> dict[str, Any]:
    """The log envelope: ``{call_id, seq, t_ms, kind, type, data, cause}``."""
    cls = type(event)
    return {
        "call_id": call_id,
        "seq": event.seq,
        "t_ms": event.t_ms,
        "kind": cls.kind,
        "type": cls.__name__,
        "data": {name: _to_json(getattr(event, name)) for name in _FIELDS[cls]},
        "cause": event.cause,
    }


def from_record(record: dict[str, Any]) -> Event:
    """Rebuild an event from its envelope. A malformed record raises EventError naming call and seq."""
    where = f"call {record.get('call_id')!r} seq {record.get('seq')!r}"
    cls = REGISTRY.get(record.get("type", ""))
    if cls is None:
        raise EventError(f"{where}: unknown event type {record.get('type')!r}")
    if record.get("kind") != cls.kind:
        raise EventError(f"{where}: {cls.__name__} is kind {cls.kind!r}, record says {record.get('kind')!r}")
    data = record.get("data")
    if not isinstance(data, dict):
        raise EventError(f"{where}: data must be an object")
    hints = _hints(cls)
    unknown = set(data) - set(_FIELDS[cls])
    if unknown:
        raise EventError(f"{where}: {cls.__name__} has no field(s) {sorted(unknown)}")
    try:
        kwargs = {k: _from_json(hints[k], v, f"{where} {cls.__name__}.{k}") for k, v in data.items()}
        return cls(t_ms=record["t_ms"], seq=record["seq"], cause=record.get("cause"), **kwargs)
    except EventError:
        raise
    except (TypeError, KeyError) as exc:
        raise EventError(f"{where}: cannot build {cls.__name__}: {exc}") from None


def dumps(call_id: str, event: Event) -> str:
    return json.dumps(to_record(call_id, event), separators=(",", ":"), ensure_ascii=False)


def loads(line: str) -> Event:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"not a JSON record: {exc}") from None
    if not isinstance(record, dict):
        raise EventError("a record must be a JSON object")
    return from_record(record)
