"""A call's log as a live stream: ``GET /calls/{call_id}/events`` (Server-Sent Events).

Rules:
- Each SSE message is one envelope exactly as the store keeps it (``{call_id, seq, t_ms, kind, type, data,
  cause}``), its ``id:`` the seq. ``?from_seq=N`` (or the ``Last-Event-ID`` header a reconnecting
  EventSource sends, meaning "after N") starts the stream there; the default is the call's first event.
  An ``end`` event closes the stream once the call has ended and every envelope has been sent.
- A stream's source is a ``Feed``: ``backlog`` (what is logged so far) and ``subscribe`` (what is appended
  next, pushed, never polled). ``LocalFeed`` serves calls running in this process from the store's append
  hook; ``PgFeed`` serves calls running on any host of a PostgreSQL log: every flush, close and abandon
  commits a NOTIFY naming the call (logstore/postgres.py), one LISTEN connection per server wakes the call's
  subscribers, which read what was flushed since (events arrive per flush: turn ends and call end).
- The subscription opens before the backlog is read, and envelopes at or below the backlog's last seq are
  dropped, so nothing falls in the gap between the two and nothing comes twice.
- Access: a phone token (the /phone page's) or the configured bearer key (``CALLSTATE_API_KEY``), checked
  by ``callstate.phoneauth``; anything else is a 401 before a byte of the log is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from aiohttp import web

from engine.events import Event
from engine.store import Store, StoreError

log = logging.getLogger("callstate.eventfeed")
Record = dict[str, Any]
#: A subscriber whose queue holds this many undelivered envelopes is too slow (a stuck client): it is cut
#: off rather than let the server's memory grow with every call it watches.
MAX_BACKLOG = 10_000
_END: Record = {}  # queue sentinel: the call has ended


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Record]: ...
    def close(self) -> None: ...


class Feed(Protocol):
    def subscribe(self, call_id: str) -> Subscription: ...
    async def backlog(self, call_id: str) -> tuple[list[Record], bool]:
        """(envelopes so far, the call had ended when asked). Raises StoreError for an unknown call."""


class _QueueSubscription:
    def __init__(self, on_close: Callable[[_QueueSubscription], None]) -> None:
        self.queue: asyncio.Queue[Record] = asyncio.Queue()
        self.overflowed = False
        self._on_close = on_close

    def push(self, record: Record) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= MAX_BACKLOG:
            self.overflowed = True
            record = _END
        self.queue.put_nowait(record)

    async def __aiter__(self) -> AsyncIterator[Record]:
        while True:
            record = await self.queue.get()
            if record is _END:
                return
            yield record

    def close(self) -> None:
        self._on_close(self)


class LocalFeed:
    """Calls of this process: envelopes pushed from ``Store.append`` (same thread, or handed to the loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.subs: dict[str, set[_QueueSubscription]] = {}
        self.loop = asyncio.get_running_loop()
        store.listeners.append(self._appended)

    def _appended(self, call_id: str, event: Event | None) -> None:
        subs = self.subs.get(call_id)
        if not subs:
            return
        record = _END if event is None else self.store.envelope(call_id, event)  # secrets masked, as logged
        in_loop = False
        with contextlib.suppress(RuntimeError):
            in_loop = asyncio.get_running_loop() is self.loop
        for sub in list(subs):
            if in_loop:
                sub.push(record)
            else:
                self.loop.call_soon_threadsafe(sub.push, record)

    def subscribe(self, call_id: str) -> _QueueSubscription:
        def drop(sub: _QueueSubscription) -> None:
            subs = self.subs.get(call_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subs[call_id]

        sub = _QueueSubscription(drop)
        self.subs.setdefault(call_id, set()).add(sub)
        return sub

    async def backlog(self, call_id: str) -> tuple[list[Record], bool]:
        # The buffered tail and "still open" are read here, in the appending thread, before anything else:
        # what leaves the buffer after this point is in the writer's queue, which load_records waits for.
        tail, ended = self.store.pending_records(call_id), not self.store.is_open_here(call_id)
        flushed = await asyncio.to_thread(self.store.load_records, call_id)  # waits on the writer: off the loop
        last = flushed[-1]["seq"] if flushed else 0
        return flushed + [r for r in tail if r["seq"] > last], ended


def _sse(record: Record) -> bytes:
    data = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return f"id: {record['seq']}\nevent: envelope\ndata: {data}\n\n".encode()


def _from_seq(request: web.Request) -> int:
    """The last seq the client already has (0: none): ``?from_seq=N`` means from N on, Last-Event-ID after."""
    raw = request.query.get("from_seq")
    try:
        if raw is not None:
            return max(0, int(raw) - 1)
        return max(0, int(request.headers.get("Last-Event-ID", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="from_seq must be an integer\n") from None


async def stream(request: web.Request, feed: Feed, call_id: str) -> web.StreamResponse:
    after = _from_seq(request)
    sub = feed.subscribe(call_id)
    try:
        try:
            backlog, ended = await feed.backlog(call_id)
        except StoreError:
            raise web.HTTPNotFound(text=f"no call {call_id!r}\n") from None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        last = after
        for record in backlog:
            if record["seq"] > last:
                await resp.write(_sse(record))
                last = record["seq"]
        if not ended:
            async for record in sub:
                if record["seq"] > last:
                    await resp.write(_sse(record))
                    last = record["seq"]
            if getattr(sub, "overflowed", False):
                return resp  # cut off as too slow, not ended: no `end`, so EventSource resumes (Last-Event-ID)
        await resp.write(b"event: end\ndata: {}\n\n")
        return resp
    finally:
        sub.close()


class _Wake:
    """A PgFeed subscription: woken by NOTIFY, it reads what the log holds past what it has yielded."""

    def __init__(self, feed: PgFeed, call_id: str) -> None:
        self.feed, self.call_id, self.last = feed, call_id, 0
        self.event = asyncio.Event()
        self.event.set()  # read once at the start: whatever was flushed before the LISTEN woke nobody

    async def __aiter__(self) -> AsyncIterator[Record]:
        while True:
            await self.event.wait()
            self.event.clear()
            records, ended = await self.feed.read(self.call_id, self.last)
            for record in records:
                self.last = record["seq"]
                yield record
            if ended:
                return

    def close(self) -> None:
        subs = self.feed.subs.get(self.call_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.feed.subs[self.call_id]


class PgFeed:
    """Calls on every host of a PostgreSQL log: LISTEN/NOTIFY wakes, the shared log is read (no polling)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.subs: dict[str, set[_Wake]] = {}
        self.reader: Store | None = None
        self.listening: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def subscribe(self, call_id: str) -> _Wake:
        if self.listening is None:
            self.listening = asyncio.create_task(self._listen())
        sub = _Wake(self, call_id)
        self.subs.setdefault(call_id, set()).add(sub)
        return sub

    async def read(self, call_id: str, after: int) -> tuple[list[Record], bool]:
        if self.reader is None:
            from logstore import open_store

            self.reader = await asyncio.to_thread(open_store, self.url, readonly=True)
        return await asyncio.to_thread(self.reader.load_since, call_id, after)

    async def backlog(self, call_id: str) -> tuple[list[Record], bool]:
        await self.ready.wait()  # LISTEN is on before the backlog is read: nothing falls in between
        return await self.read(call_id, 0)

    def _wake(self, call_id: str | None) -> None:
        for cid in [call_id] if call_id is not None else list(self.subs):
            for sub in self.subs.get(cid, ()):
                sub.event.set()

    async def _listen(self) -> None:
        import psycopg

        from logstore.postgres import CHANNEL

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    self._wake(None)  # (re)connected: whatever happened meanwhile, read again
                    async for note in conn.notifies():
                        self._wake(note.payload.split(" ", 1)[0])
            except psycopg.Error as exc:
                log.warning("event feed: LISTEN connection lost (%s); reconnecting in 1 s", exc)
                self.ready.set()  # readers read what is there; they are woken again on reconnect
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self.listening is not None:
            self.listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listening
        if self.reader is not None:
            await asyncio.to_thread(self.reader.close)
