"""Finding the flow a command runs: a file (validated, providers included, with file:line errors) or the
built-in default. Every command loads flows through here, so the provider registry always checks them."""

from __future__ import annotations

import os
from collections.abc import Mapping

from callstate.providers import REGISTRY
from engine import flowload
from engine.flow import DEFAULT_FLOW, Flow
from engine.flowload import FlowError, Report

__all__ = ["FlowError", "check_flow", "check_text", "load_flow", "resolve_flow"]


def load_flow(path: str | os.PathLike[str]) -> Flow:
    return flowload.load_flow(path, providers=REGISTRY)


def check_flow(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Report:
    return flowload.check_flow(path, env, providers=REGISTRY)


def check_text(text: str, name: str = "<flow>", env: Mapping[str, str] | None = None) -> Report:
    return flowload.check_text(text, name, env, providers=REGISTRY)


def resolve_flow(path: str | None) -> Flow:
    return DEFAULT_FLOW if path is None else load_flow(path)
