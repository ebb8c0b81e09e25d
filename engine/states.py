"""The names of a call's states: the agent's (CallState) and the caller's floor (Floor).

engine/machine.py holds their tables. These enums are the only place a state's name is written: every other
module, in engine/, replay/ and callstate/, compares against a member, never a string.
"""

from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    """The agent's half. Its name is what Ignored.state records."""

    #: The caller has the floor; a final transcript arms the endpoint timer.
    LISTENING = "listening"
    #: The turn is confirmed; the LLM is producing the reply and nothing of it is playing yet.
    THINKING = "thinking"
    #: Reply audio is queued or playing for the caller.
    SPEAKING = "speaking"
    #: The caller barged in; playback was cleared; waiting for their words (or a false interruption).
    INTERRUPTED = "interrupted"
    #: A tool call is running; the LLM waits for its result.
    TOOL_PENDING = "tool_pending"
    #: The last line (a goodbye, a transfer's) is playing; then Hangup or Transfer. Nothing interrupts it.
    CLOSING = "closing"
    #: The call is over; every input is ignored.
    ENDED = "ended"


class Floor(StrEnum):
    """The caller's half: who holds the floor, as the local VAD and the STT's words say."""

    #: The caller is quiet.
    SILENT = "silent"
    #: The caller is talking and has the floor (the agent is listening, interrupted or closing).
    TALKING = "talking"
    #: The caller is talking over the agent: a barge-in candidate, confirmed by time or words.
    CANDIDATE = "candidate"
    #: The STT brought words said over the agent while the VAD hears nothing (a late final, a soft voice):
    #: a barge-in candidate by words alone.
    QUIET_CANDIDATE = "quiet_candidate"


#: States in which the agent is doing something a caller could interrupt.
BUSY = (CallState.THINKING, CallState.SPEAKING, CallState.TOOL_PENDING)
#: Floor states with a barge-in candidate record.
CANDIDATES = (Floor.CANDIDATE, Floor.QUIET_CANDIDATE)
