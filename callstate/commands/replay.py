"""`engine replay CALL_ID`: reproduce a logged call exactly, or show where it diverges.

With --timeline or --html, also show the call: a text timeline, or one self-contained HTML page.
With --set PATH=VALUE (repeatable) or --flow FILE, replay it as a what-if under the changed flow and print
the original and the what-if side by side; --timeline/--html then show the what-if.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callstate.flows import FlowError, resolve_flow
from callstate.logs import LoggedCall, add_db, load_call
from engine.store import StoreError
from replay import html, textview
from replay.compare import side_by_side
from replay.overrides import OverrideError, apply_sets
from replay.reproduce import reproduce
from replay.timeline import Timeline, build
from replay.whatif import what_if
from replay.words import plural

HELP = "reproduce a logged call; --timeline/--html to show it, --set/--flow for a what-if"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("call_id", metavar="CALL_ID|FILE.jsonl", help="a call in the DB, or a file `engine export` wrote")
    add_db(p)
    p.add_argument("--timeline", action="store_true", help="print a text timeline of the call")
    p.add_argument("--html", metavar="OUT", help="write the call's timeline as one self-contained HTML page")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                   help="what-if: change one flow value, e.g. turn_taking.barge_in.min_words=2 (repeatable)")
    p.add_argument("--flow", help="what-if: replay the call under this flow file instead of its own")


def _timeline(call: LoggedCall, call_id: str) -> Timeline:
    return build(call.flow, call.events, call_id=call_id, outcome=call.row.outcome, meta=call.row.meta)


def _show(tl: Timeline, args: argparse.Namespace) -> int:
    if args.timeline:
        print("\n".join(textview.render(tl, color=textview.use_color(sys.stdout))))
    if args.html:
        out = Path(args.html)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(html.render(tl), encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {out}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {out} ({plural(len(tl.turns), 'turn')})")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        call = load_call(args.db, args.call_id)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.call_id = call.row.call_id  # a file names its call on its first line
    result = reproduce(call.flow, call.events, call_id=args.call_id, schema_version=call.row.schema_version)
    if args.sets or args.flow:
        return _what_if(call, args, reproduced=result.ok)
    if result.divergence is not None:
        print(result.divergence.describe(args.call_id))
        if args.timeline or args.html:
            print("the timeline below re-runs the machine: where the log diverges, it shows the replay",
                  file=sys.stderr)
            _show(_timeline(call, args.call_id), args)
        return 1
    if not (args.timeline or args.html):
        print(f"reproduced {result.events} events of call {args.call_id}: every effect identical")
        return 0
    return _show(_timeline(call, args.call_id), args)


def _what_if(call: LoggedCall, args: argparse.Namespace, *, reproduced: bool) -> int:
    if not reproduced:
        print(f"error: call {args.call_id} does not reproduce under its own flow (run `engine replay "
              f"{args.call_id}` to see where); a what-if on it would compare against the wrong call",
              file=sys.stderr)
        return 1
    try:
        flow = resolve_flow(args.flow) if args.flow else call.flow
        flow = apply_sets(flow, args.sets)
    except (FlowError, OverrideError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = what_if(flow, call.events, call_id=args.call_id)
    orig = _timeline(call, args.call_id)
    new = build(flow, result.log, call_id=f"{args.call_id} (what-if)")
    changes = ([f"--flow {args.flow}"] if args.flow else []) + args.sets
    print("\n".join(side_by_side(orig, new, result, changes)))
    if args.timeline or args.html:
        print()
        return _show(new, args)
    return 0
