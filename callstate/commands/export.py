"""`engine export CALL_ID FILE.jsonl`: a logged call as one file (its flow, then its events): a test case."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import add_db, load_call
from engine.store import StoreError
from replay import callfile

HELP = "write a logged call (flow + events) as JSON Lines, e.g. tests/calls/NAME.jsonl for a regression test"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("call_id")
    p.add_argument("out", help="the file to write, e.g. tests/calls/barge_in.jsonl")
    add_db(p)


def run(args: argparse.Namespace) -> int:
    try:
        call = load_call(args.db, args.call_id)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        callfile.write(args.out, args.call_id, call.flow, call.events, call.row.outcome, call.row.schema_version)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: call {args.call_id}, {len(call.events)} events")
    return 0
