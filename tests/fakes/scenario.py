"""One phone call through the real provider adapters, against the loopback fakes (issue 5's end-to-end).

``await run(scenario, workdir)`` starts, all on 127.0.0.1:
- the fakes: Deepgram listen in utterance mode (it hears the caller's audio and transcribes the nth utterance
  as the nth line), Deepgram speak (Aura), Groq scripted by turn (``GroqFake(by_user=...)``);
- the demo's slow shipment webhook (callstate.demo.start_webhook: slower than the tool's on_delay);
- the serve app (callstate.server) with ``build_providers(flow, env)``: the real DeepgramStt, GroqLlm and
  DeepgramTts adapters, pointed at the fakes by DEEPGRAM_BASE_URL / GROQ_BASE_URL;
then a SimCaller speaks the demo's four recorded lines over Media Streams, the third barging in over the
long answer, and the Outcome holds the call's log (read back from SQLite), the caller's view and the fakes.
The call runs in real time (~20 s); scenarios are independent, so run several with asyncio.gather.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.audio import load_fixture
from callstate.demo import LINES, start_webhook
from callstate.logs import load_call
from callstate.providers import build_providers
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller, SimResult
from engine import events as ev
from engine.flow import Flow
from logstore.sqlite import SqliteStore
from tests.fakes.base import FakeServer
from tests.fakes.deepgram_listen import DeepgramListenFake, Lines, ListenFaults
from tests.fakes.deepgram_speak import DeepgramSpeakFake, SpeakFaults
from tests.fakes.groq import GroqFake, HttpError, Reply, ToolCall

DEEPGRAM_KEY = "dg-test-key-123"
GROQ_KEY = "gsk-test-key-456"
KEYS = (DEEPGRAM_KEY, GROQ_KEY)

#: What the caller says, line by line (the fixtures are espeak-ng reading exactly these).
CALLER = [text for _, text in LINES]
TRACKING = '{"tracking_number": "451992"}'
LONG_ANSWER = ("It's running a day late. It left our Memphis hub this morning, and the new delivery estimate "
               "is Thursday before noon. I'm sorry about the delay.")
#: Groq's answers, by the caller line they answer (the tool call and the answer after its result share one).
REPLIES: dict[str, list[Reply | HttpError]] = {
    CALLER[0]: [Reply("Sure. What's the tracking number?")],
    CALLER[1]: [Reply(tool_calls=[ToolCall("lookup_shipment", TRACKING, id="call_lookup")]), Reply(LONG_ANSWER)],
    CALLER[2]: [Reply("Of course, I'll text you. Anything else?")],
    CALLER[3]: [Reply("Thanks for calling. Bye!")],
}
DELAY_MESSAGE = "Let me check that."
#: The caller barges in this long after the agent's audio began after their second line: "Let me check
#: that." plays at 800 ms into the 1300 ms lookup, so this lands ~1.5 s into the long answer.
BARGE_IN_AFTER_MS = 2200


def e2e_flow(webhook_url: str) -> Flow:
    """The demo's shipment call on the standard stack: Deepgram STT, Groq, Deepgram Aura."""
    return Flow.model_validate({
        "name": "shipment_status_e2e",
        "greeting": "Acme shipping, how can I help?",
        "system": "You are Acme's shipping assistant on the phone. Be brief.",
        "stt": {"provider": "deepgram"}, "llm": {"provider": "groq"},
        "tts": {"provider": "deepgram", "voice": "aura-2-thalia-en"},
        "tools": {"lookup_shipment": {
            "description": "Look a shipment up by its tracking number.",
            "parameters": {"type": "object", "required": ["tracking_number"],
                           "properties": {"tracking_number": {"type": "string"}}},
            "webhook": {"url": webhook_url, "timeout_ms": 3000},
            "messages": {"on_delay": [{"after_ms": 800, "text": DELAY_MESSAGE}],
                         "on_error": "Sorry, I can't reach the tracking system right now."}}},
    })


