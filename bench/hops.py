"""CPU per vendor hop: what one LLM request, one STT audio frame and one inbound Twilio frame cost the engine.

    python bench/hops.py [--n 200] [--rounds 5] [--only llm,stt,inbound] [--tiny]

CPU time, not wall-clock: on a shared machine it is the steadier measure of a change (each figure is the
median over ``--rounds`` rounds of this process's user+sys CPU divided by the operations in the round).
The fakes (bench/fakes.py, no delays) run in a child process, so their CPU is not counted.

- llm: ``GroqLlm.stream`` of one request (a system prompt and 6 prior turns) streamed back in 12 chunks,
  one after another; also per chunk.
- stt: ``DeepgramSttSession.send_audio`` per 20 ms of audio (per call 50 a second), in the batches the runtime
  hands over in the caller's long silences (``batch_frames`` a message; speech goes frame by frame).
- inbound: one Twilio media frame: ``adapters.twilio.decode`` of its JSON, then the local VAD.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing as mp
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DATE, commit, loadavg

FRAME = bytes(range(96, 256))  # 160 bytes of non-silent mu-law


def _serve_fakes(conn: Any) -> None:
    from bench.fakes import DeepgramFake, GroqFake

    async def main() -> None:
        async with DeepgramFake(final_ms=0, ttfb_ms=0) as dg, GroqFake(ttft_ms=0, token_ms=0,
                                                                      rest="It arrives Thursday before noon, "
                                                                           "I will text you the link now.") as gq:
            conn.send((dg.url, gq.url))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop

    asyncio.run(main())


def _cpu() -> float:
    return time.process_time()


async def _rounds(rounds: int, n: int, op: Callable[[], Awaitable[int]]) -> tuple[float, float, float]:
    """Median CPU us per operation and per unit (``op`` returns its units) over ``rounds`` rounds of n ops,
    and Python function calls per unit in one more round under cProfile: a count that load cannot move."""
    per_op, per_unit = [], []
    for _ in range(rounds):
        units = 0
        t = _cpu()
        for _ in range(n):
            units += await op()
        cpu = (_cpu() - t) * 1e6
        per_op.append(cpu / n)
        per_unit.append(cpu / max(1, units))
    prof, units = cProfile.Profile(), 0
    prof.enable()
    for _ in range(n):
        units += await op()
    prof.disable()
    calls = pstats.Stats(prof).total_calls  # type: ignore[attr-defined]
    return statistics.median(per_op), statistics.median(per_unit), calls / max(1, units)


async def llm_hop(url: str, n: int, rounds: int) -> str:
    from adapters.groq import GroqLlm
    from engine.events import LlmToken, Message, StartLlm

    history = [Message(role="system", content="You are a helpful shipping agent. Keep answers short. " * 8)]
    for i in range(6):
        history += [Message(role="user", content=f"Caller line {i}: where is my parcel number {i}?"),
                    Message(role="assistant", content="It left our Memphis hub and arrives Thursday.")]
    history.append(Message(role="user", content="Caller 1 line 7: and the tracking link?"))
    effect = StartLlm(t_ms=0, seq=3, messages=tuple(history))
    llm = GroqLlm("bench-key", base_url=url)
    tokens: list[Any] = []

    async def one() -> int:
        tokens.clear()
        await llm.stream(effect, tokens.append)
        return sum(1 for e in tokens if isinstance(e, LlmToken))

    await one()  # connection and imports warm
    try:
        op, unit, calls = await _rounds(rounds, n, one)
    finally:
        await llm.aclose()
    n_tokens = sum(1 for e in tokens if isinstance(e, LlmToken))
    return (f"llm: {op:.0f} us CPU per request ({n_tokens} tokens; {unit:.0f} us per token); "
            f"{calls * n_tokens:.0f} Python calls per request")


async def stt_hop(url: str, n: int, rounds: int) -> str:
    from adapters.deepgram import DeepgramStt

    stt = DeepgramStt("bench-key", base_url=url)
    batch = getattr(stt, "batch_frames", 1)  # what the runtime joins per message in the caller's silences
    session = stt.session(params={})
    await session.start(lambda _e: None)

    async def one() -> int:
        await session.send_audio(FRAME * batch)
        return batch

    try:
        _, unit, calls = await _rounds(rounds, n * 10 // batch, one)
    finally:
        await session.close()
    return (f"stt: {unit:.1f} us CPU per 20 ms of audio sent {batch} frame(s) a message "
            f"(x50 per call-second: {unit * 50 / 1000:.2f} ms); {calls:.0f} Python calls per 20 ms")


async def inbound_hop(n: int, rounds: int) -> str:
    import base64
    import json

    from adapters.twilio import decode
    from adapters.vad import Vad, VadParams

    vad = Vad(VadParams(stop_ms=120))
    text = json.dumps({"event": "media", "sequenceNumber": "7", "streamSid": "MZ" + "0" * 32, "media": {
        "track": "inbound", "chunk": "6", "timestamp": "100", "payload": base64.b64encode(FRAME).decode()}},
        separators=(",", ":"))
    k = 0

    async def one() -> int:
        nonlocal k
        d = decode(text)
        vad.feed(d.payload, k * 20)
        k += 1
        return 1

    op, _, calls = await _rounds(rounds, n * 10, one)
    return f"inbound: {op:.1f} us CPU per Twilio media frame (decode + VAD); {calls:.0f} Python calls per frame"


async def main_async(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    print(f"bench/hops.py  date {DATE}  commit {commit()}  load avg {loadavg()}")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_fakes, args=(child,), daemon=True)
    proc.start()
    dg_url, groq_url = parent.recv()
    try:
        if "llm" in only:
            print(await llm_hop(groq_url, args.n, args.rounds), flush=True)
        if "stt" in only:
            print(await stt_hop(dg_url, args.n, args.rounds), flush=True)
        if "inbound" in only:
            print(await inbound_hop(args.n, args.rounds), flush=True)
    finally:
        parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    print(f"load avg after: {loadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="LLM requests per round (STT and inbound: 10x frames)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="llm,stt,inbound")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.n, args.rounds = 5, 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
