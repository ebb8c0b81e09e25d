"""Streaming voice activity detection on 20 ms mu-law frames: an energy detector with an adaptive floor.

Rules:
- ``Vad.feed(frame, t_ms)`` returns ``"start"``, ``"stop"`` or ``None``; the runtime turns those into
  SpeechStarted / SpeechStopped inputs. ``t_ms`` is the start of the frame since call start.
- ``start_ms`` is the start of the first voiced frame of the turn ("start" itself is returned 60 ms of
  voicing later); ``stop_ms`` is the end of the last voiced frame, so the 300 ms hangover is not counted
  as speech. Barge-in (``speech_ms()``) and latency figures read these, not the times of the events.
- A frame is voiced when its energy is some dB over a noise floor that tracks the quietest recent
  frames. Chosen over webrtcvad by measurement (bench/vad_accuracy.py): webrtcvad judges absolute
  spectra, so at 10 dB SNR it takes phone line noise for speech (precision 0.6-0.7, 40 false starts a
  minute); this detector keeps precision ~1.0 with no false starts at 20/10/5 dB, costs ~7 us a frame
  against ~10, and adds no dependency.
- Pure Python: a frame costs one table-lookup sum (adapters.audio.ENERGY) and one log10.
- Known limit: a lasting jump in line noise reads as speech until the floor window (2 s) catches up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from adapters.audio import ENERGY, FRAME_BYTES, FRAME_MS

VadEvent = Literal["start", "stop"]

# dB of a frame's mean power relative to a full-scale square wave: 10*log10(sum / (160 * 32768**2)).
_DB_OFFSET = 10 * math.log10(FRAME_BYTES * 32768**2)


@dataclass(frozen=True, slots=True, kw_only=True)
class VadParams:
    #: Voiced run that starts speech. 60 ms (3 frames) rejects clicks and line pops but still flags a
    #: barge-in well before the 250 ms policy minimum (engine/policy.py BargeIn.min_speech_ms).
    start_ms: int = 60
    #: Unvoiced run (hangover) that stops speech. 300 ms bridges the gaps between words and at commas
    #: (100-250 ms, weak consonants included) but not a sentence end. LiveKit's Silero default is 550 ms;
    #: longer waits belong to the endpointing timer, not to every VAD stop.
    stop_ms: int = 300
    #: A frame this far above the noise floor is voiced while idle. Swept 6-9 dB in bench/vad_accuracy.py:
    #: no false starts on noise at any of them; 9 misses quiet words at 5 dB SNR, 6 gains little more.
    start_margin_db: float = 7.0
    #: Once in speech, a lower bar (hysteresis) keeps weak word endings in the turn. At 4 dB the line
    #: noise's own 3 dB wander held some turns open 200-400 ms too long in the sweep.
    stay_margin_db: float = 5.0
    #: The floor never goes below this, so on a digitally silent line (all 0xFF) a faint sound is not
    #: "infinitely far above the floor". Phone speech sits at -35..-15 dBFS, far above -60 + 7.
    min_floor_db: float = -60.0
    #: The floor follows quieter frames at once (it is a minimum tracker) ...
    floor_fall: float = 0.5
    #: ... and drifts up slowly, so speech barely lifts it: 5 dB/s while idle, 1 dB/s during speech
    #: (a 3 s turn lifts it by at most 3 dB; 2.5 dB/s cut some turn ends short in the sweep).
    floor_rise_idle_db: float = 0.1
    floor_rise_speech_db: float = 0.02
    #: Window of the minimum-statistics check (Martin 2001 uses about 1.5 s): after a lasting jump in
    #: line noise the floor catches up within this long, instead of at floor_rise_speech_db.
    floor_window_ms: int = 2000
    #: The first frames of a call only learn the floor (no start): the floor begins at the first
    #: frame's level, and a line that opens loud, or with silence then noise, is not a caller speaking.
    warmup_ms: int = 200
    #: Voiced frames less than this apart add up to one onset, timed from the first: "The" before a
    #: 100-200 ms gap in "The tracking number" is then part of the turn (with 0: +220 ms start error).
    onset_gap_ms: int = 200


class Vad:
    """One call's detector. Not thread-safe; feed frames in order, one every 20 ms of audio."""

    __slots__ = (
        "_block_frames", "_block_left", "_block_min", "_floor", "_in_speech", "_last_voiced_end",
        "_mins", "_onset_end", "_p", "_run_start", "_start_frames", "_stop_frames", "_t_first",
        "_unvoiced", "_voiced", "start_ms", "stop_ms",
    )

    def __init__(self, params: VadParams | None = None) -> None:
        self._p = p = params or VadParams()
        self._start_frames = max(1, p.start_ms // FRAME_MS)
        self._stop_frames = max(1, p.stop_ms // FRAME_MS)
        self._floor: float | None = None
        # Minimum statistics over floor_window_ms, kept as the minima of 4 blocks: O(1) a frame.
        self._block_frames = max(1, p.floor_window_ms // 4 // FRAME_MS)
        self._block_left = self._block_frames
        self._block_min = math.inf
        self._mins: deque[float] = deque(maxlen=4)
        self._t_first: int | None = None
        self._in_speech = False
        self._voiced = 0  # voiced frames in the pending onset (idle)
        self._onset_end = 0  # end of the pending onset's last voiced frame
        self._unvoiced = 0  # consecutive unvoiced frames (in speech)
        self._run_start = 0
        self._last_voiced_end = 0
        #: Start of the first voiced frame of the current (or last) speech turn.
        self.start_ms: int | None = None
        #: End of the last voiced frame of the last finished turn (None until a turn has stopped).
        self.stop_ms: int | None = None

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def noise_floor_db(self) -> float | None:
        return self._floor

    def speech_ms(self) -> int:
        """Voiced duration of the current or last turn, hangover excluded; 0 before any speech."""
        if self.start_ms is None:
            return 0
        return self._last_voiced_end - self.start_ms

    def feed(self, frame: bytes, t_ms: int) -> VadEvent | None:
        """Classify one 20 ms frame starting at ``t_ms``; return the transition it completes, if any."""
        p = self._p
        e = sum(map(ENERGY.__getitem__, frame))
        db = 10 * math.log10(e) - _DB_OFFSET if e else -120.0
        floor = self._floor
        if floor is None:  # first frame: start the floor where the line is
            floor = max(db, p.min_floor_db)
        voiced = db > floor + (p.stay_margin_db if self._in_speech else p.start_margin_db)
        # Minimum tracking: fall fast toward quieter frames, rise by a capped step otherwise.
        if db < floor:
            floor = max(floor + (db - floor) * p.floor_fall, p.min_floor_db)
        else:
            floor += min(db - floor, p.floor_rise_speech_db if self._in_speech else p.floor_rise_idle_db)
        # Minimum statistics: if nothing in the whole window was as quiet as the floor, the line got
        # louder (speech always dips between syllables within 2 s): jump the floor up to that minimum.
        self._block_min = min(self._block_min, db)
        self._block_left -= 1
        if self._block_left == 0:
            self._mins.append(self._block_min)
            self._block_min = math.inf
            self._block_left = self._block_frames
            if len(self._mins) == 4:
                floor = max(floor, min(self._mins))
        self._floor = floor
        return self._step(voiced, t_ms)

    def _step(self, voiced: bool, t_ms: int) -> VadEvent | None:
        """The onset/hangover state machine, shared by every frame classifier (the bench reuses it)."""
        if self._t_first is None:
            self._t_first = t_ms
        if self._in_speech:
            if voiced:
                self._unvoiced = 0
                self._last_voiced_end = t_ms + FRAME_MS
                return None
            self._unvoiced += 1
            if self._unvoiced < self._stop_frames:
                return None
            self._in_speech = False
            self._voiced = 0
            self.stop_ms = self._last_voiced_end
            return "stop"
        if voiced and t_ms - self._t_first < self._p.warmup_ms:
            voiced = False
        if not voiced:
            if self._voiced and t_ms + FRAME_MS - self._onset_end > self._p.onset_gap_ms:
                self._voiced = 0  # a click or a breath, not the start of a turn: forget it
            return None
        if self._voiced == 0:
            self._run_start = t_ms
        self._voiced += 1
        self._onset_end = t_ms + FRAME_MS
        if self._voiced < self._start_frames:
            return None
        self._in_speech = True
        self._unvoiced = 0
        self.start_ms = self._run_start
        self._last_voiced_end = self._onset_end
        return "start"
