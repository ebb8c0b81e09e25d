"""The offline driver: one call on a virtual clock, with a scripted caller, providers and phone line.

Rules:
- The world answers the machine's effects the way the real services would, in virtual time: the LLM
  streams tokens after its first-token latency, TTS yields chunks after its first byte; the clock, timers
  and the phone line are sim/world.py's, shared with what-if replay.
- Tools listed in the script are canned; any other tool runs for real through ``tool_runner`` (an HTTP
  webhook on loopback, say); the runner reports its wall-clock latency, which is carried into virtual time.
- The log it returns is the call's whole record; ``engine replay`` reproduces it from the inputs alone.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from adapters.scripted import reply_tokens, reply_tool_call, scripted_reply
from engine import events as ev
from engine.flow import Flow, ScriptedReply
from engine.machine import CallMachine
from engine.playback import MS_PER_CHAR
from engine.states import CallState
from sim.script import CallerTurn, CallScript, CannedTool, speech_ms
from sim.world import World

#: Runs one tool for real and says how long it took (ms): the caller owns the clock, this driver never reads one.
ToolRunner = Callable[[ev.CallTool], Awaitable[tuple[ev.ToolResult, int]]]


@dataclass
class OfflineResult:
    log: list[ev.Event]
    state: CallState
    outcome: str


class OfflineCall:
    def __init__(self, flow: Flow, script: CallScript, *, call_id: str = "offline",
                 tool_runner: ToolRunner | None = None,
                 on_event: Callable[[ev.Event], None] | None = None,
                 finalize_on_vad_stop: bool = True, stt_endpointing_ms: int = 0) -> None:
        """``finalize_on_vad_stop`` and ``stt_endpointing_ms`` model the flow's STT (the registry's
        options): its final comes after the VAD stop, else after its own endpointing."""
        self.flow, self.script, self.lat = flow, script, script.latency
        self.machine = CallMachine(flow, call_id=call_id)
        self.tool_runner = tool_runner
        self.on_event = on_event
        self.replies: list[ScriptedReply] = script.replies if script.replies is not None else flow.local.replies
        self.turns = list(script.caller) or [CallerTurn(say=line) for line in flow.local.caller]
        self.finalize_on_vad_stop, self.stt_endpointing_ms = finalize_on_vad_stop, stt_endpointing_ms
        self.world = World()
        self.log: list[ev.Event] = []
        self.tts_queue: list[ev.Speak] = []
        self.tts_busy_until = 0
        self.next_turn = 0
        self.wait_for_agent = False  # after a silent turn: the next one waits for the agent to speak
        self.caller_busy_until = 0
        self.audio_since_turn = False
        self.outcome = "caller_hung_up"

    # ---------------------------------------------------------------------------------- plumbing

    def at(self, t_ms: int, event: ev.Input, tag: int | None = None) -> None:
        self.world.at(t_ms, event, tag=tag)

    async def run(self) -> OfflineResult:
        self.at(0, ev.CallStarted(t_ms=0, call_sid="CAoffline", stream_sid="MZoffline", seed=self.script.seed))
        limit = self.flow.turn_taking.max_call_ms + 60_000
        while not self.machine.view.ended and (p := self.world.next(limit)) is not None:
            stamped, effects = self.world.feed(self.machine, p)
            self.record(stamped)
            for effect in effects:
                self.record(effect)
                await self.carry_out(effect)
            self.maybe_schedule_caller()
        if not self.machine.view.ended:
            for event in self.world.finish(self.machine, "script_end"):
                self.record(event)
            self.outcome = "script_end"
        return OfflineResult(log=self.log, state=self.machine.view.state, outcome=self.outcome)

    def record(self, event: ev.Event) -> None:
        self.log.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # ---------------------------------------------------------------------------------- the world

    async def carry_out(self, e: ev.Effect) -> None:
        t = e.t_ms
        if isinstance(e, ev.SendAudio):
            self.audio_since_turn = True
        if self.world.carry_out(e):
            return
        match e:
            case ev.StartLlm():
                self.llm(e)
            case ev.Speak():
                self.tts_queue.append(e)
                self.pump_tts(t)
            case ev.CallTool():
                await self.tool(e)
            case ev.Hangup() | ev.Transfer():
                self.outcome = "transfer" if isinstance(e, ev.Transfer) else "hangup"
                self.at(t + 100, ev.CallEnded(t_ms=0, reason=self.outcome))
            case _:
                pass

    def llm(self, e: ev.StartLlm) -> None:
        reply = scripted_reply(e, self.replies)
        t = e.t_ms + self.lat.llm_first_token_ms
        for tok in reply_tokens(reply):
            self.at(t, e.token(t_ms=0, text=tok), tag=e.seq)
            t += self.lat.llm_token_ms
        call = reply_tool_call(reply, e.seq)
        if call is not None:
            self.at(t, call, tag=e.seq)
        self.at(t, ev.LlmDone(t_ms=0, cause=e.seq, finish_reason="tool_calls" if call else "stop"), tag=e.seq)

    def pump_tts(self, now: int) -> None:
        """Synthesize Speaks one at a time, in order, as a streaming TTS connection would."""
        while self.tts_queue:
            s = self.tts_queue.pop(0)
            if s.seq in self.world.cancelled:
                continue
            start = max(now, self.tts_busy_until)
            total = max(self.lat.tts_chunk_ms, len(s.text) * MS_PER_CHAR // 20 * 20)
            t = start + self.lat.tts_first_byte_ms
            left = total
            while left > 0:
                chunk = min(self.lat.tts_chunk_ms, left)
                self.at(t, ev.TtsAudio(t_ms=0, cause=s.seq, duration_ms=chunk), tag=s.seq)
                left -= chunk
                t += max(1, int(chunk * self.lat.tts_realtime_factor))
            self.at(t, ev.TtsDone(t_ms=0, cause=s.seq), tag=s.seq)
            self.tts_busy_until = t

    async def tool(self, e: ev.CallTool) -> None:
        canned = self.script.tools.get(e.name)
        if canned is not None or self.tool_runner is None:
            canned = canned or CannedTool()
            latency = canned.latency_ms if canned.latency_ms is not None else self.lat.tool_ms
            body = canned.body if isinstance(canned.body, str) else json.dumps(canned.body, sort_keys=True)
            result = e.result(t_ms=0, body=body, ok=canned.error is None, error=canned.error)
        else:
            result, latency = await self.tool_runner(e)
        self.at(e.t_ms + latency, result, tag=e.seq)

    # ---------------------------------------------------------------------------------- the caller

    def maybe_schedule_caller(self) -> None:
        m = self.machine.view
        now = m.now
        if self.next_turn >= len(self.turns) or m.ended or now < self.caller_busy_until:
            return
        turn = self.turns[self.next_turn]
        if turn.barge_in_after_ms is not None:
            if self.audio_since_turn and m.playing:
                self.start_turn(now + turn.barge_in_after_ms)
            return
        idle = (m.state == CallState.LISTENING and not m.caller_words_pending and not m.caller_talking
                and self.world.play_end <= now and "endpoint" not in m.timers
                and (self.audio_since_turn or not self.wait_for_agent))
        if idle:
            self.start_turn(now + turn.gap_ms)

    def start_turn(self, t0: int) -> None:
        turn = self.turns[self.next_turn]
        self.next_turn += 1
        self.audio_since_turn = False
        self.wait_for_agent = turn.silence
        lat = self.lat
        # the caller is busy until the world has said all of this turn (the final transcript)
        self.caller_busy_until = t0 + 1
        if turn.hangup:
            self.at(t0, ev.CallEnded(t_ms=0, reason="caller_hung_up"))
        elif turn.dtmf:
            self.at(t0, ev.Dtmf(t_ms=0, digit=turn.dtmf))
        elif turn.noise_ms:
            end = t0 + turn.noise_ms
            self.at(t0 + lat.vad_start_ms, ev.SpeechStarted(t_ms=0))
            self.at(end + lat.vad_stop_ms, ev.SpeechStopped(t_ms=0, end_ms=end))
            self.caller_busy_until = end + lat.vad_stop_ms
        elif turn.say:
            self.caller_busy_until = self.speech(t0, turn.say)

    def speech(self, t0: int, text: str) -> int:
        lat = self.lat
        dur = speech_ms(text, lat.caller_wpm)
        end = t0 + dur
        words = text.split()
        self.at(t0 + lat.vad_start_ms, ev.SpeechStarted(t_ms=0))
        t = t0 + lat.stt_interim_ms
        while t < end:
            heard = max(1, len(words) * (t - t0) // dur)
            self.at(t, ev.Transcript(t_ms=0, text=" ".join(words[:heard]), is_final=False))
            t += lat.stt_interim_ms
        stop = end + lat.vad_stop_ms
        self.at(stop, ev.SpeechStopped(t_ms=0, end_ms=end))
        final_at = stop + lat.stt_final_ms if self.finalize_on_vad_stop \
            else end + self.stt_endpointing_ms + lat.stt_final_ms
        self.at(final_at, ev.Transcript(t_ms=0, text=text, is_final=True, speech_final=True,
                                        start_ms=t0, end_ms=end))
        return final_at
