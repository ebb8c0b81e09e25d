"""`engine serve --flow FLOW`: answer real phone calls (Twilio voice webhook + Media Streams)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime

from callstate.flows import FlowError, resolve_flow
from callstate.logs import DEFAULT_DB
from callstate.providers import build_providers, missing_keys
from engine.store import StoreError

HELP = "serve live calls: POST /twiml, WebSocket /media, /healthz, /metrics"
LOG_LEVEL = "info"  # a server says what it does: one line per call started and ended
log = logging.getLogger("callstate.serve")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", help="the agent's flow (YAML); default: the built-in flow")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--db", default=DEFAULT_DB, help=f"the call log (default {DEFAULT_DB})")
    p.add_argument("--public-url", help="the URL Twilio reaches this server at (https://...); "
                   "default: from the Host / X-Forwarded-* headers")
    p.add_argument("--insecure-skip-signature", action="store_true",
                   help="accept requests without a valid X-Twilio-Signature (local work only; without it, "
                   "serve refuses to start unless TWILIO_AUTH_TOKEN is set)")
    p.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, how long live calls may go on")


def run(args: argparse.Namespace) -> int:
    try:
        flow = resolve_flow(args.flow)
    except FlowError as exc:
        print(f"error: the flow does not validate:\n{exc}", file=sys.stderr)
        return 1
    missing = missing_keys(flow, os.environ)
    if missing:
        print("error: the flow's providers need these environment variables, which are not set:", file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        print("(or set `provider: local` for stt, llm and tts to run offline)", file=sys.stderr)
        return 1
    if not os.environ.get("TWILIO_AUTH_TOKEN") and not args.insecure_skip_signature:
        # Safe by default: without the token anyone who finds the port could place calls and stream audio.
        print("error: TWILIO_AUTH_TOKEN is not set, so Twilio's request signatures cannot be checked. Set it "
              "(Twilio console: Account > API keys & tokens), or pass --insecure-skip-signature for local "
              "work (`engine demo` needs neither)", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(args, flow))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, flow) -> int:  # type: ignore[no-untyped-def]
    from adapters.twilio import TwilioRest
    from callstate.server import Server, start
    from engine.store import SqliteStore

    token = os.environ.get("TWILIO_AUTH_TOKEN") or None
    if args.insecure_skip_signature:
        log.warning("!!! --insecure-skip-signature: Twilio request signatures are NOT checked. Local work only.")
    sid = os.environ.get("TWILIO_ACCOUNT_SID")
    rest = TwilioRest(sid, token) if sid and token else None
    if rest is None:
        log.warning("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN not both set: hang-up closes the stream; "
                    "transfers are not possible")
    # Ownership first: one live writer per log. Only once this process owns the log AND the port may it end
    # the calls a dead process left open (a second server that cannot bind must never touch the log).
    store = SqliteStore(args.db)
    try:
        store.claim(f"engine serve (starting, --port {args.port})")
    except StoreError:
        store.close()
        raise
    server = Server(flow, build_providers(flow, os.environ), store, auth_token=token,
                    public_url=args.public_url, skip_signature=args.insecure_skip_signature, rest=rest,
                    grace_s=args.grace_s)
    try:
        runner, port = await start(server, args.host, args.port)
    except OSError as exc:
        await server.providers.aclose()
        store.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    store.claim(f"engine serve on http://{args.host}:{port} since "
                f"{datetime.now(UTC).isoformat(timespec='seconds')}")
    abandoned = store.mark_abandoned()
    if abandoned:
        log.warning("%d call(s) left open by a previous crash marked abandoned: %s", len(abandoned),
                    ", ".join(abandoned[:10]))
    log.info("serving flow %r on http://%s:%d (voice webhook: POST /twiml, stream: /media)", flow.name,
             args.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new calls; live calls have %.0f s", args.grace_s)
    await server.shutdown()
    await runner.cleanup()
    store.close()
    log.info("log flushed; bye")
    return 0
