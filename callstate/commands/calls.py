"""`engine calls`: the logged calls, newest last."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import DEFAULT_DB, open_readonly
from callstate.logsafe import printable
from engine.store import StoreError

HELP = "list logged calls (id, start, duration, turns, outcome)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"the call log (default {DEFAULT_DB})")
    p.add_argument("--since", help="only calls started at or after this ISO time")


def run(args: argparse.Namespace) -> int:
    try:
        store = open_readonly(args.db)
        rows = store.list_calls(since=args.since)
        store.close()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'call':<18} {'started':<26} {'flow':<18} {'duration':>9} {'turns':>5}  outcome")
    for r in rows:
        dur = "-" if r.duration_ms is None else f"{r.duration_ms / 1000:.1f}s"
        # Ids and names come from callers and files: escaped, so a log can't repaint the terminal
        call_id, started, flow = printable(r.call_id, 80), printable(r.started_at, 40), printable(r.flow, 40)
        print(f"{call_id:<18} {started:<26} {flow:<18} {dur:>9} {r.turns if r.turns is not None else '-':>5}"
              f"  {printable(r.outcome or r.status, 40)}")
    return 0
