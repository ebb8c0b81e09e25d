"""The caller's turn: endpointing, preemptive generation and barge-in (the rules are engine/policy.py's).

Rules:
- The endpoint wait counts from the end of the caller's speech, not from the final's arrival (LiveKit's
  min_endpointing_delay does the same): the STT's own lag is silence the caller already waited.
- A barge-in candidate (Floor.CANDIDATE / QUIET_CANDIDATE) is confirmed by policy.barge_in_confirmed; on
  confirmation the agent's turn is cut in one step: ClearPlayback, then CancelTts, CancelLlm, CancelTool.
- What the caller heard of a cut line goes into the context; the unheard rest is kept for a false
  interruption (a confirmed barge-in with no words in barge_in.false_interruption_ms), then dropped.
"""

from __future__ import annotations

from engine import policy
from engine.agent import cancel_tools, finish_llm, new_turn
from engine.call import Call
from engine.llm import cancel_llm, pending_words, pump_reply, start_llm
from engine.output import REPLY_PURPOSES, commit_reply, stop_playback
from engine.states import BUSY, CallState


def agent_interruptible(c: Call) -> bool:
    """Guard of the floor's candidate row: is the agent doing something the caller could interrupt?"""
    return c.state in BUSY


def barge_in_confirmed(c: Call) -> bool:
    """Guard of the agent's barge_in row: policy.barge_in_confirmed on the candidate so far."""
    if c.candidate is None:
        return False
    text = c.candidate.text()
    if not c.playback.active and (c.state == CallState.TOOL_PENDING or not text):
        # nothing is playing: a noise must not cancel the answer being prepared, and words said while a
        # tool runs are kept for after its result
        return False
    return policy.barge_in_confirmed(speech_ms=c.now - c.candidate.start_ms, text=text, p=c.tt.barge_in)


# ----------------------------------------------------------------------------------------- the turn


def arm_endpoint(c: Call) -> None:
    wait = policy.endpoint_wait_ms(c.heard.text(), c.tt.endpointing)
    end = c.heard.speech_end
    since = end if end is not None and not c.caller_speaking else c.now
    c.set_timer("endpoint", max(c.now, since + wait))


def after_final(c: Call) -> None:
    arm_endpoint(c)
    if c.tt.preemptive_generation and c.state == CallState.LISTENING:
        speculate(c)  # a no-op when the speculation on the last interim had these very words


def speculate(c: Call) -> None:
    """Start the LLM on what the caller has said so far (finals, then the last interim) unless a
    preemptive request on exactly these words is running. At VAD stop the interim is all there is; if
    the final says the same words, that request's answer is kept, else it is cancelled and redone."""
    if not (c.llm is not None and c.llm.preemptive and c.llm.basis == pending_words(c)):
        start_llm(c, preemptive=True)


def take_turn(c: Call) -> None:
    """The caller's turn is over: commit their words and answer."""
    text = c.heard.text()
    keep = c.llm is not None and c.llm.preemptive and c.llm.basis == pending_words(c)
    c.heard.finals = []
    c.heard.interim = ""
    c.context.add_user(text)
    c.fire("endpoint")
    new_turn(c, text)
    if keep and c.llm is not None:
        c.llm.preemptive = False  # its output was held until now: release it
        pump_reply(c)
        if c.output.done:
            finish_llm(c)
    else:
        start_llm(c)


# ------------------------------------------------------------------------------------------ barge-in


def try_barge_in(c: Call) -> bool:
    if not c.fire("barge_in"):
        return False
    after_barge_in(c)
    return True


def after_barge_in(c: Call) -> None:
    assert c.candidate is not None
    candidate = c.candidate
    words = candidate.text()
    heard = stop_playback(c, clear=True)
    cancel_llm(c)
    cancel_tools(c, "cancelled: the caller interrupted")
    for name in ("barge_in", "filler", *[n for n in c.timers if n.startswith("tool_delay")]):
        c.cancel_timer(name)
    rest: list[str] = []
    for speak, text in heard:
        if speak.purpose in REPLY_PURPOSES:
            if text:
                c.reply.heard.append(text)
            if text != speak.text:  # a resume says a cut sentence again whole, not from mid-word
                rest.append(speak.text)
    rest.append(c.output.buffer.strip())
    c.output.buffer = ""
    c.reply.resume = " ".join(r for r in rest if r)
    c.heard.finals = [*c.heard.finals, *candidate.finals]
    c.candidate = None
    c.fire_floor("confirmed")
    if words or not (c.tt.barge_in.resume_false_interruption and c.reply.resume):
        leave_interrupted(c)
        if c.heard.finals:
            after_final(c)
    else:
        c.set_timer("false_interruption", c.now + c.tt.barge_in.false_interruption_ms)


def leave_interrupted(c: Call) -> None:
    commit_reply(c)
    c.reply.resume = ""
    c.fire("caller_resumes")
    if not c.heard.finals and not c.caller_speaking:
        c.set_timer("idle", c.now + c.tt.idle.reprompt_ms)
