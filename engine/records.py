"""The call's data, grouped by what it is about: typed records the machine's handlers read and write.

Rules:
- A record holds data, never a state that changes behaviour: that is a row of engine/machine.py's tables.
  (``Call.candidate`` exists exactly when the floor is a candidate; ``Call.closing`` when the agent is closing.)
- Each field says what it holds and, where it is not obvious, when it is reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine import events as ev


@dataclass(slots=True)
class Heard:
    """What the caller has said in the turn being taken (their words are not in the context yet)."""

    finals: list[str] = field(default_factory=list)  # final transcripts, in order
    interim: str = ""  # the STT's latest interim since the last final (listening only)
    speech_end: int | None = None  # when their last speech ended (VAD stop, else the STT's word end)

    def text(self) -> str:
        return " ".join(self.finals)


@dataclass(slots=True)
class Candidate:
    """Speech over the busy agent, not yet a barge-in: when it began and the words heard since."""

    start_ms: int
    finals: list[str] = field(default_factory=list)
    interim: str = ""

    def text(self) -> str:
        return " ".join([*self.finals, self.interim]).strip()


@dataclass(slots=True)
class LlmRequest:
    """The StartLlm in flight."""

    seq: int
    #: Started during the endpointing wait, before the turn was confirmed: its output is held until then.
    preemptive: bool
    basis: tuple[str, ...] = ()  # the caller's words a preemptive request was started on


@dataclass(slots=True)
class LlmOutput:
    """The latest LLM response (reset by each StartLlm). It outlives its request: text that finished while
    the caller was talking waits here to be spoken once they stop."""

    buffer: str = ""  # text not yet spoken
    text: list[str] = field(default_factory=list)  # all text of the response (for the context)
    calls: list[ev.LlmToolCall] = field(default_factory=list)
    done: bool = False


@dataclass(slots=True)
class Reply:
    """The agent's answer to the current caller turn (reset when a turn is taken)."""

    started: bool = False  # a clause of it was spoken: later clauses end at sentences, no filler
    heard: list[str] = field(default_factory=list)  # lines the caller heard, for the context
    resume: str = ""  # after a barge-in: the unheard rest, said again on a false interruption
    filler_used: bool = False
    llm_rounds: int = 0  # LLM requests this turn (tool round trips included)


@dataclass(slots=True)
class PendingTool:
    name: str
    tool_call_id: str


@dataclass(slots=True)
class Closing:
    """How the call ends once the last line has played: Hangup(reason) or Transfer(to)."""

    action: type[ev.Hangup] | type[ev.Transfer]
    fields: dict[str, str]
