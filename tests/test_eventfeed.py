"""GET /calls/{call_id}/events (a call's log as Server-Sent Events), /phone and the phone token on /media."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from adapters.audio import load_fixture
from callstate.flows import resolve_flow
from callstate.phoneauth import PhoneTokens
from callstate.providers import build_providers
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller
from logstore.sqlite import SqliteStore
from tests.helpers import read_sse

FLOW = resolve_flow(str(Path(__file__).parent / "data" / "local_call.yaml"))
KEY = "test-api-key"


class Live:
    def __init__(self, tmp_path: Path, **kw: object) -> None:
        self.store = SqliteStore(tmp_path / "calls.db")
        self.server = Server(FLOW, build_providers(FLOW, {}), self.store, api_key=KEY, **kw)  # type: ignore[arg-type]

    async def __aenter__(self) -> Live:
        self.runner, self.port = await start(self.server)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.server.shutdown()
        await self.runner.cleanup()
        self.store.close()

    def caller(self, query: str = "") -> SimCaller:
        lines = [CallerLine(audio=load_fixture("shipment_1"), gap_ms=300), CallerLine(hangup=True, gap_ms=300)]
        return SimCaller(f"ws://127.0.0.1:{self.port}/media{query}", lines=lines, timeout_s=30)


async def test_stream_follows_a_live_call_and_equals_the_log(tmp_path: Path) -> None:
    async with Live(tmp_path, skip_signature=True) as live:
        caller = live.caller()
        call = asyncio.create_task(caller.run())
        while caller.call_sid not in live.server.calls:  # the call exists once `start` was handled
            await asyncio.sleep(0.01)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with live.http.get(f"{live.base}/calls/{caller.call_sid}/events", headers=headers) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            first = json.loads((await resp.content.readuntil(b"\n\n")).decode().split("data: ", 1)[1])
            assert not call.done(), "the first envelope came while the call was live"
            rest, ids = await read_sse(resp)
        await call
        envelopes = [first, *rest]
        assert envelopes == live.store.load_records(caller.call_sid)  # the store's envelope, every one, in order
        assert ids == [str(e["seq"]) for e in rest]
        assert any(e["type"] == "CallEnded" for e in envelopes)


async def test_stream_from_a_seq_and_after_last_event_id(tmp_path: Path) -> None:
    async with Live(tmp_path, skip_signature=True) as live:
        caller = live.caller()
        await caller.run()
        while live.server.calls:
            await asyncio.sleep(0.01)
        url, headers = f"{live.base}/calls/{caller.call_sid}/events", {"Authorization": f"Bearer {KEY}"}
        async with live.http.get(url + "?from_seq=10", headers=headers) as resp:
            envelopes, _ = await read_sse(resp)
        total = len(live.store.load_records(caller.call_sid))
        assert [e["seq"] for e in envelopes] == list(range(10, total + 1))
        async with live.http.get(url, headers={**headers, "Last-Event-ID": "10"}) as resp:
            envelopes, _ = await read_sse(resp)
        assert envelopes[0]["seq"] == 11
        async with live.http.get(url + "?from_seq=x", headers=headers) as resp:
            assert resp.status == 400


async def test_stream_access(tmp_path: Path) -> None:
    async with Live(tmp_path, skip_signature=True, phone=True) as live:
        caller = live.caller()
        await caller.run()
        url = f"{live.base}/calls/{caller.call_sid}/events"
        for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=1.2.3"),
                               ({"Authorization": KEY}, "")]:
            async with live.http.get(url + query, headers=headers) as resp:
                assert resp.status == 401, (headers, query)
        assert live.server.access.tokens is not None
        token = live.server.access.tokens.mint()
        async with live.http.get(f"{url}?token={token}") as resp:
            assert resp.status == 200
            await read_sse(resp)
        async with live.http.get(f"{live.base}/calls/nope/events?token={token}") as resp:
            assert resp.status == 404
        async with live.http.get(f"{live.base}/calls/{caller.call_sid}/timeline?token={token}") as resp:
            assert resp.status == 200
            assert caller.call_sid in await resp.text()
        async with live.http.get(f"{live.base}/calls/{caller.call_sid}/timeline") as resp:
            assert resp.status == 401


def test_phone_tokens_cannot_be_forged_or_extended() -> None:
    now = [1_000_000.0]
    tokens = PhoneTokens(ttl_s=600, clock=lambda: now[0])
    token = tokens.mint()
    assert tokens.valid(token)
    expiry, nonce, sig = token.split(".")
    assert not tokens.valid(f"{int(expiry) + 3600}.{nonce}.{sig}")  # a later expiry, same signature
    assert not tokens.valid(f"{expiry}.{nonce}.{'0' * len(sig)}")
    assert not PhoneTokens(clock=lambda: now[0]).valid(token)  # another server's secret
    for bad in ("", "x", "..", "a.b.c", token + "x" * 300):
        assert not tokens.valid(bad)
    now[0] += 601
    assert not tokens.valid(token)
    assert "secret" not in repr(tokens) and token not in repr(tokens)


async def test_media_takes_a_phone_token_or_nothing(tmp_path: Path) -> None:
    async with Live(tmp_path, phone=True) as live:  # no Twilio auth token, signatures not skipped
        async with live.http.get(f"{live.base}/phone") as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            page = await resp.text()
        token = page.split('name="phone-token" content="', 1)[1].split('"', 1)[0]
        assert live.server.access.tokens is not None and live.server.access.tokens.valid(token)
        assert "https://" not in page and "http://" not in page  # nothing fetched from anywhere
        async with live.http.post(f"{live.base}/twiml", data={"CallSid": "CA1"}) as resp:
            assert resp.status == 403  # no auth token to check Twilio with: the phone's socket is all there is
        for query in ("", "?token=", "?token=1.2.3", f"?token={token}x"):
            async with live.http.get(f"{live.base}/media{query}") as resp:
                assert resp.status == 403, query
        caller = live.caller(f"?token={token}")
        result = await caller.run()
        assert result.lines[0].started_ms is not None
        assert any(r["type"] == "Transcript" for r in live.store.load_records(caller.call_sid))


async def test_phone_page_is_off_unless_asked_for(tmp_path: Path) -> None:
    async with Live(tmp_path, skip_signature=True) as live, live.http.get(f"{live.base}/phone") as resp:
        assert resp.status == 404


async def test_twilio_signature_still_opens_media_with_the_phone_on(tmp_path: Path) -> None:
    from twilio.request_validator import RequestValidator

    async with Live(tmp_path, phone=True, auth_token="tw-secret") as live:
        url = f"ws://127.0.0.1:{live.port}/media"
        signature = RequestValidator("tw-secret").compute_signature(url, {})
        lines = [CallerLine(audio=load_fixture("shipment_1"), gap_ms=300), CallerLine(hangup=True, gap_ms=300)]
        result = await SimCaller(url, lines=lines, signature=signature, timeout_s=30).run()
        assert result.lines[0].started_ms is not None
        async with live.http.get(f"{live.base}/media") as resp:  # neither signature nor token
            assert resp.status == 403


def test_phone_beyond_loopback_warns(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CALLSTATE_"))}
    proc = subprocess.Popen([sys.executable, "-m", "callstate.cli", "serve", "--phone", "--host", "0.0.0.0",
                             "--port", "0", "--flow", str(Path(__file__).parent / "data" / "local_call.yaml"),
                             "--db", str(tmp_path / "c.db")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:  # until the server is up: it prints the page's URL last
            seen.append(line)
            if line.startswith("browser phone: open "):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    text = "".join(seen)
    assert "!!! --phone on 0.0.0.0" in text, text
    assert "browser phone: open http://127.0.0.1:" in text


async def test_local_feed_has_no_gap_and_no_repeat_between_backlog_and_live() -> None:
    from callstate.eventfeed import LocalFeed
    from engine import events as ev
    from logstore.memory import MemoryStore

    store = MemoryStore()
    store.open_call("c", started_at="2026-12-02T00:00:00+00:00", flow="f")
    def event(seq: int) -> ev.Input:
        return ev.Dtmf(t_ms=seq * 10, seq=seq, digit="1")
    store.append("c", event(1))
    store.flush()  # seq 1 in the log, seq 2 still buffered when the stream opens
    store.append("c", event(2))
    feed = LocalFeed(store)
    sub = feed.subscribe("c")
    store.append("c", event(3))  # after the subscription, before the backlog is read
    backlog, ended = await feed.backlog("c")
    assert [r["seq"] for r in backlog] == [1, 2, 3] and not ended  # flushed + buffered, 3 included
    store.append("c", event(4))
    store.close_call("c", outcome="hangup", ended_t_ms=40, turns=0)
    live = [r["seq"] async for r in sub]
    assert live == [3, 4]  # 3 comes both ways: stream() sends it once, by seq
    merged = [r["seq"] for r in backlog] + [q for q in live if q > backlog[-1]["seq"]]
    assert merged == [1, 2, 3, 4]
    sub.close()
    assert feed.subs == {}
    backlog, ended = await feed.backlog("c")
    assert [r["seq"] for r in backlog] == [1, 2, 3, 4] and ended


async def test_the_stream_masks_secrets_as_the_log_does() -> None:
    from callstate.eventfeed import LocalFeed
    from engine import events as ev
    from engine.redact import Redactor
    from logstore.memory import MemoryStore

    store = MemoryStore()
    store.redact = Redactor(["sk-live-123456"])
    store.open_call("c", started_at="2026-12-02T00:00:00+00:00", flow="f")
    feed = LocalFeed(store)
    sub = feed.subscribe("c")
    leak = ev.ProviderNotice(t_ms=0, seq=1, provider="llm", what="error", detail="401 for key sk-live-123456")
    store.append("c", leak)
    tail, _ = await feed.backlog("c")  # still buffered
    store.close_call("c", outcome="hangup", ended_t_ms=0, turns=0)
    live = [r async for r in sub]
    logged = store.load_records("c")
    assert tail == live == logged
    assert "sk-live" not in json.dumps(live) and "***" in live[0]["data"]["detail"]


async def test_the_phone_page_refuses_a_rebound_host_name(tmp_path: Path) -> None:
    """DNS rebinding: a page at attacker.example whose name resolves to 127.0.0.1 must not get a token."""
    async with Live(tmp_path, phone=True, public_url="https://agent.example.com") as live:
        for host, status in (("attacker.example", 403), (f"127.0.0.1:{live.port}", 200),
                             (f"localhost:{live.port}", 200), ("agent.example.com", 200)):
            async with live.http.get(f"{live.base}/phone", headers={"Host": host}) as resp:
                assert resp.status == status, host
                assert (status == 200) == ("phone-token" in await resp.text())


async def test_the_access_log_never_shows_a_phone_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with Live(tmp_path, phone=True) as live:
        async with live.http.get(f"{live.base}/phone") as resp:
            page = await resp.text()
        token = page.split('name="phone-token" content="', 1)[1].split('"', 1)[0]
        async with live.http.get(f"{live.base}/calls/nope/events?token={token}") as resp:
            assert resp.status == 404
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        assert any("/calls/nope/events 404" in line for line in lines)
        assert not [line for line in lines if token in line]
