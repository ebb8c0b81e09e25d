"""Latency the browser phone (GET /phone) adds, measured in real headless Chromium on one whole call.

    python bench/phone_latency.py [--runs N] [--shot PATH]

The call is tests/test_phone_browser.py's: Chromium's fake microphone plays tests/data/phone_caller.wav,
local-asr hears it, local-tts answers, the caller cuts in once. The page measures, per 20 ms frame:

- mic -> socket: from the audio-clock quantum that completed a frame (its last sample reached the capture
  worklet) to ``WebSocket.send`` of its media message, on the audio clock both threads share, plus the
  down-sampler's group delay. Not included: the browser's own capture buffering before the worklet (no
  API reports it) and up to one 128-sample quantum (2.7 ms at 48 kHz) of where in it the frame closed.
- socket -> speaker: from a media message's arrival (``onmessage``) to its first sample leaving the
  playback worklet, mapped to the output device's clock (``getOutputTimestamp``), less the audio already
  queued ahead of it (its turn to play, set by the server's pacing, not added by the page); plus the
  up-sampler's group delay. This includes the jitter buffer's 60 ms prebuffer when playback starts.
  The browser's reported ``outputLatency`` is printed beside it (headless: a fake device's figure).

Prints medians and p90 over every frame of the run(s), the v2v of each turn as the page showed it, the load
average; writes the screenshot (default bench/phone_screenshot.png).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser import available, browser_call

HERE = Path(__file__).resolve().parent


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--shot", default=str(HERE / "phone_screenshot.png"))
    args = ap.parse_args()
    if not available():
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    mic, spk, v2v, out_lat = [], [], [], []
    filters: dict[str, float] = {}
    load = os.getloadavg()[0]
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            shot = Path(args.shot) if i == 0 else Path(tmp) / "shot.png"
            r = asyncio.run(browser_call(Path(tmp) / "calls.db", shot))
        s = r["stats"]
        filters = s["filterMs"]
        mic += s["micToSocket"]
        spk += [v + filters["playback"] for v in s["socketToSpeaker"]]
        out_lat.append(s["outputLatencyMs"])
        v2v += [t["v2v"] for t in r["view_turns"]]
    print(f"load average {load:.2f} (1 min, at start); {args.runs} call(s); {len(mic)} frames up, {len(spk)} down")
    print(f"mic -> socket    median {statistics.median(mic):6.1f} ms   p90 {pct(mic, 0.9):6.1f} ms "
          f"(capture filter {filters['capture']:.2f} ms included)")
    print(f"socket -> speaker median {statistics.median(spk):6.1f} ms   p90 {pct(spk, 0.9):6.1f} ms "
          f"(playback filter {filters['playback']:.2f} ms included; browser outputLatency "
          f"{statistics.median(out_lat):.0f} ms)")
    print(f"voice to voice per turn (local-asr + scripted LLM + local-tts, as the page showed it): {v2v} ms")
    print(f"screenshot: {args.shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
