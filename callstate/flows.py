"""Finding the flow a command runs: a file (validated, with file:line errors) or the built-in default."""

from __future__ import annotations

from engine.flow import DEFAULT_FLOW, Flow
from engine.flowload import FlowError, load_flow

__all__ = ["FlowError", "resolve_flow"]


def resolve_flow(path: str | None) -> Flow:
    return DEFAULT_FLOW if path is None else load_flow(path)
