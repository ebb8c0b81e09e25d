"""Connection hygiene for `engine serve`: a cap on open connections and a deadline for a request's headers.

aiohttp alone keeps a connection that never sends a whole request for an hour (keepalive_timeout 3630 s),
so a few hundred silent sockets used to exhaust the file limit and starve real calls (issue 11). Here:
- a connection past ``max_connections`` is closed at once, counted, and logged at most once per
  ``log_every_s`` with how many were refused since the last line;
- a connection whose first request's headers are not in within ``header_s`` is closed and counted;
- the file limit is raised to fit the cap (each call holds a few sockets: the phone and its providers).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web

from callstate.metrics import Metrics

log = logging.getLogger("callstate.server")

FDS_PER_CONNECTION = 4  # the phone's socket, STT, TTS and the LLM's pool


class ConnectionGuard:
    def __init__(self, metrics: Metrics, *, max_connections: int = 1000, header_s: float = 10.0,
                 log_every_s: float = 10.0) -> None:
        self.metrics, self.max_connections, self.header_s = metrics, max_connections, header_s
        self.log_every_s = log_every_s
        self.open: dict[Any, asyncio.TimerHandle | None] = {}
        self._refused_since_log = 0
        self._last_log: float | None = None

    def fit_file_limit(self) -> None:
        """Raise the soft file limit to fit the cap; if the hard limit is too low, lower the cap instead."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.max_connections * FDS_PER_CONNECTION + 64
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        if soft != resource.RLIM_INFINITY and soft < want:
            cap = max(1, (soft - 64) // FDS_PER_CONNECTION)
            log.warning("the file limit (%d) fits %d connections, not %d: capping at %d", soft, cap,
                        self.max_connections, cap)
            self.max_connections = cap

    # ------------------------------------------------------------------------ aiohttp's server hooks

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.closed(handler)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def opened(self, handler: Any, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        if len(self.open) >= self.max_connections:
            self.metrics.refused["connection_cap"] += 1
            self._refused_since_log += 1
            now = loop.time()
            if self._last_log is None or now - self._last_log >= self.log_every_s:
                log.warning("connection limit reached: %d open (--max-connections %d); refused %d new "
                            "connection(s) since the last such line", len(self.open), self.max_connections,
                            self._refused_since_log)
                self._last_log, self._refused_since_log = now, 0
            loop.call_soon(transport.abort)  # after aiohttp's handler task has started (it asserts a live peer)
            return
        self.open[handler] = loop.call_later(self.header_s, self._expire, handler, transport)

    def closed(self, handler: Any) -> None:
        timer = self.open.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def seen(self, handler: Any) -> None:
        """A whole request head arrived on this connection: its header deadline is met."""
        timer = self.open.get(handler)
        if timer is not None:
            timer.cancel()
            self.open[handler] = None

    def _expire(self, handler: Any, transport: asyncio.Transport) -> None:
        if self.open.get(handler) is not None:
            self.open[handler] = None
            self.metrics.timeouts["header"] += 1
            log.debug("closed a connection that sent no request head within %.0f s", self.header_s)
            transport.abort()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen(request.protocol)
        return await handler(request)  # type: ignore[no-any-return]
