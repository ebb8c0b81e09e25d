"""Memory per live call: the engine process's RSS and traced Python memory with 100 idle-ish live calls.

    python bench/call_memory.py [--calls 100] [--tiny]

Same harness as bench/v2v.py (the engine alone in its process, real Deepgram / Groq adapters against the
fixed-delay fakes). After a warm-up call the engine's memory is read (after a gc) with no call live; then
``--calls`` simulated phones connect within 2 s, each says one line, gets its answer, and stays on the line
in silence (an idle-ish live call: its machine, log buffer, VAD, STT socket, phone pacer and one turn of
history). Memory is read again once every call has had its answer, while all are still live:
(with - without) / calls.

Two runs: one for RSS (no tracing: tracemalloc's own bookkeeping would inflate RSS), one with tracemalloc
for the Python heap alone. ``--tiny``: 5 calls, RSS only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.audio import load_fixture
from bench.harness import DATE, Profile, bench_flow, commit, dump, run
from callstate.simcaller import CallerLine

IDLE_MS = 14_000  # silence after the answer, before the caller's (unreached) second line


async def measure(calls: int, traced: bool, settle_s: float, warmup: bool = True) -> dict[str, Any]:
    marks: dict[str, Any] = {}

    async def ready(engine: Any) -> None:
        marks["before"] = await engine.get("/bench/memory")

    async def loaded(engine: Any, slots: Any) -> None:
        await asyncio.sleep(settle_s)  # connected (<= 2 s), spoken (~2 s) and answered (~2 s)
        marks["during"] = await engine.get("/bench/memory")
        # the calls still run their (long) idle gap; end them now: the measurement is done
        for task in slots:
            task.cancel()

    script = [CallerLine(audio=load_fixture("shipment_1"), gap_ms=300),
              CallerLine(audio=load_fixture("shipment_4"), gap_ms=IDLE_MS)]
    with contextlib.suppress(asyncio.CancelledError):  # the slots cancelled once measured
        await run(Profile(), bench_flow(on_punctuation_ms=0), concurrency=calls, calls=calls, lines=2,
                  stagger_s=2.0, on_ready=ready, on_loaded=loaded, script=script, tracemalloc=traced,
                  warmup=warmup)
    return marks


async def main_async(args: argparse.Namespace) -> None:
    print(f"bench/call_memory.py  date {DATE}  commit {commit()}  {args.calls} live calls")
    payload: dict[str, Any] = {}
    for traced in ([False] if args.tiny else [False, True]):
        m = await measure(args.calls, traced, args.settle_s, warmup=not args.tiny)
        b, d = m["before"], m["during"]
        live = d["active"]
        if traced:
            per = (d["traced"] - b["traced"]) / max(1, live)
            print(f"tracemalloc: {b['traced'] / 1e6:.1f} MB with no call -> {d['traced'] / 1e6:.1f} MB with "
                  f"{live} live calls = {per / 1e6:.3f} MB per call (Python heap)")
            payload["traced_mb_per_call"] = per / 1e6
        else:
            per = (d["rss_kb"] - b["rss_kb"]) / max(1, live)
            print(f"RSS: {b['rss_kb'] / 1024:.1f} MB with no call -> {d['rss_kb'] / 1024:.1f} MB with {live} live "
                  f"calls = {per / 1024:.3f} MB per call")
            payload["rss_mb_per_call"] = per / 1024
        payload["live"] = live
    dump(args.json, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--settle-s", type=float, default=9.0)
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.calls, args.settle_s = 5, 6.0
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
