"""The names of a call's states: the agent's (CallState) and the caller's floor (Floor).

engine/machine.py holds their tables. These enums are the only place a state's name is made (``auto()``: the
member's name in lower case, the value logs record): every other module compares against a member.
"""

from __future__ import annotations

from enum import StrEnum, auto


class CallState(StrEnum):
    """The agent's half. Its name is what Ignored.state records."""

    #: The caller has the floor; a final transcript arms the endpoint timer.
    LISTENING = auto()
    #: The turn is confirmed; the LLM is producing the reply and nothing of it is playing yet.
    THINKING = auto()
    #: Reply audio is queued or playing for the caller.
    SPEAKING = auto()
    #: The caller barged in; playback was cleared; waiting for their words (or a false interruption).
    INTERRUPTED = auto()
    #: A tool call is running; the LLM waits for its result.
    TOOL_PENDING = auto()
    #: The last line (a goodbye, a transfer's) is playing; then Hangup or Transfer. Nothing interrupts it.
    CLOSING = auto()
    #: The call is over; every input is ignored.
    ENDED = auto()


class Floor(StrEnum):
    """The caller's half: who holds the floor, as the local VAD and the STT's words say."""

    #: The caller is quiet.
    SILENT = auto()
    #: The caller is talking and has the floor (the agent is listening, interrupted or closing).
    TALKING = auto()
    #: The caller is talking over the agent: a barge-in candidate, confirmed by time or words.
    CANDIDATE = auto()
    #: The STT brought words said over the agent while the VAD hears nothing (a late final, a soft voice):
    #: a barge-in candidate by words alone.
    QUIET_CANDIDATE = auto()


#: States in which the agent is doing something a caller could interrupt.
BUSY = (CallState.THINKING, CallState.SPEAKING, CallState.TOOL_PENDING)
#: Floor states with a barge-in candidate record.
CANDIDATES = (Floor.CANDIDATE, Floor.QUIET_CANDIDATE)
