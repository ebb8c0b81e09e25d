"""The live runtime: one asyncio task per call that stamps, logs, feeds and carries out.

Rules:
- Every adapter event is stamped with loop time since the call started when it arrives (``emit``), queued,
  then, in order: fed to the machine, appended to the log with its effects, and only then are the effects
  carried out. So the log always holds an effect before anything it caused can happen.
- The machine is the only judge of what plays: TTS audio is held here (bytes are not events) until the
  machine answers its TtsAudio with SendAudio; audio of a cancelled Speak is never sent.
- Timers are loop callbacks; a timer cancelled after it fired is answered by the machine as stale.
- A failure in this call's code ends this call and never another: it is fed to the machine as
  RuntimeFault(error), so the fallback line and the hang-up are logged effects like any other; only if the
  machine itself fails again is the line hung up directly. A shutdown or a per-call limit is a RuntimeFault
  too (the machine hangs up at once, on the record).
- This is the one module of engine/ that reads a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from engine import events as ev
from engine.flow import Flow
from engine.liveparts import CallLimits, EngineTimes, Providers, paced, text_size
from engine.machine import CallMachine
from engine.ports import Phone
from engine.states import CallState
from engine.store import Store

log = logging.getLogger("callstate.runtime")

#: TTS audio is handed to the machine in chunks of at least this much (the first chunk at once): one
#: TtsAudio, SendAudio and mark per 200 ms instead of per 20 ms frame keeps the log small and the marks
#: fine enough to cut heard text at about a word.
CHUNK_MS = 200
#: CallEnded reasons that mean the caller's line is gone (Twilio's stop, a dropped socket, after our own
#: Hangup or Transfer). Any other reason is our side ending the stream, fed as a RuntimeFault.
CALLER_GONE = ("stop", "ws_closed_without_stop", "hangup", "transfer", "caller_hung_up")
#: A TTS that sends no audio for this long (first byte, or between chunks) is cut: a provider socket that
#: stays open and silent must not hold the call's voice forever (issue 11). Real first bytes take ~0.1-0.5 s.
#: An adapter that renders locally opts out with ``silence_timeout_s = None``.
TTS_SILENCE_S = 5.0


#: CallEnded reasons that are not the caller hanging up, and the outcome each gives the call.
_OUTCOMES = {"shutdown": "shutdown", "error": "error", "limit_events": "limit", "limit_input_bytes": "limit"}


DEFAULT_LIMITS = CallLimits()


class LiveCall:
    """One live call: implements engine.ports.CallHandle for the phone bridge."""

    def __init__(self, *, call_id: str, flow: Flow, providers: Providers, phone: Phone, store: Store,
                 seed: int, params: dict[str, str], call_sid: str = "", stream_sid: str = "",
                 on_step: Callable[[LiveCall, ev.Input, list[ev.Effect], str, int], None] | None = None,
                 limits: CallLimits = DEFAULT_LIMITS, on_limit: Callable[[str], None] | None = None) -> None:
        self.call_id, self.flow, self.p, self.phone, self.store = call_id, flow, providers, phone, store
        self.machine = CallMachine(flow, call_id=call_id)
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.inbox: asyncio.Queue[tuple[ev.Input, bytes | None]] = asyncio.Queue()
        self.stats = EngineTimes()
        self.on_step = on_step
        self.faulted = False  # a RuntimeFault(error) was fed: the next failure hangs up directly
        self.hanging_up: asyncio.Future[Any] | None = None
        self.tasks: dict[int, asyncio.Task[Any]] = {}  # StartLlm / CallTool seq -> task
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.tts_queue: asyncio.Queue[ev.Speak] = asyncio.Queue()
        self.tts_current: tuple[int, asyncio.Task[Any]] | None = None
        self.cancelled_speaks: set[int] = set()
        self.vad = providers.vad()
        self.frames_in = 0
        self.stt_audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Audio to the STT is joined into fewer messages only where no turn can wait on it (ports.Stt:
        # batch_frames, batch_after_ms): in the caller's long silences, from batch_after_ms after their speech
        # stopped (past the STT's own endpointing) until it starts again; speech, and the silence an STT
        # endpoints on, go frame by frame. Held audio goes out at the speech start and before any finalize.
        self.stt_batch = ev.FRAME_BYTES * max(1, getattr(providers.stt, "batch_frames", 1))
        self.stt_batch_after_ms = getattr(providers.stt, "batch_after_ms", 0)
        self.stt_held = bytearray()
        self.caller_quiet_from: int | None = -self.stt_batch_after_ms  # None while the caller speaks
        self.stt = providers.stt.session(params=params)
        self.done = asyncio.Event()
        self.outcome = "caller_hung_up"
        self.limits, self.on_limit = limits, on_limit
        self.limits_hit: set[str] = set()
        self.cut = False  # a limit ended the call: nothing but its CallEnded goes in any more
        self.input_bytes = 0
        self.emit(ev.CallStarted(t_ms=0, call_sid=call_sid, stream_sid=stream_sid, params=params, seed=seed))
        self.main = asyncio.create_task(self._run(), name=f"call {call_id}")

    # ------------------------------------------------------------------------------ CallHandle

    def now_ms(self) -> int:
        # + 1 us: uvloop's clock is whole milliseconds held in floats, and their difference can fall a hair
        # short (854772.304 - 854771.604 = 0.69999..): truncated, a timer due at 700 would be stamped 699.
        return int((self.loop.time() - self.t0) * 1000 + 1e-3)

    def emit(self, event: ev.Input, payload: bytes | None = None) -> None:
        """Adapters' sink: stamp on arrival, queue for the call task (safe from any coroutine)."""
        if self.done.is_set() or (self.cut and not isinstance(event, ev.CallEnded | ev.RuntimeFault)):
            return
        if isinstance(event, ev.PlaybackMark) and event.cause is None:
            if len(event.name) > self.limits.mark_name_chars:  # not a name we sent: never logged
                self._limit_hit("mark_name", f"mark names over {self.limits.mark_name_chars} characters dropped")
                return
            # Twilio echoes names only; the machine knows which SendMark each name was
            event = ev.PlaybackMark(t_ms=0, name=event.name, cause=self.machine.view.mark_sent(event.name))
        if isinstance(event, ev.CallEnded) and event.reason not in CALLER_GONE:
            # our side is stopping the stream (shutdown): the hang-up must go through the machine and the log
            event = ev.RuntimeFault(t_ms=0, reason=event.reason)
        self.inbox.put_nowait((_restamp(event, self.now_ms()), payload))

    def audio_in(self, mulaw: bytes) -> None:
        """One inbound 20 ms frame: local VAD (barge-in must not wait for the STT), then to the STT."""
        t_audio = self.frames_in * ev.FRAME_MS
        self.frames_in += 1
        change = self.vad.feed(mulaw, t_audio)
        if change == "start":
            self.caller_quiet_from = None
            self.emit(ev.SpeechStarted(t_ms=0))
        elif change == "stop":
            self.caller_quiet_from = t_audio
            end = self.vad.stop_ms
            self.emit(ev.SpeechStopped(t_ms=0, end_ms=None if end is None else min(end, self.now_ms())))
            if self.p.finalize_on_vad_stop:
                self._stt_release()  # never hold audio across a finalize: it would miss the final
                self.stt_audio.put_nowait(b"")  # b"" = finalize now (Deepgram Finalize)
        quiet = self.caller_quiet_from
        if quiet is None or t_audio - quiet < self.stt_batch_after_ms \
                or len(self.stt_held) + len(mulaw) >= self.stt_batch:
            if self.stt_held:
                self.stt_held += mulaw
                self._stt_release()
            else:
                self.stt_audio.put_nowait(mulaw)  # the usual frame: sent as it came, no copy
        else:
            self.stt_held += mulaw

    def _stt_release(self) -> None:
        if self.stt_held:
            self.stt_audio.put_nowait(bytes(self.stt_held))
            self.stt_held.clear()

    async def wait(self) -> None:
        await asyncio.shield(self.main)

    # ------------------------------------------------------------------------------ the call task

    async def _run(self) -> None:
        stt_task = asyncio.create_task(self._stt_pump())
        tts_task = asyncio.create_task(self._tts_worker())
        # the connections the first turn needs, opened while the caller talks (each on the record when ready)
        warm_tasks = [asyncio.create_task(self._warm(name, adapter)) for name, adapter in
                      (("llm", self.p.llm), ("tts", self.p.tts))]
        try:
            while True:
                event, payload = await self.inbox.get()
                if self.cut and not isinstance(event, ev.CallEnded | ev.RuntimeFault):
                    continue  # queued before a limit ended the call: never fed, never logged
                try:
                    if await self._step(event, payload):
                        break
                except Exception:
                    log.exception("call %s: runtime failure; ending the call", self.call_id)
                    self.outcome = "error"
                    if self.faulted:  # the machine could not even take the fault: hang up, off the record
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self.phone.hangup(), 5)
                        break
                    self.faulted = True
                    self.emit(ev.RuntimeFault(t_ms=0, reason="error"))  # the fallback line, then Hangup
        finally:
            for t in (stt_task, tts_task, *warm_tasks, *self.tasks.values()):
                t.cancel()
            for h in self.timers.values():
                h.cancel()
            if self.tts_current is not None:
                self.tts_current[1].cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stt.close(), 1.0)
            self.done.set()
            self._close_log()

    # ------------------------------------------------------------------------------ per-call limits

    def _count(self, stamped: ev.Input, effects: list[ev.Effect]) -> None:
        self.input_bytes += text_size(stamped)
        last_seq = effects[-1].seq if effects else stamped.seq
        if last_seq >= self.limits.events:
            self._cut("events", f"{last_seq} events logged (limit {self.limits.events})")
        elif self.input_bytes >= self.limits.input_bytes:
            self._cut("input_bytes", f"{self.input_bytes} bytes of input (limit {self.limits.input_bytes})")

    def _cut(self, what: str, detail: str) -> None:
        if not self.cut:
            self.cut = True
            self._limit_hit(what, f"{detail}; ending the call")
            # the machine hangs up (on the record) and the call ends
            self.emit(ev.RuntimeFault(t_ms=0, reason=f"limit_{what}"))

    def _limit_hit(self, what: str, detail: str) -> None:
        if what not in self.limits_hit:
            self.limits_hit.add(what)
            log.warning("call %s: per-call limit: %s", self.call_id, detail)
        if self.on_limit is not None:
            self.on_limit(what)

    async def _step(self, event: ev.Input, payload: bytes | None) -> bool:
        """Feed, log, carry out one input; True when the call is over for this task."""
        started = time.perf_counter_ns()
        view = self.machine.view
        before = view.state
        stamped, effects = self.machine.step(event)
        self.store.append(self.call_id, stamped)
        for effect in effects:
            self.store.append(self.call_id, effect)
        self._count(stamped, effects)
        for effect in effects:
            if isinstance(effect, ev.SendAudio) and payload is not None:
                self._spawn(self.phone.send_audio(payload))  # this input's audio, allowed out
            else:
                self._carry_out(effect)
        elapsed = (time.perf_counter_ns() - started) // 1000
        self.stats.engine_us_by_seq[stamped.seq] = elapsed
        if any(isinstance(e, ev.ClearPlayback) for e in effects):
            self.stats.barge_in_us.append(elapsed)
        if self.on_step is not None:
            self.on_step(self, stamped, effects, before, elapsed)
        if (before != CallState.LISTENING and view.state == CallState.LISTENING) or view.ended:
            # a turn boundary (the agent is done): what is flushed survives a crash. Not at the
            # endpoint: that step starts the answer, and a flush would delay it. Deferred one loop
            # turn so the tasks this step spawned (a barge-in's clear) reach their sockets first.
            self.loop.call_soon(self.store.flush)
        if not view.ended:
            return False
        if isinstance(stamped, ev.CallEnded):
            if self.outcome == "caller_hung_up":  # no Hangup or Transfer of ours ended it
                self.outcome = _OUTCOMES.get(stamped.reason, self.outcome)
            return True  # the caller is gone
        if self.faulted or isinstance(stamped, ev.RuntimeFault):
            # ended from our side, the hang-up is on the record: see it through, or the caller hears
            # silence forever (the server may be about to exit)
            if self.hanging_up is not None:
                await asyncio.wait({self.hanging_up}, timeout=5)
            return True
        return False

    def _close_log(self) -> None:
        try:
            self.store.close_call(self.call_id, outcome=self.outcome, ended_t_ms=self.machine.view.now,
                                  turns=self.machine.view.turns, meta={"engine_us": self.stats.engine_us_by_seq})
        except Exception:
            log.exception("call %s: could not close its log", self.call_id)

    # ------------------------------------------------------------------------------ effects

    def _carry_out(self, e: ev.Effect) -> None:
        match e:
            case ev.SendMark():
                self._spawn(self.phone.send_mark(e.name))
            case ev.ClearPlayback():
                self._spawn(self.phone.clear())
            case ev.SetTimer():
                self.timers[e.seq] = self.loop.call_at(self.t0 + e.at_ms / 1000, self._timer_fired, e)
            case ev.CancelTimer():
                handle = self.timers.pop(e.cause or -1, None)
                if handle is not None:
                    handle.cancel()
            case ev.StartLlm():
                self.tasks[e.seq] = asyncio.create_task(self._llm(e))
            case ev.CallTool():
                self.tasks[e.seq] = asyncio.create_task(self._tool(e))
            case ev.CancelLlm() | ev.CancelTool():
                task = self.tasks.pop(e.cause or -1, None)
                if task is not None:
                    task.cancel()
            case ev.Speak():
                self.tts_queue.put_nowait(e)
            case ev.CancelTts():
                self.cancelled_speaks.add(e.cause or -1)
                if self.tts_current is not None and self.tts_current[0] == e.cause:
                    self.tts_current[1].cancel()
            case ev.Hangup():
                self.outcome = _OUTCOMES.get(e.reason, "hangup")  # error, shutdown, limit: as they ended
                self.hanging_up = self._spawn(self.phone.hangup())
            case ev.Transfer():
                self.outcome = "transfer"
                self._spawn(self.phone.transfer(e.to))
            case _:
                pass

    def _timer_fired(self, e: ev.SetTimer) -> None:
        self.timers.pop(e.seq, None)
        self.emit(e.fired(t_ms=0))

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        task.add_done_callback(_report)
        return task

    async def _llm(self, e: ev.StartLlm) -> None:
        try:
            await self.p.llm.stream(e, self.emit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an adapter bug or an error it did not turn into LlmError
            log.warning("call %s: LLM failed: %s", self.call_id, type(exc).__name__)
            self.emit(ev.LlmError(t_ms=0, cause=e.seq, message=f"llm adapter failed: {type(exc).__name__}"))
        finally:
            self.tasks.pop(e.seq, None)

    async def _tool(self, e: ev.CallTool) -> None:
        try:
            self.emit(await self.p.tools.call(e))
        finally:
            self.tasks.pop(e.seq, None)

    # ------------------------------------------------------------------------------ TTS and STT

    async def _tts_worker(self) -> None:
        """Synthesize Speaks one at a time, in order, so audio never interleaves."""
        while True:
            speak = await self.tts_queue.get()
            if speak.seq in self.cancelled_speaks:
                continue
            task = asyncio.create_task(self._synthesize(speak))
            self.tts_current = (speak.seq, task)
            try:
                await asyncio.wait((task,))  # a CancelTts cancels `task`, not this worker
            finally:
                self.tts_current = None
                if not task.done():  # this worker itself is being cancelled (call end): take it along
                    task.cancel()

    async def _synthesize(self, speak: ev.Speak) -> None:
        sent = False
        for tts in (self.p.tts, self.p.tts_fallback):
            if tts is None:
                continue
            try:
                buf = b""
                silence_s = getattr(tts, "silence_timeout_s", TTS_SILENCE_S)  # None: a local TTS, no peer
                chunks = tts.synthesize(speak)
                async for chunk in chunks if silence_s is None else paced(chunks, silence_s):
                    buf += chunk
                    if not sent or len(buf) >= CHUNK_MS * ev.BYTES_PER_MS:
                        self._emit_audio(speak, buf)
                        buf, sent = b"", True
                if buf:
                    self._emit_audio(speak, buf)
                self.emit(ev.TtsDone(t_ms=0, cause=speak.seq))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                what = "timeout" if isinstance(exc, TimeoutError) else "error"
                self.emit(ev.ProviderNotice(t_ms=0, provider="tts", what=what, detail=_safe(exc)))
                if sent:
                    break  # half a sentence from one voice and the rest from another is worse than a cut
        self.emit(ev.TtsError(t_ms=0, cause=speak.seq, message="tts failed"))

    def _emit_audio(self, speak: ev.Speak, data: bytes) -> None:
        whole = len(data) - len(data) % ev.FRAME_BYTES or len(data)
        self.emit(ev.TtsAudio(t_ms=0, cause=speak.seq, duration_ms=max(1, whole // ev.BYTES_PER_MS)), data)

    async def _warm(self, name: str, adapter: Any) -> None:
        """Open a provider's connection while the caller talks, off the first turn's path (ports: ``warm``)."""
        warm = getattr(adapter, "warm", None)
        if warm is not None:
            started = self.loop.time()
            try:
                detail = str(await warm() or f"ready in {(self.loop.time() - started) * 1000:.0f} ms")
            except Exception as exc:
                detail = _safe(exc)
            self.emit(ev.ProviderNotice(t_ms=0, provider=name, what="warm", detail=detail))

    async def _stt_pump(self) -> None:
        started = self.loop.time()
        try:
            await self.stt.start(self.emit)
        except Exception as exc:
            self.emit(ev.ProviderNotice(t_ms=0, provider="stt", what="error", detail=_safe(exc)))
            return
        # on the record: when the recognizer was ready (audio before that waits in stt_audio)
        self.emit(ev.ProviderNotice(t_ms=0, provider="stt", what="open",
                                    detail=f"ready in {(self.loop.time() - started) * 1000:.0f} ms"))
        batching = self.stt_batch > ev.FRAME_BYTES
        while True:
            frame = await self.stt_audio.get()
            finalize = frame == b""
            if batching and not finalize:  # what queued meanwhile goes in the same message, up to a finalize
                audio = [frame]
                while not self.stt_audio.empty():
                    more = self.stt_audio.get_nowait()
                    if more == b"":
                        finalize = True
                        break
                    audio.append(more)
                frame = b"".join(audio)  # type: ignore[arg-type]
            try:
                if frame:
                    await self.stt.send_audio(frame)
                if finalize:
                    await self.stt.speech_stopped()
            except Exception as exc:
                self.emit(ev.ProviderNotice(t_ms=0, provider="stt", what="error", detail=_safe(exc)))


def _restamp(event: ev.Input, t_ms: int) -> ev.Input:
    return dataclasses.replace(event, t_ms=t_ms)


def _safe(exc: BaseException) -> str:
    """An error's type and first line: adapters keep keys out of their messages; cut long ones anyway."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


def _report(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("phone operation failed: %s", _safe(task.exception()))  # type: ignore[arg-type]
