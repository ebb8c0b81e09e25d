"""The ``local-asr`` provider: offline speech recognition with PocketSphinx and the en-us model in its wheel.

Rules:
- Streams like Deepgram's adapter: interim Transcripts while the caller speaks (every ``interim_ms`` of
  speech, when the hypothesis changed), one final (``is_final`` and ``speech_final``) with the words' call
  times when the utterance ends: at the runtime's VAD stop (``speech_stopped``, the Finalize path) or at
  this session's own VAD stop, whichever comes first. An utterance with no words gets no final.
- Audio: 20 ms mu-law frames at 8 kHz, decoded and up-sampled to the model's 16 kHz by a windowed-sinc
  filter (adapters/resample.py). The model is wide-band, so a phone line's missing 4-8 kHz band costs
  accuracy: WER on the fixtures is measured both ways in bench/stt_wer.py (README, bench/README.md).
- Decoding runs in a worker thread, never on the event loop; a session's decoder is used by one thread at
  a time (the runtime's STT pump awaits each call in turn). Loading the model takes ~0.4 s, so decoders are
  pooled across calls.
- PocketSphinx writes no punctuation. A final closed by the caller's silence ends with a full stop, as
  Deepgram's punctuated finals do, so the machine's endpointing treats it as a finished sentence; a final
  ending on a trailing word ("and", "um") still waits, by the machine's own rule (``punctuate=False``: none).
- Keyterms: PocketSphinx's n-gram search takes no runtime boost, so a keyterm's words are checked against
  its dictionary; words it cannot spell are named once in the log (they can never be recognised).
- Imports engine.events only from the engine (the adapter rule).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from adapters.audio import DECODE, FRAME_BYTES, FRAME_MS, silence
from adapters.resample import Resampler
from engine import events as ev

log = logging.getLogger("callstate.asr")

Emit = Callable[[ev.Input], None]
MODEL_RATE = 16000
_UP = Resampler(8000, MODEL_RATE)
DECODE_EVERY = 8000 // 10  # mu-law bytes: 100 ms a batch (one thread hop, not five)
#: The cepstral mean of speech through the phone path (8 kHz mu-law, up-sampled), the decoder's starting
#: point for each call: the model's own (40,3,-1,0,...) is a wide-band microphone's, and with it the first
#: words of a call are lost while the live estimate catches up. The mean of two recordings that are NOT in
#: the WER fixtures (numbers.raw, something.raw of PocketSphinx's test data), through the same chain.
PHONE_CMN = "42.2,28.7,-41.9,38.6,-8.4,-4.1,9.2,-19.8,8.3,-5.3,-3.2,0.6,-2.6"
MODEL_CMN = "40,3,-1,0,0,0,0,0,0,0,0,0,0"  # the en-us model's own -cmninit (bench/stt_wer.py compares)


def pcm16k(mulaw: bytes, up: Callable[[list[float]], list[float]] = _UP) -> bytes:
    """8 kHz mu-law as the model's 16 kHz 16-bit PCM (``up``: a whole-signal resampler or a stream's feed)."""
    return array("h", [max(-32768, min(32767, round(v))) for v in up([float(DECODE[b]) for b in mulaw])]).tobytes()


_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+|\+.*\+)$")
_ALT = re.compile(r"\(\d+\)$")  # "the(2)": the dictionary's second pronunciation


class _Vad(Protocol):
    @property
    def in_speech(self) -> bool: ...
    def feed(self, frame: bytes, t_ms: int) -> str | None: ...


def _words(segments: Iterable[Any], base_ms: int) -> list[tuple[str, int, int]]:
    """(word, start_ms, end_ms) in call time from PocketSphinx segments (10 ms frames, inclusive ends)."""
    out = []
    for s in segments:
        if _FILLER.match(s.word):
            continue
        out.append((_ALT.sub("", s.word), base_ms + s.start_frame * 10, base_ms + (s.end_frame + 1) * 10))
    return out


class DecoderPool:
    """PocketSphinx decoders kept between calls (one per concurrent call, created on demand)."""

    def __init__(self, **config: Any) -> None:
        self.config = {"loglevel": "FATAL", **config}
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        from pocketsphinx import Decoder  # imported here: loading it costs a model read

        return Decoder(**self.config)

    def release(self, decoder: Any) -> None:
        with self._lock:
            self._free.append(decoder)


class LocalAsr:
    """The ``Stt`` port (engine/ports.py) over PocketSphinx."""

    def __init__(self, *, vad: Callable[[], _Vad], keyterms: Iterable[str] = (), interim_ms: int = 300,
                 preroll_ms: int = 200, pool: DecoderPool | None = None, cmn: str = PHONE_CMN,
                 punctuate: bool = True) -> None:
        self.vad, self.interim_ms, self.preroll_ms, self.cmn = vad, interim_ms, preroll_ms, cmn
        self.punctuate = punctuate
        self.keyterms = tuple(keyterms)
        self.pool = pool or DecoderPool()
        self._checked = False

    def check_keyterms(self, decoder: Any) -> list[str]:
        """Words of the keyterms the model's dictionary lacks (logged once per provider)."""
        missing = sorted({w for term in self.keyterms for w in term.lower().split()
                          if decoder.lookup_word(w) is None})
        if missing and not self._checked:
            log.warning("local-asr: keyterm words not in the model's dictionary (never recognised): %s",
                        ", ".join(missing))
        self._checked = True
        return missing

    def session(self, *, params: Mapping[str, str] | None = None, **_: Any) -> LocalAsrSession:
        return LocalAsrSession(self)


