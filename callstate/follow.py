"""`GET /calls/{call_id}/events`: a call's log as Server-Sent Events, as it grows, from any host.

Each event is one store envelope (call_id, seq, t_ms, kind, type, data, cause) as JSON with ``id: seq``;
``?after=N`` (or ``Last-Event-ID``) resumes after seq N; a final ``event: end`` comes once the call has ended
(or was abandoned) and everything is out. Events appear when flushed (turn boundaries, call end), as they
reach the log.

No polling loop: a stream reads the log when told something changed.
- PostgreSQL: one LISTEN connection per server; every flush, close and abandon commits a NOTIFY naming the
  call (engine/pgstore.py), so a call running on another host wakes its readers here.
- SQLite (one server per log): the store tells its listeners after each write.
A reader subscribes before it reads, so a change committed in between is never missed.

Protected by a bearer key (``CALLSTATE_EVENTS_KEY``): without one set, the stream is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections import defaultdict
from typing import Any

from aiohttp import web

from engine.store import Store, StoreError, is_postgres, open_store

log = logging.getLogger("callstate.follow")
KEY_ENV = "CALLSTATE_EVENTS_KEY"


class Wakeups:
    """Subscribers per call id, woken from the loop (``wake``) or from any thread (``wake_threadsafe``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.subs: dict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, call_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.subs[call_id].add(event)
        return event

    def unsubscribe(self, call_id: str, event: asyncio.Event) -> None:
        self.subs[call_id].discard(event)
        if not self.subs[call_id]:
            del self.subs[call_id]

    def wake(self, call_id: str | None) -> None:
        for ids in ([call_id] if call_id is not None else list(self.subs)):
            for event in self.subs.get(ids, ()):
                event.set()

    def wake_threadsafe(self, call_id: str | None) -> None:
        self.loop.call_soon_threadsafe(self.wake, call_id)


class PgListener:
    """One LISTEN connection for the whole server: dispatches each NOTIFY to the call's readers."""

    def __init__(self, url: str, wakeups: Wakeups) -> None:
        self.url, self.wakeups = url, wakeups
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        await self.ready.wait()

    async def _run(self) -> None:
        import psycopg

        from engine.pgstore import CHANNEL

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    self.wakeups.wake(None)  # (re)connected: whatever happened meanwhile, read again
                    async for note in conn.notifies():
                        self.wakeups.wake(note.payload.split(" ", 1)[0])
            except psycopg.Error as exc:
                log.warning("event stream: LISTEN connection lost (%s); reconnecting", exc)
                self.ready.set()  # readers read what is there; they are woken again on reconnect
                await asyncio.sleep(1.0)  # the database is away: retry once a second, not in a spin

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class EventStream:
    """The endpoint, for a server writing ``store`` (the log at ``db``)."""

    def __init__(self, db: str, store: Store) -> None:
        self.db, self.store = db, store
        self.key = os.environ.get(KEY_ENV) or None
        self.wakeups: Wakeups | None = None
        self.pg: PgListener | None = None

    async def on_startup(self, _app: web.Application) -> None:
        self.wakeups = Wakeups(asyncio.get_running_loop())
        if is_postgres(self.db):
            self.pg = PgListener(self.db, self.wakeups)
        else:
            self.store.write_listeners.append(self.wakeups.wake_threadsafe)

    async def on_cleanup(self, _app: web.Application) -> None:
        if self.pg is not None:
            await self.pg.stop()

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/calls/{call_id}/events", self.handle)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return self.key is not None and hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.key is None:
            return web.json_response({"error": f"the event stream is off: set {KEY_ENV} on the server"}, status=404)
        if not self._authorized(request):
            return web.json_response({"error": "a valid Authorization: Bearer key is required"}, status=401)
        call_id = request.match_info["call_id"]
        try:
            after = int(request.query.get("after") or request.headers.get("Last-Event-ID") or 0)
        except ValueError:
            return web.json_response({"error": "after must be a seq (an integer)"}, status=400)
        assert self.wakeups is not None
        if self.pg is not None:
            await self.pg.start()
        wake = self.wakeups.subscribe(call_id)
        reader: Store | None = None
        response: web.StreamResponse | None = None
        try:
            reader = await asyncio.to_thread(open_store, self.db, readonly=True)
            while True:
                wake.clear()
                try:
                    records, ended = await asyncio.to_thread(reader.load_since, call_id, after)
                except StoreError as exc:
                    if response is None:
                        return web.json_response({"error": str(exc)}, status=404)
                    raise
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
                    await response.prepare(request)
                for record in records:
                    await response.write(_sse(record))
                    after = record["seq"]
                if ended:
                    await response.write(b"event: end\ndata: {}\n\n")
                    return response
                await wake.wait()
        finally:
            self.wakeups.unsubscribe(call_id, wake)
            if reader is not None:
                await asyncio.to_thread(reader.close)


def _sse(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return f"id: {record['seq']}\ndata: {body}\n\n".encode()
