"""`engine stats`: voice-to-voice percentiles, barge-ins, fillers, reprompts, tools and outcomes."""

from __future__ import annotations

import argparse
import json
import sys

from callstate.logs import add_db, add_since, load_call, open_readonly
from engine.machine import EngineMisuse
from engine.store import StoreError
from replay.reproduce import reproduce
from replay.stats import CallStats, Summary, call_stats, failed_call, render
from replay.timeline import build

HELP = "latency percentiles and turn-taking counts over logged calls (--json for machines)"


def configure(p: argparse.ArgumentParser) -> None:
    add_db(p)
    add_since(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    try:
        store = open_readonly(args.db)
        try:
            rows = store.list_calls(since=args.since)
        finally:
            store.close()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    calls: list[CallStats] = []
    for row in rows:
        try:
            call = load_call(args.db, row.call_id)
            replayed = reproduce(call.flow, call.events, call_id=row.call_id, schema_version=row.schema_version)
            if replayed.divergence is not None:  # its numbers would be today's machine's, not the call's
                raise StoreError(f"does not reproduce (diverges at seq {replayed.divergence.seq}; "
                                 f"see `engine replay {row.call_id}`)")
            tl = build(call.flow, call.events, call_id=row.call_id, outcome=row.outcome or row.status,
                       meta=row.meta)
            calls.append(call_stats(tl))
        except (StoreError, EngineMisuse) as exc:  # counted, named, and the others still reported
            calls.append(failed_call(row.call_id, row.flow, row.outcome or row.status, str(exc)))
    summary = Summary(calls)
    if args.json:
        print(json.dumps(summary.as_json(), indent=2, sort_keys=True))
    else:
        print("\n".join(render(summary)))
    return 0
