"""Issue 11: `engine serve` and the CLI attacked as an adversary would, over loopback. Each test is one attack
that succeeded before the fix (numbered as in the issue); each is bounded in time and awaits conditions
instead of sleeping where it can."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from adapters.audio import load_fixture
from callstate.providers import build_providers
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller
from engine.flowload import load_flow
from logstore.sqlite import SqliteStore
from replay.reproduce import reproduce
from tests.fakes.base import Routes

ROOT = Path(__file__).resolve().parent.parent
LOCAL_FLOW = ROOT / "tests/data/local_call.yaml"


def line(name: str, **kw: object) -> CallerLine:
    return CallerLine(audio=load_fixture(name), **{"gap_ms": 300, **kw})  # type: ignore[arg-type]


def engine(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callstate.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


class Serve:
    """`engine serve` in a subprocess; its stderr goes to a file (a pipe nobody reads would fill and block)."""

    def __init__(self, db: Path, *extra: str, flow: Path = LOCAL_FLOW, env: dict[str, str] | None = None,
                 skip_signature: bool = True) -> None:
        self.log = db.with_suffix(f".{time.monotonic_ns()}.log")
        args = ["serve", "--flow", str(flow), "--port", "0", "--db", str(db), *extra]
        if skip_signature:
            args.append("--insecure-skip-signature")
        with self.log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "callstate.cli", *args], stderr=err,
                                         stdout=err, text=True, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.port = int(self.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"no {pattern!r} in engine serve's output:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def active_calls(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return int((await r.json())["active_calls"])


# ------------------------------------------------------------------------------------ 1. two servers, one log

def test_attack_01_a_second_server_on_a_live_log_refuses_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = Serve(db)
    refusals: list[subprocess.CompletedProcess[str]] = []

    async def scenario() -> None:
        caller = SimCaller(f"ws://127.0.0.1:{first.port}/media", lines=[line("shipment_1")])
        task = asyncio.create_task(caller.run())

        async def live() -> bool:
            return await active_calls(first.port) == 1
        await until(live)
        # the same port (taken) and a free one: both must refuse before touching the log
        for port in (str(first.port), "0"):
            refusals.append(await asyncio.to_thread(
                engine, "serve", "--flow", str(LOCAL_FLOW), "--db", str(db), "--port", port,
                "--insecure-skip-signature", timeout=20))
        await asyncio.wait_for(task, 60)

    try:
        asyncio.run(scenario())
    finally:
        assert first.stop() == 0
    for r in refusals:
        assert r.returncode == 1
        (err,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert f"is in use by pid {first.proc.pid}: engine serve on http://127.0.0.1:{first.port}" in err
        assert "Traceback" not in r.stderr and "abandoned" not in r.stderr
    checked = engine("check", "--db", str(db))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    calls = engine("calls", "--db", str(db)).stdout
    assert "caller_hung_up" in calls and "abandoned" not in calls


# ------------------------------------------------------------------------- 6. the event loop waits on SQLite

def test_attack_06_a_locked_log_never_blocks_the_loop_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    flow = load_flow(LOCAL_FLOW)

    async def scenario() -> tuple[float, list[int | None]]:
        store = SqliteStore(db)
        server = Server(flow, build_providers(flow, {}), store, skip_signature=True)
        runner, port = await start(server)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for the whole call
        lag = 0.0
        stop = asyncio.Event()

        async def monitor() -> None:
            nonlocal lag
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.01)
                lag = max(lag, loop.time() - t - 0.01)

        mon = asyncio.create_task(monitor())
        try:
            result = await SimCaller(f"ws://127.0.0.1:{port}/media",
                                     lines=[line("shipment_1")]).run()

            async def ended() -> bool:
                return not server.calls
            await until(ended)
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
                health = await r.json()
            assert health["log"]["queued_events"] > 0  # the log is waiting, visibly
        finally:
            stop.set()
            await mon
            other.execute("COMMIT")
            other.close()
            await runner.cleanup()
            store.close()
        return lag, [x.voice_to_voice_ms for x in result.lines]

    lag, v2v = asyncio.run(scenario())
    assert lag < 1.0, f"the loop stalled {lag:.1f} s on the log"
    assert all(x is not None for x in v2v)  # every line was answered while the log waited
    reader = SqliteStore(db, readonly=True)
    (row,) = reader.list_calls()
    log = reader.load(row.call_id)
    reader.close()
    assert row.status == "ended" and reproduce(flow, log).ok


# ------------------------------------------------------------------- helpers for the in-process attacks

START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "0" * 32, "start": {
    "accountSid": "AC" + "0" * 32, "callSid": "CA" + "0" * 32, "streamSid": "MZ" + "0" * 32, "tracks": ["inbound"],
    "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def start_frame(call_sid: str) -> str:
    return json.dumps({**START, "start": {**START["start"], "callSid": call_sid}})


async def in_process(tmp_path: Path, body: Callable[[Server, int], Awaitable[None]], **server_kw: Any) -> SqliteStore:
    """The serve app on loopback in this process (local providers); returns the closed store's path owner."""
    flow = load_flow(LOCAL_FLOW)
    store = SqliteStore(tmp_path / "c.db")
    server = Server(flow, build_providers(flow, {}), store, skip_signature=server_kw.pop("skip_signature", True),
                    **server_kw)
    runner, port = await start(server)
    try:
        await body(server, port)
    finally:
        await runner.cleanup()
        store.close()
    return store


