"""`engine calls`: the logged calls, newest last."""

from __future__ import annotations

import argparse
import sys

from callstate.logs import add_db, add_since, open_readonly
from callstate.logsetup import printable
from engine.store import StoreError
from replay.words import width

HELP = "list logged calls (id, start, duration, turns, outcome)"


def configure(p: argparse.ArgumentParser) -> None:
    add_db(p)
    add_since(p)


def run(args: argparse.Namespace) -> int:
    try:
        store = open_readonly(args.db)
        rows = store.list_calls(since=args.since)
        store.close()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Ids and names come from callers and files: escaped and cut, so a log can't forge lines or repaint a terminal
    shown = [(printable(r.call_id, 80), printable(r.started_at, 40), printable(r.flow, 40),
              printable(r.outcome or r.status, 40), r) for r in rows]
    cw, fw = width("call", (s[0] for s in shown)), width("flow", (s[2] for s in shown))
    print(f"{'call':<{cw}} {'started':<29} {'flow':<{fw}} {'duration':>9} {'turns':>5}  outcome")
    for call_id, started, flow, outcome, r in shown:
        dur = "-" if r.duration_ms is None else f"{r.duration_ms / 1000:.1f}s"
        print(f"{call_id:<{cw}} {started:<29} {flow:<{fw}} {dur:>9} "
              f"{r.turns if r.turns is not None else '-':>5}  {outcome}")
    return 0
