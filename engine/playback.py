"""What the agent has queued for the caller, and what the caller has heard of it.

Rules:
- A Speak is synthesized in chunks (TtsAudio); each chunk goes out followed by a mark, and Twilio echoes
  the mark once the chunk has played. So heard audio = echoed chunks, plus the part of the playing chunk
  that elapsed before a barge-in.
- Text is cut in proportion to heard audio, at a word boundary (never half a word). While synthesis is
  still running the total length is unknown; it is estimated from the text at a speaking rate.
- After a clear, every pending mark is forgotten: Twilio echoes them anyway, and they must not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Speaking rate used to estimate a Speak's length before its synthesis ends: ~15 characters per second
#: (about 170 words per minute, typical of TTS voices at speed 1.0).
MS_PER_CHAR = 65


@dataclass(slots=True)
class SpeakState:
    seq: int
    text: str
    purpose: str
    sent_ms: int = 0  # audio sent so far
    heard_ms: int = 0  # audio whose mark came back
    tts_done: bool = False
    marks: dict[str, int] = field(default_factory=dict)  # pending mark name -> chunk duration
    last_heard_t: int | None = None  # when the last mark echoed (or the first audio went out)

    @property
    def finished(self) -> bool:
        return self.tts_done and not self.marks

    def heard_text(self, now: int) -> str:
        if self.finished:
            return self.text
        heard = self.heard_ms
        if self.marks and self.last_heard_t is not None:
            playing = next(iter(self.marks.values()))
            heard += max(0, min(now - self.last_heard_t, playing))
        total = self.sent_ms if self.tts_done else max(self.sent_ms, len(self.text) * MS_PER_CHAR)
        if heard <= 0 or total <= 0:
            return ""
        if heard >= total:
            return self.text
        cut = int(len(self.text) * heard / total)
        head = self.text[:cut]
        if cut < len(self.text) and not self.text[cut].isspace():
            head = head.rsplit(" ", 1)[0] if " " in head else ""
        return head.strip()


class Playback:
    def __init__(self) -> None:
        self.speaks: dict[int, SpeakState] = {}  # insertion order = playback order
        self.held: list[tuple[str, str]] = []  # (text, purpose) waiting for the caller to stop talking
        self._mark_owner: dict[str, int] = {}  # pending mark name -> its Speak's seq
        #: Every mark name sent -> its SendMark's seq (a late echo after a clear still cites its SendMark).
        self.sent_marks: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return bool(self.speaks or self.held)

    def add(self, seq: int, text: str, purpose: str) -> None:
        self.speaks[seq] = SpeakState(seq=seq, text=text, purpose=purpose)

    def head_unsynthesized(self) -> int | None:
        """The Speak whose audio may go out now: the first one whose synthesis has not ended."""
        return next((s.seq for s in self.speaks.values() if not s.tts_done), None)

    def audio(self, speak_seq: int, duration_ms: int, mark_seq: int, mark: str, now: int) -> None:
        s = self.speaks[speak_seq]
        if s.sent_ms == 0 and s.last_heard_t is None:
            prev_pending = any(o.marks for o in self.speaks.values() if o.seq != speak_seq)
            s.last_heard_t = None if prev_pending else now
        s.sent_ms += duration_ms
        s.marks[mark] = duration_ms
        self._mark_owner[mark] = speak_seq
        self.sent_marks[mark] = mark_seq

    def awaiting(self, name: str) -> bool:
        """Is this mark's echo still awaited (not cleared, not echoed)?"""
        return name in self._mark_owner

    def mark(self, name: str, now: int) -> SpeakState | None:
        """Record an echoed mark; returns its Speak, or None for a mark that is stale or unknown."""
        seq = self._mark_owner.pop(name, None)
        if seq is None or seq not in self.speaks:
            return None
        s = self.speaks[seq]
        s.heard_ms += s.marks.pop(name)
        s.last_heard_t = now
        # the next Speak starts playing when this one's last chunk has played
        if not s.marks and s.tts_done:
            nxt = next((o for o in self.speaks.values() if o.seq > seq and o.sent_ms), None)
            if nxt is not None and nxt.last_heard_t is None:
                nxt.last_heard_t = now
        return s

    def tts_done(self, speak_seq: int) -> SpeakState | None:
        s = self.speaks.get(speak_seq)
        if s is not None:
            s.tts_done = True
        return s

    def pop_finished(self) -> list[SpeakState]:
        done = []
        for seq in list(self.speaks):
            if not self.speaks[seq].finished:
                break  # played in order: a later Speak can't be done before an earlier one
            done.append(self.speaks.pop(seq))
        return done

    def clear(self, now: int) -> tuple[list[tuple[SpeakState, str]], list[int]]:
        """Drop everything: returns (each Speak with its heard text, the Speaks still synthesizing)."""
        heard = [(s, s.heard_text(now)) for s in self.speaks.values()]
        heard += [(SpeakState(seq=0, text=text, purpose=purpose), "") for text, purpose in self.held]
        synthesizing = [s.seq for s in self.speaks.values() if not s.tts_done]
        self.speaks.clear()
        self.held.clear()
        self._mark_owner.clear()
        return heard, synthesizing
