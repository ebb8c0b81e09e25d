"""Whole calls through GET /phone in real headless Chromium, its microphone a committed WAV of recorded speech
(tests/data/phone_caller.wav): the page speaks Twilio Media Streams to /media; local-asr hears the caller,
local-tts answers; the page plays the answer through its AudioWorklet and echoes marks; the second
utterance cuts the agent off. Chromium is Debian's /usr/bin/chromium: `.ci/run` installs it when missing,
so in CI these tests never skip."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bench.stt_wer import norm
from engine.codec import from_record
from replay.reproduce import reproduce
from tests.browser import available, browser_call, colors_in, read_png

if not available():
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run must install it (apt-get install chromium)",
                    pytrace=False)
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

FIRST = "go forward ten meters"
SECOND = "he might even have been made amiable himself"


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("phone")
    result = asyncio.run(browser_call(tmp / "calls.db", tmp / "phone.png"))
    result["shot"] = tmp / "phone.png"
    return result


def _of(records: list[dict], *types: str) -> list[dict]:
    return [r for r in records if r["type"] in types]


def _shared(ref: str, text: str) -> int:
    return len(set(norm(ref)) & set(norm(text)))


def test_callers_words_reach_the_log_through_the_local_stt(call: dict) -> None:
    records = call["records"]
    clear_seq = _of(records, "ClearPlayback")[0]["seq"]
    finals = [r for r in _of(records, "Transcript") if r["data"]["is_final"]]
    before = " ".join(r["data"]["text"] for r in finals if r["seq"] < clear_seq)
    after = " ".join(r["data"]["text"] for r in finals if r["seq"] > clear_seq)
    assert _shared(FIRST, before) >= 2, before
    assert _shared(SECOND, after) >= 3, after
    assert any(not r["data"]["is_final"] for r in _of(records, "Transcript")), "interims stream too"


def test_agent_audio_plays_and_marks_echo_when_played(call: dict) -> None:
    records, stats = call["records"], call["stats"]
    assert stats["framesPlayed"] > 50 and stats["marksEchoed"] > 5
    sent = {r["data"]["name"]: r for r in _of(records, "SendMark")}
    echoed = {r["data"]["name"]: r for r in _of(records, "PlaybackMark")}
    clear_seq = _of(records, "ClearPlayback")[0]["seq"]
    before_clear = {n for n, r in sent.items() if r["seq"] < clear_seq}
    assert before_clear <= set(echoed), "every mark sent before the barge-in comes back, played or cleared"
    assert set(echoed) <= set(sent)
    # The greeting's marks come back as its audio plays out, not when it arrives: the last one no sooner than
    # the greeting's length after its first audio left the server.
    greeting = _of(records, "Speak")[0]
    audio = [r for r in _of(records, "TtsAudio") if r["cause"] == greeting["seq"]]
    total_ms = sum(r["data"]["duration_ms"] for r in audio)
    first_sent = min(r["t_ms"] for r in _of(records, "SendAudio") if r["cause"] in {a["seq"] for a in audio})
    last_mark = max(echoed[f"m{a['seq']}"]["t_ms"] for a in audio)
    assert last_mark - first_sent >= total_ms - 100, (last_mark - first_sent, total_ms)


def test_second_utterance_over_the_agent_is_a_barge_in_that_clears_playback(call: dict) -> None:
    records, stats = call["records"], call["stats"]
    clears = _of(records, "ClearPlayback")
    assert len(clears) == 1
    clear = clears[0]
    speaking_before = [r for r in _of(records, "SendAudio") if r["seq"] < clear["seq"]]
    assert speaking_before, "the agent was speaking"
    assert stats["clears"] == 1 and stats["marksCleared"] >= 1  # the page cleared, echoing what was pending
    # and the cut line's audio stopped there: none of it is sent after the clear (what the page had queued,
    # stats["droppedMs"], is 0 to ~160 ms: the server paces audio 100 ms ahead of the ear)
    tts_of = {r["seq"]: r["cause"] for r in _of(records, "TtsAudio")}
    cut_speak = tts_of[speaking_before[-1]["cause"]]
    after = [r for r in _of(records, "SendAudio") if r["seq"] > clear["seq"] and tts_of[r["cause"]] == cut_speak]
    assert after == []
    # The cleared marks come back at once (Twilio's rule), not after their audio's length.
    pending = [n for n, r in {r["data"]["name"]: r for r in _of(records, "SendMark")}.items()
               if r["seq"] < clear["seq"]
               and next(p for p in _of(records, "PlaybackMark") if p["data"]["name"] == n)["seq"] > clear["seq"]]
    assert pending, "marks pending at the clear came back (the page echoes them as it drops their audio)"


def test_dtmf_from_the_keypad_reaches_the_log(call: dict) -> None:
    assert [r["data"]["digit"] for r in _of(call["records"], "Dtmf")] == ["5"]


def test_live_view_shows_each_turn_and_the_screenshot_has_its_elements(call: dict) -> None:
    dom = call["dom"]
    kinds = [k for k, _ in dom["rows"]]
    assert kinds.count("caller") >= 2 and kinds.count("agent") >= 3 and kinds.count("barge-in") == 1
    assert kinds.index("barge-in") > kinds.index("caller")
    assert len(dom["turns"]) >= 2 and all(t.startswith("turn ") and t.endswith(" ms") for t in dom["turns"])
    assert [t["v2v"] > 0 for t in call["view_turns"]] == [True] * len(call["view_turns"])
    assert dom["cut"], "the agent's words the caller never heard are shown cut"
    width, height, rows = read_png(call["shot"].read_bytes())
    assert (width, height) == (1200, 800)
    red = {c for c in colors_in(rows, dom["bargeIn"][0]) if c[0] > 150 and c[1] < 110 and c[2] < 110}
    blue = {c for c in colors_in(rows, dom["caller"][0]) if c[2] > 150 and c[0] < 110}
    grey = {c for c in colors_in(rows, dom["cut"][0]) if 150 < c[0] < 200 and abs(c[0] - c[2]) < 30}
    dark = {c for c in colors_in(rows, dom["stateBox"]) if max(c) < 80}
    assert red and blue and grey and dark, "barge-in (red), caller (blue), cut words (grey), state (dark) drawn"


def test_the_call_is_logged_replays_exactly_and_links_its_timeline(call: dict) -> None:
    row = call["row"]
    assert row.status == "ended" and row.turns >= 2
    events = [from_record(r) for r in call["records"]]
    rep = reproduce(call["flow"], events, call_id=call["call_id"])
    assert rep.divergence is None, rep
    status, page = call["timeline_page"]
    assert status == 200 and call["call_id"] in page


def test_page_latency_is_measured(call: dict) -> None:
    s = call["stats"]
    assert len(s["micToSocket"]) > 100 and min(s["micToSocket"]) >= 0
    assert len(s["socketToSpeaker"]) == s["framesPlayed"]
    assert s["filterMs"]["capture"] > 0 and s["filterMs"]["playback"] > 0
    assert not [c for c in call["console"] if c.startswith("exception")], call["console"]


def test_mic_wav_is_committed_speech() -> None:
    import wave

    with wave.open(str(Path(__file__).parent / "data" / "phone_caller.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() / 16000 > 15


def test_engine_talk_from_a_clean_start_answers_aloud_and_the_call_replays(tmp_path: Path) -> None:
    """The issue's "done when", as a user does it: `engine talk flows/shipment_status.yaml` with no key, open
    the printed URL, speak; the agent answers aloud; `engine calls` lists the call; `engine replay` reproduces it."""
    import signal
    import subprocess
    import sys

    from tests.browser import MIC_WAV, Browser

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TWILIO_")}
    db = str(tmp_path / "calls.db")

    def engine(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callstate.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    flow = str(root / "flows" / "shipment_status.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "callstate.cli", "talk", flow, "--port", "0", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    try:
        chosen = proc.stdout.readline()
        assert "stt: local-asr" in chosen and "llm: local" in chosen and "tts: local-tts" in chosen, chosen
        url = next(line.split("open ", 1)[1].strip() for line in proc.stdout if line.startswith("browser phone:"))

        async def talk() -> dict:
            async with Browser(mic_wav=MIC_WAV) as b:
                await b.goto(url)
                await b.eval("phone.start()", gesture=True)
                await b.wait_for("phone.view.items.some(i => i.kind === 'caller') && phone.view.items.some("
                                 "i => i.kind === 'agent' && i.purpose === 'reply' && i.playedMs > 0)", timeout=60)
                stats = await b.eval("JSON.parse(JSON.stringify(phone.stats))")
                await b.eval("phone.hangup()")
                await b.wait_for("phone.over", timeout=20)
                return stats

        stats = asyncio.run(talk())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert stats["framesPlayed"] > 20 and stats["marksEchoed"] > 0  # the answer was played, marks came back
    listed = engine("calls", "--db", db)
    assert listed.returncode == 0 and "CA" in listed.stdout, listed.stdout + listed.stderr
    call_id = next(w for w in listed.stdout.split() if w.startswith("CA"))
    replayed = engine("replay", call_id, "--db", db)
    assert replayed.returncode == 0 and "reproduced" in replayed.stdout, replayed.stdout + replayed.stderr
