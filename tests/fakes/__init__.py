"""Loopback fakes of the outside services, speaking their real wire protocols (reference "How to fake each").

Rules:
- Every fake is an aiohttp server on 127.0.0.1, port 0; ``url``/``port`` are read back after ``start()``.
  Use ``async with Fake(...) as fake:`` or ``await fake.start()`` / ``await fake.stop()``.
- The real SDKs talk to them unchanged: only the base URL differs. Nothing here reaches a real host.
- Each fake is driven by data (a script of what to say, a list of faults) and records what it was sent,
  so a test states the input, then asserts on the events and on the fake's record.
"""

from __future__ import annotations

from tests.fakes.base import FakeServer, tone, wait_for
from tests.fakes.deepgram_listen import DeepgramListenFake, ListenFaults, Script, Utterance
from tests.fakes.deepgram_speak import DeepgramSpeakFake, SpeakFaults
from tests.fakes.groq import GroqFake, HttpError, Reply, ToolCall
from tests.fakes.playht import PlayHtFake, PlayHtFaults

__all__ = [
    "DeepgramListenFake", "DeepgramSpeakFake", "FakeServer", "GroqFake", "HttpError", "ListenFaults",
    "PlayHtFake", "PlayHtFaults", "Reply", "Script", "SpeakFaults", "ToolCall", "Utterance", "tone",
    "wait_for",
]
