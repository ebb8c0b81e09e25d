"""adapters/audio.py (G.711 codec, framing, fixtures, mixing) and adapters/speech.py (LocalTts)."""

from __future__ import annotations

import io
import math
import warnings
import wave
from array import array

import pytest

from adapters.audio import (
    DECODE,
    FRAME_BYTES,
    FRAME_MS,
    SILENCE_FRAME,
    add_noise,
    duration_ms,
    fixture_names,
    frame_energy,
    frames,
    load_fixture,
    power_db,
    silence,
    ulaw_decode,
    ulaw_encode,
)
from adapters.speech import CHUNK_BYTES, LocalTts, expected_ms, wav_to_ulaw
from engine.events import Speak

SPEECH_FIXTURES = ["shipment_1", "shipment_2", "shipment_3", "shipment_4", "stop", "uh_huh"]
ALL_FIXTURES = [*SPEECH_FIXTURES, "cough", "line_noise"]

# ---- codec -----------------------------------------------------------------------------------------


def test_encode_of_decode_is_identity_except_negative_zero():
    # 0x7F is "-0": it decodes to 0, which encodes as 0xFF (+0). Every other code survives a round trip.
    for u in range(256):
        back = ulaw_encode(ulaw_decode(bytes([u])))
        assert back == (b"\xff" if u == 0x7F else bytes([u])), hex(u)


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8), (0xF0, 120), (0xEF, 132),
     (0x6F, -132)],
)
def test_decode_known_values(code, sample):  # ITU-T G.711 table values (as g711.c and audioop decode them)
    assert ulaw_decode(bytes([code]))[0] == sample


def test_encode_known_values_and_clipping():
    assert ulaw_encode([0, 32767, -32768, 8, -8]) == bytes([0xFF, 0x80, 0x00, 0xFE, 0x7E])
    assert ulaw_encode([10**6, -(10**6)]) == bytes([0x80, 0x00])  # out of 16-bit range: clipped


def test_decoded_samples_are_monotonic_in_each_half():
    # Codes 0x00..0x7F run from -32124 up to -0; 0x80..0xFF from +32124 down to 0.
    neg, pos = DECODE[:128], DECODE[128:]
    assert list(neg) == sorted(neg) and list(pos) == sorted(pos, reverse=True)


def test_codec_matches_stdlib_audioop_where_it_still_exists():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    assert ulaw_decode(bytes(range(256))).tobytes() == audioop.ulaw2lin(bytes(range(256)), 2)
    every = list(range(-32768, 32768))
    assert ulaw_encode(every) == audioop.lin2ulaw(array("h", every).tobytes(), 2)


# ---- frames and durations --------------------------------------------------------------------------


def test_frame_constants_match_twilio():
    assert (FRAME_BYTES, FRAME_MS) == (160, 20)
    assert SILENCE_FRAME == b"\xff" * 160
    assert set(ulaw_decode(SILENCE_FRAME)) == {0}
    assert frame_energy(SILENCE_FRAME) == 0


@pytest.mark.parametrize(("n", "count"), [(0, 0), (1, 1), (160, 1), (161, 2), (800, 5)])
def test_frames_are_whole_and_the_last_is_padded_with_silence(n, count):
    data = bytes(range(256)) * 4
    data = data[:n]
    out = list(frames(data))
    assert len(out) == count
    assert all(len(f) == FRAME_BYTES for f in out)
    assert b"".join(out)[:n] == data
    assert set(b"".join(out)[n:]) <= {0xFF}


@pytest.mark.parametrize(("nbytes", "ms"), [(0, 0), (160, 20), (800, 100), (8000, 1000), (8007, 1000)])
def test_duration_ms(nbytes, ms):
    assert duration_ms(nbytes) == ms


def test_silence_is_silence_frames():
    assert silence(100) == SILENCE_FRAME * 5


# ---- fixtures --------------------------------------------------------------------------------------


def test_every_fixture_is_packaged_and_small():
    assert set(ALL_FIXTURES) <= set(fixture_names())
    total = sum(len(load_fixture(n)) for n in fixture_names())
    assert total < 150_000


@pytest.mark.parametrize("name", SPEECH_FIXTURES)
def test_speech_fixtures_are_trimmed_speech_at_phone_level(name):
    audio = load_fixture(name)
    assert 250 <= duration_ms(len(audio)) <= 4000
    assert -30 < power_db(audio) < -15
    first, last = audio[:FRAME_BYTES], audio[-FRAME_BYTES:]
    # Trimmed: the edges are not long digital silence (the VAD tests treat them as the true bounds).
    assert frame_energy(first) > 0 and frame_energy(last) > 0


