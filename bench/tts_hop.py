"""The per-line TTS hop: from a Speak handed to the Aura adapter to its Flush at the speak socket.

    python bench/tts_hop.py [--lines 200] [--tiny]

The real adapter (adapters/aura.py, deepgram-sdk) against the loopback speak fake (tests/fakes, ttfb 0),
line after line, in two modes back to back in one process:
- ``connect per line``: every socket is closed as its line ends (``idle_close_s=0``), so each line pays a
  WebSocket connect before Speak + Flush: what the adapter did before issue 10;
- ``warm socket``: the adapter as it ships, one socket reused by every line.
Per mode: p50 / p99 of Speak -> Flush at the fake (the hop) and Speak -> first audio out of the adapter.
On loopback a connect costs no network round trip; on a real network add one RTT (TCP) and one or two (TLS)
per line to ``connect per line``. ``--tiny``: 10 lines (a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.aura import DeepgramTts
from bench.harness import DATE, commit, med, pct
from engine.events import Speak
from tests.fakes.deepgram_speak import DeepgramSpeakFake

KEY = "bench-key"


class _Timed(DeepgramSpeakFake):
    """The speak fake, noting when each Flush arrives (perf_counter, this process)."""

    def __init__(self) -> None:
        super().__init__(api_key=KEY, ttfb_s=0.0, ms_per_char=2)
        self.flush_at: list[float] = []

    def _now(self) -> float:
        self.flush_at.append(time.perf_counter())  # called once per Flush, as it arrives
        return super()._now()


async def mode(lines: int, idle_close_s: float) -> dict[str, list[float]]:
    async with _Timed() as fake:
        tts = DeepgramTts(KEY, base_url=fake.url, idle_close_s=idle_close_s)
        hop, first = [], []
        for i in range(lines):
            t0 = time.perf_counter()
            got_first = None
            async for _ in tts.synthesize(Speak(t_ms=0, seq=i, text=f"Line {i}: your parcel is on its way.")):
                got_first = got_first or time.perf_counter()
            hop.append((fake.flush_at[-1] - t0) * 1000)
            first.append(((got_first or t0) - t0) * 1000)
            await asyncio.sleep(0.005)  # the socket closes (connect per line) or idles (warm) between lines
        await tts.aclose()
        return {"hop": hop, "first": first, "connects": [float(tts.connects)]}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    lines = 10 if args.tiny else args.lines
    print(f"bench/tts_hop.py  date {DATE}  commit {commit()}  load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {}
    for name, idle in (("connect per line", 0.0), ("warm socket", 60.0)):
        results[name] = r = await mode(lines, idle)
        print(f"-- {name}: {lines} lines, {int(r['connects'][0])} socket(s)")
        print(f"   Speak -> Flush at the fake: p50 {med(r['hop']):.2f} / p99 {pct(r['hop'], 99):.2f} ms")
        print(f"   Speak -> first audio out:   p50 {med(r['first']):.2f} / p99 {pct(r['first'], 99):.2f} ms")
    a, b = results["connect per line"]["hop"], results["warm socket"]["hop"]
    print(f"   hop p50 ratio (connect per line / warm): {med(a) / med(b):.1f}x")
    print(f"load avg after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
