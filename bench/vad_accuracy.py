"""VAD candidates compared on the packaged fixtures: accuracy at 20/10/5 dB SNR and cost per frame.

    python bench/vad_accuracy.py

Each speech fixture (trimmed, so its first and last bytes are the true speech boundaries) is padded with
1 s of silence on both sides, and the phone line noise fixture is looped under it at the given SNR (speech
power measured over the utterance alone). Frame-level precision/recall compare the detector's speech
segments [start_ms, stop_ms) with the true utterance; start/stop errors are mean absolute errors of the
first start and the last stop; ``segs`` is the mean number of segments per utterance (1 is right: more
means the turn was split). ``noise/min`` counts starts on 60 s of noise alone at the same level, and
``cough ms`` is the speech duration reported for the 150 ms cough (must stay under 250 ms for barge-in).

Two noises: ``line`` (the fixture: pink + brown, phone band, slow level wander; the energy detector's
parameters were swept on it) and ``white`` (Gaussian, full band, from ``random.Random(1)``: held out,
never used for tuning). Four noise stretches per fixture, from ``random.Random(snr)``, so every run and
every detector sees the same audio.

Candidates: ``energy`` (adapters/vad.py, the one shipped) and webrtcvad modes 1-3 under the same
start/hangover logic (``pip install webrtcvad-wheels``; skipped when absent). webrtcvad is not a
dependency of the project: it lives only here.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.audio import (
    DECODE,
    FRAME_MS,
    SAMPLE_RATE,
    add_noise,
    frames,
    load_fixture,
    power_db,
    silence,
    ulaw_encode,
)
from adapters.vad import Vad, VadEvent, VadParams

SPEECH = ["shipment_1", "shipment_2", "shipment_3", "shipment_4", "stop", "uh_huh"]
SNRS = (20, 10, 5)
PAD_MS = 1000
NOISE_S = 60
OFFSETS = 4  # noise stretches per fixture: 6 fixtures x 4 = 24 utterances per SNR

# mu-law byte -> 2 bytes of little-endian PCM: webrtcvad wants 16-bit PCM, so decode with one join.
_PCM16 = tuple(s.to_bytes(2, "little", signed=True) for s in DECODE)


class WebrtcVad(Vad):
    """webrtcvad's GMM frame classifier under the same start/hangover logic as the energy detector."""

    __slots__ = ("_w",)

    def __init__(self, mode: int, params: VadParams | None = None) -> None:
        import webrtcvad

        super().__init__(params)
        self._w = webrtcvad.Vad(mode)

    def feed(self, frame: bytes, t_ms: int) -> VadEvent | None:
        pcm = b"".join(map(_PCM16.__getitem__, frame))
        return self._step(self._w.is_speech(pcm, SAMPLE_RATE), t_ms)


def candidates() -> dict[str, Callable[[], Vad]]:
    found: dict[str, Callable[[], Vad]] = {"energy": Vad}
    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        print("webrtcvad not installed: pip install webrtcvad-wheels to compare it\n")
        return found
    for mode in (1, 2, 3):
        found[f"webrtc-{mode}"] = lambda mode=mode: WebrtcVad(mode)
    return found


def run(make: Callable[[], Vad], audio: bytes) -> tuple[list[tuple[int, int]], int]:
    """Speech segments found, and frames fed."""
    vad = make()
    segs: list[tuple[int, int]] = []
    n = 0
    for i, frame in enumerate(frames(audio)):
        n += 1
        if vad.feed(frame, i * FRAME_MS) == "stop":
            segs.append((vad.start_ms or 0, vad.stop_ms or 0))
    if vad.in_speech:
        start = vad.start_ms or 0
        segs.append((start, start + vad.speech_ms()))
    return segs, n


def cost_us(make: Callable[[], Vad], audio: bytes, repeats: int = 5) -> float:
    """Microseconds per feed() on ``audio``: the best of ``repeats`` runs, as timeit advises (the others
    measure what else the machine was doing)."""
    fs = list(frames(audio))
    best = float("inf")
    for _ in range(repeats):
        vad = make()
        t0 = time.perf_counter()
        for i, frame in enumerate(fs):
            vad.feed(frame, i * FRAME_MS)
        best = min(best, time.perf_counter() - t0)
    return best / len(fs) * 1e6


