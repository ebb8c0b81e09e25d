"""One handler per input type (engine/machine.py's HANDLERS) and one per timer (TIMERS).

Rules:
- A handler reads the states (``c.state``, ``c.floor``) and changes them only through ``c.fire`` /
  ``c.fire_floor`` (rows of the tables); everything else it does is emitting effects and updating records.
- Input from the world never raises: what a handler cannot use it records as Ignored with a stable reason.
"""

from __future__ import annotations

from engine import events as ev
from engine import policy
from engine.agent import (
    arm_filler,
    begin_closing,
    check_idle_playback,
    end_everything,
    enter_node,
    finish_llm,
    release_reply,
    route_after_tool,
    start_call,
    stop_agent,
)
from engine.call import Call
from engine.caller import after_final, arm_endpoint, leave_interrupted, speculate, take_turn, try_barge_in
from engine.llm import answers_open_request, pump_reply, start_llm
from engine.output import release_held, say, speak
from engine.records import Candidate
from engine.states import BUSY, CallState, Floor

# ------------------------------------------------------------------------------------------ the line


def call_started(c: Call, e: ev.CallStarted) -> None:
    if c.started:
        return c.ignore("duplicate_call_started")
    c.started = True
    c.rng.seed(e.seed)
    c.set_timer("max_call", e.t_ms + c.tt.max_call_ms)
    start_call(c)


def call_ended(c: Call, e: ev.CallEnded) -> None:
    if c.state == CallState.ENDED:
        return
    end_everything(c)
    c.fire("end")


def runtime_fault(c: Call, e: ev.RuntimeFault) -> None:
    """Our side failed (``error``): the caller hears the fallback line, then the call is hung up, with a
    deadline on the line should the fault be in TTS itself. Any other reason (``shutdown``): hang up now."""
    if e.reason != "error":
        end_everything(c)
        c.emit(ev.Hangup, reason=e.reason)
        c.fire("end")
        return
    if c.state == CallState.CLOSING:
        return c.ignore("already_closing")
    begin_closing(c, c.flow.fallback.llm, ev.Hangup, purpose="fallback", reason="error")
    if c.state in (CallState.CLOSING,):  # not ENDED: an empty fallback line ends the call at once
        c.set_timer("fault", c.now + policy.FAULT_LINE_MS)


def provider_notice(c: Call, e: ev.ProviderNotice) -> None:
    pass  # on the record only


# ---------------------------------------------------------------------------------------- the caller


def speech_started(c: Call, e: ev.SpeechStarted) -> None:
    if e.source != "vad":
        # the STT's own VAD (Deepgram vad_events) starts speech but never stops it: only the local VAD,
        # which reports both ends, decides whether the caller is talking; words still barge in
        return c.ignore("stt_speech_hint")
    if not c.fire_floor("voice_starts"):
        return c.ignore("already_speaking")
    c.heard.speech_end = None
    c.cancel_timer("idle")
    if c.state == CallState.LISTENING:
        c.cancel_timer("endpoint")  # the caller goes on: wait for their next final
    elif c.state in BUSY:
        c.candidate = Candidate(start_ms=e.t_ms)
        c.set_timer("barge_in", e.t_ms + c.tt.barge_in.min_speech_ms)


def speech_stopped(c: Call, e: ev.SpeechStopped) -> None:
    was = c.floor
    if not c.fire_floor("voice_stops"):
        return c.ignore("not_speaking")
    c.candidate = None  # a cough or an "uh-huh": nothing changes
    c.heard.speech_end = e.end_ms if e.end_ms is not None else e.t_ms
    release_held(c)
    if was == Floor.CANDIDATE:
        c.cancel_timer("barge_in")
        release_reply(c)
    if c.state == CallState.LISTENING:
        if c.heard.interim and c.tt.preemptive_generation:
            speculate(c)
        if c.heard.finals:
            arm_endpoint(c)
        elif not c.heard.interim:
            c.set_timer("idle", c.now + c.tt.idle.reprompt_ms)


def transcript(c: Call, e: ev.Transcript) -> None:
    text = e.text.strip()
    if not text:
        return c.ignore("empty_transcript")
    c.reprompts = 0
    c.cancel_timer("idle")
    if c.state == CallState.INTERRUPTED:
        if e.is_final:
            c.heard.finals.append(text)
        c.cancel_timer("false_interruption")
        leave_interrupted(c)
        if e.is_final:
            after_final(c)
    elif c.state == CallState.LISTENING:
        if e.is_final:
            c.heard.interim = ""
            c.heard.finals.append(text)
            if e.end_ms is not None and not c.caller_speaking:
                c.heard.speech_end = max(c.heard.speech_end or 0, e.end_ms)
            after_final(c)
        else:
            c.heard.interim = text
            c.cancel_timer("endpoint")
    elif c.state in BUSY:
        words_over_agent(c, e, text)
    else:
        c.ignore("transcript_while_closing" if c.state == CallState.CLOSING else "transcript_unexpected")


