"""Barge-in reaction: engine time from the input that confirms a barge-in to ``clear`` handed to the socket.

    python bench/barge_in.py [--levels 1,10,100] [--json out.json] [--tiny]

Same harness as bench/v2v.py (the engine alone in its process, fixed-delay fakes, real adapters). Every
second caller line starts 600 ms into the agent's answer (a 3 s reply) instead of waiting for it to end.
The input that confirms the barge-in is the barge_in timer (250 ms of speech) or the STT's first interim,
whichever comes first. Two measures per barge-in, both inside the engine process:

- ``EngineTimes.barge_in_us``: that input's step (feed, log append, effect dispatch), as the runtime records it;
- queued -> clear on the socket: from the moment the input was queued for the call (emit) to the moment
  TwilioPhone hands the ``clear`` message to the WebSocket (inbox wait + step + the send task), read by the
  probe in bench/engine_proc.py.

``--tiny``: one call, two lines (one barge-in).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DATE, Profile, bench_flow, commit, dump, engine_figures, med, p50_p99, pct, run

LONG = ("It left our Memphis hub this morning and the new estimate is Thursday before noon. I will text you "
        "the tracking link now, and you can reply to that text if anything changes.")
PROFILE = Profile(stt_after="speech_end", llm_rest=LONG)


async def main_async(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    print(f"bench/barge_in.py  date {DATE}  commit {commit()}")
    flow = bench_flow(on_punctuation_ms=0)
    payload: dict[str, Any] = {}
    for level in levels:
        calls = 1 if args.tiny else max(level, math.ceil(args.min_barge_ins * 2 / args.lines))
        res = await run(PROFILE, flow, concurrency=level, calls=calls, lines=args.lines, barge_every=2,
                        warmup=not args.tiny)
        f = engine_figures(res.engine)
        step, clear = f["barge_in_us"], f["clear_us"]
        print(f"-- {level} concurrent call(s), {calls} calls: {len(clear)} barge-ins "
              f"(load avg {res.load_before} -> {res.load_after})")
        print(f"   barge-in step (EngineTimes.barge_in_us):      {p50_p99(step, 'us', 0)}, "
              f"max {max(step, default=0):.0f}")
        print(f"   input queued -> clear handed to the socket: {p50_p99(clear, 'us', 0)}, "
              f"max {max(clear, default=0):.0f}")
        print(f"   engine loop lag: {p50_p99(f['lag_ms'])}; v2v of all lines: {p50_p99(res.v2vs())}", flush=True)
        payload[level] = {"step_p50_us": med(step), "step_p99_us": pct(step, 99), "clear_p50_us": med(clear),
                          "clear_p99_us": pct(clear, 99), "n": len(clear)}
    dump(args.json, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,10,100")
    ap.add_argument("--lines", type=int, default=8)
    ap.add_argument("--min-barge-ins", type=int, default=16, help="at low concurrency, calls in turn until this many")
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.levels, args.lines = "1", 2
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