@dataclass(frozen=True)
class Scenario:
    name: str
    groq: Mapping[str, Sequence[Reply | HttpError]] = field(default_factory=lambda: REPLIES)
    listen_faults: ListenFaults = field(default_factory=ListenFaults)
    speak_faults: SpeakFaults = field(default_factory=SpeakFaults)
    final_latency_s: float = 0.15
    speech_started_latency_s: float = 0.0
    ms_per_char: int = 40  # the fake voice: 25 characters a second (Aura reads ~15; shorter calls)
    #: What the caller says: (fixture in adapters/audio, the text the fake STT gives for it).
    lines: tuple[tuple[str, str], ...] = tuple(LINES)
    barge_in_line: int | None = 2  # this line (0-based) starts over the agent, BARGE_IN_AFTER_MS in
    timeout_s: float = 60.0  # the simulated phone hangs up after this long whatever happens

    def caller_lines(self) -> list[CallerLine]:
        return [CallerLine(audio=load_fixture(name), barge_in_after_ms=BARGE_IN_AFTER_MS)
                if i == self.barge_in_line else CallerLine(audio=load_fixture(name), gap_ms=300)
                for i, (name, _) in enumerate(self.lines)]


@dataclass
class Outcome:
    scenario: Scenario
    flow: Flow  # as recorded in the log's meta
    call_id: str
    log: list[ev.Event]
    caller: SimResult
    listen: DeepgramListenFake
    speak: DeepgramSpeakFake
    groq: GroqFake
    lookups: int  # webhook requests
    status: str  # the calls table's status for it ("ended" once its log was closed)
    db_bytes: bytes  # the SQLite file and its WAL / shm, as left on disk

    def of(self, cls: type[ev.Event]) -> list[Any]:
        return [e for e in self.log if isinstance(e, cls)]

    def by_seq(self, seq: int | None) -> ev.Event:
        return next(e for e in self.log if e.seq == seq)


async def run(scenario: Scenario, workdir: Path) -> Outcome:
    texts = [text for _, text in scenario.lines]
    listen = DeepgramListenFake(Lines(texts, final_latency_s=scenario.final_latency_s,
                                      speech_started_latency_s=scenario.speech_started_latency_s),
                                api_key=DEEPGRAM_KEY, faults=scenario.listen_faults)
    speak = DeepgramSpeakFake(api_key=DEEPGRAM_KEY, ms_per_char=scenario.ms_per_char,
                              faults=scenario.speak_faults)
    groq = GroqFake(api_key=GROQ_KEY, by_user=scenario.groq)
    hook = await start_webhook()
    db = workdir / f"{scenario.name}.db"
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(hook.runner.cleanup)
        deepgram = await stack.enter_async_context(DeepgramFake(listen, speak))
        await stack.enter_async_context(groq)
        flow = e2e_flow(hook.url)
        environ = {"DEEPGRAM_API_KEY": DEEPGRAM_KEY, "GROQ_API_KEY": GROQ_KEY,
                   "DEEPGRAM_BASE_URL": deepgram.url, "GROQ_BASE_URL": groq.url}
        store = SqliteStore(str(db))
        stack.callback(store.close)
        server = Server(flow, build_providers(flow, environ), store, skip_signature=True)
        runner, port = await start(server)
        try:
            caller = await SimCaller(f"ws://127.0.0.1:{port}/media", lines=scenario.caller_lines(),
                                     timeout_s=scenario.timeout_s).run()
            for _ in range(200):  # the call task flushes and closes its log after the stream ends
                if not server.calls:
                    break
                await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()
        lookups = hook.requests
    reader = SqliteStore(str(db), readonly=True)
    try:
        (row,) = reader.list_calls()
    finally:
        reader.close()
    logged = load_call(str(db), row.call_id)
    files = sorted(workdir.glob(f"{scenario.name}.db*"))
    return Outcome(scenario=scenario, flow=logged.flow, call_id=row.call_id, log=logged.events, caller=caller,
                   listen=listen, speak=speak, groq=groq, lookups=lookups, status=row.status,
                   db_bytes=b"".join(p.read_bytes() for p in files))


class DeepgramFake(FakeServer):
    """Deepgram's listen and speak fakes behind one server: DEEPGRAM_BASE_URL serves both, as the real host
    does (``/v1/listen`` and ``/v1/speak``)."""

    def __init__(self, listen: DeepgramListenFake, speak: DeepgramSpeakFake) -> None:
        super().__init__()
        self.listen, self.speak = listen, speak

    def routes(self, app: web.Application) -> None:
        self.listen.routes(app)
        self.speak.routes(app)


# ------------------------------------------------------------------------------------------ logs


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log record of every logger, at DEBUG, formatted (with tracebacks) when the block ends."""
    root = logging.getLogger()
    handler, level = _Keep(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    lines: list[str] = []
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        lines.extend(fmt.format(r) for r in handler.records)