async def metrics(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def rows(db: Path) -> list[Any]:
    reader = SqliteStore(db, readonly=True)
    try:
        return reader.list_calls()
    finally:
        reader.close()


# ------------------------------------------------------------------- 2. hang on shutdown

def test_attack_02_sigterm_with_a_stream_that_never_started_exits_at_once(tmp_path: Path) -> None:
    server = Serve(tmp_path / "c.db")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{server.port}/media") as ws:
            server.proc.send_signal(signal.SIGTERM)  # upgraded, no start sent
            await asyncio.to_thread(server.proc.wait, 15)
            assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    try:
        asyncio.run(scenario())
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert server.proc.returncode == 0
    assert "no start frame" not in server.output()  # closed by the shutdown, not by the start deadline


# ------------------------------------------------------------------- 3. secrets in the log

SECRETS = {"HOOK_TOKEN": "tok-planted-7f3a9c", "HOOK_SECRET": "hmac-planted-51d2e8", "HOOK_KEY": "key-planted-c09b44",
           "TWILIO_AUTH_TOKEN": "twilio-planted-8e1f0d", "DEEPGRAM_API_KEY": "dg-planted-3b7a21",
           "GROQ_API_KEY": "gsk-planted-94c6e0"}

SECRET_FLOW = """\
name: secrets
greeting: Acme shipping, how can I help?
stt: {provider: deepgram}
llm: {provider: groq}
tts: {provider: deepgram}
tools:
  lookup_shipment:
    description: Look a shipment up by its tracking number.
    parameters: {type: object, required: [tracking_number], properties: {tracking_number: {type: string}}}
    webhook:
      url: "${HOOK_URL}?key=${HOOK_KEY}"
      headers: {Authorization: "Bearer ${HOOK_TOKEN}", X-Api-Key: "${HOOK_KEY}"}
      secret: "${HOOK_SECRET}"
      timeout_ms: 3000
"""


def test_attack_03_planted_secrets_reach_no_log_export_timeline_or_output(tmp_path: Path) -> None:
    from twilio.request_validator import RequestValidator

    from tests.fakes.deepgram_listen import DeepgramListenFake, Lines
    from tests.fakes.deepgram_speak import DeepgramSpeakFake
    from tests.fakes.groq import GroqFake, Reply, ToolCall
    from tests.fakes.scenario import CALLER, DeepgramFake

    flow_path = tmp_path / "secrets.yaml"
    flow_path.write_text(SECRET_FLOW)
    db = tmp_path / "c.db"
    seen: dict[str, str] = {}

    async def hook(request: web.Request) -> web.Response:
        seen.update(request.headers)
        seen["query"] = request.query_string
        return web.json_response({"status": "delayed", "eta": "Thursday"})

    async def scenario() -> str:
        listen = DeepgramListenFake(Lines(CALLER[:1]), api_key=SECRETS["DEEPGRAM_API_KEY"])
        speak = DeepgramSpeakFake(api_key=SECRETS["DEEPGRAM_API_KEY"])
        lookup = ToolCall("lookup_shipment", '{"tracking_number": "451992"}', id="call_lookup")
        groq = GroqFake(api_key=SECRETS["GROQ_API_KEY"],
                        by_user={CALLER[0]: [Reply(tool_calls=[lookup]), Reply("It is a day late.")]})
        async with DeepgramFake(listen, speak) as deepgram, groq, Routes(("POST", "/shipments", hook)) as api:
            hook_url = f"{api.url}/shipments"
            env = {**SECRETS, "HOOK_URL": hook_url, "DEEPGRAM_BASE_URL": deepgram.url, "GROQ_BASE_URL": groq.url}
            served = await asyncio.to_thread(Serve, db, "--public-url", "https://agent.example",
                                             flow=flow_path, env=env, skip_signature=False)
            try:
                url = "wss://agent.example/media"
                signature = RequestValidator(SECRETS["TWILIO_AUTH_TOKEN"]).compute_signature(url, {})
                await SimCaller(f"ws://127.0.0.1:{served.port}/media", signature=signature,
                                lines=[line("shipment_1")]).run()

                async def ended() -> bool:
                    return await active_calls(served.port) == 0
                await until(ended)
            finally:
                assert await asyncio.to_thread(served.stop) == 0
        return served.output()

    output = asyncio.run(scenario())
    assert seen["Authorization"] == f"Bearer {SECRETS['HOOK_TOKEN']}"  # the webhook path ran, with the secrets
    assert SECRETS["HOOK_KEY"] in seen["query"] and "X-Callstate-Signature" in seen
    (row,) = rows(db)
    assert row.meta["flow"]["tools"]["lookup_shipment"]["webhook"]["headers"]["Authorization"] == \
        "Bearer ${HOOK_TOKEN}"  # masked as written
    export, page = tmp_path / "call.jsonl", tmp_path / "call.html"
    out = [engine("export", row.call_id, str(export), "--db", str(db)),
           engine("replay", row.call_id, "--db", str(db), "--html", str(page), "--timeline"),
           engine("calls", "--db", str(db)), engine("check", "--db", str(db))]
    assert all(r.returncode == 0 for r in out), [r.stderr for r in out]
    texts = {"server output": output.encode(), "export": export.read_bytes(), "html": page.read_bytes(),
             "cli output": "".join(r.stdout + r.stderr for r in out).encode(),
             **{p.name: p.read_bytes() for p in tmp_path.glob("c.db*")}}
    for name, value in SECRETS.items():
        for where, data in texts.items():
            assert value.encode() not in data, f"{name} found in {where}"


# ------------------------------------------------------------------- 4. secrets forwarded on redirect

def test_attack_04_a_webhook_redirect_to_another_host_gets_no_credentials(tmp_path: Path) -> None:
    from adapters.tools import ToolRunner
    from engine.events import CallTool
    from engine.flow import Webhook

    elsewhere: list[dict[str, str]] = []

    async def scenario() -> Any:
        async def other(request: web.Request) -> web.Response:
            elsewhere.append(dict(request.headers))
            return web.json_response({"stolen": True})

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(target)

        async with Routes(("*", "/steal", other)) as b, Routes(("POST", "/tool", moved)) as a:
            target = f"{b.url}/steal"  # another origin: another port
            hook = Webhook(url=f"{a.url}/tool", headers={"X-Api-Key": "k-123456"}, secret="s-123456")
            runner = ToolRunner({"lookup": SimpleNamespace(webhook=hook)})
            try:
                return await runner.call(CallTool(t_ms=0, seq=5, name="lookup", arguments="{}"))
            finally:
                await runner.close()

    result = asyncio.run(scenario())
    assert elsewhere == []
    assert not result.ok and result.error == "redirect"
    assert "do not follow redirects" in result.body


# ------------------------------------------------------------------- 5. idle peers and the connection cap

def test_attack_05_idle_peers_are_cut_counted_and_the_cap_holds(tmp_path: Path, caplog: Any) -> None:
    from adapters.twilio import StreamLimits
    from callstate.server import Limits

    limits = Limits(max_connections=11, header_s=0.5, stream=StreamLimits(start_s=0.5))

    async def body(server: Server, port: int) -> None:
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        half = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, w in half:
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
            over = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]  # past the cap
            for r, _ in over:  # refused at once
                assert await asyncio.wait_for(r.read(), 5) == b""
            assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        for r, _ in silent + half:  # cut at the header deadline
            assert await asyncio.wait_for(r.read(), 5) == b""
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as h:
            assert h.status == 200  # real traffic still gets in
        text = await metrics(port)
        assert 'callstate_peer_timeouts_total{what="header"} 10' in text
        assert 'callstate_peer_timeouts_total{what="ws_start"} 1' in text
        assert re.search(r'callstate_refused_total\{reason="connection_cap"\} 8$', text, re.M)
        for _, w in silent + half + over:
            w.close()

    with caplog.at_level("WARNING"):
        asyncio.run(in_process(tmp_path, body, limits=limits))
    assert caplog.text.count("connection limit reached") == 1  # rate-limited: one line for the burst


