"""`engine demo`: a full simulated phone call over loopback, printed as it happens, logged, replayed, summarised.

Every run is its own call: the simulated phone sends a fresh CallSid, so a second run in the same directory
logs a second call and reports on that one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from callstate.logs import add_db, where

HELP = "run a simulated shipment-status phone call end to end (offline), then replay and summarise it"


def configure(p: argparse.ArgumentParser) -> None:
    add_db(p)


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: the transcript is read as the call happens, also through a pipe


async def _demo(db: str) -> int:
    from adapters.audio import load_fixture
    from callstate.demo import LINES, caller_params, demo_flow, start_webhook
    from callstate.lease import LeaseKeeper
    from callstate.providers import build_providers
    from callstate.report import step_lines, turn_table, turns
    from callstate.server import Server, start
    from callstate.simcaller import CallerLine, SimCaller
    from engine import events as ev
    from engine.runtime import LiveCall
    from engine.store import DEFAULT_LEASE_S, StoreError, new_owner_id
    from logstore import is_postgres, open_store
    from replay.reproduce import reproduce

    class DemoServer(Server):
        """engine serve's application, printing each step of the call as the machine takes it."""

        opened: list[str] = []

        async def on_call(self, info: object, phone: object) -> LiveCall:
            call = await super().on_call(info, phone)
            self.opened.append(call.call_id)
            _say(f"call {call.call_id} answered; the caller speaks recorded speech (about 25 s)\n")
            return call

        def _on_step(self, call: LiveCall, event: ev.Input, effects: list[ev.Effect], before: str,
                     us: int) -> None:
            super()._on_step(call, event, effects, before, us)
            if not isinstance(event, ev.CallEnded):  # said below, with the outcome `engine calls` shows
                for line in step_lines(event, effects, before, call.machine.view.state):
                    _say(line)

    # The demo is a server like `engine serve`: it claims a SQLite log (one live writer per log) and keeps a
    # lease on its call, so no other instance sharing the log takes the call for a dead one's mid-way.
    owner = new_owner_id()
    store = open_store(db, owner=owner)
    if not is_postgres(db):
        try:
            store.claim("engine demo")
        except StoreError:
            store.close()
            raise
    store.renew_lease()
    keeper = LeaseKeeper(lambda: open_store(db, owner=owner), DEFAULT_LEASE_S)
    keeper.start()
    hook = await start_webhook()
    flow = demo_flow(hook.url)
    server = DemoServer(flow, build_providers(flow, {}), store, skip_signature=True)
    runner, port = await start(server)
    _say(f"engine serve on 127.0.0.1:{port} (offline providers); shipment API on {hook.url}")
    lines = [CallerLine(audio=load_fixture(name), gap_ms=300) for name, _ in LINES]
    lines[2] = CallerLine(audio=load_fixture(LINES[2][0]), barge_in_after_ms=2200)  # over the long answer
    caller = SimCaller(f"ws://127.0.0.1:{port}/media", lines=lines, params=caller_params())
    caller.call_sid = "CA" + uuid.uuid4().hex  # a fresh CallSid per run, as Twilio gives each call
    began = time.monotonic()
    try:
        await caller.run()
        while server.calls:  # the call task flushes and closes its log when the stream has ended
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
        await hook.runner.cleanup()
        keeper.stop()
    if not server.opened:
        print("error: the simulated call never reached the server", file=sys.stderr)
        store.close()
        return 1
    call_id = server.opened[-1]
    store.flush()
    row = next(r for r in store.list_calls() if r.call_id == call_id)
    events = store.load(call_id)
    store.close()
    ended = [e for e in events if isinstance(e, ev.CallEnded)]
    if ended:
        _say("\n".join(step_lines(ended[-1], [], "", "", outcome=row.outcome or row.status)))
    _say(f"\ncall {call_id}: {time.monotonic() - began:.1f} s of phone time, {len(events)} events logged to "
         f"{where(db)}\n")
    _say("\n".join(turn_table(turns(flow, events))))
    result = reproduce(flow, events, call_id=call_id)
    print()
    if result.divergence is not None:
        print(result.divergence.describe(call_id))
        return 1
    print(f"engine replay {call_id} --db {where(db)}: reproduced {result.events} events, every effect identical")
    return 0


def run(args: argparse.Namespace) -> int:
    from engine.store import StoreError

    try:
        return asyncio.run(_demo(args.db))
    except StoreError as exc:  # e.g. the log is another live server's
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped (Ctrl-C)", file=sys.stderr)
        return 130
