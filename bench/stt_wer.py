"""Word error rate of the local STT (PocketSphinx, the ``local-asr`` provider) on committed speech fixtures.

    python bench/stt_wer.py

Fixture sets (both mu-law 8 kHz, as a phone line carries them):
- ``human``: 11 recordings of human speech from PocketSphinx's own test data (tests/data/asr/, made by
  tools/make_asr_fixtures.py; references in transcripts.json): read prose, a command, card names.
- ``espeak``: the 4 caller lines of the shipment demo (adapters/audio/shipment_*.ulaw, espeak-ng at 165
  wpm through a 300-3400 Hz band-pass: tools/make_fixtures.sh).

Variants compared:
- ``live``: adapters/asr.py exactly as a call runs it: 20 ms frames, VAD-cut utterances, streaming decode
  (cepstral mean from the phone-path prior, then estimated as the audio arrives), finals joined.
- ``live-model-cmn``: the same, starting from the model's own wide-band cepstral mean instead.
- ``batch``: the same decoder given each whole fixture at once (``full_utt=True``: CMN over the whole
  utterance), the upper bound of the model on this audio without the live path.
Prints WER per set and variant, the real-time factor, and the load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.asr import _ALT, MODEL_CMN, PHONE_CMN, DecoderPool, LocalAsr, pcm16k, transcribe
from adapters.audio import load_fixture
from adapters.vad import Vad

ROOT = Path(__file__).resolve().parent.parent
ESPEAK = {"shipment_1": "Hi, is my shipment delayed?", "shipment_2": "The tracking number is 4 5 1 9 9 2.",
          "shipment_3": "Wait, actually, can you text me instead?", "shipment_4": "No, that's all. Thanks, bye."}
_NUM = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
        "8": "eight", "9": "nine"}


def norm(text: str) -> list[str]:
    words = re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()
    return [_NUM.get(w, w) for w in words]


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1]


def fixtures() -> dict[str, dict[str, tuple[bytes, str]]]:
    asr_dir = ROOT / "tests" / "data" / "asr"
    refs = json.loads((asr_dir / "transcripts.json").read_text())
    human = {n: ((asr_dir / f"{n}.ulaw").read_bytes(), t) for n, t in sorted(refs.items())}
    espeak = {n: (load_fixture(n), t) for n, t in ESPEAK.items()}
    return {"human": human, "espeak": espeak}


def batch(pool: DecoderPool, mulaw: bytes) -> str:
    d = pool.acquire()
    d.set_cmn(PHONE_CMN)
    d.start_utt()
    d.process_raw(pcm16k(mulaw), full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    pool.release(d)
    return " ".join(_ALT.sub("", w) for w in hyp.hypstr.split()) if hyp else ""


def wer(pairs: list[tuple[str, str]]) -> tuple[float, int]:
    n = sum(len(norm(r)) for r, _ in pairs)
    return sum(edits(norm(r), norm(h)) for r, h in pairs) / n, n


def main() -> None:
    pool = DecoderPool()
    pool.release(pool.acquire())  # the model load is not part of any figure
    asrs = {"live": LocalAsr(vad=Vad, pool=pool), "live-model-cmn": LocalAsr(vad=Vad, pool=pool, cmn=MODEL_CMN)}
    verbose = "-v" in sys.argv
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'set':8} {'variant':15} {'words':>5} {'WER':>6} {'RTF':>5}")
    for set_name, items in fixtures().items():
        audio_s = sum(len(a) for a, _ in items.values()) / 8000
        for variant in ("live", "live-model-cmn", "batch"):
            t0 = time.perf_counter()
            pairs = []
            for name, (audio, ref) in items.items():
                if variant == "batch":
                    hyp = batch(pool, audio)
                else:
                    hyp = " ".join(asyncio.run(transcribe(asrs[variant], audio)))
                pairs.append((ref, hyp))
                if verbose:
                    print(f"  {name}: {hyp!r}")
            rtf = (time.perf_counter() - t0) / audio_s
            w, n = wer(pairs)
            print(f"{set_name:8} {variant:15} {n:5d} {w:6.1%} {rtf:5.2f}")


if __name__ == "__main__":
    main()