def test_attack_05b_a_provider_socket_that_goes_silent_is_cut_and_counted(tmp_path: Path, monkeypatch: Any) -> None:
    from engine import runtime
    from engine.flow import Flow

    monkeypatch.setattr(runtime, "TTS_SILENCE_S", 0.3, raising=False)  # 5 s in production

    async def silent_speak(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)  # accepts the Speak and Flush, and never answers
        async for _ in ws:
            pass
        return ws

    async def scenario() -> tuple[str, list[Any]]:
        async with Routes(("GET", "/v1/speak", silent_speak)) as tts:
            flow = Flow.model_validate({"name": "silent_tts", "greeting": "Hello.", "stt": {"provider": "local"},
                                        "llm": {"provider": "local"}, "tts": {"provider": "deepgram"}})
            env = {"DEEPGRAM_API_KEY": "dg-key-123456", "DEEPGRAM_BASE_URL": tts.url}
            store = SqliteStore(tmp_path / "c.db")
            server = Server(flow, build_providers(flow, env), store, skip_signature=True)
            runner, port = await start(server)
            try:
                async with aiohttp.ClientSession() as http, \
                        http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
                    await ws.send_str(start_frame("CA" + "3" * 32))

                    async def cut() -> bool:
                        return 'callstate_peer_timeouts_total{what="tts"} 1' in await metrics(port)
                    await until(cut, 10)
                    await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ" + "0" * 32}))

                    async def ended() -> bool:
                        return not server.calls
                    await until(ended)
                text = await metrics(port)
            finally:
                await runner.cleanup()
                store.close()
        reader = SqliteStore(tmp_path / "c.db", readonly=True)
        log = reader.load(reader.list_calls()[0].call_id)
        reader.close()
        return text, log

    text, log = asyncio.run(scenario())
    from engine import events as ev
    assert 'callstate_peer_timeouts_total{what="tts"} 1' in text
    assert any(isinstance(e, ev.ProviderNotice) and e.provider == "tts" and e.what == "timeout" for e in log)
    assert any(isinstance(e, ev.TtsError) for e in log)  # the call went on without that line


