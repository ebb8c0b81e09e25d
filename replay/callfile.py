"""A call as one JSON Lines file (`engine export`): the flow on the first line, then one event a line.

Line 1 is ``{"flow": <the flow as JSON>, "call_id": ..., "schema_version": N}`` (no version: 1); every
other line is one event's envelope as
engine.codec.dumps writes it. Such a file is a regression test by itself (tests/callhelper.py): it holds
everything a replay needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from engine import codec
from engine import events as ev
from engine.flow import Flow


class CallFileError(ValueError):
    """The file is not a call export; the message names the file and the line."""


@dataclass
class CallFile:
    call_id: str
    flow: Flow
    events: list[ev.Event]
    outcome: str | None = None
    schema_version: int = ev.SCHEMA_VERSION


def dump(call_id: str, flow: Flow, events: list[ev.Event], outcome: str | None = None,
         schema_version: int = ev.SCHEMA_VERSION) -> str:
    head = json.dumps({"flow": flow.log_record(), "call_id": call_id,
                       **({"outcome": outcome} if outcome else {}), "schema_version": schema_version},
                      ensure_ascii=False)
    return "\n".join([head, *(codec.dumps(call_id, e) for e in events)]) + "\n"


def write(path: str | Path, call_id: str, flow: Flow, events: list[ev.Event], outcome: str | None = None,
          schema_version: int = ev.SCHEMA_VERSION) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump(call_id, flow, events, outcome, schema_version), encoding="utf-8")


def load(path: str | Path) -> CallFile:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CallFileError(f"{p}: cannot read ({exc.strerror})") from None
    if not lines:
        raise CallFileError(f"{p}: empty; line 1 must be {{\"flow\": ...}}")
    try:
        head = json.loads(lines[0])
        if not isinstance(head, dict):
            raise TypeError("line 1 is not an object")
        flow = Flow.model_validate(head["flow"])
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise CallFileError(f"{p}:1: expected {{\"flow\": ...}} ({exc})") from None
    except ValidationError as exc:
        raise CallFileError(f"{p}:1: the flow does not validate: {exc.errors()[0]['msg']}") from None
    events = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            events.append(codec.loads(line))
        except ev.EventError as exc:
            raise CallFileError(f"{p}:{n}: {exc}") from None
    call_id = head.get("call_id") or (json.loads(lines[1]).get("call_id") if len(lines) > 1 else None) or p.stem
    version = head.get("schema_version", 1)
    if not isinstance(version, int) or not 1 <= version <= ev.SCHEMA_VERSION:
        raise CallFileError(f"{p}:1: schema_version {version!r}: this engine reads 1 to {ev.SCHEMA_VERSION}")
    outcome = head.get("outcome")
    return CallFile(call_id=str(call_id), flow=flow, events=events,
                    outcome=outcome if isinstance(outcome, str) else None, schema_version=version)
