"""The engine under test, alone in its process: `engine serve`'s Server (callstate/server.py) plus a probe.

    python bench/engine_proc.py --flow FLOW.json --db calls.db|postgresql://... [--port P --reuse-port]
                                [--tracemalloc]

Providers come from the flow and the environment exactly as `engine serve` builds them (build_providers:
the real Deepgram / Groq adapters, pointed at the load generator's fakes by DEEPGRAM_BASE_URL and
GROQ_BASE_URL). Prints ``PORT <calls> <probe>`` once listening; runs until stdin closes, then shuts down like
SIGTERM. With ``--reuse-port`` several of these share the calls port (SO_REUSEPORT, as `engine serve
--workers` runs its workers); each keeps its probe on a port of its own.

The probe adds what the engine does not export, without changing what it does:
- ``GET /bench/stats``: process CPU (user+sys) and RSS; per call its EngineTimes (engine_us, barge_in_us),
  the wait of each input in the call's inbox, when each ``clear`` was handed to the socket, the phone's
  pacing lateness (TwilioPhone.max_late_ms) and frames sent; every Store.flush's duration; the loop's lag.
- ``GET /bench/memory``: RSS and (with --tracemalloc) traced bytes, after a gc.
The cost of the probe per input is two perf_counter_ns calls and a few list appends.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callstate import eventloop
from callstate.providers import build_providers
from callstate.server import Server
from engine import events as ev
from engine.flow import Flow
from engine.store import Store
from logstore import open_store

_ns = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: the load generator's loop.time() reads the same clock

#: Step flags: what an input was and what its step ordered (bench/harness.py reads them back).
FINAL, START_LLM, SPEAK, SEND_AUDIO, CLEAR, RESPOND = 1, 2, 4, 8, 16, 32
_BITS = {ev.StartLlm: START_LLM, ev.Speak: SPEAK, ev.SendAudio: SEND_AUDIO, ev.ClearPlayback: CLEAR,
         ev.Respond: RESPOND}


class TimedInbox(asyncio.Queue):  # type: ignore[type-arg]
    """The call's inbox, noting when each input was queued (emit) and handing it over on get."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)  # type: ignore[misc]
        self.put_ns: deque[int] = deque()
        self.last_put_ns = 0

    def _put(self, item: Any) -> None:
        super()._put(item)  # type: ignore[misc]
        self.put_ns.append(_ns())

    def _get(self) -> Any:
        self.last_put_ns = self.put_ns.popleft()
        return super()._get()  # type: ignore[misc]


class CallProbe:
    def __init__(self, call: Any, phone: Any, call_sid: str) -> None:
        self.call, self.phone, self.call_sid = call, phone, call_sid
        self.started = time.monotonic()
        self.ended: float | None = None
        self.steps: list[tuple[str, int, int, int, int]] = []  # type, queued_ns, stepped_ns, us, flags
        self.clear_pending: list[int] = []  # queued_ns of inputs whose step ordered ClearPlayback
        self.clears: list[tuple[int, int, int]] = []  # (input queued_ns, step end ns, clear to socket ns)
        self.runs: list[int] = []  # ns when the first media frame of a run of agent audio went to the socket
        self._last_media = 0
        self._clear_step = 0
        inbox = TimedInbox()
        while not call.inbox.empty():
            inbox.put_nowait(call.inbox.get_nowait())
        call.inbox = inbox
        self.inbox = inbox
        inner_step = call.on_step

        def on_step(c: Any, event: ev.Input, effects: list[ev.Effect], before: str, us: int) -> None:
            now = _ns()
            bits = FINAL if isinstance(event, ev.Transcript) and event.is_final else 0
            for e in effects:
                bits |= _BITS.get(type(e), 0)
            self.steps.append((type(event).__name__, inbox.last_put_ns, now, us, bits))
            if bits & CLEAR:
                self.clear_pending.append(inbox.last_put_ns)
                self._clear_step = now
            if inner_step is not None:
                inner_step(c, event, effects, before, us)

        call.on_step = on_step
        inner_send = phone._send

        async def send(msg: str) -> None:
            if msg.startswith('{"event":"media"'):
                now = _ns()
                if now - self._last_media > 60_000_000:
                    self.runs.append(now)
                self._last_media = now
            elif msg.startswith('{"event":"clear"') and self.clear_pending:
                self.clears.append((self.clear_pending.pop(0), self._clear_step, _ns()))
            await inner_send(msg)

        phone._send = send

    def stats(self) -> dict[str, Any]:
        s = self.call.stats
        return {"call_sid": self.call_sid, "engine_us": s.engine_us, "barge_in_us": s.barge_in_us,
                "steps": self.steps, "clears": self.clears, "runs": self.runs,
                "max_late_ms": self.phone.max_late_ms, "frames_sent": self.phone.frames_sent,
                "seconds": (self.ended or time.monotonic()) - self.started}