# ------------------------------------------------------------------- 7. no bound on what one call writes

def test_attack_07_a_flood_of_huge_marks_does_not_grow_the_log(tmp_path: Path) -> None:
    mark = json.dumps({"event": "mark", "streamSid": "MZ" + "0" * 32, "mark": {"name": "m" * 60_000}})

    async def body(server: Server, port: int) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
            await ws.send_str(start_frame("CA" + "1" * 32))
            for _ in range(1500):
                await ws.send_str(mark)
            await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ" + "0" * 32}))

            async def ended() -> bool:
                return not server.calls
            await until(ended)
        assert re.search(r'callstate_call_limits_total\{limit="mark_name"\} 1500', await metrics(port))

    asyncio.run(in_process(tmp_path, body))
    size = sum(p.stat().st_size for p in tmp_path.glob("c.db*"))
    assert size < 2_000_000, f"{size} bytes of log for one short call"


def test_attack_07b_a_call_past_its_event_limit_is_ended_and_counted(tmp_path: Path) -> None:
    from callstate.server import Limits
    from engine.liveparts import CallLimits

    dtmf = json.dumps({"event": "dtmf", "streamSid": "MZ" + "0" * 32, "dtmf": {"digit": "1"}})

    async def body(server: Server, port: int) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
            await ws.send_str(start_frame("CA" + "2" * 32))
            for _ in range(2000):
                await ws.send_str(dtmf)

            async def ended() -> bool:
                return not server.calls
            await until(ended)
        assert 'callstate_call_limits_total{limit="events"} 1' in await metrics(port)

    asyncio.run(in_process(tmp_path, body, limits=Limits(call=CallLimits(events=300))))
    (row,) = rows(tmp_path / "c.db")
    reader = SqliteStore(tmp_path / "c.db", readonly=True)
    log = reader.load(row.call_id)
    reader.close()
    assert row.outcome == "limit" and len(log) < 400
    assert reproduce(load_flow(LOCAL_FLOW), log).ok


