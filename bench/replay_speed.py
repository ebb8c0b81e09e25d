"""Feed throughput and replay speed: a synthetic 10-minute call, reproduced from its log.

    python bench/replay_speed.py [--minutes 10] [--runs 5] [--tiny]

Prints the call's size, feed events/s (inputs fed per second of CPU) and how many times faster than real
time the whole call reproduces (every effect compared). Median of 5 runs; seed fixed. ``--tiny``: a 1-minute
call, one run (a smoke run, a second or two).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from engine import events as ev
from engine.flow import Flow
from engine.machine import CallMachine
from replay.reproduce import reproduce
from sim.offline import OfflineCall
from sim.script import CallerTurn, CallScript, CannedTool


def synthetic_call(minutes: float, seed: int = 0) -> tuple[Flow, list[ev.Event]]:
    rng = random.Random(seed)
    flow = Flow.model_validate({
        "name": "bench", "greeting": "Hi, how can I help?",
        "turn_taking": {"max_call_ms": int(minutes * 60_000) + 5_000},
        "tools": {"lookup": {"description": "d", "function": "x:y",
                             "messages": {"on_delay": [{"after_ms": 700, "text": "Let me check."}]}}}})
    lines = ["Is my shipment delayed?", "It's 4 5 1 9 9 2.", "Wait, can you text me?", "Okay thanks.",
             "What time does it arrive?", "And the address, is it right?"]
    turns = []
    for _ in range(int(minutes * 6)):
        if rng.random() < 0.2:
            turns.append(CallerTurn(say=rng.choice(lines), barge_in_after_ms=rng.randint(300, 1500)))
        else:
            turns.append(CallerTurn(say=rng.choice(lines), gap_ms=rng.randint(300, 1500)))
    replies = [{"text": "Sure, let me see what I can find about that for you. It should only take a moment."},
               {"tool": "lookup", "arguments": {"id": "1"}}] * (len(turns) + 1)
    script = CallScript(seed=seed, caller=turns, replies=replies,
                        tools={"lookup": CannedTool(body={"ok": True}, latency_ms=900)})
    result = asyncio.run(OfflineCall(flow, script).run())
    return flow, result.log


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="a 1-minute call, one run")
    args = ap.parse_args()
    if args.tiny:
        args.minutes, args.runs = 1, 1
    flow, log = synthetic_call(args.minutes)
    inputs = [e for e in log if isinstance(e, ev.Input)]
    call_ms = log[-1].t_ms
    feed_s, replay_s = [], []
    for _ in range(args.runs):
        m = CallMachine(flow)
        t = time.perf_counter()
        for e in inputs:
            m.step(e)
        feed_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert reproduce(flow, log).ok
        replay_s.append(time.perf_counter() - t)
    fs, rs = statistics.median(feed_s), statistics.median(replay_s)
    print(f"call: {call_ms / 60_000:.1f} min, {len(log)} events ({len(inputs)} inputs)")
    print(f"feed: {len(inputs) / fs:,.0f} inputs/s ({fs / len(inputs) * 1e6:.1f} us per input, effects included)")
    print(f"replay (feed + compare every effect): {rs * 1000:.0f} ms = {call_ms / 1000 / rs:,.0f}x real time")


if __name__ == "__main__":
    main()
