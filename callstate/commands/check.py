"""`engine check`: replay every logged call and run every invariant over it; exit 1 on any violation."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import add_db, add_since, is_call_file, load_call, open_readonly, where
from engine.store import StoreError
from replay.audit import check_log
from replay.words import plural

HELP = "reproduce every logged call and check the invariants; exit 1 naming each violation's call and seq"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("call_ids", nargs="*", metavar="CALL_ID|FILE.jsonl",
                   help="only these calls, or exported call files (default: every call in the DB)")
    add_db(p)
    add_since(p)
    p.add_argument("--allow-empty", action="store_true",
                   help="pass when there is no call to check (by default that fails: a gate that checks nothing)")


def run(args: argparse.Namespace) -> int:
    files = [c for c in args.call_ids if is_call_file(c)]
    wanted = [c for c in args.call_ids if c not in files]
    ids: list[str] = []
    if wanted or not files:
        try:
            store = open_readonly(args.db)
            try:
                ids = [r.call_id for r in store.list_calls(since=args.since)]
            finally:
                store.close()
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    unknown = [c for c in wanted if c not in ids]
    if unknown:
        print(f"error: no call {', '.join(map(repr, unknown))} in {where(args.db)}", file=sys.stderr)
        return 1
    chosen = args.call_ids or ids
    if not chosen:
        scope = f"{where(args.db)} since {args.since}" if args.since else where(args.db)
        print(f"checked 0 calls: no call in {scope}" + ("" if args.allow_empty else " (--allow-empty to pass)"),
              file=sys.stdout if args.allow_empty else sys.stderr)
        return 0 if args.allow_empty else 1
    bad = 0
    for call_id in chosen:
        try:
            call = load_call(args.db, call_id)
        except StoreError as exc:  # a broken log is a violation too: say which call, and the seq if known
            print(f"call {call_id}: cannot be read: {exc}")
            bad += 1
            continue
        call_id = call.row.call_id if call_id in files else call_id
        violations = check_log(call.flow, call.events, call_id=call_id, schema_version=call.row.schema_version)
        for v in violations:
            print(f"call {call_id} seq {v.seq}: {v.rule}: {v.message}")
        bad += bool(violations)
    print(f"checked {plural(len(chosen), 'call')}: "
          + (f"{bad} with violations" if bad else "every call reproduces and keeps every invariant"),
          file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
