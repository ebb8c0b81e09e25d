"""`engine demo`: a full simulated phone call over loopback, logged, replayed and summarised."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from callstate.logs import DB_HELP, DEFAULT_DB

HELP = "run a simulated shipment-status call end to end (offline), then replay and summarise it"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)


async def _demo(db: str) -> int:
    from adapters.audio import load_fixture
    from callstate.demo import LINES, caller_params, demo_flow, start_webhook
    from callstate.providers import build_providers
    from callstate.report import transcript, turn_table, turns
    from callstate.server import Server, start
    from callstate.simcaller import CallerLine, SimCaller
    from engine.store import open_store
    from replay.reproduce import reproduce

    hook = await start_webhook()
    flow = demo_flow(hook.url)
    store = open_store(db)
    server = Server(flow, build_providers(flow, {}), store, skip_signature=True)
    runner, port = await start(server)
    print(f"engine serve on 127.0.0.1:{port} (offline providers); shipment API on {hook.url}")
    lines = [CallerLine(audio=load_fixture(name), gap_ms=300) for name, _ in LINES]
    lines[2] = CallerLine(audio=load_fixture(LINES[2][0]), barge_in_after_ms=2200)  # over the long answer
    caller = SimCaller(f"ws://127.0.0.1:{port}/media", lines=lines, params=caller_params())
    began = time.monotonic()
    await caller.run()
    while server.calls:  # the call task flushes and closes its log when the stream has ended
        await asyncio.sleep(0.05)
    await runner.cleanup()
    await hook.runner.cleanup()
    call_id = store.list_calls()[-1].call_id
    store.flush()
    events = store.load(call_id)
    store.close()
    print(f"call {call_id}: {time.monotonic() - began:.1f} s of phone time, {len(events)} events logged to {db}\n")
    print("\n".join(transcript(flow, events)))
    print()
    print("\n".join(turn_table(turns(flow, events))))
    result = reproduce(flow, events, call_id=call_id)
    print()
    if result.divergence is not None:
        print(result.divergence.describe(call_id))
        return 1
    print(f"engine replay {call_id} --db {db}: reproduced {result.events} events, every effect identical")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_demo(args.db))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
