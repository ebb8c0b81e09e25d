"""`engine serve --flow FLOW`: answer real phone calls (Twilio voice webhook + Media Streams)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime

from adapters.twilio import StreamLimits
from callstate import eventloop, logsetup
from callstate.flows import FlowError, resolve_flow
from callstate.logs import add_db
from callstate.phoneauth import API_KEY_ENV, SECRET_ENV
from callstate.providers import KINDS, ChoiceError, build_providers, choose, missing_keys, names, refusals
from callstate.server import Limits
from engine.store import DEFAULT_LEASE_S, StoreError

HELP = "serve live calls: POST /twiml, WebSocket /media, /healthz, /metrics"
LOG_LEVEL = "info"  # a server says what it does: one line per call started and ended
log = logging.getLogger("callstate.serve")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", help="the agent's flow (YAML); default: the built-in flow")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    add_db(p)
    p.add_argument("--public-url", help="the URL Twilio reaches this server at (https://...); default: the "
                   "request's Host (X-Forwarded-Proto/-Host only from a --trusted-proxy)")
    p.add_argument("--insecure-skip-signature", action="store_true",
                   help="accept requests without a valid X-Twilio-Signature (local work only; without it, "
                   "serve refuses to start unless TWILIO_AUTH_TOKEN is set)")
    p.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, how long live calls may go on")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="IP",
                   help="a reverse proxy (e.g. 127.0.0.1 for ngrok) whose X-Forwarded-Proto/-Host are believed; "
                        "repeatable. Without one (and without --public-url) the URL is this request's own")
    p.add_argument("--max-connections", type=int, default=Limits.max_connections,
                   help=f"open connections at most; more are refused (default {Limits.max_connections})")
    p.add_argument("--stream-start-timeout-s", type=float, default=StreamLimits.start_s,
                   help="a Media Stream must send `start` this soon after the upgrade "
                        f"(default {StreamLimits.start_s:g})")
    p.add_argument("--workers", default="1", help="worker processes sharing the port (SO_REUSEPORT) under a "
                   "supervisor that restarts a dead one; `auto` = one per core (default 1)")
    p.add_argument("--lease-s", type=float, default=DEFAULT_LEASE_S,
                   help="this server's lease on its calls: renewed every third of it; when it lapses (the "
                   f"server died), any other server marks its calls abandoned (default {DEFAULT_LEASE_S:.0f})")
    # set by the supervisor for its workers, not by users
    p.add_argument("--worker-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--phone", action="store_true",
                   help="serve the browser phone at GET /phone (off by default; meant for 127.0.0.1)")
    add_provider_options(p)


def add_provider_options(p: argparse.ArgumentParser) -> None:
    for kind in KINDS:
        p.add_argument(f"--{kind}", metavar="NAME",
                       help=f"run {kind} with this provider instead of the flow's ({', '.join(names(kind))})")


def choose_providers(args: argparse.Namespace, *, keyless: bool):  # type: ignore[no-untyped-def]
    """The flow to run (FLOW plus --stt/--llm/--tts, and keyless stand-ins), printed; None after an error."""
    try:
        flow = resolve_flow(args.flow)
    except FlowError as exc:
        print(f"error: the flow does not validate:\n{exc}", file=sys.stderr)
        return None
    try:
        flow, lines = choose(flow, os.environ, {k: getattr(args, k, None) for k in KINDS}, keyless=keyless)
    except ChoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if not args.worker_dir:  # once, by the supervisor, not by each worker
        print(f"flow {flow.name}: " + "; ".join(lines), flush=True)
    return flow


def worker_count(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise ValueError(f"--workers must be a number from 1 to 64 or `auto`, not {value!r}")
    return n


def run(args: argparse.Namespace) -> int:
    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.lease_s <= 0:
        print("error: --lease-s must be positive", file=sys.stderr)
        return 2
    flow = choose_providers(args, keyless=getattr(args, "keyless", False))
    if flow is None:
        return 1
    refused = refusals(flow, os.environ)
    for line in refused:
        print(f"error: {line}", file=sys.stderr)
    if refused:
        return 1
    missing = missing_keys(flow, os.environ)
    if missing:
        print("error: the flow's providers need these environment variables, which are not set:", file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        print("(or run offline: --stt local-asr --llm local --tts local-tts, or `engine talk FLOW`)", file=sys.stderr)
        return 1
    phone = bool(getattr(args, "phone", False))
    signing = os.environ.get("TWILIO_AUTH_TOKEN") or os.environ.get("TWILIO_WEBHOOK_SHARED_KEY")
    if not signing and not args.insecure_skip_signature and not phone:
        # Safe by default: without the token anyone who finds the port could place calls and stream audio.
        print("error: TWILIO_AUTH_TOKEN is not set, so Twilio's request signatures cannot be checked. Set it "
              "(Twilio console: Account > API keys & tokens; or TWILIO_WEBHOOK_SHARED_KEY for Webhook Rules), "
              "or pass --insecure-skip-signature for local work (`engine demo` and `engine talk` need neither)",
              file=sys.stderr)
        return 1
    if workers > 1 and not args.worker_dir:
        from callstate.supervisor import supervise

        if phone and not os.environ.get(SECRET_ENV):  # one secret for all workers: a page from one, /media on another
            import secrets

            os.environ[SECRET_ENV] = secrets.token_hex(32)

        return supervise(args, workers)
    try:
        return eventloop.run(_serve(args, flow))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, flow) -> int:  # type: ignore[no-untyped-def]
    from adapters.twilio import TwilioRest
    from callstate.lease import LeaseKeeper
    from callstate.server import Server, start
    from engine.store import new_owner_id
    from logstore import open_store

    token = os.environ.get("TWILIO_AUTH_TOKEN") or None
    shared_key = os.environ.get("TWILIO_WEBHOOK_SHARED_KEY") or None  # Webhook Rules: HMAC-SHA256
    phone = bool(getattr(args, "phone", False))
    if args.insecure_skip_signature:
        log.warning("!!! --insecure-skip-signature: Twilio request signatures are NOT checked. Local work only.")
    elif token is None and shared_key is None and phone:
        log.info("no TWILIO_AUTH_TOKEN: /media takes the browser phone's tokens only, and /twiml nothing")
    if phone and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("!!! --phone on %s: anyone who can reach this address can open /phone and place calls "
                    "on this server's providers (and its keys). Bind 127.0.0.1 unless that is what you want.",
                    args.host)
    sid = os.environ.get("TWILIO_ACCOUNT_SID")
    rest = TwilioRest(sid, token) if sid and token else None
    if rest is None and not getattr(args, "keyless", False):
        log.warning("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN not both set: hang-up closes the stream; "
                    "transfers are not possible")
    owner = new_owner_id()
    store = open_store(args.db, owner=owner)
    # One server per SQLite log: claim it first (a worker shares its supervisor's claim). A PostgreSQL log is
    # shared by design; there the leases alone keep servers apart.
    if args.worker_dir is None:
        try:
            store.claim(f"engine serve (starting, --port {args.port})")
        except StoreError:
            store.close()
            raise
    store.renew_lease(args.lease_s)  # before any call: our calls are ours from the first one
    limits = Limits(max_connections=args.max_connections,
                    stream=StreamLimits(start_s=args.stream_start_timeout_s))
    server = Server(flow, build_providers(flow, os.environ), store, auth_token=token,
                    public_url=args.public_url, skip_signature=args.insecure_skip_signature, rest=rest,
                    grace_s=args.grace_s, shared_key=shared_key, worker_dir=args.worker_dir,
                    worker_index=args.worker_index, phone=phone, api_key=os.environ.get(API_KEY_ENV),
                    trusted_proxies=frozenset(args.trusted_proxy), limits=limits, db=args.db)
    logsetup.mask(server.redact)  # no secret in the console either
    server.guard.fit_file_limit()
    try:
        runner, port = await start(server, args.host, args.port, reuse_port=args.worker_dir is not None)
    except OSError as exc:
        await server.providers.aclose()
        store.release_lease()
        store.close()
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
        print(f"error: cannot listen on {args.host}:{args.port}: {why}", file=sys.stderr)
        return 1
    if args.worker_dir is None:
        store.claim(f"engine serve on http://{args.host}:{port} since "
                    f"{datetime.now(UTC).isoformat(timespec='seconds')}")
    # Only once it owns the log and the port does a server sweep: it ends the calls of servers whose lease
    # has lapsed (they died), never at start, never a live server's (issue 14 replaces mark-at-start).
    keeper = LeaseKeeper(lambda: open_store(args.db, owner=owner), args.lease_s)
    keeper.start()
    eventloop.settle_gc()
    log.info("instance %s serving flow %r on http://%s:%d (voice webhook: POST /twiml, stream: /media; %s loop)",
             owner, flow.name, args.host, port, eventloop.loop_name())
    if phone and not args.worker_dir:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"browser phone: open http://{host}:{port}/phone", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new calls; live calls have %.0f s", args.grace_s)
    await server.shutdown()
    await runner.cleanup()
    if server.self_runner is not None:
        await server.self_runner.cleanup()
    store.close()
    keeper.stop()
    log.info("log flushed; bye")
    return 0
