"""What each timer does when it fires (engine/machine.py's TIMERS, keyed by the name before any ':').

Rules:
- A TimerFired is acted on only if its SetTimer is the one pending under that name; any other (cancelled,
  replaced) is recorded as ``stale_timer`` before these handlers are reached.
- A timer that finds its moment passed (the caller is talking, the agent moved on) says so as Ignored.
"""

from __future__ import annotations

from engine import events as ev
from engine.agent import begin_closing, finish_closing
from engine.call import Call
from engine.caller import leave_interrupted, take_turn, try_barge_in
from engine.output import say, speak
from engine.states import CallState


def max_call(c: Call, e: ev.TimerFired) -> None:
    begin_closing(c, c.flow.goodbye, ev.Hangup, reason="max_call")


def endpoint(c: Call, e: ev.TimerFired) -> None:
    if c.caller_speaking:
        return c.ignore("caller_speaking")  # re-armed when they stop
    if c.state == CallState.LISTENING and c.heard.finals:
        take_turn(c)


def barge_in(c: Call, e: ev.TimerFired) -> None:
    if not try_barge_in(c):
        c.ignore("barge_in_not_confirmed")


def false_interruption(c: Call, e: ev.TimerFired) -> None:
    if c.state != CallState.INTERRUPTED:
        return c.ignore("not_interrupted")
    if c.caller_speaking:  # still talking, words not transcribed yet: the floor is theirs
        return leave_interrupted(c)
    text, c.reply.resume = c.reply.resume, ""
    c.fire("resume")
    speak(c, text, "resume")


def filler(c: Call, e: ev.TimerFired) -> None:
    due = c.state in (CallState.THINKING, CallState.TOOL_PENDING) and not c.reply.started \
        and not c.caller_speaking and not c.reply.filler_used and not c.playback.active
    if not due:
        return c.ignore("filler_not_due")
    c.reply.filler_used = True
    speak(c, c.choose(c.flow.fillers), "filler")


def idle(c: Call, e: ev.TimerFired) -> None:
    if c.state != CallState.LISTENING or c.heard.finals or c.caller_speaking:
        return c.ignore("not_idle")
    if c.reprompts >= c.tt.idle.max_reprompts:
        return begin_closing(c, c.flow.goodbye, ev.Hangup, reason="idle")
    c.reprompts += 1
    say(c, c.choose(c.flow.reprompts) if c.flow.reprompts else c.flow.goodbye, "reprompt")


def tool_delay(c: Call, e: ev.TimerFired) -> None:
    _, seq, index = e.name.split(":")
    tool = c.tools.get(int(seq))
    if tool is None or c.playback.active or c.caller_speaking:
        return c.ignore("tool_message_not_due")
    speak(c, c.flow.tools[tool.name].messages.on_delay[int(index)].text, "tool_message")


def fault(c: Call, e: ev.TimerFired) -> None:
    """The fallback line after a runtime fault did not finish in time: hang up without it."""
    if c.state == CallState.CLOSING:
        finish_closing(c)
