"""Regenerate tests/data/phone_caller.wav: the fake microphone of the browser tests (Chromium plays it
through --use-file-for-fake-audio-capture).

Two utterances of recorded human speech from PocketSphinx's test data (see tools/make_asr_fixtures.py for
where it comes from), 16 kHz 16-bit mono, laid out on a timeline the tests rely on:

    0.0 s   1.5 s of silence (the page connects; the greeting plays)
    1.5 s   "go forward ten meters"                           (goforward.raw)
            4.0 s of silence (the agent answers: the test flow's first reply is long)
            "he might even have been made amiable himself"    (librivox ...-0930, over the agent: a barge-in)
            12 s of silence (the agent answers again; the test hangs up)

    python tools/make_phone_wav.py /tmp/ps/pocketsphinx-5.1.1/test/data
"""

from __future__ import annotations

import array
import sys
import wave
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "phone_caller.wav"
RATE = 16000
LEAD_S, GAP_S, TAIL_S = 1.5, 4.0, 12.0


def main(data: Path) -> None:
    first = array.array("h")
    first.frombytes((data / "goforward.raw").read_bytes())
    with wave.open(str(data / "librivox" / "sense_and_sensibility_01_austen_64kb-0930.wav")) as w:
        second = array.array("h")
        second.frombytes(w.readframes(w.getnframes()))

    def silence(s: float) -> array.array:
        return array.array("h", bytes(2 * int(s * RATE)))

    pcm = silence(LEAD_S) + first + silence(GAP_S) + second + silence(TAIL_S)
    with wave.open(str(OUT), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    print(f"wrote {OUT}: {len(pcm) / RATE:.1f} s; first utterance {LEAD_S:.1f}-{LEAD_S + len(first) / RATE:.2f} s, "
          f"second from {LEAD_S + (len(first)) / RATE + GAP_S:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
