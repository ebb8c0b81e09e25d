"""`engine serve`'s application: the Twilio bridge, one LiveCall per stream, health, metrics, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from adapters.twilio import CallRefused, StreamLimits
from callstate.eventfeed import LocalFeed, PgFeed, stream
from callstate.guard import ConnectionGuard
from callstate.metrics import Metrics, TurnClock
from callstate.phoneauth import Access, PhoneTokens
from callstate.secrets import replay_risks, secret_values
from engine import events as ev
from engine.flow import Flow
from engine.liveparts import CallLimits, Providers
from engine.redact import Redactor
from engine.runtime import LiveCall
from engine.store import Store, StoreError
from logstore import is_postgres
from logstore.writer import LogWriter
from replay.timeline import tool_failure

log = logging.getLogger("callstate.server")


@dataclass(frozen=True)
class Limits:
    """What any one peer may cost this server (issue 11); the serve command's flags set them."""

    max_connections: int = 1000
    header_s: float = 10.0  # connect -> a whole request head
    keepalive_s: float = 15.0  # idle between two requests on one connection
    stream: StreamLimits = field(default_factory=StreamLimits)
    call: CallLimits = field(default_factory=CallLimits)


class CallIds:
    """Every live call gets its own id: its CallSid the first time, ``CallSid-2``, ``-3``... when Twilio
    retries a stream with the same CallSid (logged or live alike), each linked to the one before it.
    Known ids are read once, before serving: choosing an id never reads the log."""

    def __init__(self, known: list[tuple[str, str]]) -> None:
        self.taken = {call_id for call_id, _ in known}
        self.latest = {sid: call_id for call_id, sid in known if sid}  # oldest first: the newest wins

    def new(self, call_sid: str) -> tuple[str, str | None]:
        if not call_sid:
            call_id = f"call-{uuid.uuid4().hex[:12]}"
            self.taken.add(call_id)
            return call_id, None
        previous, call_id, n = self.latest.get(call_sid), call_sid, 1
        while call_id in self.taken:
            n += 1
            call_id = f"{call_sid}-{n}"
        self.taken.add(call_id)
        self.latest[call_sid] = call_id
        return call_id, previous


