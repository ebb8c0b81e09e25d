"""Regenerate the local STT's word-error-rate fixtures in tests/data/asr/ (mu-law 8 kHz, raw, .ulaw).

Source: recorded human speech from the test data of PocketSphinx's source distribution (BSD-2-Clause,
Carnegie Mellon University; not in the wheel), fetched with pip's ordinary client:

    pip download pocketsphinx==5.1.1 --no-binary :all: --no-deps -d /tmp/ps && tar xzf /tmp/ps/*.tar.gz -C /tmp/ps
    python tools/make_asr_fixtures.py /tmp/ps/pocketsphinx-5.1.1/test/data

Each 16 kHz recording goes through the phone chain a caller's voice takes: a windowed-sinc low-pass and
decimation to 8 kHz (adapters/resample.py), then G.711 mu-law, as Twilio Media Streams carry it.
transcripts.json holds the reference text the recordings' authors give with them.
"""

from __future__ import annotations

import array
import json
import sys
import wave
from pathlib import Path

from adapters.audio import ulaw_encode
from adapters.resample import Resampler

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "asr"


def _pcm(path: Path) -> array.array:
    a = array.array("h")
    if path.suffix == ".raw":  # 16 kHz 16-bit mono, headerless
        a.frombytes(path.read_bytes())
    else:
        with wave.open(str(path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
                raise SystemExit(f"{path}: expected 16 kHz 16-bit mono")
            a.frombytes(w.readframes(w.getnframes()))
    return a


def main(data: Path) -> None:
    items: list[tuple[str, Path, str]] = [("goforward", data / "goforward.raw", "go forward ten meters")]
    for fid in (data / "librivox" / "fileids").read_text().split():
        items.append((f"librivox_{fid[-4:]}", data / "librivox" / f"{fid}.wav",
                      (data / "librivox" / f"{fid}.txt").read_text().strip()))
    for line in (data / "cards" / "cards.transcription").read_text().splitlines():
        text, n = line.split("<s>")[1].split("</s>")[0].strip(), line.split("(")[1].split(")")[0]
        items.append((f"cards_{n}", data / "cards" / f"{n}.wav", text))
    down = Resampler(16000, 8000)
    OUT.mkdir(parents=True, exist_ok=True)
    refs = {}
    for name, path, text in items:
        (OUT / f"{name}.ulaw").write_bytes(ulaw_encode(round(v) for v in down(_pcm(path))))
        refs[name] = " ".join(text.split())
    (OUT / "transcripts.json").write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(items)} fixtures to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
