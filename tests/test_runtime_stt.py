"""engine/runtime.py's STT pump (issue 15): silence joined into fewer messages where no turn waits on it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from callstate.providers import build_providers
from engine import events as ev
from engine.events import FRAME_BYTES
from engine.flowload import load_flow
from engine.runtime import LiveCall
from logstore.memory import MemoryStore
from tests.fakes.base import wait_for

START_AT, STOP_AT, FRAMES = 5, 17, 30  # the VAD double's decisions, by frame index


class ScriptedVad:
    """Says "start" at frame START_AT and "stop" at frame STOP_AT (the frame that *hears* the stop)."""

    def __init__(self) -> None:
        self.start_ms: int | None = None
        self.stop_ms: int | None = None

    def feed(self, frame: bytes, t_ms: int) -> str | None:
        if t_ms == START_AT * 20:
            self.start_ms = t_ms
            return "start"
        if t_ms == STOP_AT * 20:
            self.stop_ms = t_ms - 100
            return "stop"
        return None


class RecordingStt:
    batch_frames = 5
    batch_after_ms = 100  # the STT's own endpointing window after the caller stops

    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes]] = []

    def session(self, *, params: dict[str, str]) -> RecordingStt:
        return self

    async def start(self, emit: Any) -> None:
        pass

    async def send_audio(self, mulaw: bytes) -> None:
        self.ops.append(("audio", mulaw))

    async def speech_stopped(self) -> None:
        self.ops.append(("finalize", b""))

    async def close(self) -> None:
        pass


class QuietPhone:
    async def send_audio(self, mulaw: bytes) -> None: ...
    async def send_mark(self, name: str) -> None: ...
    async def clear(self) -> None: ...
    async def hangup(self) -> None: ...
    async def transfer(self, to: str) -> None: ...


async def test_silence_goes_in_batches_speech_and_the_endpointing_window_frame_by_frame() -> None:
    flow = load_flow(Path(__file__).parent / "data/local_call.yaml")
    stt = RecordingStt()
    providers = dataclasses.replace(build_providers(flow, {}), stt=stt, vad=ScriptedVad, finalize_on_vad_stop=True)
    store = MemoryStore()
    store.open_call("c1", started_at="2026-01-01T00:00:00.000+00:00", flow=flow.name, meta={})
    call = LiveCall(call_id="c1", flow=flow, providers=providers, phone=QuietPhone(), store=store,  # type: ignore[arg-type]
                    seed=1, params={})
    frames = [bytes([i]) * FRAME_BYTES for i in range(FRAMES)]
    for frame in frames:
        call.audio_in(frame)
        await asyncio.sleep(0)  # the pump runs between frames, as when they come 20 ms apart
    window = stt.batch_after_ms // 20  # frames after the stop that still go one by one
    sent = STOP_AT + window + (FRAMES - STOP_AT - window) // 5 * 5
    await wait_for(lambda: sum(len(b) for _, b in stt.ops) >= sent * FRAME_BYTES)
    call.emit(ev.CallEnded(t_ms=0, reason="stop"))
    await call.wait()

    kinds = [k for k, _ in stt.ops]
    assert kinds.count("finalize") == 1
    cut = kinds.index("finalize")
    before = b"".join(b for _, b in stt.ops[:cut])
    assert before == b"".join(frames[:STOP_AT])  # nothing held back: the final covers all the speech
    after = b"".join(b for _, b in stt.ops[cut + 1:])
    assert (before + after) == b"".join(frames)[:len(before + after)]  # in order, nothing lost or repeated
    sizes = [len(b) // FRAME_BYTES for k, b in stt.ops if k == "audio"]
    # the silence before any speech in batches; the onset and the speech one by one; after the stop, the
    # STT's endpointing window one by one, then batches again
    assert sizes == [5] + [1] * (STOP_AT - 5) + [1] * window + [5] * ((FRAMES - STOP_AT - window) // 5)