def test_cough_is_short_and_noise_is_quiet():
    assert 140 <= duration_ms(len(load_fixture("cough"))) <= 160
    noise = load_fixture("line_noise")
    assert duration_ms(len(noise)) == 3000
    assert -56 < power_db(noise) < -48


@pytest.mark.parametrize("snr", [20, 10, 5])
def test_add_noise_hits_the_requested_snr(snr):
    speech = load_fixture("shipment_1")
    mixed = add_noise(speech, load_fixture("line_noise"), snr)
    residual = [m - s for m, s in zip(ulaw_decode(mixed), ulaw_decode(speech), strict=True)]
    noise_db = 10 * math.log10(sum(r * r for r in residual) / len(residual) / 32768**2)
    # mu-law quantizes the sum again, so allow half a dB.
    assert abs((power_db(speech) - noise_db) - snr) < 0.5


def test_add_noise_loops_short_noise_and_keeps_the_speech_length():
    speech = silence(5000)
    mixed = add_noise(speech, load_fixture("line_noise"), 0, speech_power_db=-40)
    assert len(mixed) == len(speech)
    assert abs(power_db(mixed[-8000:]) + 40) < 1


# ---- LocalTts (no espeak-ng at test time: use_espeak=False everywhere) ------------------------------

TEXTS = [
    "Your shipment is on its way.",
    "I can text you the tracking link, or read it out now. Which would you prefer?",
    "One moment.",
]


def _expected_by_rule(text: str, wpm: int) -> float:
    # The brief's rule, written independently of adapters/speech.py: 60/wpm s a word plus pauses.
    words = text.split()
    pauses = sum(400 if w[-1] in ".?!" else 200 if w[-1] == "," else 0 for w in words[:-1])
    return len(words) * 60_000 / wpm + pauses


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("wpm", [140, 170, 200])
def test_local_tts_length_is_realistic(text, wpm):
    audio = LocalTts(words_per_minute=wpm, use_espeak=False).synthesize_sync(text)
    want = _expected_by_rule(text, wpm)
    assert abs(duration_ms(len(audio)) - want) <= 0.2 * want
    assert abs(expected_ms(text, wpm) - want) <= 0.05 * want


def test_local_tts_is_deterministic_and_frame_aligned():
    tts = LocalTts(use_espeak=False)
    a = tts.synthesize_sync(TEXTS[1])
    assert a == tts.synthesize_sync(TEXTS[1])
    assert len(a) % FRAME_BYTES == 0
    assert -30 < power_db(a) < -15  # a phone-level voice, like the caller fixtures


async def _collect(tts: LocalTts, text: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(Speak(t_ms=0, text=text))]


async def test_local_tts_streams_100_ms_chunks_of_whole_frames():
    tts = LocalTts(use_espeak=False)
    chunks = await _collect(tts, TEXTS[1])
    assert all(len(c) % FRAME_BYTES == 0 for c in chunks)
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= CHUNK_BYTES
    assert b"".join(chunks) == tts.synthesize_sync(TEXTS[1])


async def test_local_tts_waits_first_byte_ms_before_the_first_chunk(monkeypatch):
    slept: list[float] = []
    import asyncio

    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:  # record, don't wait: tests never depend on real time
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("adapters.speech.asyncio.sleep", fake_sleep)
    chunks = await _collect(LocalTts(use_espeak=False, first_byte_ms=250), "Hello there.")
    assert chunks
    assert 0.2 < max(slept) <= 0.25  # the render's own time counts toward the delay


def _wav_tone(freq: int, rate: int = 22050) -> bytes:
    """1 s of a half-scale tone as 16-bit mono WAV: espeak-ng's output format (22050 Hz)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(array("h", (round(16384 * math.sin(2 * math.pi * freq * n / rate))
                                  for n in range(rate))).tobytes())
    return buf.getvalue()


HALF_SCALE_TONE_DB = 20 * math.log10(0.5 / math.sqrt(2))  # -9.03 dBFS


def test_wav_from_espeak_is_resampled_to_8_khz_mulaw():
    # The espeak-ng path, tested without espeak-ng: 1 s at 22050 Hz -> 1 s at 8 kHz, same power.
    out = wav_to_ulaw(_wav_tone(440))
    assert abs(len(out) - 8000) <= 2
    assert abs(power_db(out[800:]) - HALF_SCALE_TONE_DB) < 0.5


def test_a_tone_above_the_phone_band_is_filtered_not_aliased():
    # 6 kHz would fold to 2 kHz at 8 kHz without the low-pass.
    assert power_db(wav_to_ulaw(_wav_tone(6000))[800:]) < HALF_SCALE_TONE_DB - 15


async def test_local_tts_of_empty_text_is_empty():
    assert await _collect(LocalTts(use_espeak=False), "   ") == []
