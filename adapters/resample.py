"""Sample-rate conversion by a windowed-sinc polyphase filter (pure Python, no numpy).

Rules:
- ``Resampler(rate_in, rate_out)`` converts a signal between any two integer rates. The kernel is a sinc
  low-passed at 0.9 x the lower Nyquist frequency, Blackman-windowed over ``zero_crossings`` lobes each
  side: aliasing is attenuated by the window's ~58 dB side lobes instead of folding straight back into the
  telephone band, as linear interpolation would let it.
- The ratio is rational, so the fractional position of an output sample repeats every
  ``rate_out / gcd`` outputs: one tap table per phase, built once (8000 -> 16000: 2 phases; 22050 -> 8000:
  160 phases). The inner loop is then one dot product per output sample.
- The page (``callstate/phone/dsp.js``) does the same for the microphone; both are tested against a tone
  and against a tone above the new Nyquist frequency (tests/test_resample.py, tests/test_phone_js.py).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence


class Resampler:
    __slots__ = ("half", "phases", "step_den", "step_num")

    def __init__(self, rate_in: int, rate_out: int, *, zero_crossings: int = 8) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(rate_in, rate_out)
        self.step_num, self.step_den = rate_in // g, rate_out // g  # input samples per output = num/den
        cutoff = 0.9 * min(1.0, rate_out / rate_in)  # of the input's Nyquist frequency
        # Lobes are counted at the cutoff's rate, so a down-sampling kernel widens with the ratio.
        self.half = max(1, math.ceil(zero_crossings / cutoff))
        self.phases = [self._taps(p / self.step_den, cutoff) for p in range(self.step_den)]

    def _taps(self, frac: float, cutoff: float) -> list[float]:
        taps = []
        for k in range(-self.half + 1, self.half + 1):
            x = k - frac  # distance (input samples) from the output instant to input sample i0 + k
            arg = math.pi * cutoff * x
            sinc = cutoff if x == 0 else math.sin(arg) / (math.pi * x)
            w = 0.42 + 0.5 * math.cos(math.pi * x / self.half) + 0.08 * math.cos(2 * math.pi * x / self.half)
            taps.append(sinc * w if abs(x) < self.half else 0.0)
        return taps

    def out_len(self, n_in: int) -> int:
        return n_in * self.step_den // self.step_num

    def stream(self) -> ResamplerStream:
        """A converter for a signal that arrives in pieces (no edge clicks between them)."""
        return ResamplerStream(self)

    def __call__(self, x: Sequence[float]) -> list[float]:
        """The whole signal ``x`` at the new rate (the edges are padded with zeros)."""
        return self.stream().feed([*x, *[0.0] * (self.half + 1)])[: self.out_len(len(x))]


class ResamplerStream:
    """State of one signal through a Resampler: the input history the next outputs' taps still need.

    Output j sits at input position j * num / den; it is produced once the input reaches ``half`` samples
    past it, so the stream lags the input by ``half`` samples (8000 -> 16000: 1 ms)."""

    __slots__ = ("buf", "j", "offset", "r")

    def __init__(self, r: Resampler) -> None:
        self.r = r
        self.buf: list[float] = [0.0] * r.half  # zeros before the signal's first sample
        self.offset = -r.half  # input index of buf[0]
        self.j = 0  # next output index

    def feed(self, x: Sequence[float]) -> list[float]:
        r = self.r
        half, num, den, phases = r.half, r.step_num, r.step_den, r.phases
        buf = self.buf
        buf.extend(x)
        end = self.offset + len(buf)  # input index one past the last buffered sample
        out = []
        j = self.j
        while True:
            i0, p = divmod(j * num, den)
            if i0 + half >= end:
                break
            base = i0 - half + 1 - self.offset
            out.append(sum(map(operator.mul, phases[p], buf[base : base + 2 * half])))
            j += 1
        self.j = j
        keep_from = j * num // den - half + 1 - self.offset
        if keep_from > 0:
            del buf[:keep_from]
            self.offset += keep_from
        return out
