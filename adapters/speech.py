"""Offline text-to-speech for the ``local`` provider: mu-law 8 kHz audio with no network and no keys.

Rules:
- ``LocalTts.synthesize(effect)`` is an async generator (the ``Tts`` port): it waits ``first_byte_ms``
  (a stand-in for a real service's time to first byte), then yields 100 ms chunks, each a multiple of
  160 bytes (a 20 ms Twilio frame), so the runtime can send them and mark them like a vendor's audio.
- With ``use_espeak`` and espeak-ng on PATH the audio is real speech. Otherwise it is a deterministic
  speech-like signal (a voiced buzz through two formant resonators, one amplitude bump per syllable) of
  realistic length: 60/wpm s a word plus pauses at punctuation. A listener's VAD hears it as speech, so
  simulated calls exercise barge-in and endpointing without any binary installed.
- Imports ``engine.events`` only from the engine (the adapter rule); codec helpers come from
  ``adapters.audio``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.audio import FRAME_BYTES, SAMPLE_RATE, SILENCE_BYTE, ulaw_encode
from engine.events import Speak

CHUNK_MS = 100
CHUNK_BYTES = SAMPLE_RATE * CHUNK_MS // 1000  # 800 = 5 frames
#: Pauses after punctuation inside the text. A full stop is longer than the VAD's 300 ms hangover, as in
#: real speech, so a listener hears two sentences as two turns; a comma is not.
PAUSE_MS = {",": 200, ";": 250, ":": 250, ".": 400, "!": 400, "?": 400}
_PEAK = 16000  # about -6 dBFS, the level of the packaged caller fixtures

_WORD = re.compile(r"[^\s]+")
_VOWELS = re.compile(r"[aeiouy]+")
# (F1, F2) in Hz for the vowel letter that opens a syllable: rough adult-male averages (Peterson and
# Barney 1952). Only the variety matters, so a listener's VAD and spectrum see changing vowels.
_FORMANTS = {"a": (730, 1090), "e": (530, 1840), "i": (390, 1990), "o": (570, 840), "u": (440, 1020),
             "y": (390, 1990)}


@dataclass(frozen=True, slots=True)
class Word:
    syllables: str  # one vowel letter per syllable
    pause_ms: int  # silence after the word


def words(text: str) -> list[Word]:
    """Split text into words with their syllables' vowels and the pause each punctuation mark adds."""
    out: list[Word] = []
    for tok in _WORD.findall(text):
        pause = PAUSE_MS.get(tok[-1], 0)
        if not any(c.isalnum() for c in tok):  # a lone "-" or "...": only its pause counts
            if out:
                out[-1] = Word(syllables=out[-1].syllables, pause_ms=max(out[-1].pause_ms, pause))
            continue
        low = tok.lower()
        if low.isdigit():
            vowels = ("aioeu" * 4)[: len(low)]  # "4519" is read digit by digit
        else:
            vowels = "".join(g[0] for g in _VOWELS.findall(low)) or "a"  # "hmm", "TV": one syllable
        out.append(Word(syllables=vowels[:4], pause_ms=pause))
    if out:  # the text's last mark ends the audio: no trailing silence to send
        out[-1] = Word(syllables=out[-1].syllables, pause_ms=0)
    return out


def expected_ms(text: str, words_per_minute: int) -> int:
    """Length of the synthetic rendering: one word every 60/wpm s, plus punctuation pauses."""
    ws = words(text)
    return round(len(ws) * 60_000 / words_per_minute) + sum(w.pause_ms for w in ws)


def _resonator(x: list[float], freq: float, bw: float) -> list[float]:
    # Two-pole resonator (a formant): y[n] = x[n] + a1*y[n-1] + a2*y[n-2], unit gain at the peak-ish.
    r = math.exp(-math.pi * bw / SAMPLE_RATE)
    a1 = 2 * r * math.cos(2 * math.pi * freq / SAMPLE_RATE)
    a2 = -r * r
    g = 1 - r
    y1 = y2 = 0.0
    out = []
    for v in x:
        y = g * v + a1 * y1 + a2 * y2
        out.append(y)
        y2, y1 = y1, y
    return out


