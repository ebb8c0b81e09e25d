"""Turn-taking rules and their parameters.

Rules:
- Every number the machine uses lives in one of these dataclasses, with its default and where it came from.
  ``engine/flow.py`` exposes them under ``turn_taking`` with the same names and the same defaults.
- Every function here is pure: text and numbers in, a decision out. The machine calls them as guards.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRule:
    """A flow's own wait: when the caller's text so far matches ``pattern`` (re.search, case-insensitive)."""

    #: A regular expression (case-insensitive) searched in the caller's words so far.
    pattern: str
    #: How long to wait before taking the turn when the pattern matches.
    wait_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpointing:
    #: After a final transcript that ends a sentence. LiveKit's min_endpointing_delay is 500 ms; with the STT's
    #: own endpointing already spent (Deepgram endpointing=300 typical), 200 ms more keeps v2v under 500 ms.
    on_punctuation_ms: int = 200
    #: When the caller trails off ("and", "um", no final punctuation): people pause mid-thought.
    #: Pipecat's smart-turn fallback and LiveKit's max_endpointing_delay sit in the 1-3 s range.
    on_no_punctuation_ms: int = 1200
    #: After digits: people read numbers in chunks ("4 5 1 ... 9 9 2").
    on_number_ms: int = 600
    #: Words that, at the end of a final transcript, mean the caller has not finished.
    trailing_words: tuple[str, ...] = ("and", "so", "but", "or", "because", "um", "uh", "like", "then", "the")
    #: Flow-specific waits, checked in order before the rules above.
    rules: tuple[EndpointRule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BargeIn:
    #: Continuous caller speech that confirms a barge-in. LiveKit's min_interruption_duration is 500 ms;
    #: 250 ms reacts faster and still lets a cough (typically < 200 ms) pass.
    min_speech_ms: int = 250
    #: Words (not acknowledgements) that confirm a barge-in. LiveKit's min_interruption_words default.
    min_words: int = 1
    #: Phrases that never interrupt: the caller is only listening.
    acknowledgements: tuple[str, ...] = ("okay", "ok", "yeah", "yes", "uh-huh", "uh huh", "mm-hmm", "mhm",
                                         "mm hmm", "right", "sure", "got it", "i see", "hmm", "mm")
    #: Phrases that always interrupt, however short.
    interruptions: tuple[str, ...] = ("stop", "wait", "hold on", "no", "hang on", "sorry")
    #: A confirmed barge-in with no words in this long resumes the unheard rest (LiveKit: 2 s).
    false_interruption_ms: int = 2000
    #: After a false interruption, say the cut sentence again.
    resume_false_interruption: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Filler:
    #: Silence after the turn was confirmed before one filler phrase. 700 ms: the point where callers start
    #: to talk over the agent (see DEVELOPERS.md).
    after_ms: int = 700
    #: Say a filler phrase when the answer is slow.
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Idle:
    #: Silence in listening before a reprompt (Vapi's silence timeout default is 10-30 s; phones want less).
    reprompt_ms: int = 8000
    #: Reprompts before goodbye and hang-up.
    max_reprompts: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Streaming:
    #: Speak at the first clause boundary of the LLM stream, not at the end of the reply.
    first_clause: bool = True
    #: A comma ends the first clause only after this many words ("Sure," is too short to send alone).
    min_clause_words: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnTaking:
    #: How long to wait after the caller's words before the agent answers.
    endpointing: Endpointing = field(default_factory=Endpointing)
    #: When caller speech over the agent interrupts it.
    barge_in: BargeIn = field(default_factory=BargeIn)
    #: The one filler phrase per turn when the answer is slow.
    filler: Filler = field(default_factory=Filler)
    #: Reprompts when the caller says nothing, then goodbye.
    idle: Idle = field(default_factory=Idle)
    #: Speaking the reply clause by clause as the LLM streams it.
    streaming: Streaming = field(default_factory=Streaming)
    #: Start the LLM on a final transcript during the endpointing wait; keep its output until the turn is
    #: confirmed, cancel it if the caller goes on. Saves the endpointing wait off the LLM's first token.
    preemptive_generation: bool = True
    #: Hard limit on a call (10 minutes), then a goodbye.
    max_call_ms: int = 600_000


#: After a runtime fault, how long the fallback line may take before the call is hung up without it (the
#: bound the runtime used to put on its own, unlogged fallback path).
FAULT_LINE_MS = 10_000


# ------------------------------------------------------------------------------------------- text rules

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_SENTENCE_END = re.compile(r"[.!?]['\")\]]*\s*$")
_DIGIT_END = re.compile(r"\d[\d\s,.-]*$")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def endpoint_wait_ms(text: str, p: Endpointing) -> int:
    """How long to wait after the caller's text so far before taking the turn."""
    stripped = text.strip()
    for rule in p.rules:
        if re.search(rule.pattern, stripped, re.IGNORECASE):
            return rule.wait_ms
    ws = words(stripped)
    if ws and ws[-1] in p.trailing_words:
        return p.on_no_punctuation_ms
    if _DIGIT_END.search(stripped.rstrip(".!?")) and ws and ws[-1][-1:].isdigit():
        return p.on_number_ms
    if _SENTENCE_END.search(stripped):
        return p.on_punctuation_ms
    return p.on_no_punctuation_ms


