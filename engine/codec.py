"""The log's envelope: every event as ``{call_id, seq, t_ms, kind, type, data, cause}`` JSON, and back.

Rules:
- One envelope for every store and export; ``data`` holds the event's own fields, JSON-typed (tuples as
  lists, nested values as objects). Loading checks every field's type against the class: a malformed
  record raises EventError naming the call and seq, never anything else.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal

from engine.events import REGISTRY, Event, EventError

_BASE_FIELDS = ("t_ms", "seq", "cause")


def _data_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)


_FIELDS: dict[type, tuple[str, ...]] = {cls: _data_fields(cls) for cls in REGISTRY.values()}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_json(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise EventError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_from_json(item_tp, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise EventError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if origin is Literal:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EventError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        return tp(**{k: _from_json(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool, float) and type(value) is not tp:
        raise EventError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def to_record(call_id: str, event: Event) -> dict[str, Any]:
    """The log envelope: ``{call_id, seq, t_ms, kind, type, data, cause}``."""
    cls = type(event)
    return {
        "call_id": call_id,
        "seq": event.seq,
        "t_ms": event.t_ms,
        "kind": cls.kind,
        "type": cls.__name__,
        "data": {name: _to_json(getattr(event, name)) for name in _FIELDS[cls]},
        "cause": event.cause,
    }


def from_record(record: dict[str, Any]) -> Event:
    """Rebuild an event from its envelope. A malformed record raises EventError naming call and seq."""
    where = f"call {record.get('call_id')!r} seq {record.get('seq')!r}"
    cls = REGISTRY.get(record.get("type", ""))
    if cls is None:
        raise EventError(f"{where}: unknown event type {record.get('type')!r}")
    if record.get("kind") != cls.kind:
        raise EventError(f"{where}: {cls.__name__} is kind {cls.kind!r}, record says {record.get('kind')!r}")
    data = record.get("data")
    if not isinstance(data, dict):
        raise EventError(f"{where}: data must be an object")
    hints = _hints(cls)
    unknown = set(data) - set(_FIELDS[cls])
    if unknown:
        raise EventError(f"{where}: {cls.__name__} has no field(s) {sorted(unknown)}")
    try:
        kwargs = {k: _from_json(hints[k], v, f"{where} {cls.__name__}.{k}") for k, v in data.items()}
        return cls(t_ms=record["t_ms"], seq=record["seq"], cause=record.get("cause"), **kwargs)
    except EventError:
        raise
    except (TypeError, KeyError) as exc:
        raise EventError(f"{where}: cannot build {cls.__name__}: {exc}") from None


def dumps(call_id: str, event: Event) -> str:
    return json.dumps(to_record(call_id, event), separators=(",", ":"), ensure_ascii=False)


def loads(line: str) -> Event:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"not a JSON record: {exc}") from None
    if not isinstance(record, dict):
        raise EventError("a record must be a JSON object")
    return from_record(record)