def synthetic_speech(text: str, words_per_minute: int = 170) -> bytes:
    """Deterministic speech-like mu-law audio for ``text`` (same text, same bytes)."""
    rng = random.Random(zlib.crc32(text.encode()))
    word_n = round(SAMPLE_RATE * 60 / words_per_minute)
    samples: list[float] = []
    ws = words(text)
    for wi, w in enumerate(ws):
        n_syl = len(w.syllables)
        syl_n = word_n // n_syl
        for vowel in w.syllables:
            # Pitch falls across the text (declination), with a little jitter per syllable.
            f0 = 135 - 30 * wi / max(1, len(ws)) + rng.uniform(-8, 8)
            period = SAMPLE_RATE / f0
            f1, f2 = _FORMANTS[vowel]
            f1 *= rng.uniform(0.9, 1.1)
            f2 *= rng.uniform(0.9, 1.1)
            src = [0.0] * syl_n
            k = rng.uniform(0, period)
            while k < syl_n:  # a glottal pulse train
                src[int(k)] = 1.0
                k += period
            voiced = _resonator(_resonator(src, f1, 90), f2, 130)
            # One amplitude bump per syllable: dips to 20 % between syllables, as running speech does
            # (about 4 syllables a second: the modulation a VAD and the ear expect of speech).
            for n, v in enumerate(voiced):
                env = 0.2 + 0.8 * math.sin(math.pi * (n + 0.5) / syl_n) ** 0.7
                samples.append(v * env)
        samples.extend([0.0] * (w.pause_ms * SAMPLE_RATE // 1000))
    peak = max((abs(s) for s in samples), default=0.0)
    k = _PEAK / peak if peak else 0.0
    return ulaw_encode(round(s * k) for s in samples)


def _pad_frames(audio: bytes) -> bytes:
    """Pad to a whole number of 20 ms frames with silence, so every chunk is whole frames."""
    short = -len(audio) % FRAME_BYTES
    return audio + bytes([SILENCE_BYTE]) * short


def wav_to_ulaw(wav: bytes) -> bytes:
    """16-bit mono WAV (espeak-ng writes 22050 Hz) -> mu-law 8 kHz: low-pass, resample, encode."""
    rate, pcm = _parse_wav(wav)
    x = array("h")
    x.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        x.byteswap()  # WAV is little-endian
    if rate == SAMPLE_RATE:
        return ulaw_encode(x)
    # Anti-alias at 3.4 kHz (the telephone band edge) with two Butterworth biquads (12 dB/octave each),
    # then linear interpolation to 8 kHz. Enough for a demo voice, and pure Python fast (~50 ms a second
    # of audio); run it off the event loop.
    y = _biquad_lowpass(_biquad_lowpass([float(v) for v in x], 3400, rate), 3400, rate)
    step = rate / SAMPLE_RATE
    n_out = int(len(y) / step)
    out = []
    for j in range(n_out):
        pos = j * step
        i = int(pos)
        frac = pos - i
        nxt = y[i + 1] if i + 1 < len(y) else y[i]
        out.append(round(y[i] + (nxt - y[i]) * frac))
    return ulaw_encode(out)


def _biquad_lowpass(x: list[float], cutoff: float, rate: int) -> list[float]:
    # RBJ audio-EQ cookbook low-pass, Q = 1/sqrt(2) (Butterworth).
    w = 2 * math.pi * cutoff / rate
    alpha = math.sin(w) / math.sqrt(2)
    cw = math.cos(w)
    a0 = 1 + alpha
    b0 = b2 = (1 - cw) / 2 / a0
    b1 = (1 - cw) / a0
    a1 = -2 * cw / a0
    a2 = (1 - alpha) / a0
    x1 = x2 = y1 = y2 = 0.0
    out = []
    for v in x:
        y = b0 * v + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
        out.append(y)
        x2, x1, y2, y1 = x1, v, y1, y
    return out


def _parse_wav(wav: bytes) -> tuple[int, bytes]:
    """(sample rate, PCM bytes). espeak-ng --stdout writes placeholder sizes, so the data chunk runs
    to the end of the stream whatever its header says."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("espeak-ng output is not a WAV stream")
    pos, rate = 12, 0
    while pos + 8 <= len(wav):
        cid, size = wav[pos : pos + 4], struct.unpack("<I", wav[pos + 4 : pos + 8])[0]
        if cid == b"fmt ":
            channels, rate, bits = struct.unpack("<xxHI6xH", wav[pos + 8 : pos + 24])
            if channels != 1 or bits != 16:
                raise ValueError(f"expected 16-bit mono WAV, got {channels} ch x {bits} bits")
        elif cid == b"data":
            return rate, wav[pos + 8 :]
        pos += 8 + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


@dataclass(frozen=True, slots=True)
class LocalTts:
    """The ``local`` provider's TTS (the ``Tts`` port of engine/ports.py)."""

    silence_timeout_s: float | None = None  # rendered here: no peer to go silent (engine/runtime.py)
    words_per_minute: int = 170  # conversational English is 150-180 wpm; 170 is a brisk agent
    #: Delay before the first chunk, standing in for a hosted TTS's time to first byte (0: none). The
    #: render's own time counts toward it, so the first chunk is never later than this unless the
    #: render itself is slower.
    first_byte_ms: int = 0
    use_espeak: bool = True
    voice: str = "en-us"

    def _espeak(self) -> str | None:
        return shutil.which("espeak-ng") if self.use_espeak else None

    def _args(self, exe: str) -> list[str]:
        # Text goes through stdin, so a text starting with "-" is never read as an option.
        return [exe, "--stdin", "--stdout", "-v", self.voice, "-s", str(self.words_per_minute)]

    async def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        """Yield the audio of ``effect.text`` in 100 ms chunks after ``first_byte_ms``."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        audio = await self._render(effect.text)
        wait = self.first_byte_ms / 1000 - (loop.time() - began)
        if wait > 0:
            await asyncio.sleep(wait)
        for i in range(0, len(audio), CHUNK_BYTES):
            yield audio[i : i + CHUNK_BYTES]
            await asyncio.sleep(0)  # a cancelled turn stops here, between chunks

    async def _render(self, text: str) -> bytes:
        exe = self._espeak()
        if exe and text.strip():
            proc = await asyncio.create_subprocess_exec(
                *self._args(exe), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                wav, _ = await proc.communicate(text.encode())
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
            if proc.returncode == 0 and wav:
                return _pad_frames(await asyncio.to_thread(wav_to_ulaw, wav))
        # No espeak-ng (or it failed): the synthetic voice, also off the loop (~20 ms a second).
        return _pad_frames(await asyncio.to_thread(synthetic_speech, text, self.words_per_minute))

    def synthesize_sync(self, text: str) -> bytes:
        """All the audio of ``text`` at once (simulated callers, tests): frame-padded mu-law."""
        exe = self._espeak()
        if exe and text.strip():
            done = subprocess.run(self._args(exe), input=text.encode(), capture_output=True, check=False)
            if done.returncode == 0 and done.stdout:
                return _pad_frames(wav_to_ulaw(done.stdout))
        return _pad_frames(synthetic_speech(text, self.words_per_minute))
