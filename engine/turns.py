"""The machine's handlers: one ``on_<Input>`` per input type, turn-taking decided by engine/policy.py.

Rules:
- State changes only through ``self.fire(trigger)`` (rows of machine.TRANSITIONS).
- Timers are named: endpoint, barge_in, false_interruption, filler, idle, max_call, tool_delay:<seq>:<i>.
- A reply is never started while the caller is speaking: clauses wait in the buffer until the caller stops
  or a barge-in is confirmed (which cancels the reply).
- On a confirmed barge-in, ClearPlayback comes first (the caller stops hearing the agent at once), then the
  cancellations of the work upstream (TTS, LLM, tools), all in the same step.
"""

from __future__ import annotations

import json

from engine import events as ev
from engine import policy
from engine.agent import AgentActions
from engine.reply import REPLY_PURPOSES, ReplyActions


class TurnLogic(ReplyActions, AgentActions):
    def init_turn_state(self) -> None:
        self.timers: dict[str, int] = {}
        self.user_pending: list[str] = []  # final transcripts of the caller's turn, not yet in context
        self.caller_speaking = False
        self.speech_start = 0
        self.speech_end: int | None = None  # when the caller's last speech ended (VAD, else STT word end)
        self.interim = ""  # the STT's latest interim since the last final (listening only)
        self.llm_basis: tuple[str, ...] = ()  # the caller's words a preemptive request was started on
        self.cand_start: int | None = None  # barge-in candidate: when the caller started over the agent
        self.cand_finals: list[str] = []
        self.cand_interim = ""
        self.llm: int | None = None  # the StartLlm in flight
        self.llm_preemptive = False
        self.llm_buffer = ""  # LLM text not yet spoken
        self.llm_text: list[str] = []  # all text of this LLM response (for the context)
        self.llm_calls: list[ev.LlmToolCall] = []
        self.llm_done = False
        self.llm_rounds = 0
        self.cancelled: set[int] = set()  # effects cancelled: their late answers are ignored, not errors
        self.reply_started = False
        self.reply_heard: list[str] = []
        self.resume_text = ""
        self.filler_used = False
        self.reprompts = 0
        self.turn_count = 0
        self.init_agent_state()

    # ------------------------------------------------------------------------------ the caller

    def on_CallStarted(self, e: ev.CallStarted) -> None:
        if self.started:
            return self.ignore("duplicate_call_started")
        self.started = True
        self.rng.seed(e.seed)
        self.set_timer("max_call", e.t_ms + self.tt.max_call_ms)
        self.start_call()

    def on_SpeechStarted(self, e: ev.SpeechStarted) -> None:
        if e.source != "vad":
            # the STT's own VAD (Deepgram vad_events) starts speech but never stops it: only the local
            # VAD, which reports both ends, decides whether the caller is talking; words still barge in
            return self.ignore("stt_speech_hint")
        if self.caller_speaking:
            return self.ignore("already_speaking")
        self.caller_speaking = True
        self.speech_start = e.t_ms
        self.speech_end = None
        self.cancel_timer("idle")
        if self.state == "listening":
            self.cancel_timer("endpoint")  # the caller goes on: wait for their next final
        elif self.agent_busy() and self.closing is None:
            self.start_candidate(e.t_ms)
            self.set_timer("barge_in", e.t_ms + self.tt.barge_in.min_speech_ms)

    def on_SpeechStopped(self, e: ev.SpeechStopped) -> None:
        if not self.caller_speaking:
            return self.ignore("not_speaking")
        self.caller_speaking = False
        self.speech_end = e.end_ms if e.end_ms is not None else e.t_ms
        self.release_held()
        if self.cand_start is not None and self.state != "interrupted":
            self.cancel_timer("barge_in")  # a cough or an "uh-huh": nothing changes
            self.cand_start = None
            self.release_reply()
        if self.state == "listening":
            if self.interim and self.tt.preemptive_generation:
                self.speculate()
            if self.user_pending:
                self.arm_endpoint()
            elif not self.interim:
                self.set_timer("idle", self.now + self.tt.idle.reprompt_ms)

    def on_Transcript(self, e: ev.Transcript) -> None:
        text = e.text.strip()
        if not text:
            return self.ignore("empty_transcript")
        self.reprompts = 0
        self.cancel_timer("idle")
        if self.state == "interrupted":
            if e.is_final:
                self.user_pending.append(text)
            self.cancel_timer("false_interruption")
            self.leave_interrupted()
            if e.is_final:
                self.after_final()
        elif self.state == "listening":
            if e.is_final:
                self.interim = ""
                self.user_pending.append(text)
                if e.end_ms is not None and not self.caller_speaking:
                    self.speech_end = max(self.speech_end or 0, e.end_ms)
                self.after_final()
            else:
                self.interim = text
                self.cancel_timer("endpoint")
        elif self.agent_busy() and self.closing is None:
            if self.cand_start is None:
                self.start_candidate(e.t_ms)
            if e.is_final:
                self.cand_finals.append(text)
                self.cand_interim = ""
            else:
                self.cand_interim = text
            if not self.try_barge_in():
                if e.is_final and policy.is_acknowledgement(text, self.tt.barge_in):
                    self.ignore("acknowledgement")
                elif e.is_final and self.state == "tool_pending":
                    self.user_pending.append(text)  # said while a tool runs: goes in after its result
                    self.cand_finals.clear()
        else:
            self.ignore("transcript_while_closing" if self.closing else "transcript_unexpected")

    def on_UtteranceEnd(self, e: ev.UtteranceEnd) -> None:
        if self.state == "listening" and self.user_pending:
            self.cancel_timer("endpoint")
            self.take_turn()
        else:
            self.ignore("no_pending_turn")

    def after_final(self) -> None:
        self.arm_endpoint()
        if self.tt.preemptive_generation and self.state == "listening":
            self.speculate()  # a no-op when the speculation on the last interim had these very words

    def speculate(self) -> None:
        """Start the LLM on what the caller has said so far (finals, then the last interim) unless a
        preemptive request on exactly these words is running. At VAD stop the interim is all there is; if
        the final says the same words, that request's answer is kept, else it is cancelled and redone."""
        if not (self.llm is not None and self.llm_preemptive and self.llm_basis == self.pending_words()):
            self.start_llm(preemptive=True)

    def pending_words(self) -> tuple[str, ...]:
        return tuple(policy.words(" ".join([*self.user_pending, self.interim])))

    def arm_endpoint(self) -> None:
        """The wait counts from the end of the caller's speech, not from the final's arrival (LiveKit's
        min_endpointing_delay does the same): the STT's own lag is silence the caller already waited."""
        wait = policy.endpoint_wait_ms(" ".join(self.user_pending), self.tt.endpointing)
        since = self.speech_end if self.speech_end is not None and not self.caller_speaking else self.now
        self.set_timer("endpoint", max(self.now, since + wait))

    def take_turn(self) -> None:
        """The caller's turn is over: commit their words and answer."""
        text = " ".join(self.user_pending)
        keep = self.llm is not None and self.llm_preemptive and self.llm_basis == self.pending_words()
        self.user_pending = []
        self.interim = ""
        self.context.add_user(text)
        self.fire("endpoint")
        self.new_turn(text)
        if keep:
            self.llm_preemptive = False  # its output was held until now: release it
            self.pump_reply()
            if self.llm_done:
                self.finish_llm()
        else:
            self.start_llm()

    def new_turn(self, caller: str) -> None:
        self.turn_count += 1
        self.emit(ev.Respond, turn=self.turn_count, caller=caller)
        self.filler_used = False
        self.reply_started = False
        self.reply_heard = []
        self.llm_rounds = 0
        self.arm_filler()

    def arm_filler(self) -> None:
        if self.tt.filler.enabled and self.flow.fillers and not self.filler_used:
            self.set_timer("filler", self.now + self.tt.filler.after_ms)

    # ------------------------------------------------------------------------------ barge-in

    def start_candidate(self, t_ms: int) -> None:
        self.cand_start = t_ms
        self.cand_finals = []
        self.cand_interim = ""

    def candidate_text(self) -> str:
        return " ".join([*self.cand_finals, self.cand_interim]).strip()

    def barge_in_confirmed(self) -> bool:
        """Guard of the barge_in row: policy.barge_in_confirmed on the candidate so far."""
        if self.cand_start is None or self.closing is not None:
            return False
        text = self.candidate_text()
        if not self.playback.active and (self.state == "tool_pending" or not text):
            # nothing is playing: a noise must not cancel the answer being prepared, and words said
            # while a tool runs are kept for after its result
            return False
        return policy.barge_in_confirmed(speech_ms=self.now - self.cand_start, text=text,
                                         p=self.tt.barge_in)

    def try_barge_in(self) -> bool:
        if not self.fire("barge_in"):
            return False
        self.after_barge_in()
        return True

    def after_barge_in(self) -> None:
        words = self.candidate_text()
        heard = self.stop_playback(clear=True)
        self.cancel_llm()
        self.cancel_tools("cancelled: the caller interrupted")
        for name in ("barge_in", "filler", *[n for n in self.timers if n.startswith("tool_delay")]):
            self.cancel_timer(name)
        rest: list[str] = []
        for speak, text in heard:
            if speak.purpose in REPLY_PURPOSES:
                if text:
                    self.reply_heard.append(text)
                if text != speak.text:  # a resume says a cut sentence again whole, not from mid-word
                    rest.append(speak.text)
        rest.append(self.llm_buffer.strip())
        self.llm_buffer = ""
        self.resume_text = " ".join(r for r in rest if r)
        self.user_pending = [*self.user_pending, *self.cand_finals]
        self.cand_start = None
        if words or not (self.tt.barge_in.resume_false_interruption and self.resume_text):
            self.leave_interrupted()
            if self.user_pending:
                self.after_final()
        else:
            self.set_timer("false_interruption", self.now + self.tt.barge_in.false_interruption_ms)

    def leave_interrupted(self) -> None:
        self.commit_reply()
        self.resume_text = ""
        self.fire("caller_resumes")
        if not self.user_pending and not self.caller_speaking:
            self.set_timer("idle", self.now + self.tt.idle.reprompt_ms)

    # ------------------------------------------------------------------------------ timers

    def on_TimerFired(self, e: ev.TimerFired) -> None:
        if self.timers.get(e.name) != e.cause:
            return self.ignore("stale_timer")
        del self.timers[e.name]
        name = e.name.split(":", 1)[0]
        getattr(self, f"timer_{name}")(e)

    def timer_max_call(self, e: ev.TimerFired) -> None:
        self.close_call(self.flow.goodbye, ev.Hangup, reason="max_call")

    def timer_endpoint(self, e: ev.TimerFired) -> None:
        if self.caller_speaking:
            return self.ignore("caller_speaking")  # re-armed when they stop
        if self.state == "listening" and self.user_pending:
            self.take_turn()

    def timer_barge_in(self, e: ev.TimerFired) -> None:
        if not self.try_barge_in():
            self.ignore("barge_in_not_confirmed")

    def timer_false_interruption(self, e: ev.TimerFired) -> None:
        if self.state != "interrupted":
            return self.ignore("not_interrupted")
        if self.caller_speaking:  # still talking, words not transcribed yet: the floor is theirs
            return self.leave_interrupted()
        text, self.resume_text = self.resume_text, ""
        self.fire("resume")
        self.speak(text, "resume")

    def timer_filler(self, e: ev.TimerFired) -> None:
        if self.state in ("thinking", "tool_pending") and not self.reply_started and not self.caller_speaking \
                and not self.filler_used and not self.playback.active:
            self.filler_used = True
            self.speak(self.choose(self.flow.fillers), "filler")
        else:
            self.ignore("filler_not_due")

    def timer_idle(self, e: ev.TimerFired) -> None:
        if self.state != "listening" or self.user_pending or self.caller_speaking:
            return self.ignore("not_idle")
        if self.reprompts >= self.tt.idle.max_reprompts:
            return self.close_call(self.flow.goodbye, ev.Hangup, reason="idle")
        self.reprompts += 1
        self.say(self.choose(self.flow.reprompts) if self.flow.reprompts else self.flow.goodbye, "reprompt")

    def timer_tool_delay(self, e: ev.TimerFired) -> None:
        _, seq, index = e.name.split(":")
        tool = self.pending_tools.get(int(seq))
        if tool is None or self.playback.active or self.caller_speaking:
            return self.ignore("tool_message_not_due")
        self.speak(self.flow.tools[tool.name].messages.on_delay[int(index)].text, "tool_message")

    # ------------------------------------------------------------------------------ the end

    def on_CallEnded(self, e: ev.CallEnded) -> None:
        if self.state == "ended":
            return
        self.end_everything()
        self.fire("end")

    def on_ProviderNotice(self, e: ev.ProviderNotice) -> None:
        pass  # on the record only

    def end_everything(self) -> None:
        """Answer or cancel every open request, so nothing is left in flight at call end."""
        self.stop_playback(clear=False)
        self.cancel_llm()
        self.cancel_tools("cancelled: the call ended")
        for name in list(self.timers):
            self.cancel_timer(name)

    @staticmethod
    def tool_error_body(error: str) -> str:
        return json.dumps({"error": error})