class Probe:
    def __init__(self, server: Server, store: Store) -> None:
        self.server, self.store = server, store
        self.calls: list[CallProbe] = []
        self.flush_us: list[int] = []
        self.lag_ms: list[float] = []
        self.gc: list[tuple[int, int, int]] = []  # (generation, pause us, CPU us) of every collection
        self._gc_start = self._gc_cpu = 0
        self.full_gc: dict[str, Any] = {}
        gc.callbacks.append(self._gc_callback)
        inner_on_call = server.on_call

        async def on_call(info: Any, phone: Any) -> Any:
            call = await inner_on_call(info, phone)
            probe = CallProbe(call, phone, getattr(info, "call_sid", ""))
            self.calls.append(probe)
            call.main.add_done_callback(lambda _t: setattr(probe, "ended", time.monotonic()))
            return call

        server.on_call = on_call  # type: ignore[method-assign]
        inner_flush = store.flush

        def flush() -> None:
            t = _ns()
            inner_flush()
            self.flush_us.append((_ns() - t) // 1000)

        store.flush = flush  # type: ignore[method-assign]

    def _gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start, self._gc_cpu = _ns(), time.thread_time_ns()
        else:  # wall (what a call waits) and CPU (what the collector did, steady on a shared machine)
            self.gc.append((info["generation"], (_ns() - self._gc_start) // 1000,
                            (time.thread_time_ns() - self._gc_cpu) // 1000))

    def full_collection(self) -> dict[str, float]:
        """One full collection's CPU ms and the objects it walks, with the heap as it stands."""
        t = time.thread_time_ns()
        gc.collect()
        return {"cpu_ms": (time.thread_time_ns() - t) / 1e6, "tracked": len(gc.get_objects()),
                "frozen": gc.get_freeze_count()}

    async def lag_monitor(self) -> None:
        while True:  # perf_counter, not loop.time(): uvloop's loop clock has 1 ms steps
            t = _ns()
            await asyncio.sleep(0.05)
            self.lag_ms.append((_ns() - t) / 1e6 - 50)

    async def stats(self, request: web.Request) -> web.Response:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        body = {"cpu_s": ru.ru_utime + ru.ru_stime, "rss_kb": _rss_kb(), "active": len(self.server.calls),
                "calls": [c.stats() for c in self.calls], "flush_us": self.flush_us, "lag_ms": self.lag_ms,
                "gc": self.gc, "loop": eventloop.loop_name(), "full_gc": self.full_gc}
        if request.query.get("reset"):
            self.calls = [c for c in self.calls if c.ended is None]
            self.flush_us, self.lag_ms, self.gc = [], [], []
        return web.json_response(body, dumps=lambda o: json.dumps(o, separators=(",", ":")))

    async def memory(self, request: web.Request) -> web.Response:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
        return web.json_response({"rss_kb": _rss_kb(), "traced": traced, "active": len(self.server.calls)})


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def serve(args: argparse.Namespace) -> None:
    flow = Flow.model_validate(json.loads(Path(args.flow).read_text()))
    store = open_store(args.db)
    server = Server(flow, build_providers(flow, os.environ), store, skip_signature=True)
    probe = Probe(server, store)
    app = server.app()
    app.router.add_get("/bench/stats", probe.stats)
    app.router.add_get("/bench/memory", probe.memory)
    # as callstate.server.start(), with the probe's routes added before the app is frozen
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=args.reuse_port or None)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    probe_site = web.TCPSite(runner, "127.0.0.1", 0)  # this process's own stats, whoever shares the port
    await probe_site.start()
    probe_port = probe_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    lag = asyncio.create_task(probe.lag_monitor())
    probe.full_gc["start-up"] = probe.full_collection()
    eventloop.settle_gc()  # as `engine serve` once it listens
    probe.full_gc["settled"] = probe.full_collection()
    print(f"PORT {port} {probe_port}", flush=True)
    # the load generator closes stdin: shut down (read on the loop, not in a thread a profiler would count)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    lag.cancel()
    await runner.cleanup()  # on_shutdown: server.shutdown() drains, flushes, closes providers
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flow", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--reuse-port", action="store_true")
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # as serve
    if args.tracemalloc:
        tracemalloc.start()
    eventloop.run(serve(args))  # as `engine serve`: uvloop when installed (CALLSTATE_LOOP=asyncio: not)


if __name__ == "__main__":
    main()
