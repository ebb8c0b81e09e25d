"""`engine check`: every rule a logged call must keep, run over a log (the property tests' predicates).

A call that does not reproduce is itself a violation, named by its first diverging seq: the invariants
are then checked on what the machine does now, which is no longer what the log says happened.
"""

from __future__ import annotations

from engine import events as ev
from engine.flow import Flow
from engine.machine import EngineMisuse
from replay import invariants
from replay.invariants import Violation
from replay.reproduce import reproduce
from replay.turns import steps


def check_log(flow: Flow, log: list[ev.Event], *, call_id: str = "call",
              schema_version: int = ev.SCHEMA_VERSION) -> list[Violation]:
    """Reproduce the call, then run every invariant; the violations in seq order."""
    out: list[Violation] = []
    result = reproduce(flow, log, call_id=call_id, schema_version=schema_version)
    if result.divergence is not None:
        d = result.divergence
        lines = d.describe(call_id).splitlines()  # "call 'X' diverged at seq N (the step of ...)", then details
        what = lines[0].split(" ", 2)[2] if lines[0].startswith("call ") else lines[0]
        out.append(Violation("reproduces", d.seq, " / ".join([what, *(line.strip() for line in lines[1:])])))
        # invariants on the inputs up to the divergence only: past it the log and the machine disagree
        log = [e for e in log if e.seq < d.seq]
    try:
        run = steps(flow, [e for e in log if isinstance(e, ev.Input)])
    except EngineMisuse as exc:  # an input the machine refuses: already reported above
        if not out:
            out.append(Violation("reproduces", 0, f"cannot re-run the call: {exc}"))
        return out
    return out + sorted(invariants.check(run, flow), key=lambda v: v.seq)
