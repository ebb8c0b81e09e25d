"""The keyless stack: local-asr (PocketSphinx), local-tts (espeak-ng from espeakng-loader), the resampler,
and how `engine talk` / `serve` choose providers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.asr import DecoderPool, LocalAsr, transcribe
from adapters.audio import FRAME_BYTES, power_db
from adapters.espeak import EspeakTts
from adapters.resample import Resampler
from adapters.vad import Vad
from bench.stt_wer import edits, norm
from callstate.flows import resolve_flow
from callstate.providers import ChoiceError, choose, with_provider
from engine import events as ev

ASR = Path(__file__).parent / "data" / "asr"
REFS = json.loads((ASR / "transcripts.json").read_text())
POOL = DecoderPool()  # one model load for the module


def _rms(x: list[float]) -> float:
    return math.sqrt(sum(v * v for v in x) / len(x))


def test_resampler_passes_the_band_and_stops_aliases() -> None:
    down = Resampler(22050, 8000)
    tone = [0.5 * math.sin(2 * math.pi * 1000 * i / 22050) for i in range(22050)]
    y = down(tone)
    assert len(y) == 8000
    assert abs(_rms(y[200:7800]) - 0.5 / math.sqrt(2)) < 0.01
    alias = down([0.5 * math.sin(2 * math.pi * 6000 * i / 22050) for i in range(22050)])  # folds to 2 kHz
    assert 20 * math.log10(_rms(alias[200:7800]) / (0.5 / math.sqrt(2))) < -50
    up = Resampler(8000, 16000)
    x = [math.sin(2 * math.pi * 440 * i / 8000) for i in range(1600)]
    whole, stream = up(x), up.stream()
    pieces = [v for i in range(0, 1600, 160) for v in stream.feed(x[i : i + 160])]
    assert pieces == whole[: len(pieces)] and len(whole) - len(pieces) <= up.half * 2


def test_local_asr_recognises_recorded_speech_through_the_phone_path() -> None:
    asr = LocalAsr(vad=Vad, pool=POOL)
    hyp = " ".join(asyncio.run(transcribe(asr, (ASR / "goforward.ulaw").read_bytes())))
    assert "go forward" in hyp
    # The whole human set, as a call feeds it: bench/stt_wer.py prints the figure; here only that it is
    # recognition and not noise (far below the 100 % of a recogniser that hears nothing right).
    pairs = [(REFS[n], " ".join(asyncio.run(transcribe(asr, (ASR / f"{n}.ulaw").read_bytes()))))
             for n in ("librivox_0930", "cards_003")]
    errors = sum(edits(norm(r), norm(h)) for r, h in pairs)
    assert errors / sum(len(norm(r)) for r, _ in pairs) < 0.5, pairs


async def test_local_asr_streams_interims_then_a_timed_final_at_the_vad_stop() -> None:
    asr = LocalAsr(vad=Vad, pool=POOL, interim_ms=200)
    session = asr.session()
    got: list[tuple[int, ev.Input]] = []
    at = [0]  # frames fed so far, when each event came
    await session.start(lambda e: got.append((at[0], e)))
    audio = b"\xff" * 8000 + (ASR / "librivox_0930.ulaw").read_bytes() + b"\xff" * 8000
    for i in range(0, len(audio), FRAME_BYTES):
        await session.send_audio(audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))
        at[0] += 1
    await session.close()
    transcripts = [(n, e) for n, e in got if isinstance(e, ev.Transcript)]
    interims = [(n, e) for n, e in transcripts if not e.is_final]
    finals = [(n, e) for n, e in transcripts if e.is_final]
    assert interims and finals
    assert interims[0][0] < finals[0][0], "an interim comes while the caller is still speaking"
    speech_end_ms = 1000 + len((ASR / "librivox_0930.ulaw").read_bytes()) // 8
    first_final_frame = finals[0][0]
    assert first_final_frame * 20 < speech_end_ms + 600, "the final comes at the VAD's stop, not at the end"
    for _, f in finals:
        assert f.speech_final and f.start_ms is not None and f.end_ms is not None
        assert 800 <= f.start_ms < f.end_ms <= speech_end_ms + 200  # word times in call time
    assert "might even have been made" in " ".join(f.text for _, f in finals)


async def test_local_asr_finalises_on_the_runtimes_vad_stop() -> None:
    asr = LocalAsr(vad=Vad, pool=POOL)
    session = asr.session()
    got: list[ev.Input] = []
    await session.start(got.append)
    audio = b"\xff" * 8000 + (ASR / "goforward.ulaw").read_bytes()
    for i in range(0, len(audio), FRAME_BYTES):
        await session.send_audio(audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))
    before = [e for e in got if isinstance(e, ev.Transcript) and e.is_final]
    await session.speech_stopped()  # Finalize: no more audio needed
    after = [e for e in got if isinstance(e, ev.Transcript) and e.is_final]
    assert len(after) == len(before) + 1 and "forward" in after[-1].text
    await session.close()


def test_local_asr_names_keyterm_words_it_cannot_hear(caplog: pytest.LogCaptureFixture) -> None:
    asr = LocalAsr(vad=Vad, pool=POOL, keyterms=["Acme Freight", "tracking number", "Zyxqwv"])
    decoder = POOL.acquire()
    try:
        with caplog.at_level("WARNING"):
            assert asr.check_keyterms(decoder) == ["zyxqwv"]
    finally:
        POOL.release(decoder)
    assert "zyxqwv" in caplog.text


async def test_local_tts_speaks_mulaw_frames_sentence_by_sentence() -> None:
    tts = EspeakTts()
    text = "Hello there. This is the second sentence, and it is longer."
    chunks = [c async for c in tts.synthesize(ev.Speak(t_ms=0, text=text))]
    audio = b"".join(chunks)
    assert all(len(c) % FRAME_BYTES == 0 for c in chunks)
    seconds = len(audio) / 8000
    assert 2.0 < seconds < 6.0, seconds  # 11 words at 170 wpm, plus pauses
    assert power_db(audio) > -35, "speech, not silence"
    first = len(tts.render("Hello there."))  # espeak-ng adds random noise to voicing: lengths, not bytes
    sizes = [len(c) for c in chunks]
    cut = next(i for i in range(len(sizes) + 1) if sum(sizes[:i]) >= first)
    assert sum(sizes[:cut]) == first, "the first sentence comes in chunks of its own, ahead of the rest"
    # espeak-ng's voice through the phone band is heard by the local STT as speech (one final, some words)
    assert await transcribe(LocalAsr(vad=Vad, pool=POOL), audio)


async def test_local_tts_stops_when_cancelled() -> None:
    tts = EspeakTts()
    gen = tts.synthesize(ev.Speak(t_ms=0, text="One. Two. Three. Four. Five."))
    first = await gen.__anext__()
    assert first
    await gen.aclose()  # the runtime closes the iterator on CancelTts: no error, nothing more


def test_local_tts_unknown_voice_is_a_clear_error() -> None:
    from adapters.espeak import EspeakError

    with pytest.raises(EspeakError, match="no voice"):
        EspeakTts(voice="xx-nope").render("hi")


SHIPMENT = resolve_flow(str(Path(__file__).parent.parent / "flows" / "shipment_status.yaml"))


def test_keyless_choice_replaces_what_cannot_run_and_keeps_portable_options() -> None:
    flow, lines = choose(SHIPMENT, {}, {}, keyless=True)
    assert [flow.stt.provider, flow.llm.provider, flow.tts.provider] == ["local-asr", "local", "local-tts"]
    assert flow.stt.options == {"keyterms": ["Acme Freight", "tracking number"]}  # keyterms carried over
    assert flow.tts.options == {}  # the Aura voice name is Deepgram's own: dropped
    assert lines[0] == "stt: local-asr (the flow's deepgram: no DEEPGRAM_API_KEY)"
    flow, lines = choose(SHIPMENT, {"GROQ_API_KEY": "k"}, {}, keyless=True)
    assert flow.llm.provider == "groq" and lines[1] == "llm: groq (the flow's)"
    flow, lines = choose(SHIPMENT, {}, {"stt": "local-asr", "llm": "groq"}, keyless=False)
    assert (flow.stt.provider, flow.llm.provider, flow.tts.provider) == ("local-asr", "groq", "deepgram")
    assert lines[:2] == ["stt: local-asr (--stt)", "llm: groq (--llm)"]
    with pytest.raises(ChoiceError, match="--tts nope: no such provider"):
        with_provider(SHIPMENT, "tts", "nope")


def _engine(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "callstate.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def test_engine_talk_prints_its_choice_and_url_then_serves_the_page(tmp_path: Path) -> None:
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = _engine("talk", str(Path(__file__).parent.parent / "flows" / "shipment_status.yaml"), "--port", "0",
                   "--db", str(tmp_path / "c.db"), env=env)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        assert first.startswith("flow shipment_status: stt: local-asr") and "llm: local" in first, first
        url = ""
        for line in proc.stdout:
            if line.startswith("browser phone: open "):
                url = line.split("open ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:") and url.endswith("/phone")
        with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
            assert b'name="phone-token"' in resp.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0


def test_engine_serve_rejects_an_unknown_provider_in_one_line(tmp_path: Path) -> None:
    proc = _engine("serve", "--stt", "whisper", "--db", str(tmp_path / "c.db"), env=dict(os.environ))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out.strip().splitlines() == ["error: --stt whisper: no such provider (one of: deepgram, local, local-asr)"]


def test_engine_serve_forced_groq_without_its_key_names_the_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = _engine("serve", "--stt", "local-asr", "--llm", "groq", "--tts", "local-tts", "--db",
                   str(tmp_path / "c.db"), env=env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "GROQ_API_KEY (for llm: groq)" in out
    assert "stt: local-asr (--stt); llm: groq (--llm); tts: local-tts (--tts)" in out


def test_talk_runs_with_no_key_at_all() -> None:
    """The default flow with an empty environment builds its providers (no key asked for)."""
    from callstate.providers import build_providers, missing_keys

    flow, _ = choose(SHIPMENT, {}, {}, keyless=True)
    assert missing_keys(flow, {}) == []
    providers = build_providers(flow, {})
    assert type(providers.stt).__name__ == "LocalAsr" and type(providers.tts).__name__ == "EspeakTts"
    asyncio.run(providers.aclose())