def covered(segs: list[tuple[int, int]], n: int) -> list[bool]:
    """Per frame: is its midpoint inside a segment."""
    out = [False] * n
    for a, b in segs:
        for i in range(max(0, a // FRAME_MS), min(n, b // FRAME_MS + 1)):
            mid = i * FRAME_MS + FRAME_MS // 2
            out[i] = out[i] or a <= mid < b
    return out


def white_noise(seconds: int) -> bytes:
    """Gaussian white noise, full band: a held-out noise (the energy detector was tuned on line_noise)."""
    rng = random.Random(1)
    return ulaw_encode(round(rng.gauss(0, 300)) for _ in range(seconds * SAMPLE_RATE))


def make_cases(noise: bytes, snr: int) -> list[tuple[bytes, tuple[int, int]]]:
    """Every speech fixture under ``OFFSETS`` different stretches of noise: (audio, true segment)."""
    rng = random.Random(snr)  # the same audio for every detector, whatever runs before
    cases = []
    for name in SPEECH:
        speech = load_fixture(name)
        true = (PAD_MS, PAD_MS + len(speech) * 1000 // SAMPLE_RATE)
        clean = silence(PAD_MS) + speech + silence(PAD_MS)
        for _ in range(OFFSETS):
            off = rng.randrange(len(noise))
            mixed = add_noise(clean, noise[off:] + noise[:off], snr, speech_power_db=power_db(speech))
            cases.append((mixed, true))
    return cases


def score(make: Callable[[], Vad], cases: list[tuple[bytes, tuple[int, int]]],
          noise_only: bytes, cough: bytes) -> tuple[str, ...]:
    tp = fp = fn = 0
    start_err = stop_err = 0.0
    nsegs = 0
    for mixed, (t0, t1) in cases:
        segs, n = run(make, mixed)
        nsegs += len(segs)
        got = covered(segs, n)
        want = covered([(t0, t1)], n)
        tp += sum(g and w for g, w in zip(got, want, strict=True))
        fp += sum(g and not w for g, w in zip(got, want, strict=True))
        fn += sum(w and not g for g, w in zip(got, want, strict=True))
        # A missed utterance counts as 1 s late at both ends rather than vanishing from the mean.
        start_err += abs(segs[0][0] - t0) if segs else 1000
        stop_err += abs(segs[-1][1] - t1) if segs else 1000
    false_segs, _ = run(make, noise_only)
    cough_segs, _ = run(make, cough)
    k = len(cases)
    return (
        f"{tp / max(1, tp + fp):.3f}", f"{tp / max(1, tp + fn):.3f}",
        f"{start_err / k:.0f} ms", f"{stop_err / k:.0f} ms", f"{nsegs / k:.2f}",
        f"{len(false_segs) * 60 / NOISE_S:.1f}",
        str(max((b - a for a, b in cough_segs), default=0)),
    )


def main() -> None:
    cough = load_fixture("cough")
    noises = {"line": load_fixture("line_noise"), "white": white_noise(3)}
    # Noise-only runs sit at the level the noise has under the mean speech fixture at that SNR.
    ref_db = sum(power_db(load_fixture(n)) for n in SPEECH) / len(SPEECH)
    found = candidates()
    header = ("detector", "noise", "SNR", "precision", "recall", "start err", "stop err", "segs",
              "noise/min", "cough ms", "us/frame")
    table: dict[tuple[str, str, int], tuple[str, ...]] = {}
    for kind, noise in noises.items():
        long_noise = noise * (NOISE_S * SAMPLE_RATE // len(noise))
        for snr in SNRS:
            cases = make_cases(noise, snr)
            noise_only = add_noise(silence(NOISE_S * 1000), long_noise, 0, speech_power_db=ref_db - snr)
            cough_mix = add_noise(silence(PAD_MS) + cough + silence(PAD_MS), noise, snr,
                                  speech_power_db=power_db(cough))
            for label, make in found.items():
                table[label, kind, snr] = score(make, cases, noise_only, cough_mix)
    # Cost on the 10 dB line-noise cases (speech and silence in the proportions of the accuracy runs).
    timing_audio = b"".join(audio for audio, _ in make_cases(noises["line"], 10))
    cost = {label: f"{cost_us(make, timing_audio):.1f}" for label, make in found.items()}
    rows = [header] + [(label, kind, f"{snr} dB", *table[label, kind, snr], cost[label])
                       for label in found for kind in noises for snr in SNRS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for j, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    # The load the brief sizes for: 100 calls x 50 frames/s through the VAD on one core.
    us = float(cost["energy"])
    print(f"\nenergy: 100 calls x 50 frames/s at {us:.1f} us/frame = {100 * 50 * us / 1e4:.1f}% of one core")


if __name__ == "__main__":
    main()
