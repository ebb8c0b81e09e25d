"""The agent's reply: the LLM stream cut into speakable clauses, and what plays to the caller.

Rules:
- A clause is spoken as soon as it is complete (policy.split_clause), never while the caller is talking:
  held text waits in the buffer, held lines in Playback.held, until the caller stops.
- Audio goes out only for the Speak at the head of the synthesis queue, so two lines never interleave;
  audio of a cancelled Speak is answered with Ignored, never sent.
- The reply goes into the context as heard: finished lines whole, a cut line up to the cut.
"""

from __future__ import annotations

from engine import events as ev
from engine import policy
from engine.playback import SpeakState

#: Lines that are the agent's answer (they go into the LLM's context when heard).
REPLY_PURPOSES = ("reply", "resume", "fallback")


class ReplyActions:
    # ------------------------------------------------------------------------------ the LLM

    def start_llm(self, *, preemptive: bool = False) -> None:
        self.cancel_llm()
        self.llm_rounds += 0 if preemptive else 1
        if self.llm_rounds > self.MAX_LLM_ROUNDS:
            return self.say(self.flow.fallback.llm, "fallback")
        self.llm_buffer, self.llm_text, self.llm_calls, self.llm_done = "", [], [], False
        pending = " ".join([*self.user_pending, self.interim]) if preemptive else ""
        self.llm_basis = self.pending_words() if preemptive else ()
        msgs = self.context.messages(pending)
        self.llm = self.emit(ev.StartLlm, messages=msgs, tools=self.offered_tools(), preemptive=preemptive).seq
        self.llm_preemptive = preemptive

    def cancel_llm(self) -> None:
        if self.llm is not None:
            self.cancelled.add(self.llm)
            self.emit(ev.CancelLlm, cause=self.llm)
            self.llm = None
            self.llm_preemptive = False

    def llm_answer_ok(self, e: ev.Input) -> bool:
        if e.cause is not None and e.cause == self.llm:
            return True
        self.ignore("after_cancel" if e.cause in self.cancelled else "unknown_cause")
        return False

    def on_LlmToken(self, e: ev.LlmToken) -> None:
        if self.llm_answer_ok(e):
            self.llm_buffer += e.text
            self.llm_text.append(e.text)
            if not self.llm_preemptive:
                self.pump_reply()

    def on_LlmToolCall(self, e: ev.LlmToolCall) -> None:
        if self.llm_answer_ok(e):
            self.llm_calls.append(e)

    def on_LlmDone(self, e: ev.LlmDone) -> None:
        if self.llm_answer_ok(e):
            self.llm_done = True
            if not self.llm_preemptive:
                self.finish_llm()

    def on_LlmError(self, e: ev.LlmError) -> None:
        if self.llm_answer_ok(e):
            self.llm = None
            if self.llm_preemptive:
                self.llm_preemptive = False  # the turn will start a fresh request
                return
            self.llm_buffer = ""
            self.say(self.flow.fallback.llm, "fallback")

    def pump_reply(self) -> None:
        """Speak every complete clause in the buffer (held while the caller is speaking)."""
        if self.caller_speaking or self.state not in ("thinking", "speaking"):
            return
        while (cut := policy.split_clause(self.llm_buffer, first=not self.reply_started,
                                          p=self.tt.streaming)) is not None:
            clause, self.llm_buffer = cut
            self.speak_reply(clause)

    def release_reply(self) -> None:
        self.pump_reply()
        if self.llm is None and self.llm_done and self.llm_buffer.strip():
            self.speak_reply(self.llm_buffer.strip())
            self.llm_buffer = ""
        self.check_idle_playback()

    def speak_reply(self, text: str, purpose: str = "reply") -> None:
        self.cancel_timer("filler")
        self.reply_started = True
        self.speak(text, purpose)
        self.fire("first_clause")

    def finish_llm(self) -> None:
        calls, text = self.llm_calls, "".join(self.llm_text)
        self.llm = None
        if not self.caller_speaking and self.llm_buffer.strip():
            self.speak_reply(self.llm_buffer.strip())
            self.llm_buffer = ""
        if calls:
            refs = tuple(ev.ToolCallRef(id=c.tool_call_id, name=c.name, arguments=c.arguments) for c in calls)
            self.context.add_assistant(text, refs)
            self.reply_heard = []  # the text is in the context with its tool calls already
            self.run_tool_calls(calls)
        else:
            self.check_idle_playback()

    # ------------------------------------------------------------------------------ playback

    def speak(self, text: str, purpose: str) -> None:
        """Queue a line for the caller; held (in order) while the caller is talking."""
        if self.caller_speaking or self.playback.held:
            self.playback.held.append((text, purpose))
            return
        seq = self.emit(ev.Speak, text=text, purpose=purpose).seq
        self.playback.add(seq, text, purpose)

    def stop_playback(self, *, clear: bool) -> list[tuple[SpeakState, str]]:
        """Drop every queued line: ClearPlayback first (the caller stops hearing the agent at once; it is
        the effect that matters to them), then cancel the syntheses upstream. Returns each dropped line
        with the part of it that was heard."""
        heard, synthesizing = self.playback.clear(self.now)
        if clear and any(s.sent_ms for s, _ in heard):
            self.emit(ev.ClearPlayback)
        for seq in synthesizing:
            self.cancelled.add(seq)
            self.emit(ev.CancelTts, cause=seq)
        return heard

    def release_held(self) -> None:
        held, self.playback.held = self.playback.held, []
        for text, purpose in held:
            self.speak(text, purpose)

    def say(self, text: str, purpose: str) -> None:
        """A fixed line: cancel the reply in progress, speak, and let the machine wait for playback."""
        self.cancel_timer("filler")
        self.speak(text, purpose)
        self.fire("announce")

    def on_TtsAudio(self, e: ev.TtsAudio) -> None:
        if e.cause not in self.playback.speaks:
            return self.ignore("after_cancel" if e.cause in self.cancelled else "unknown_cause")
        if e.cause != self.playback.head_unsynthesized():
            return self.ignore("audio_out_of_order")
        self.emit(ev.SendAudio, cause=e.seq, duration_ms=e.duration_ms)
        mark = self.emit(ev.SendMark, name=f"m{e.seq}")
        self.playback.audio(e.cause, e.duration_ms, mark.name, self.now)

    def on_TtsDone(self, e: ev.TtsDone) -> None:
        if self.playback.tts_done(e.cause) is None:  # type: ignore[arg-type]
            return self.ignore("after_cancel" if e.cause in self.cancelled else "unknown_cause")
        self.check_idle_playback()

    def on_TtsError(self, e: ev.TtsError) -> None:
        if self.playback.tts_done(e.cause) is None:  # type: ignore[arg-type]
            return self.ignore("after_cancel" if e.cause in self.cancelled else "unknown_cause")
        self.check_idle_playback()  # a shortened turn: what could not be synthesized is skipped

    def on_PlaybackMark(self, e: ev.PlaybackMark) -> None:
        if self.playback.mark(e.name, self.now) is None:
            return self.ignore("stale_mark")
        self.check_idle_playback()

    def check_idle_playback(self) -> None:
        for s in self.playback.pop_finished():
            self.played(s)
        if self.playback.active:
            return
        if self.closing is not None and self.state == "speaking":
            return self.finish_closing()
        if self.state == "speaking" and self.llm is None and not self.pending_tools and not self.llm_buffer:
            self.commit_reply()
            self.fire("reply_done")
            if not self.caller_speaking:
                self.set_timer("idle", self.now + self.tt.idle.reprompt_ms)
        elif self.state == "thinking" and self.llm is None and not self.pending_tools and self.llm_done:
            self.commit_reply()
            self.fire("reply_done")  # an empty reply: the caller has the floor again
            if not self.caller_speaking:
                self.set_timer("idle", self.now + self.tt.idle.reprompt_ms)

    def played(self, s: SpeakState) -> None:
        if s.purpose in REPLY_PURPOSES:
            self.reply_heard.append(s.text)

    def commit_reply(self) -> None:
        if self.reply_heard:
            self.context.add_assistant(" ".join(self.reply_heard))
            self.reply_heard = []
