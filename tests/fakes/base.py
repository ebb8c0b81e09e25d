"""What every fake shares: an aiohttp server on 127.0.0.1:0, a test tone, a polling helper."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web


class FakeServer:
    """An aiohttp app on 127.0.0.1:0. Subclasses add their routes in ``routes``."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        self.routes(app)
        # handler_cancellation: a client that hangs up cancels its handler, so fakes see cancels at once;
        # a short shutdown_timeout: a stalled handler must not hold up the end of a test.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Routes(FakeServer):
    """A one-off server from (method, path, handler) triples: a webhook, a redirecting host."""

    def __init__(self, *routes: tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> None:
        super().__init__()
        self._routes = routes

    def routes(self, app: web.Application) -> None:
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)


def _ulaw(sample: int) -> int:
    """G.711 mu-law encode of one 16-bit sample (good enough for a test tone)."""
    sign = 0x80 if sample < 0 else 0
    mag = min(abs(sample), 32635) + 0x84
    exp = max(0, mag.bit_length() - 8)
    return ~(sign | (exp << 4) | ((mag >> (exp + 3)) & 0x0F)) & 0xFF


_TONE = bytes(_ulaw(int(6000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000 // 40))


def tone(n_bytes: int) -> bytes:
    """``n_bytes`` of a quiet 440 Hz mu-law tone at 8 kHz (fake TTS audio you can actually listen to)."""
    reps = n_bytes // len(_TONE) + 1
    return (_TONE * reps)[:n_bytes]


async def wait_for(pred: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll ``pred()`` until true; generous timeouts keep tests free of tight wall-clock limits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