@functools.lru_cache(maxsize=64)
def _phrase_words(phrases: tuple[str, ...]) -> tuple[list[str], ...]:
    """Each phrase as words, computed once per phrase list (called for every transcript over the agent)."""
    return tuple(words(ph) for ph in phrases)


def is_acknowledgement(text: str, p: BargeIn) -> bool:
    """True when the text is made only of acknowledgement phrases ("yeah okay", "uh-huh")."""
    ws = words(text)
    if not ws:
        return False
    phrases = sorted(_phrase_words(p.acknowledgements), key=len, reverse=True)
    i = 0
    while i < len(ws):
        for ph in phrases:
            if ph and ws[i:i + len(ph)] == ph:
                i += len(ph)
                break
        else:
            return False
    return True


def has_interruption(text: str, p: BargeIn) -> bool:
    ws = words(text)
    return any(ph and any(ws[i:i + len(ph)] == ph for i in range(len(ws))) for ph in _phrase_words(p.interruptions))


def barge_in_confirmed(*, speech_ms: int, text: str, p: BargeIn) -> bool:
    """Is the caller really taking the floor?

    Words decide when there are any: an interruption phrase always confirms, acknowledgements never do,
    other words confirm at ``min_words``. With no words yet, ``min_speech_ms`` of continuous speech
    confirms (the STT lags the VAD by 150-300 ms; waiting for it would make barge-in feel late).
    """
    if has_interruption(text, p):
        return True
    if text.strip() and is_acknowledgement(text, p):
        return False
    if text.strip():
        return len(words(text)) >= p.min_words
    return speech_ms >= p.min_speech_ms


_CLAUSE_END = re.compile(r"[.!?](?=\s|$)|[,;:\u2014](?=\s)")
_SENTENCE_BOUNDARY = re.compile(r"[.!?](?=\s)")


def split_clause(buffer: str, *, first: bool, p: Streaming) -> tuple[str, str] | None:
    """The next speakable piece of an LLM stream, or None to wait for more tokens.

    The first piece of a reply ends at the first clause boundary (a comma counts after
    ``min_clause_words`` words), so the caller hears something early; later pieces end at sentence
    boundaries, which TTS voices prosody better. A boundary needs the following whitespace to be sure a
    token like "3." is not the start of "3.5".
    """
    if not p.first_clause:
        return None  # streaming off: the reply is spoken whole, at LlmDone
    pattern = _CLAUSE_END if first else _SENTENCE_BOUNDARY
    for m in pattern.finditer(buffer):
        clause = buffer[: m.end()]
        if m.group() in ",;:\u2014" and len(words(clause)) < p.min_clause_words:
            continue
        if not clause.strip():
            continue
        return clause.strip(), buffer[m.end():].lstrip()
    return None
