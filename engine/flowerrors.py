"""Pydantic's validation errors as a flow author reads them: the key path, and a message in words.

Rules:
- One message per problem: of a union's members, only the ones the value had the shape of are reported.
- Unknown keys suggest the closest known key (difflib), else list the allowed ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from pydantic import BaseModel

Loc = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[\w*#+-]+")
_TYPE_WORDS = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
    "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "dataclass_type": "a mapping", "none_required": "null",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def format_path(path: Loc) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += ("." if out else "") + (step if _PLAIN_KEY.fullmatch(step) else json.dumps(step))
    return out


# ----------------------------------------------------------------------- pydantic errors -> text


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp


def _fields(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {n: f.annotation for n, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp)
    return None


def walk(loc: tuple[Any, ...], root: Any) -> tuple[Loc, list[tuple[int, str]], Any]:
    """Follow a pydantic ``loc`` through the model's types: the data path, the union tags met, the parent type."""
    tp: Any = root
    path: list[str | int] = []
    tags: list[tuple[int, str]] = []
    parent: Any = None
    for step in loc:
        tp = _unwrap(tp)
        if typing.get_origin(tp) in (Union, types.UnionType):  # pydantic names the union member tried
            tags.append((len(path), str(step)))
            members = [a for a in typing.get_args(tp) if getattr(a, "__name__", repr(a)) == step]
            tp = members[0] if members else Any
            continue
        parent = tp
        fields = _fields(tp)
        origin = typing.get_origin(tp)
        if step == "[key]":
            continue
        path.append(step)
        if fields is not None:
            tp = fields.get(step, Any)
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            tp = Any
    return tuple(path), tags, parent


def _message(err: Mapping[str, Any], parent: Any, path: Loc) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key = str(path[-1])
        allowed = list(_fields(_unwrap(parent)) or ())
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
        return f"unknown key '{key}' ({hint})"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return "must be one of: " + ", ".join(re.findall(r"'((?:[^'\\]|\\.)*)'", ctx.get("expected", "")))
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {int(bound) if float(bound).is_integer() else bound}"
    if kind == "string_pattern_mismatch" and path and path[-1] == "function":
        return "must look like module:function (e.g. myapp.tools:lookup)"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    msg = msg.replace("Input should be", "must be").replace("String should", "must")
    return msg[:1].lower() + msg[1:]


def collapse(errors: list[Any], root: Any) -> list[tuple[Loc, str]]:
    """One message per problem: of a union's members, keep the ones the value had the shape of."""
    plain: list[tuple[Loc, str]] = []
    unions: dict[Loc, dict[str, list[tuple[Loc, str, bool]]]] = {}
    for err in errors:
        path, tags, parent = walk(err["loc"], root)
        msg = _message(err, parent, path)
        if not tags:
            plain.append((path, msg))
            continue
        depth, tag = tags[0]
        shape = len(path) == depth and err["type"] in _TYPE_WORDS  # the value wasn't this member's type
        unions.setdefault(path[:depth], {}).setdefault(tag, []).append((path, msg, shape))
    for at, branches in unions.items():
        fitting = {t: errs for t, errs in branches.items() if not all(s for _, _, s in errs)}
        if fitting:
            plain.extend((p, m) for errs in fitting.values() for p, m, _ in errs)
        else:
            words = [m.removeprefix("must be ") for errs in branches.values() for _, m, _ in errs]
            plain.append((at, "must be " + " or ".join(dict.fromkeys(words))))
    return plain