class Server:
    def __init__(self, flow: Flow, providers: Providers, store: Store, *, auth_token: str | None = None,
                 public_url: str | None = None, skip_signature: bool = False, rest: object | None = None,
                 grace_s: float = 30.0, shared_key: str | None = None, worker_dir: str | None = None,
                 worker_index: int = 0, phone: bool = False, api_key: str | None = None,
                 trusted_proxies: frozenset[str] = frozenset(), limits: Limits = Limits(),
                 environ: Mapping[str, str] | None = None, db: str | None = None) -> None:
        self.flow, self.providers, self.store = flow, providers, store
        self.shared_key = shared_key  # Twilio Webhook Rules (HMAC-SHA256) key
        self.auth_token, self.public_url, self.skip_signature, self.rest = auth_token, public_url, skip_signature, rest
        self.grace_s, self.trusted_proxies, self.limits = grace_s, trusted_proxies, limits
        self.worker_dir, self.worker_index = worker_dir, worker_index  # set: one worker of several
        self.self_runner: web.AppRunner | None = None  # that worker's own metrics socket
        self.db = db  # where the log is (a path or URL): a PostgreSQL log streams every host's calls
        self.calls: dict[str, LiveCall] = {}
        self.clocks: dict[str, TurnClock] = {}
        self.metrics = Metrics()
        self.guard = ConnectionGuard(self.metrics, max_connections=limits.max_connections,
                                     header_s=limits.header_s)
        self.ids = CallIds([])
        self.draining = False
        self._lag_task: asyncio.Task[None] | None = None
        self.rng = random.SystemRandom()
        # The flow as the log keeps it: every value that came from the environment masked; and every secret
        # value masked in whatever else the log or the console gets (issue 11)
        self.flow_record = flow.log_record()
        self.redact = Redactor(secret_values(os.environ if environ is None else environ, flow.env_values()))
        store.redact = self.redact
        for path in replay_risks(flow):
            log.warning("flow %s: its value comes from the environment and is masked in the log, so a replay "
                        "of these calls will differ where it is used (put secrets in webhooks, not in what "
                        "the agent says)", path)
        #: GET /phone is served (and its tokens open /media) only when asked for: `engine talk`, `serve --phone`.
        self.phone = phone
        self.access = Access(PhoneTokens() if phone else None, api_key)
        self.feed: LocalFeed | None = None  # built with the app (it needs the running loop)
        self.pg_feed: PgFeed | None = None  # calls of every host of a PostgreSQL log

    async def on_call(self, info: object, phone: object) -> LiveCall:
        if self.draining:
            self.metrics.refused["shutting_down"] += 1
            raise CallRefused("shutting down: not accepting new calls")
        writer = self.store.writer
        if writer is not None and writer.degraded:
            self.metrics.refused["log_behind"] += 1
            raise CallRefused(f"the call log is behind ({writer.pending_events} events waiting to be written): "
                              "not accepting new calls until it catches up")
        call_sid = getattr(info, "call_sid", "") or ""
        call_id, previous = self.ids.new(call_sid)
        params = dict(getattr(info, "params", {}) or {})
        meta = {"flow": self.flow_record, "mode": "live", "call_sid": call_sid}
        if previous is not None:
            meta["previous_call_id"] = previous  # Twilio retried this stream: the same call, a new log entry
        self.store.open_call(call_id, started_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                             flow=self.flow.name, meta=meta)
        call = LiveCall(call_id=call_id, flow=self.flow, providers=self.providers, phone=phone,  # type: ignore[arg-type]
                        store=self.store, seed=self.rng.getrandbits(31), params=params, call_sid=call_sid,
                        stream_sid=getattr(info, "stream_sid", "") or "", on_step=self._on_step,
                        limits=self.limits.call, on_limit=self._on_limit)
        self.calls[call_id] = call
        self.clocks[call_id] = TurnClock()
        self.metrics.active += 1
        call.main.add_done_callback(lambda _t, cid=call_id: self._ended(cid))
        log.info("call %s started%s", call_id, f" (a retry of {previous})" if previous else "",
                 extra={"call_id": call_id, "call_sid": call_sid})
        return call

    def _on_limit(self, what: str) -> None:
        self.metrics.limits[what] += 1

    def _on_step(self, call: LiveCall, event: ev.Input, effects: list[ev.Effect], before: str, us: int) -> None:
        self.metrics.observe_step(event, effects, us)
        if any(isinstance(x, ev.Respond) for x in effects):  # a turn as replay/turns.py counts one
            self.metrics.turns += 1
        v2v = self.clocks[call.call_id].observe(event, effects, before, call.machine.view.state)
        if v2v is not None:
            self.metrics.v2v.observe(v2v)
            log.info("call %s: agent answered, voice to voice %d ms", call.call_id, v2v,
                     extra={"call_id": call.call_id, "v2v_ms": v2v})
        if isinstance(event, ev.ToolResult) and not event.ok:  # the first thing an operator needs to fix
            why = tool_failure(event.error, event.body)
            log.warning("call %s: tool %s failed: %s", call.call_id, event.name, why,
                        extra={"call_id": call.call_id, "tool": event.name, "error": event.error})

    def _ended(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        self.clocks.pop(call_id, None)
        self.metrics.active -= 1
        if call is not None:
            self.metrics.calls[call.outcome] += 1
            log.info("call %s ended (%s)", call_id, call.outcome, extra={"call_id": call_id, "outcome": call.outcome})

    def app(self) -> web.Application:
        from adapters.twilio import create_app

        def timed_out(what: str) -> None:
            self.metrics.timeouts[what] += 1

        app = create_app(on_call=self.on_call, auth_token=self.auth_token, public_url=self.public_url,  # type: ignore[arg-type]
                         skip_signature=self.skip_signature, rest=self.rest,  # type: ignore[arg-type]
                         shared_key=self.shared_key, media_token=self.access.token_ok if self.phone else None,
                         trusted_proxies=self.trusted_proxies, limits=self.limits.stream, on_timeout=timed_out)
        app.middlewares.append(self.guard.middleware)
        if self.phone:
            app.router.add_get("/phone", self._phone_page)
        app.router.add_get("/calls/{call_id}/events", self._events)
        app.router.add_get("/calls/{call_id}/timeline", self._timeline)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(lambda _app: self.shutdown())
        return app

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            self.metrics.loop_lag_ms.append((loop.time() - t - 0.1) * 1000)

    async def _startup(self, _app: web.Application) -> None:
        self._lag_task = asyncio.create_task(self._watch_lag())
        self.ids = CallIds(self.store.call_sids())  # read once, before any call: ids never wait on the log
        # Every log write runs on the writer thread from here on: a stalled disk or a lock held by another
        # process makes the log wait, never the calls (issue 11).
        self.store.start_writer(LogWriter(str(getattr(self.store, "path", "log"))))

    def _page_host_ok(self, request: web.Request) -> bool:
        """DNS rebinding: a web page at attacker.example whose name resolves to 127.0.0.1 would load /phone and
        take its token. A real visitor names the server by an IP, localhost, or the --public-url host."""
        host = (request.url.host or "").strip("[]").lower()
        if host == "localhost" or (self.public_url and host == (URL(self.public_url).host or "").lower()):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    async def _phone_page(self, request: web.Request) -> web.Response:
        from callstate.phone import render_page

        if not self._page_host_ok(request):
            raise web.HTTPForbidden(text="the phone page answers only to an IP address, localhost or the "
                                         "--public-url host\n")
        assert self.access.tokens is not None
        page = render_page(token=self.access.tokens.mint(), flow=self.flow.name)
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.access.check_reader(request)
        call_id = request.match_info["call_id"]
        if self.feed is None:
            self.feed = LocalFeed(self.store)
        shared = self.db is not None and is_postgres(self.db)
        if not shared and self.worker_dir is not None and not self.store.is_open_here(call_id):
            # one SQLite log, several workers: a call live on a sibling has no feed here; the client's retry
            # may land on the worker that runs it (an ended call streams from the log, from any worker)
            with contextlib.suppress(StoreError):
                if not (await asyncio.to_thread(self.store.load_since, call_id, 0))[1]:
                    raise web.HTTPServiceUnavailable(text=f"call {call_id!r} runs on another worker; retry\n",
                                                     headers={"Retry-After": "1"})
        if self.store.is_open_here(call_id) or not shared:
            return await stream(request, self.feed, call_id)  # live here: every event as it is appended
        if self.pg_feed is None:  # a call of another host (or ended): the shared log, woken by NOTIFY
            self.pg_feed = PgFeed(self.db)
        return await stream(request, self.pg_feed, call_id)

    async def _timeline(self, request: web.Request) -> web.Response:
        from replay import html
        from replay.timeline import build

        self.access.check_reader(request)
        call_id = request.match_info["call_id"]
        calls = await asyncio.to_thread(self.store.list_calls)  # reads wait on the log writer: off the loop
        row = next((r for r in calls if r.call_id == call_id), None)
        if row is None or row.status == "open":
            raise web.HTTPNotFound(text=f"no ended call {call_id!r}\n")
        try:
            events = await asyncio.to_thread(self.store.load, call_id)
            flow = Flow.model_validate(row.meta.get("flow") or {})
        except (StoreError, ValueError) as exc:
            raise web.HTTPNotFound(text=f"call {call_id!r} cannot be shown: {exc}\n") from None
        tl = build(flow, events, call_id=call_id, outcome=row.outcome, meta=row.meta)
        return web.Response(text=html.render(tl), content_type="text/html", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        writer = self.store.writer
        log_ok = writer is None or not writer.degraded
        body: dict[str, object] = {"ok": not self.draining and log_ok, "active_calls": len(self.calls)}
        if writer is not None and (writer.pending_events or writer.stalled_s):
            body["log"] = {"queued_events": writer.pending_events, "stalled_s": round(writer.stalled_s, 1)}
        if self.worker_dir is not None:  # the whole server: this worker and every sibling that answers
            from callstate.workers import sibling_metrics

            others = await sibling_metrics(self.worker_dir, self.worker_index)
            body["workers"] = 1 + len(others)
            body["active_calls"] = len(self.calls) + sum(_active(t) for t in others)
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        text = self.metrics.render(self.store.writer)
        if self.worker_dir is not None:
            from callstate.workers import merge, sibling_metrics

            text = merge([text, *await sibling_metrics(self.worker_dir, self.worker_index)])
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    def self_app(self) -> web.Application:
        """This worker's own figures, for its siblings (served on a Unix socket, never on the port)."""
        from callstate.workers import SELF_PATH

        async def own(request: web.Request) -> web.Response:
            return web.Response(text=self.metrics.render(self.store.writer), content_type="text/plain",
                                charset="utf-8")

        app = web.Application()
        app.router.add_get(SELF_PATH, own)
        return app

    async def shutdown(self) -> None:
        """Stop accepting calls, let the live ones finish for up to grace_s, end the rest, flush the log."""
        if self.draining:
            return
        self.draining = True
        live = list(self.calls.values())
        if live:
            log.info("draining %d call(s) for up to %.0f s", len(live), self.grace_s)
            await asyncio.wait([c.main for c in live], timeout=self.grace_s)
        for call in list(self.calls.values()):
            call.emit(ev.RuntimeFault(t_ms=0, reason="shutdown"))  # hung up by the machine, on the record
        if self.calls:
            await asyncio.wait([c.main for c in self.calls.values()], timeout=5)
        self.store.flush()
        await self.providers.aclose()
        if self.pg_feed is not None:
            await self.pg_feed.aclose()
        if self._lag_task is not None:
            self._lag_task.cancel()


def _active(metrics_text: str) -> int:
    for line in metrics_text.splitlines():
        if line.startswith("callstate_active_calls "):
            return int(float(line.split()[1]))
    return 0


class PathOnlyAccessLog(AbstractAccessLogger):
    """aiohttp's access log without the query string: phone tokens and stream positions ride there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1f ms", request.method, request.path, response.status, time * 1000)


async def start(server: Server, host: str = "127.0.0.1", port: int = 0,
                reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Serve on host:port (0: any free port); returns the runner and the port actually bound.
    reuse_port: SO_REUSEPORT, so several worker processes share the port and the kernel spreads
    connections across them; a worker's own metrics then also go on its Unix socket."""
    # shutdown_timeout: how long aiohttp waits for handlers once our own shutdown has ended the calls
    runner = web.AppRunner(server.app(), handle_signals=False, keepalive_timeout=server.limits.keepalive_s,
                           shutdown_timeout=10.0, access_log_class=PathOnlyAccessLog)
    await runner.setup()
    assert runner.server is not None
    server.guard.install(runner.server)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    if server.worker_dir is not None:
        from callstate.workers import serve_self

        server.self_runner = await serve_self(server.self_app(), server.worker_dir, server.worker_index)
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound
