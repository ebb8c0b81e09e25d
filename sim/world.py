"""The world around a machine in virtual time: a clock of pending events and the caller's phone line.

Rules:
- Time is the agenda's: the next event is the earliest pending one, fed at the ``t_ms`` it was scheduled
  for. Ties go by ``rank`` (a driver's own order: what-if ranks by the logged seq), then by scheduling order.
- An event scheduled with a ``tag`` (the seq of the effect it answers) is dropped once that effect is
  cancelled (CancelLlm, CancelTts, CancelTool, CancelTimer): a cancelled request answers nothing.
- The phone plays SendAudio in real time, one chunk after another. Each SendMark is echoed (PlaybackMark)
  when the audio sent before it has played; a ClearPlayback drops what is queued and echoes every pending
  mark at once. Both as Twilio Media Streams documents ``mark`` and ``clear`` (shared/reference/protocols.md).
- Imports engine only (never adapters), so replay/ may use it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.machine import CallMachine

CANCELS = (ev.CancelLlm, ev.CancelTts, ev.CancelTool, ev.CancelTimer)


@dataclass(order=True)
class Pending:
    t_ms: int
    rank: int
    order: int
    event: ev.Input | None = field(compare=False)
    tag: int | None = field(compare=False, default=None)  # the effect it answers, for cancellation
    note: Any = field(compare=False, default=None)  # the driver's own (what-if: a missing answer, an estimate)


class World:
    def __init__(self) -> None:
        self.queue: list[Pending] = []
        self.order = itertools.count()
        self.cancelled: set[int] = set()
        self.play_end = 0  # when the phone will have played everything sent so far
        self.marks: list[tuple[int, ev.SendMark, int]] = []  # (echo time, mark, rank) pending on the phone

    # ---------------------------------------------------------------------------------- the clock

    def at(self, t_ms: int, event: ev.Input | None, *, rank: int = 0, tag: int | None = None,
           note: Any = None) -> None:
        heapq.heappush(self.queue, Pending(t_ms, rank, next(self.order), event, tag, note))

    def next(self, limit_ms: int) -> Pending | None:
        """The next live pending event, or None when there is none before ``limit_ms``."""
        while self.queue:
            p = heapq.heappop(self.queue)
            if p.t_ms > limit_ms:
                return None
            if p.tag is None or p.tag not in self.cancelled:
                return p
        return None

    @staticmethod
    def feed(machine: CallMachine, p: Pending) -> tuple[ev.Input, list[ev.Effect]]:
        assert p.event is not None
        return machine.step(dataclasses.replace(p.event, t_ms=p.t_ms))

    @staticmethod
    def finish(machine: CallMachine, reason: str) -> list[ev.Event]:
        """End a call the world has nothing more for (the script or the log ran out)."""
        if machine.view.ended:
            return []
        stamped, effects = machine.step(ev.CallEnded(t_ms=machine.view.now, reason=reason))
        return [stamped, *effects]

    # ---------------------------------------------------------------------------------- the line

    def carry_out(self, e: ev.Effect, rank: int = 0) -> bool:
        """Carry out what every simulated world does alike (timers, cancels, the phone); False for the
        rest (LLM, TTS, tools, hang-up), which each driver answers its own way."""
        t = e.t_ms
        match e:
            case ev.SetTimer():
                self.at(e.at_ms, e.fired(t_ms=0), rank=rank, tag=e.seq)
            case ev.CancelLlm() | ev.CancelTts() | ev.CancelTool() | ev.CancelTimer():
                if e.cause is not None:
                    self.cancelled.add(e.cause)
            case ev.SendAudio():
                self.play_end = max(self.play_end, t) + e.duration_ms
            case ev.SendMark():
                self.marks = [m for m in self.marks if m[0] > t]
                self.marks.append((self.play_end, e, rank))
                self.at(self.play_end, ev.PlaybackMark(t_ms=0, name=e.name, cause=e.seq), rank=rank, tag=-e.seq)
            case ev.ClearPlayback():
                for echo_t, mark, mark_rank in self.marks:
                    if echo_t > t:  # Twilio echoes every pending mark at once after a clear
                        self.cancelled.add(-mark.seq)
                        self.at(t, ev.PlaybackMark(t_ms=0, name=mark.name, cause=mark.seq), rank=mark_rank)
                self.marks = []
                self.play_end = t
            case _:
                return False
        return True
