"""What plays to the caller: lines queued for TTS, held while the caller talks, cut by a barge-in.

Rules:
- A line is never started while the caller is talking: it waits (in order) in Playback.held until they stop.
- Stopping playback sends ClearPlayback first (the caller stops hearing the agent at once; it is the effect
  that matters to them), then cancels the syntheses upstream, all in the same step.
- The reply goes into the context as heard: finished lines whole, a cut line up to the cut (engine/playback.py).
"""

from __future__ import annotations

from engine import events as ev
from engine.call import Call
from engine.playback import SpeakState

#: Lines that are the agent's answer (they go into the LLM's context when heard).
REPLY_PURPOSES = ("reply", "resume", "fallback")


def speak(c: Call, text: str, purpose: str) -> None:
    """Queue a line for the caller; held (in order) while the caller is talking."""
    if c.caller_speaking or c.playback.held:
        c.playback.held.append((text, purpose))
        return
    seq = c.emit(ev.Speak, text=text, purpose=purpose).seq
    c.playback.add(seq, text, purpose)


def say(c: Call, text: str, purpose: str) -> None:
    """A fixed line (greeting, reprompt, a node's line): no filler after it; the agent speaks it."""
    c.cancel_timer("filler")
    speak(c, text, purpose)
    c.fire("announce")


def release_held(c: Call) -> None:
    held, c.playback.held = c.playback.held, []
    for text, purpose in held:
        speak(c, text, purpose)


def stop_playback(c: Call, *, clear: bool) -> list[tuple[SpeakState, str]]:
    """Drop every queued line; returns each with the part of it that was heard."""
    heard, synthesizing = c.playback.clear(c.now)
    if clear and any(s.sent_ms for s, _ in heard):
        c.emit(ev.ClearPlayback)
    for seq in synthesizing:
        c.cancelled.add(seq)
        c.emit(ev.CancelTts, cause=seq)
    return heard


def played(c: Call, s: SpeakState) -> None:
    if s.purpose in REPLY_PURPOSES:
        c.reply.heard.append(s.text)


def commit_reply(c: Call) -> None:
    """What the caller heard of the agent's answer goes into the context."""
    if c.reply.heard:
        c.context.add_assistant(" ".join(c.reply.heard))
        c.reply.heard = []
