"""`engine replay CALL_ID`: reproduce a logged call exactly, or show where it diverges."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import DEFAULT_DB, load_call
from engine.store import StoreError
from replay.reproduce import reproduce

HELP = "reproduce a logged call from its inputs and compare every effect"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("call_id")
    p.add_argument("--db", default=DEFAULT_DB, help=f"the call log (default {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    try:
        call = load_call(args.db, args.call_id)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = reproduce(call.flow, call.events, call_id=args.call_id)
    if result.divergence is not None:
        print(result.divergence.describe(args.call_id))
        return 1
    print(f"reproduced {result.events} events of call {args.call_id}: every effect identical")
    return 0
