"""G.711 mu-law helpers for Twilio Media Streams audio (8 kHz, mono, 8 bits a sample).

Rules:
- Pure Python, no numpy (not a project dependency) and no ``audioop`` (removed in Python 3.13). The codec
  is the ITU reference (Sun's ``g711.c``, the one ``audioop`` used), so bytes match what Twilio and the old
  stdlib produce.
- Everything hot is a table lookup built once at import: 100 calls x 50 frames/s go through the VAD, so a
  frame's energy is ``sum(map(ENERGY.__getitem__, frame))`` and never a per-sample decode.
- A frame is 20 ms = 160 bytes (Twilio sends exactly that per ``media`` message; protocols.md section 5).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator
from importlib import resources

# the frame's facts have one home, beside the events whose durations they measure
from engine.events import FRAME_BYTES as FRAME_BYTES
from engine.events import FRAME_MS as FRAME_MS
from engine.events import SAMPLE_RATE as SAMPLE_RATE

#: 0xFF decodes to 0 (positive zero). Twilio pads with it and it is what a silent line sends.
SILENCE_BYTE = 0xFF
SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES

_BIAS = 0x84  # g711.c: bias added to the magnitude so every segment starts on a power of two
_CLIP = 8159  # g711.c: largest 14-bit magnitude that still fits after the bias
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _decode_byte(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


def _encode_14bit(v: int) -> int:
    """Encode a 14-bit sample (a 16-bit sample shifted right by 2), as g711.c's linear2ulaw."""
    if v < 0:
        v, mask = -v, 0x7F
    else:
        mask = 0xFF
    v = min(v, _CLIP) + (_BIAS >> 2)
    for seg, end in enumerate(_SEG_END):
        if v <= end:
            return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask  # unreachable after the clip; kept as in g711.c


#: mu-law byte -> 16-bit linear sample.
DECODE: tuple[int, ...] = tuple(_decode_byte(u) for u in range(256))
#: mu-law byte -> squared sample: the per-frame energy is a sum of lookups.
ENERGY: tuple[int, ...] = tuple(s * s for s in DECODE)
# 14-bit two's complement index -> mu-law byte. g711.c encodes ``sample >> 2``, so 16 K entries are exact.
_ENCODE14 = bytes(_encode_14bit(i - 0x4000 if i >= 0x2000 else i) for i in range(0x4000))


def ulaw_decode(data: bytes) -> array:
    """mu-law bytes -> signed 16-bit samples (``array('h')``)."""
    return array("h", map(DECODE.__getitem__, data))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Signed 16-bit samples -> mu-law bytes. Out-of-range ints are clipped to 16 bits first."""
    enc = _ENCODE14.__getitem__
    return bytes(enc((max(-32768, min(32767, s)) >> 2) & 0x3FFF) for s in samples)


def frames(data: bytes) -> Iterator[bytes]:
    """Split mu-law audio into 20 ms frames; the last one is padded with silence (0xFF)."""
    for i in range(0, len(data), FRAME_BYTES):
        frame = data[i : i + FRAME_BYTES]
        if len(frame) < FRAME_BYTES:
            frame += bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(frame))
        yield frame


def duration_ms(nbytes: int) -> int:
    """Duration of ``nbytes`` of mu-law 8 kHz audio, in ms (8 bytes a ms), rounded down."""
    return nbytes * 1000 // SAMPLE_RATE


def silence(ms: int) -> bytes:
    """``ms`` of digital silence (rounded down to whole samples)."""
    return bytes([SILENCE_BYTE]) * (ms * SAMPLE_RATE // 1000)


def frame_energy(frame: bytes) -> int:
    """Sum of squared samples of one frame (the hot path: one table lookup a byte)."""
    return sum(map(ENERGY.__getitem__, frame))


def power_db(data: bytes) -> float:
    """Mean power in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    if not data:
        return -math.inf
    mean = sum(map(ENERGY.__getitem__, data)) / len(data)
    return 10 * math.log10(mean / 32768**2) if mean else -math.inf


def load_fixture(name: str) -> bytes:
    """Bytes of a packaged mu-law fixture, e.g. ``load_fixture("shipment_1")`` (``.ulaw`` optional)."""
    if not name.endswith(".ulaw"):
        name += ".ulaw"
    return resources.files("adapters").joinpath("audio", name).read_bytes()


def fixture_names() -> list[str]:
    """Names (without ``.ulaw``) of every packaged fixture, sorted."""
    folder = resources.files("adapters").joinpath("audio")
    return sorted(p.name[: -len(".ulaw")] for p in folder.iterdir() if p.name.endswith(".ulaw"))


def gain(data: bytes, db: float) -> bytes:
    """Scale mu-law audio by ``db`` decibels (clipping at full scale)."""
    k = 10 ** (db / 20)
    return ulaw_encode(round(s * k) for s in ulaw_decode(data))


def mix(a: bytes, b: bytes, *, gain_b_db: float = 0.0) -> bytes:
    """Sum two mu-law signals in the linear domain; as long as ``a`` (``b`` loops if shorter).

    ``b`` is scaled before the sum rather than re-encoded first, so it is quantized only once.
    """
    if not b:
        return a
    k = 10 ** (gain_b_db / 20)
    lb = [s * k for s in ulaw_decode(b)]
    n = len(lb)
    return ulaw_encode(round(s + lb[i % n]) for i, s in enumerate(ulaw_decode(a)))


def add_noise(speech: bytes, noise: bytes, snr_db: float, *, speech_power_db: float | None = None) -> bytes:
    """Mix ``noise`` (looped) under ``speech`` so that speech power / noise power = ``snr_db``.

    Speech power is measured over all of ``speech`` unless ``speech_power_db`` is given: pass the power of
    the utterance alone when ``speech`` has silence padding, or padding would dilute it and lower the SNR.
    """
    p_speech = power_db(speech) if speech_power_db is None else speech_power_db
    p_noise = power_db(noise)
    if p_noise == -math.inf:
        return speech
    return mix(speech, noise, gain_b_db=p_speech - snr_db - p_noise)


class FrameCutter:
    """Re-cut a stream of audio chunks of any size into whole 20 ms frames (Twilio's unit), so a clear
    never splits a frame; ``tail()`` pads what is left at the end with silence."""

    __slots__ = ("pending", "sent")

    def __init__(self) -> None:
        self.pending = bytearray()
        self.sent = 0  # bytes handed out so far

    def cut(self, chunk: bytes) -> bytes:
        self.pending += chunk
        n = len(self.pending) - len(self.pending) % FRAME_BYTES
        if not n:
            return b""
        out = bytes(self.pending[:n])
        del self.pending[:n]
        self.sent += n
        return out

    def tail(self) -> bytes:
        if not self.pending:
            return b""
        out = bytes(self.pending) + SILENCE_FRAME[: FRAME_BYTES - len(self.pending)]
        self.pending.clear()
        return out