# ------------------------------------------------------------------- 8. CallSid reuse

def test_attack_08_a_reused_callsid_is_a_new_linked_entry_logged_or_live(tmp_path: Path) -> None:
    sid_logged, sid_live = "CA" + "a" * 32, "CA" + "b" * 32

    async def short_call(port: int, call_sid: str, server: Server,
                         hold: bool = False) -> aiohttp.ClientWebSocketResponse:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/media")
        n = len(server.calls)
        await ws.send_str(start_frame(call_sid))

        async def opened() -> bool:
            return len(server.calls) > n
        await until(opened)
        if not hold:
            await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ" + "0" * 32}))
            await ws.receive(timeout=10)
            await ws.close()
            await http.close()
        else:
            ws._test_session = http  # type: ignore[attr-defined]
        return ws

    async def body(server: Server, port: int) -> None:
        await short_call(port, sid_logged, server)

        async def idle() -> bool:
            return not server.calls
        await until(idle)
        await short_call(port, sid_logged, server)  # the CallSid is in the log already
        first = await short_call(port, sid_live, server, hold=True)
        await short_call(port, sid_live, server)  # the CallSid is live
        await first.close()
        await first._test_session.close()  # type: ignore[attr-defined]
        await until(idle)

    asyncio.run(in_process(tmp_path, body))
    got = {r.call_id: (r.meta.get("call_sid"), r.meta.get("previous_call_id"), r.status)
           for r in rows(tmp_path / "c.db")}
    assert got == {sid_logged: (sid_logged, None, "ended"), f"{sid_logged}-2": (sid_logged, sid_logged, "ended"),
                   sid_live: (sid_live, None, "ended"), f"{sid_live}-2": (sid_live, sid_live, "ended")}


# ------------------------------------------------------------------- 9. forged X-Forwarded-* headers

def test_attack_09_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    from twilio.request_validator import RequestValidator

    token = "tok-" + "9" * 28
    form = {"CallSid": "CA" + "9" * 32, "From": "+15550100", "To": "+15550199"}
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
              "X-Twilio-Signature": RequestValidator(token).compute_signature("https://evil.example/twiml", form)}

    async def post(port: int) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, \
                http.post(f"http://127.0.0.1:{port}/twiml", data=form, headers=forged) as r:
            return r.status, await r.text()

    async def untrusted(server: Server, port: int) -> None:
        status, text = await post(port)
        assert status == 403 and "evil.example" not in text

    asyncio.run(in_process(tmp_path, untrusted, auth_token=token, skip_signature=False))

    async def trusted(server: Server, port: int) -> None:  # behind a proxy the operator named, as ngrok is
        status, text = await post(port)
        assert status == 200 and "wss://evil.example/media" in text

    asyncio.run(in_process(tmp_path, trusted, auth_token=token, skip_signature=False,
                           trusted_proxies=frozenset({"127.0.0.1"})))


# ------------------------------------------------------------------- 10. log injection

