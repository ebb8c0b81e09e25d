"""`GET /calls/{id}/events`: a call's log as Server-Sent Events, live, from any host. With PostgreSQL the
call runs on host B and is watched through host A (LISTEN/NOTIFY); with SQLite through its own server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from callstate.simcaller import SimCaller
from logstore import open_store
from tests.helpers import read_sse
from tests.test_multihost import call_lines, engine_serve, until

KEY = "k-test-0123456789"  # CALLSTATE_API_KEY: the bearer key readers of the stream present
AUTH = {"Authorization": f"Bearer {KEY}"}


async def read_stream(url: str, headers: dict[str, str], seen_live: asyncio.Event) -> list[dict]:
    """Every event of the stream until its `end`; sets seen_live at the first one."""
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        return (await read_sse(r, on_envelope=seen_live.set))[0]


async def watch_a_call(watch_port: int, call_port: int, db: str, index: int) -> None:
    caller = SimCaller(f"ws://127.0.0.1:{call_port}/media", lines=call_lines(), call_index=index)
    call_id = caller.call_sid
    task = asyncio.ensure_future(caller.run())
    reader = open_store(db, readonly=True)
    try:
        await until(lambda: any(c.call_id == call_id for c in reader.list_calls()), "the call is logged")
        base = f"http://127.0.0.1:{watch_port}/calls/{call_id}/events"
        async with aiohttp.ClientSession() as s:
            async with s.get(base) as r:
                assert r.status == 401  # no key, no transcript
            async with s.get(base, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
        live = asyncio.Event()
        stream = asyncio.ensure_future(read_stream(base, AUTH, live))
        await asyncio.wait_for(live.wait(), 60)
        assert not task.done()  # the first events arrived while the call was still going on
        events = await asyncio.wait_for(stream, 60)
        await task
        # the stream's `end` comes when the call's end is handed to the server's log writer; this reader
        # sees the rows once that thread has written them
        await until(lambda: any(c.call_id == call_id and c.status != "open" for c in reader.list_calls()),
                    "the call's end is written")
        logged = reader.load_records(call_id)
        assert events == logged  # every event once, in seq order, as the store keeps it
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        resumed = await read_stream(f"{base}?from_seq=6", AUTH, asyncio.Event())
        assert resumed == logged[5:]
    finally:
        reader.close()


def test_a_call_on_host_b_streams_live_through_host_a(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTATE_API_KEY", KEY)
    open_store(pg_url).close()

    async def scenario() -> None:
        async with engine_serve(pg_url) as a, engine_serve(pg_url) as b:
            await watch_a_call(a.port, b.port, pg_url, index=21)

    asyncio.run(scenario())


def test_a_call_on_a_sqlite_server_streams_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTATE_API_KEY", KEY)
    db = str(tmp_path / "c.db")

    async def scenario() -> None:
        async with engine_serve(db) as a:
            await watch_a_call(a.port, a.port, db, index=22)

    asyncio.run(scenario())
