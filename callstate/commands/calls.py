"""`engine calls`: the logged calls, newest last."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import DB_HELP, DEFAULT_DB, add_since, open_readonly
from engine.store import StoreError
from replay.words import width

HELP = "list logged calls (id, start, duration, turns, outcome)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    add_since(p)


def run(args: argparse.Namespace) -> int:
    try:
        store = open_readonly(args.db)
        rows = store.list_calls(since=args.since)
        store.close()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cw, fw = width("call", (r.call_id for r in rows)), width("flow", (r.flow for r in rows))
    print(f"{'call':<{cw}} {'started':<29} {'flow':<{fw}} {'duration':>9} {'turns':>5}  outcome")
    for r in rows:
        dur = "-" if r.duration_ms is None else f"{r.duration_ms / 1000:.1f}s"
        print(f"{r.call_id:<{cw}} {r.started_at:<29} {r.flow:<{fw}} {dur:>9} "
              f"{r.turns if r.turns is not None else '-':>5}  {r.outcome or r.status}")
    return 0
