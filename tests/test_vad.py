"""adapters/vad.py on the packaged fixtures mixed with phone line noise.

Each speech fixture is trimmed (its first and last bytes are where the speech is), so padding it with
known silence gives the true boundaries; line noise is then looped under the whole mix at a given SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from adapters.audio import (
    FRAME_BYTES,
    FRAME_MS,
    SAMPLE_RATE,
    add_noise,
    frame_energy,
    frames,
    load_fixture,
    power_db,
    silence,
)
from adapters.speech import LocalTts
from adapters.vad import Vad, VadParams

SPEECH = ["shipment_1", "shipment_2", "shipment_3", "shipment_4", "stop", "uh_huh"]
PAD_MS = 1000  # silence before and after: more than the warm-up and the hangover
NOISE_OFFSETS = [0, 6000, 12000, 18000]  # bytes into the 3 s noise loop: four different stretches
BARGE_IN_MIN_SPEECH_MS = 250  # engine/policy.py BargeIn.min_speech_ms


@dataclass(frozen=True)
class Run:
    events: list[tuple[str, int, int]]  # (event, t_ms of the frame that completed it, start_ms/stop_ms)
    vad: Vad

    def starts(self) -> list[int]:
        return [b for e, _, b in self.events if e == "start"]

    def stops(self) -> list[int]:
        return [b for e, _, b in self.events if e == "stop"]


def run(audio: bytes, params: VadParams | None = None) -> Run:
    vad = Vad(params)
    events = []
    for i, frame in enumerate(frames(audio)):
        t = i * FRAME_MS
        ev = vad.feed(frame, t)
        if ev == "start":
            events.append((ev, t, vad.start_ms))
        elif ev == "stop":
            events.append((ev, t, vad.stop_ms))
    return Run(events, vad)


def noise_at(offset: int) -> bytes:
    noise = load_fixture("line_noise")
    return noise[offset:] + noise[:offset]


def padded(speech: bytes) -> tuple[bytes, int, int]:
    """Speech between PAD_MS of silence, and its true start and end in ms."""
    return silence(PAD_MS) + speech + silence(PAD_MS), PAD_MS, PAD_MS + len(speech) * 1000 // SAMPLE_RATE


def audible_start_ms(speech: bytes, above_db: float) -> int:
    """Start of the first 20 ms of the clean fixture louder than ``above_db`` (the noise, in a mix)."""
    for i in range(0, len(speech), FRAME_BYTES):
        frame = speech[i : i + FRAME_BYTES]
        if frame_energy(frame) and 10 * math.log10(frame_energy(frame) / len(frame) / 32768**2) > above_db:
            return i * 1000 // SAMPLE_RATE
    raise AssertionError("the fixture is never louder than the noise")


@pytest.mark.parametrize("offset", NOISE_OFFSETS)
@pytest.mark.parametrize("name", SPEECH)
def test_each_caller_line_at_10_db_snr_is_one_turn_with_accurate_bounds(name, offset):
    speech = load_fixture(name)
    clean, t0, t1 = padded(speech)
    mixed = add_noise(clean, noise_at(offset), 10, speech_power_db=power_db(speech))
    r = run(mixed)
    assert [e for e, _, _ in r.events] == ["start", "stop"]
    (start,), (stop,) = r.starts(), r.stops()
    # "stop" opens with an /s/ and "No, that's all" with an /n/ some 15-25 dB under the vowels, i.e.
    # under the noise at 10 dB SNR: no energy detector can see them (webrtcvad neither; see the bench).
    # So the 60 ms bound is from where the speech first rises above the noise, and the fixture's edge
    # gets a looser 120 ms.
    audible = t0 + audible_start_ms(speech, power_db(speech) - 10)
    assert 0 <= start - audible <= 60, (start, audible)
    assert -20 <= start - t0 <= 120
    assert abs(stop - t1) <= 100


@pytest.mark.parametrize("name", ["shipment_1", "shipment_2", "shipment_3", "uh_huh"])
def test_lines_that_open_on_a_vowel_or_plosive_start_within_60_ms_of_the_true_start(name):
    # For these the audible start is the fixture's edge, so the strict bound holds at every offset.
    speech = load_fixture(name)
    clean, t0, _ = padded(speech)
    for offset in NOISE_OFFSETS:
        r = run(add_noise(clean, noise_at(offset), 10, speech_power_db=power_db(speech)))
        assert abs(r.starts()[0] - t0) <= 60


def test_start_is_reported_60_ms_in_and_stop_after_300_ms_of_hangover():
    speech = load_fixture("shipment_3")
    clean, _, _ = padded(speech)
    r = run(add_noise(clean, noise_at(0), 20, speech_power_db=power_db(speech)))
    (_, t_start, start), (_, t_stop, stop) = r.events
    # The frame that completes "start" is the third voiced one (60 ms); the one that completes "stop"
    # ends 300 ms after the last voiced frame. The times reported exclude both delays.
    assert t_start + FRAME_MS - start == 60
    assert t_stop + FRAME_MS - stop == 300
    assert r.vad.speech_ms() == stop - start


@pytest.mark.parametrize("snr", [20, 10, 5])
def test_a_cough_is_shorter_than_the_barge_in_minimum(snr):
    # A cough may trip the VAD; what matters is the speech duration it reports, which barge-in
    # confirmation compares with min_speech_ms (250 ms): the cough must change nothing.
    cough = load_fixture("cough")
    clean, _, _ = padded(cough)
    r = run(add_noise(clean, noise_at(0), snr, speech_power_db=power_db(cough)))
    assert len(r.starts()) <= 1
    if r.starts():
        assert r.stops(), "the cough must end as a turn"
        assert r.stops()[0] - r.starts()[0] < BARGE_IN_MIN_SPEECH_MS
        assert r.vad.speech_ms() < BARGE_IN_MIN_SPEECH_MS


def test_a_cough_over_the_noise_of_a_10_db_call_is_still_short():
    # The cough at its own level (3-4 dB over the caller's lines), the noise where it sits under the
    # lines at 10 dB SNR: the cough starts a turn and still ends it well under the barge-in minimum.
    speech_db = power_db(load_fixture("shipment_1"))
    cough = load_fixture("cough")
    clean, _, _ = padded(cough)
    r = run(add_noise(clean, noise_at(3000), 0, speech_power_db=speech_db - 10))
    assert len(r.starts()) == 1 and len(r.stops()) == 1
    assert r.stops()[0] - r.starts()[0] < BARGE_IN_MIN_SPEECH_MS


@pytest.mark.parametrize("level_db", [-70, -52, -40, -30, -20])
def test_line_noise_alone_never_starts_speech(level_db):
    noise = add_noise(silence(10_000), load_fixture("line_noise"), 0, speech_power_db=level_db)
    assert run(noise).events == []


def test_digital_silence_never_starts_speech():
    assert run(silence(5000)).events == []


def test_a_lasting_jump_in_noise_is_absorbed_within_the_floor_window():
    # A caller walks into the street: +15 dB of noise for good. The jump looks like speech at first;
    # the minimum-statistics window (2 s) then lifts the floor, so the "turn" ends and no other starts.
    noise = load_fixture("line_noise")
    quiet = add_noise(silence(3000), noise, 0, speech_power_db=-55)
    loud = add_noise(silence(9000), noise, 0, speech_power_db=-40)
    r = run(quiet + loud)
    assert len(r.starts()) <= 1 and len(r.stops()) == len(r.starts())
    if r.stops():
        assert r.stops()[0] - 3000 <= VadParams().floor_window_ms + 500


def test_two_turns_separated_by_a_second_are_two_turns():
    a, b = load_fixture("shipment_1"), load_fixture("shipment_4")
    audio = silence(PAD_MS) + a + silence(1000) + b + silence(PAD_MS)
    r = run(add_noise(audio, noise_at(0), 15, speech_power_db=power_db(a + b)))
    assert [e for e, _, _ in r.events] == ["start", "stop", "start", "stop"]


def test_warm_up_frames_only_learn_the_floor():
    # A line that opens loud (speech-level noise from the first frame) is not a caller speaking.
    loud = add_noise(silence(3000), load_fixture("line_noise"), 0, speech_power_db=-25)
    assert run(loud).events == []


def test_the_local_tts_voice_is_heard_as_speech():
    # Simulated callers and the agent's local voice must drive the VAD like real speech: one sentence
    # is one turn, covering the audio; a full stop's 400 ms pause ends a turn.
    tts = LocalTts(use_espeak=False)
    one = tts.synthesize_sync("Hi, is my shipment delayed?")
    clean, t0, t1 = padded(one)
    r = run(add_noise(clean, noise_at(0), 20, speech_power_db=power_db(one)))
    assert len(r.starts()) == 1 and len(r.stops()) == 1
    assert abs(r.starts()[0] - t0) <= 60 and abs(r.stops()[0] - t1) <= 100
    two = tts.synthesize_sync("Yes. Please text me.")
    r = run(add_noise(padded(two)[0], noise_at(0), 20, speech_power_db=power_db(two)))
    assert len(r.starts()) == 2
