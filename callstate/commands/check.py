"""`engine check`: replay every logged call and run every invariant over it; exit 1 on any violation."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import DEFAULT_DB, load_call, open_readonly
from engine.store import StoreError
from replay.audit import check_log

HELP = "reproduce every logged call and check the invariants; exit 1 naming each violation's call and seq"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="only these calls (default: every call)")
    p.add_argument("--db", default=DEFAULT_DB, help=f"the call log (default {DEFAULT_DB})")
    p.add_argument("--since", help="only calls started at or after this ISO time")


def run(args: argparse.Namespace) -> int:
    try:
        store = open_readonly(args.db)
        try:
            ids = [r.call_id for r in store.list_calls(since=args.since)]
        finally:
            store.close()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    unknown = [c for c in args.call_ids if c not in ids]
    if unknown:
        print(f"error: no call {', '.join(map(repr, unknown))} in {args.db}", file=sys.stderr)
        return 1
    chosen = args.call_ids or ids
    bad = 0
    for call_id in chosen:
        try:
            call = load_call(args.db, call_id)
        except StoreError as exc:  # a broken log is a violation too: say which call, and the seq if known
            print(f"call {call_id}: cannot be read: {exc}")
            bad += 1
            continue
        violations = check_log(call.flow, call.events, call_id=call_id, schema_version=call.row.schema_version)
        for v in violations:
            print(f"call {call_id} seq {v.seq}: {v.rule}: {v.message}")
        bad += bool(violations)
    print(f"checked {len(chosen)} call{'s' if len(chosen) != 1 else ''}: "
          + (f"{bad} with violations" if bad else "every call reproduces and keeps every invariant"),
          file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