def test_attack_10_a_callsid_cannot_forge_log_lines_or_repaint_a_terminal(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    served = Serve(db)
    forged = "CA1\n2026-12-02 12:00:00,000 INFO callstate.server: call FORGED ended (hangup)\x1b[2J\x1b[31m"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            for sid in (forged, "CA" + "x" * 60_000):
                async with http.ws_connect(f"ws://127.0.0.1:{served.port}/media", max_msg_size=0) as ws:
                    await ws.send_str(start_frame(sid))
        await asyncio.to_thread(served.wait_for, r"GET /media(?:.|\n)*GET /media")  # both handled

    try:
        asyncio.run(scenario())
    finally:
        assert served.stop() == 0
    out = served.output()
    assert "\x1b" not in out and not re.search(r"^2026-12-02 12:00:00", out, re.M)
    assert max(len(x) for x in out.splitlines()) <= 2100
    # a log written by anyone (an older version, a hand) is shown escaped too
    store = SqliteStore(db)
    store.open_call(forged, started_at="2026-12-02T12:00:00+00:00", flow="x\x1b[2J")
    store.close()
    listing = engine("calls", "--db", str(db)).stdout
    assert "\x1b" not in listing and "\\x1b" in listing and "\\n" in listing
    assert not re.search(r"^2026-12-02 12:00:00", listing, re.M)


# ------------------------------------------------------------------- 11. wrong outcome

def test_attack_11_a_call_ended_by_shutdown_is_listed_as_shutdown(tmp_path: Path) -> None:
    async def body(server: Server, port: int) -> None:
        server.grace_s = 0
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
            await ws.send_str(start_frame("CA" + "5" * 32))

            async def live() -> bool:
                return bool(server.calls)
            await until(live)
            await server.shutdown()

    asyncio.run(in_process(tmp_path, body))
    (row,) = rows(tmp_path / "c.db")
    assert (row.status, row.outcome) == ("ended", "shutdown")


# ------------------------------------------------------------------- 12. tracebacks instead of one line

def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert "Traceback" not in text and all(n in text for n in needles), text
    assert len([x for x in text.splitlines() if x.strip()]) <= 2, text


def test_attack_12_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    from engine import events as ev
    from engine.flow import DEFAULT_FLOW

    db = tmp_path / "c.db"
    store = SqliteStore(db)
    store.open_call("deep", started_at="2026-12-02T12:00:00+00:00", flow="default",
                    meta={"flow": DEFAULT_FLOW.model_dump(mode="json")})
    store.append("deep", ev.CallStarted(t_ms=0, seq=1))
    store.close_call("deep", outcome="hangup", ended_t_ms=0, turns=0)
    store.close()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE events SET data = ? WHERE call_id = 'deep'", ("[" * 200_000 + "]" * 200_000,))
    raw.close()
    one_line_error(engine("replay", "deep", "--db", str(db)), "nests too deeply")
    r = engine("check", "--db", str(db))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr and "nests too deeply" in r.stdout

    latin = tmp_path / "latin.call.yaml"
    latin.write_bytes("caller: [\"caf\xe9\"]\n".encode("latin-1"))
    one_line_error(engine("call", str(latin), "--db", str(tmp_path / "x.db")), "not UTF-8")
    deep = tmp_path / "deep.call.yaml"
    deep.write_text("[" * 100_000)
    one_line_error(engine("call", str(deep), "--db", str(tmp_path / "x.db")), "nested too deeply")

    one_line_error(engine("validate", "/dev/zero", timeout=20), "/dev/zero: too large")
    big = tmp_path / "big.yaml"
    big.write_text("name: big\nfillers:\n" + "  - a\n" * 2_000_000)  # 12 MB, no aliases
    r = engine("validate", str(big))
    one_line_error(r, "too large")
    assert "aliases" not in r.stdout + r.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = engine("serve", "--flow", str(LOCAL_FLOW), "--db", str(tmp_path / "s.db"), "--port", str(port),
                   "--insecure-skip-signature")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (err,) = [x for x in r.stderr.splitlines() if "error" in x.lower()]
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in err.lower()
