"""`--set a.b.c=VALUE`: change one value of a flow by its dotted path, validated like a flow file.

The value is read as YAML (``2``, ``0.5``, ``true``, ``[a, b]``, ``"text"``), so it means what it would in
the flow file. A path that does not exist is an error naming the valid keys where it went wrong; the
changed flow must pass Flow.model_validate, as a loaded flow does.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from engine.flow import Flow


class OverrideError(ValueError):
    pass


def parse(item: str) -> tuple[list[str], Any]:
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise OverrideError(f"--set {item!r}: expected PATH=VALUE, e.g. turn_taking.barge_in.min_words=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise OverrideError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return [p for p in path.strip().split(".")], value


def apply_sets(flow: Flow, items: list[str]) -> Flow:
    """The flow with every PATH=VALUE applied in order, validated as a whole."""
    if not items:
        return flow
    data = flow.model_dump(mode="json")
    for item in items:
        keys, value = parse(item)
        node: Any = data
        for i, key in enumerate(keys):
            where = ".".join(keys[:i]) or "the flow"
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise OverrideError(f"--set {item!r}: {where} is a list of {len(node)}; "
                                        f"use an index 0..{len(node) - 1}, not {key!r}")
                idx: Any = int(key)
            elif isinstance(node, dict):
                if key not in node:
                    valid = ", ".join(sorted(node)) or "(none)"
                    raise OverrideError(f"--set {item!r}: {where} has no key {key!r}; valid keys: {valid}")
                idx = key
            else:
                raise OverrideError(f"--set {item!r}: {where} is a value ({node!r}), it has no keys")
            if i == len(keys) - 1:
                node[idx] = value
            else:
                node = node[idx]
    try:
        return Flow.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise OverrideError(f"--set {' '.join(items)}: the flow no longer validates: " + "; ".join(msgs)) from None
