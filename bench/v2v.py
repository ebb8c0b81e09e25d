"""Engine-added voice-to-voice latency at 1, 10, 50 and 100 concurrent calls (the engine alone in its process).

    python bench/v2v.py [--levels 1,10,50,100] [--lines 12] [--gap-ms 300] [--first-after-ms 1000]
                        [--workers 1] [--db sqlite|postgresql://...] [--json out.json] [--profile DIR] [--tiny]

Providers are loopback fakes with fixed delays (bench/fakes.py): the STT's final 150 ms after the caller's
speech end (as the audio reaches it), the LLM's first token 200 ms after the request, a whole first clause,
the TTS's first byte 100 ms after Flush. Endpointing on_punctuation_ms is 0, so an engine that added nothing
would answer exactly 450 ms after the caller stops: engine-added = measured voice-to-voice - 450 ms.
The real adapters run (deepgram-sdk listen and speak, the groq SDK), the real Server, Twilio pacing and log.

Per level: p50/p99 of voice-to-voice and engine-added, its split into hops, engine CPU per call-second,
EngineTimes.engine_us, Store.flush cost, TwilioPhone pacing lateness, and both processes' loop lag.
``--profile DIR`` also runs py-spy on the engine process during the last level's load and prints where its
CPU goes (DIR gets the raw collapsed stacks). ``--tiny``: one call, one line (a few seconds).
``--workers N``: N engine processes share the port (SO_REUSEPORT, as `engine serve --workers N`); figures
are merged over all of them. ``--db URL``: the log in PostgreSQL (a fresh schema per level) instead of SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DATE, Profile, bench_flow, commit, dump, engine_figures, fresh_log, med, pct, run, summary

PROFILE = Profile(stt_after="speech_end", stt_final_ms=150, llm_ttft_ms=200, tts_ttfb_ms=100)


def calls_for(level: int, lines: int, min_samples: int) -> int:
    return max(level, math.ceil(min_samples / lines))


async def profile_engine(out_dir: Path, seconds: int, engine: Any, slots: Any) -> None:
    """py-spy the engine process for ``seconds`` once every call of the level has started."""
    await asyncio.sleep(6)  # past the stagger: all calls live
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "engine.collapsed"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(engine.pid), "--duration",
        str(seconds), "--rate", "100", "--format", "raw", "--output", str(raw),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await proc.wait()


#: Where a sample of the engine's stack belongs: the first category with a pattern in the stack (a dotted
#: pattern matches inside a frame's name, a bare one the whole name). Async stacks come out of py-spy cut at
#: the task, so library leaves (deflate, VAD, decode) are named too.
CATEGORIES = [
    ("log flush (SQLite, on the loop)", ("Store.flush", "SqliteStore._write")),
    ("STT: audio to Deepgram (listen socket sends)", ("LiveCall._stt_pump", "AsyncV1SocketClient.send_media",
                                                      "DeepgramSttSession.send_audio")),
    ("LLM: groq SDK + httpx (request, SSE, parse)", ("LiveCall._llm", "GroqLlm.", "_async_transform_recursive",
                                                     "_transform.", "construct_type")),
    ("TTS: speak sockets (connect, Speak, audio)", ("LiveCall._synthesize", "DeepgramTts.", "LiveCall._tts_worker")),
    ("inbound media: Twilio socket, decode, VAD", ("create_app.<locals>.media", "_bridge", "LiveCall.audio_in",
                                                   "RequestHandler.data_received", "WebSocketReader", "Vad.feed",
                                                   "WebSocketResponse.receive", "decode", "_decode", "_int", "_get")),
    ("STT: results from Deepgram", ("DeepgramSttSession._run", "read_message", "transfer_data")),
    ("outbound media: pacing, encode, send", ("TwilioPhone.", "encode_media")),
    ("machine + runtime (feed, log append, dispatch)", ("LiveCall._run", "CallMachine.", "LiveCall.emit")),
    ("socket connects (listen per call, speak per line)", ("AsyncV1Client.connect", "_open")),
    ("websockets writes, deflate (listen/speak, task cut off)", ("WebSocketCommonProtocol.", "PerMessageDeflate.",
                                                                 "Frame.write", "Frame.serialize")),
]


def _category(frames: list[str]) -> str:
    for name, pats in CATEGORIES:
        for p in pats:
            if ("." in p and any(p in f for f in frames)) or ("." not in p and p in frames):
                return name
    return "event loop, other"


def top_frames(raw: Path, n: int = 15) -> list[str]:
    """Where the engine's CPU goes, by subsystem and by function, from py-spy's collapsed stacks."""
    cats: collections.Counter[str] = collections.Counter()
    self_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        c = int(count)
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if frames[-1].endswith(".select") or frames[-1] == "Runner.run" or frames[0] == "Thread._bootstrap":
            # idle in epoll (asyncio's selector; uvloop's C loop shows as Runner.run with nothing above it);
            # a worker thread (py-spy counts one blocked in a read as busy)
            continue
        total += c
        self_c[frames[-1]] += c
        cats[_category(frames)] += c
    out = [f"py-spy: {total} busy samples of the engine process (idle excluded)", "  by subsystem:"]
    out += [f"    {c / total:6.1%}  {name}" for name, c in cats.most_common()]
    out.append("  self time, top functions:")
    out += [f"    {c / total:6.1%}  {f}" for f, c in self_c.most_common(n)]
    return out


async def main_async(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    flow = bench_flow(on_punctuation_ms=0)
    store = "SQLite" if args.db == "sqlite" else "PostgreSQL"
    print(f"bench/v2v.py  date {DATE}  commit {commit()}  {len(levels)} level(s)  {args.workers} worker(s), "
          f"log in {store}")
    print(f"profile: STT final {PROFILE.stt_final_ms} ms after speech end, LLM first token (a whole clause) "
          f"{PROFILE.llm_ttft_ms} ms, TTS first byte {PROFILE.tts_ttfb_ms} ms; ideal v2v {PROFILE.ideal_ms} ms")
    payload: dict[str, Any] = {"levels": {}}
    spies: list[asyncio.Task[None]] = []
    for i, level in enumerate(levels):
        calls = 1 if args.tiny else calls_for(level, args.lines, args.min_samples)
        hook = None
        if args.profile and i == len(levels) - 1:
            async def hook(engine: Any, slots: Any) -> None:
                spies.append(asyncio.create_task(profile_engine(Path(args.profile), args.profile_s, engine, slots)))
        with fresh_log(args.db) as db:
            res = await run(PROFILE, flow, concurrency=level, calls=calls, lines=args.lines,
                            gap_ms=args.gap_ms, first_ms=args.first_after_ms, on_loaded=hook,
                            warmup=not args.tiny, workers=args.workers, db=db)
        for line in summary(res, PROFILE):
            print(line, flush=True)
        v = res.v2vs()
        f = engine_figures(res.engine)
        payload["levels"][level] = {
            "v2v_p50": med(v), "v2v_p99": pct(v, 99), "added_p50": med(v) - PROFILE.ideal_ms,
            "added_p99": pct(v, 99) - PROFILE.ideal_ms, "n": len(v), "cpu_ms_per_call_s": res.cpu_s / res.call_s * 1000,
            "workers": args.workers, "db": store, "timed_out": res.timed_out,
            "unanswered": sum(1 for r in res.rows if r.v2v is None),
            "max_late_ms": max(f["max_late_ms"], default=math.nan), "engine_us_p50": med(f["engine_us"]),
            "engine_us_p99": pct(f["engine_us"], 99), "flush_us_p50": med(f["flush_us"]),
            "flush_us_p99": pct(f["flush_us"], 99),
            "parts": {k: [med(xs), pct(xs, 99)] for k in ("audio_fwd", "final_to_llm", "token_to_tts",
                                                          "tts_to_caller", "stt_late")
                      if (xs := [r.parts[k] for r in res.rows if k in r.parts])}}
    if args.profile:
        raw = Path(args.profile) / "engine.collapsed"
        if raw.exists():
            for line in top_frames(raw):
                print(line)
    dump(args.json, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,10,50,100")
    ap.add_argument("--lines", type=int, default=12, help="caller lines per call")
    ap.add_argument("--gap-ms", type=int, default=300,
                    help="the caller's pause after the agent's line (the turn rate: 300 is a chatty call)")
    ap.add_argument("--first-after-ms", type=int, default=1000,
                    help="when the caller's first line starts (a greeting's length; past 5 s httpx's default "
                         "keep-alive has dropped every idle LLM connection)")
    ap.add_argument("--min-samples", type=int, default=60,
                    help="at low concurrency, run calls one after another until this many lines")
    ap.add_argument("--workers", type=int, default=1, help="engine processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--db", default="sqlite", help="sqlite (default) or a postgresql:// URL for the log")
    ap.add_argument("--json")
    ap.add_argument("--profile", help="py-spy the engine during the last level; raw stacks go to this directory")
    ap.add_argument("--profile-s", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="one call of one line at concurrency 1: a smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.levels, args.lines = "1", 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
