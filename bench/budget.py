"""The seed's latency budget end to end, and what each latency feature buys (same harness as bench/v2v.py).

    python bench/budget.py [--concurrency 10] [--lines 6] [--json out.json] [--tiny]

Provider profile (bench/fakes.py): Deepgram sends the final 150 ms after a Finalize reaches it (with no
Finalize: 150 ms after its own endpointing, 300 ms of silence); Groq's first token 200 ms after the request,
then the reply word by word 4 ms apart (about 250 tokens/s); the TTS's first byte 100 ms after Flush.
Endpointing on_punctuation_ms is 200 (the default). Four flows: everything on (preemptive generation,
Finalize at the local VAD's stop, first-clause speaking), then each of the three off. Prints voice-to-voice
p50/p99 as the caller hears it (first agent frame minus the end of their speech) and where the time goes.
``--tiny``: one call of one line per flow, the four flows at once (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DATE, Profile, bench_flow, commit, dump, med, p50_p99, pct, run

REST = ("It left our Memphis hub this morning and the new estimate is Thursday before noon. "
        "I will text you the tracking link now.")  # 24 tokens after the 9 of the first clause
PROFILE = Profile(stt_after="finalize", stt_final_ms=150, llm_ttft_ms=200, llm_token_ms=4, llm_rest=REST,
                  llm_whole_first=False, tts_ttfb_ms=100)
CONFIGS = {
    "all on": {},
    "preemptive generation off": {"preemptive": False},
    "Finalize at VAD stop off": {"finalize": False},
    "first-clause speaking off": {"first_clause": False},
}
SHOW = ["end_to_finalize", "stt_wait", "final_to_llm", "llm_wait", "token_to_tts", "tts_wait", "tts_to_caller"]


async def one(name: str, args: argparse.Namespace) -> tuple[str, Any]:
    flow = bench_flow(on_punctuation_ms=200, **CONFIGS[name])
    res = await run(PROFILE, flow, concurrency=args.concurrency, calls=args.concurrency, lines=args.lines,
                    warmup=not args.tiny)
    return name, res


def report(name: str, res: Any, base: float | None) -> tuple[list[str], dict[str, Any]]:
    v = res.v2vs()
    delta = "" if base is None else f"  ({med(v) - base:+.0f} ms p50 vs all on)"
    out = [f"-- {name}: voice-to-voice {p50_p99(v)}{delta}"]
    parts = [r.parts for r in res.rows if r.parts]
    for key in SHOW:
        xs = [p[key] for p in parts if key in p]
        if xs:
            out.append(f"     {key:<16} {p50_p99(xs)}")
    if res.timed_out:
        out.append(f"   !! {res.timed_out} call(s) timed out")
    return out, {"p50": med(v), "p99": pct(v, 99), "n": len(v)}


async def main_async(args: argparse.Namespace) -> None:
    print(f"bench/budget.py  date {DATE}  commit {commit()}  {args.concurrency} concurrent call(s), "
          f"{args.lines} lines each")
    print("profile: Deepgram final 150 ms after Finalize (or after 300 ms endpointing), Groq first token 200 ms "
          "then 4 ms/token, TTS first byte 100 ms, on_punctuation_ms 200")
    if args.tiny:
        results = await asyncio.gather(*(one(name, args) for name in CONFIGS))
    else:
        results = [await one(name, args) for name in CONFIGS]
    payload: dict[str, Any] = {}
    base = None
    for name, res in results:
        lines, fig = report(name, res, base)
        if base is None:
            base = fig["p50"]
        payload[name] = fig
        print("\n".join(lines), flush=True)
    allon = payload["all on"]
    print(f"target p50 < 450 / p99 < 500 ms with all on: p50 {allon['p50']:.0f} ({allon['p50'] - 450:+.0f}), "
          f"p99 {allon['p99']:.0f} ({allon['p99'] - 500:+.0f})")
    dump(args.json, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--lines", type=int, default=6)
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.concurrency, args.lines = 1, 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
