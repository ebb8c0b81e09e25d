"""The ``local-tts`` provider: espeak-ng speech from the library and voice data in the espeakng-loader wheel.

Rules:
- No apt step, no subprocess: ``libespeak-ng.so`` is loaded with ctypes from the path espeakng-loader gives,
  initialised once per process in synchronous mode (``AUDIO_OUTPUT_SYNCHRONOUS``: samples come back through
  the synth callback, nothing is played), with the wheel's ``espeak-ng-data``. The C API is
  ``speak_lib.h``: espeak_Initialize, espeak_SetSynthCallback, espeak_SetVoiceByName, espeak_SetParameter,
  espeak_Synth, espeak_Synchronize.
- The library keeps global state and is not re-entrant: every synthesis holds one process-wide lock and
  runs in a worker thread, off the event loop.
- Output: 22050 Hz 16-bit -> windowed-sinc low-pass and decimation to 8 kHz (adapters/resample.py) ->
  mu-law, padded to whole 20 ms frames, yielded in 100 ms chunks like the other TTS adapters.
- Sentence by sentence: the first sentence is synthesised and sent while the rest is rendered, so the time
  to first byte is one sentence's render, not the whole text's.
- Imports engine.events only from the engine (the adapter rule).
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.audio import ulaw_encode
from adapters.resample import Resampler
from adapters.speech import CHUNK_BYTES, _pad_frames
from engine.events import Speak

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE = 1  # espeak_PARAMETER
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    pass


class _Library:
    """The process's one espeak-ng instance."""

    lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    rate = 0
    _chunks: list[bytes] = []
    _callback = None  # kept referenced: ctypes callbacks must outlive their registration

    @classmethod
    def load(cls) -> ctypes.CDLL:
        if cls._lib is not None:
            return cls._lib
        try:
            import espeakng_loader
        except ImportError as exc:
            raise EspeakError("local-tts needs the espeakng-loader package (pip install espeakng-loader)") from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak-ng failed to initialise (code {rate})")

        def collect(wav: ctypes._Pointer, n: int, _events: int) -> int:
            if n > 0:
                cls._chunks.append(ctypes.string_at(wav, n * 2))
            return 0  # 0: go on

        cls._callback = _CALLBACK(collect)
        lib.espeak_SetSynthCallback(cls._callback)
        cls._lib, cls.rate = lib, rate
        return lib

    @classmethod
    def synth(cls, text: str, voice: str, wpm: int) -> tuple[int, bytes]:
        """(sample rate, 16-bit native-endian PCM) of ``text``."""
        with cls.lock:
            lib = cls.load()
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EspeakError(f"espeak-ng has no voice {voice!r}")
            lib.espeak_SetParameter(_RATE, wpm, 0)
            data = text.encode("utf-8")
            cls._chunks = []
            err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if err != 0:
                raise EspeakError(f"espeak-ng synthesis failed (code {err})")
            return cls.rate, b"".join(cls._chunks)


def _to_ulaw(rate: int, pcm: bytes) -> bytes:
    from array import array

    x = array("h")
    x.frombytes(pcm)
    return _pad_frames(ulaw_encode(round(v) for v in _downsampler(rate)(x)))


_DOWN: dict[int, Resampler] = {}


def _downsampler(rate: int) -> Resampler:
    if rate not in _DOWN:
        _DOWN[rate] = Resampler(rate, 8000)
    return _DOWN[rate]


@dataclass(frozen=True, slots=True)
class EspeakTts:
    """The ``Tts`` port (engine/ports.py) over espeak-ng."""

    voice: str = "en-us"
    words_per_minute: int = 170
    #: Rendered on this machine, no peer that can go silent: the runtime's TTS silence timeout does not apply
    #: (a loaded machine renders slowly, it does not hang).
    silence_timeout_s: float | None = None

    def render(self, text: str) -> bytes:
        """All of ``text`` as frame-padded mu-law 8 kHz (blocking: tests, tools)."""
        if not text.strip():
            return b""
        return _to_ulaw(*_Library.synth(text, self.voice, self.words_per_minute))

    async def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        for sentence in _SENTENCE.split(effect.text.strip()):
            audio = await asyncio.to_thread(self.render, sentence)
            for i in range(0, len(audio), CHUNK_BYTES):
                yield audio[i : i + CHUNK_BYTES]
                await asyncio.sleep(0)  # a cancelled turn stops here, between chunks
