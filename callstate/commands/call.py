"""`engine call SCRIPT`: run one scripted call offline (virtual clock), log it, print its transcript."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime

from callstate.flows import FlowError, resolve_flow
from callstate.logs import add_db, where
from callstate.providers import stt_options
from callstate.report import transcript, turn_table, turns
from callstate.secrets import secret_values
from engine.events import CallTool, ToolResult
from engine.redact import Redactor
from engine.store import StoreError
from logstore import open_store
from replay.timeline import tool_failure
from replay.words import plural
from sim.offline import OfflineCall, OfflineResult
from sim.script import ScriptError, load_script, script_flow

HELP = "run a scripted call offline, log it to the DB, print transcript and latencies"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("script", help="a call script (YAML): caller turns, latencies, canned tools")
    p.add_argument("--flow", help="the flow to run (default: the script's `flow:`, else the built-in one)")
    add_db(p)
    p.add_argument("--call-id", help="id for the logged call (default: a fresh one)")


async def run_offline(flow_path: str | None, script_path: str, db: str, call_id: str) -> tuple[OfflineResult, object]:
    from adapters.tools import ToolRunner

    script = load_script(script_path)
    flow = resolve_flow(flow_path or script_flow(script_path, script))
    script = load_script(script_path, flow)  # again, against the flow: the tools it names must exist
    store = open_store(db)
    store.redact = Redactor(secret_values(os.environ, flow.env_values()))  # as engine serve masks its log
    runner = ToolRunner(flow.tools)
    try:
        store.open_call(call_id, started_at=datetime.now(UTC).isoformat(timespec="seconds"), flow=flow.name,
                        meta={"flow": flow.log_record(), "script": str(script_path), "mode": "offline"})
        async def timed(effect: CallTool) -> tuple[ToolResult, int]:
            started = time.monotonic()  # the composition root owns the clock; the offline driver has none
            result = await runner.call(effect)
            return result, int((time.monotonic() - started) * 1000)

        stt = stt_options(flow)
        call = OfflineCall(flow, script, call_id=call_id, tool_runner=timed,
                           on_event=lambda e: store.append(call_id, e),
                           finalize_on_vad_stop=stt.finalize_on_vad_stop, stt_endpointing_ms=stt.own_endpointing_ms)
        result = await call.run()
        store.close_call(call_id, outcome=result.outcome, ended_t_ms=result.log[-1].t_ms,
                         turns=call.machine.view.turns)
    finally:
        await runner.close()
        store.close()
    return result, flow


def run(args: argparse.Namespace) -> int:
    call_id = args.call_id or f"call-{uuid.uuid4().hex[:10]}"
    try:
        result, flow = asyncio.run(run_offline(args.flow, args.script, args.db, call_id))
    except (ScriptError, FlowError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(transcript(flow, result.log)))  # type: ignore[arg-type]
    print()
    print("\n".join(turn_table(turns(flow, result.log))))  # type: ignore[arg-type]
    results = [e for e in result.log if isinstance(e, ToolResult)]
    failed = [e for e in results if not e.ok]
    for e in failed:  # also on stderr, in full: a tool that failed is the first thing to fix
        print(f"warning: tool {e.name} failed: {tool_failure(e.error, e.body)}", file=sys.stderr)
    tools = f", {len(failed)} of {plural(len(results), 'tool call')} failed" if failed else ""
    print(f"\nlogged call {call_id} ({len(result.log)} events, outcome {result.outcome}{tools}) to {where(args.db)}")
    print(f"replay it: engine replay {call_id} --db {where(args.db)}")
    return 0