def words_over_agent(c: Call, e: ev.Transcript, text: str) -> None:
    """Words while the agent is busy: they build the barge-in candidate, which they may confirm."""
    if c.candidate is None:
        c.fire_floor("words_over_agent")
        c.candidate = Candidate(start_ms=e.t_ms)
    if e.is_final:
        c.candidate.finals.append(text)
        c.candidate.interim = ""
    else:
        c.candidate.interim = text
    if try_barge_in(c):
        return
    if e.is_final and policy.is_acknowledgement(text, c.tt.barge_in):
        c.ignore("acknowledgement")
    elif e.is_final and c.state == CallState.TOOL_PENDING:
        c.heard.finals.append(text)  # said while a tool runs: goes in after its result
        c.candidate.finals.clear()


def utterance_end(c: Call, e: ev.UtteranceEnd) -> None:
    if c.state == CallState.LISTENING and c.heard.finals:
        c.cancel_timer("endpoint")
        take_turn(c)
    else:
        c.ignore("no_pending_turn")


def dtmf(c: Call, e: ev.Dtmf) -> None:
    node = c.node_cfg()
    target = node.on_dtmf.get(e.digit) if node is not None else None
    if target is not None and c.state != CallState.CLOSING:
        stop_agent(c)
        return enter_node(c, target, caller=f"[pressed {e.digit}]")
    if c.state == CallState.LISTENING:  # keypad entry (a PIN, a number) is the caller's words
        c.heard.finals.append(e.digit)
        c.cancel_timer("idle")
        return arm_endpoint(c)
    c.ignore("no_dtmf_route")


# --------------------------------------------------------------------------------------------- the LLM


def llm_token(c: Call, e: ev.LlmToken) -> None:
    if answers_open_request(c, e) and c.llm is not None:
        c.output.buffer += e.text
        c.output.text.append(e.text)
        if not c.llm.preemptive:
            pump_reply(c)


def llm_tool_call(c: Call, e: ev.LlmToolCall) -> None:
    if answers_open_request(c, e):
        c.output.calls.append(e)


def llm_done(c: Call, e: ev.LlmDone) -> None:
    if answers_open_request(c, e) and c.llm is not None:
        c.output.done = True
        if not c.llm.preemptive:
            finish_llm(c)


def llm_error(c: Call, e: ev.LlmError) -> None:
    if answers_open_request(c, e) and c.llm is not None:
        preemptive, c.llm = c.llm.preemptive, None
        if preemptive:
            return  # the turn will start a fresh request
        c.output.buffer = ""
        say(c, c.flow.fallback.llm, "fallback")


# ----------------------------------------------------------------------------------------- TTS, phone


def tts_audio(c: Call, e: ev.TtsAudio) -> None:
    if e.cause not in c.playback.speaks:
        return c.answered_late(e.cause)
    if e.cause != c.playback.head_unsynthesized():
        return c.ignore("audio_out_of_order")
    c.emit(ev.SendAudio, cause=e.seq, duration_ms=e.duration_ms)
    mark = c.emit(ev.SendMark, name=f"m{e.seq}")
    c.playback.audio(e.cause, e.duration_ms, mark.seq, f"m{e.seq}", c.now)


def tts_finished(c: Call, e: ev.TtsDone | ev.TtsError) -> None:
    """TtsDone, or TtsError (a shortened line: what could not be synthesized is skipped)."""
    if e.cause is None or c.playback.tts_done(e.cause) is None:
        return c.answered_late(e.cause)
    check_idle_playback(c)


def playback_mark(c: Call, e: ev.PlaybackMark) -> None:
    if c.playback.mark(e.name, c.now) is None:
        return c.ignore("stale_mark")
    check_idle_playback(c)


# ---------------------------------------------------------------------------------------------- tools


def tool_result(c: Call, e: ev.ToolResult) -> None:
    tool = c.tools.pop(e.cause, None) if e.cause is not None else None
    if tool is None:
        return c.answered_late(e.cause)
    for name in [n for n in c.timers if n.startswith(f"tool_delay:{e.cause}:")]:
        c.cancel_timer(name)
    c.context.add_tool_result(tool.tool_call_id, e.body)
    if not e.ok:
        speak(c, c.flow.tools[tool.name].messages.on_error or c.flow.fallback.tool, "tool_message")
    target = route_after_tool(c, tool.name, e.body)
    if c.tools:
        return
    if target is not None:
        return enter_node(c, target)
    c.fire("tool_returned")
    extra = c.heard.text()
    if extra:  # the caller spoke while the tool ran
        c.context.add_user(extra)
        c.heard.finals = []
    start_llm(c)
    arm_filler(c)