class LocalAsrSession:
    def __init__(self, cfg: LocalAsr) -> None:
        self.cfg = cfg
        self.vad = cfg.vad()
        self.decoder: Any = None
        self.emit: Emit | None = None
        self.frames = 0
        self.preroll: deque[bytes] = deque(maxlen=max(1, cfg.preroll_ms // FRAME_MS))
        self.up = _UP.stream()  # the utterance's resampler state (new at each start)
        self.in_utt = False
        self.utt_start_ms = 0
        self.pending = bytearray()  # mu-law not yet given to the decoder (converted on its thread)
        self.since_interim = 0
        self.last_interim = ""

    async def start(self, emit: Emit) -> None:
        self.emit = emit
        self.decoder = await asyncio.to_thread(self.cfg.pool.acquire)
        self.decoder.set_cmn(self.cfg.cmn)  # every call starts alike, whatever call used this decoder before
        if not self.cfg._checked:
            self.cfg.check_keyterms(self.decoder)

    async def send_audio(self, mulaw: bytes) -> None:
        """Audio as it arrives, in 20 ms frames or any run of them (a runtime may batch silence)."""
        for i in range(0, len(mulaw), FRAME_BYTES):
            await self._frame(mulaw[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))

    async def _frame(self, mulaw: bytes) -> None:
        t_ms = self.frames * FRAME_MS
        self.frames += 1
        change = self.vad.feed(mulaw, t_ms)
        if not self.in_utt:
            self.preroll.append(mulaw)
            if self.vad.in_speech and self.decoder is not None:  # a start, or speech going on after a finalize
                self.in_utt = True
                self.utt_start_ms = t_ms + FRAME_MS - len(self.preroll) * FRAME_MS
                self.up = _UP.stream()
                self.pending = bytearray(b"".join(self.preroll))
                self.preroll.clear()
                self.since_interim = 0
                self.last_interim = ""
                await asyncio.to_thread(self.decoder.start_utt)
            return
        self.pending += mulaw
        self.since_interim += FRAME_MS
        if change == "stop":
            await self._finalize()
        elif self.since_interim >= self.cfg.interim_ms:
            self.since_interim = 0
            text = await asyncio.to_thread(self._process_and_hyp, self._take())
            if text and text != self.last_interim:
                self.last_interim = text
                self._emit(ev.Transcript(t_ms=0, text=text, is_final=False))
        elif len(self.pending) >= DECODE_EVERY:
            # Decode as the audio comes, so a final has only the last few frames left to do.
            await asyncio.to_thread(self._process, self._take())

    def _take(self) -> bytes:
        """The mu-law waiting for the decoder, taken on the loop (a cheap copy)."""
        chunk = bytes(self.pending)
        self.pending.clear()
        return chunk

    # The three below run on the decoder's thread: decoding, up-sampling and recognition stay off the loop.
    def _process(self, mulaw: bytes) -> None:
        self.decoder.process_raw(pcm16k(mulaw, self.up.feed))

    def _process_and_hyp(self, mulaw: bytes) -> str:
        self._process(mulaw)
        hyp = self.decoder.hyp()
        return " ".join(_ALT.sub("", w) for w in hyp.hypstr.split()) if hyp is not None else ""

    def _end(self, mulaw: bytes) -> list[tuple[str, int, int]]:
        self._process(mulaw)
        self.decoder.end_utt()
        return _words(self.decoder.seg(), self.utt_start_ms)

    async def _finalize(self) -> None:
        if not self.in_utt:
            return
        self.in_utt = False
        words = await asyncio.to_thread(self._end, self._take())
        if words:
            text = " ".join(w for w, _, _ in words) + ("." if self.cfg.punctuate else "")
            self._emit(ev.Transcript(t_ms=0, text=text, is_final=True,
                                     speech_final=True, start_ms=words[0][1], end_ms=words[-1][2]))

    async def speech_stopped(self) -> None:
        """The runtime's VAD heard the caller stop: finalize now (Deepgram's Finalize)."""
        await self._finalize()

    def _emit(self, event: ev.Input) -> None:
        if self.emit is not None:
            self.emit(event)

    async def close(self) -> None:
        decoder, self.decoder = self.decoder, None
        if decoder is None:
            return
        if self.in_utt:
            self.in_utt = False
            await asyncio.to_thread(decoder.end_utt)
        self.cfg.pool.release(decoder)


async def transcribe(asr: LocalAsr, mulaw: bytes) -> list[str]:
    """Every final of ``mulaw`` fed as a live call would feed it (tests, bench/stt_wer.py)."""
    finals: list[str] = []
    session = asr.session()
    await session.start(lambda e: finals.append(e.text) if isinstance(e, ev.Transcript) and e.is_final else None)
    await session.send_audio(silence(400))  # line silence first: the VAD learns the floor
    await session.send_audio(mulaw)  # cut and padded into 20 ms frames as a call's audio is
    await session.send_audio(silence(800))  # the VAD's stop
    await session.speech_stopped()
    await session.close()
    return finals
