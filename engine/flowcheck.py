"""Flow checks pydantic can't make: names that must point at each other, nodes no call reaches or leaves.

Errors and warnings go to the callbacks the loader passes, with the key path they concern; the loader
turns paths into file:line:column.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from engine.flowerrors import Loc

_DTMF = set("0123456789*#")
_TYPES = ["array", "boolean", "integer", "null", "number", "object", "string"]
_URL = re.compile(r"https?://[^/\s]", re.I)


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"no {kind} named '{name}' (did you mean '{close[0]}'?)"
    return f"no {kind} named '{name}' ({kind}s: {', '.join(known)})" if known else f"no {kind} named '{name}'"


class Checks:
    """What pydantic can't see: names that must point at each other, and nodes no call can reach or leave.

    Works on the raw data, skipping anything of the wrong shape (pydantic has reported that already), so a
    file with schema errors still gets its reference errors in the same run.
    """

    def __init__(self, data: dict[str, Any], error: Any, warn: Any) -> None:
        self.d, self.error, self.warn = data, error, warn
        self.tools = data["tools"] if isinstance(data.get("tools"), dict) else {}
        self.nodes = data["nodes"] if isinstance(data.get("nodes"), dict) else {}

    def run(self) -> None:
        for name, tool in self.tools.items():
            if name == "goto":
                self.error(("tools", name), "'goto' is reserved: it is the built-in tool that moves nodes")
            webhook = tool.get("webhook") if isinstance(tool, dict) else None
            url = webhook.get("url") if isinstance(webhook, dict) else None
            if isinstance(url, str) and not _URL.match(url):
                self.error(("tools", name, "webhook", "url"), "must be an http:// or https:// URL")
            params = tool.get("parameters") if isinstance(tool, dict) else None
            if isinstance(params, dict):
                self.parameters(params, ("tools", name, "parameters"))
        self.turn_taking(self.d.get("turn_taking"), ("turn_taking",))
        local = self.d.get("local")
        replies = local.get("replies") if isinstance(local, dict) else None
        for i, reply in enumerate(replies if isinstance(replies, list) else []):
            tool = reply.get("tool") if isinstance(reply, dict) else None
            if isinstance(tool, str) and tool != "goto" and tool not in self.tools:
                self.error(("local", "replies", i, "tool"), unknown_name("tool", tool, list(self.tools)))
        self.graph()

    def parameters(self, schema: dict[str, Any], path: Loc) -> None:
        """A tool's `parameters` is JSON Schema (the LLM sees it as is): checked against the 2020-12
        metaschema, an object at the top, and every `required` name one of its `properties`."""
        from jsonschema import Draft202012Validator

        errors = sorted(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema),
                        key=lambda e: list(map(str, e.path)))
        for err in errors:
            where = (*path, *err.path)
            if err.path and err.path[-1] == "type" and isinstance(err.instance, str):
                self.error(where, unknown_name("JSON Schema type", err.instance, _TYPES).replace("named ", ""))
            else:
                self.error(where, f"not valid JSON Schema: {err.message}")
        if not errors and schema.get("type") != "object":
            self.error((*path, "type"), "a tool's parameters must be a JSON Schema of type 'object'")
        self._required(schema, path)

    def _required(self, schema: dict[str, Any], path: Loc) -> None:
        found = schema.get("properties")
        props: dict[str, Any] = found if isinstance(found, dict) else {}
        required = schema.get("required")
        for i, name in enumerate(required if isinstance(required, list) else []):
            if name not in props:
                self.error((*path, "required", i), unknown_name("property", str(name), list(props)))
        for key, sub in props.items():
            if isinstance(sub, dict):
                self._required(sub, (*path, "properties", key))
        if isinstance(schema.get("items"), dict):
            self._required(schema["items"], (*path, "items"))

    def turn_taking(self, value: Any, path: Loc) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "pattern" and isinstance(v, str):
                    try:
                        re.compile(v)
                    except re.error as exc:
                        self.error((*path, k), f"not a valid regular expression ({exc})")
                self.turn_taking(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.turn_taking(v, (*path, i))
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            self.error(path, "must be >= 0")

    def target(self, path: Loc, name: Any) -> str | None:
        if not isinstance(name, str):
            return None
        if name not in self.nodes:
            self.error(path, unknown_name("node", name, list(self.nodes)))
            return None
        return name

    def edges(self, name: str, node: dict[str, Any]) -> list[str | None]:
        at: Loc = ("nodes", name)
        out: list[str | None] = []
        tools = node.get("tools", [])  # a node offers the LLM only these (none if absent)
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            if tool == "goto":
                self.error((*at, "tools", i), "'goto' is built in: list the nodes it may reach under `goto`")
            elif isinstance(tool, str) and tool not in self.tools:
                self.error((*at, "tools", i), unknown_name("tool", tool, list(self.tools)))
        on_tool = node.get("on_tool")
        for tool, route in (on_tool.items() if isinstance(on_tool, dict) else ()):
            here = (*at, "on_tool", tool)
            if tool not in self.tools:
                self.error(here, unknown_name("tool", tool, list(self.tools)))
            elif isinstance(tools, list) and tool not in tools:
                self.error(here, f"'{tool}' is not in this node's `tools`, so this route never fires")
            if not isinstance(route, dict):
                out.append(self.target(here, route))
                continue
            cases = route.get("cases")
            if isinstance(cases, dict):
                if cases and not route.get("field"):
                    self.error((*here, "cases"), "needs `field`: the result field the cases are values of")
                out += [self.target((*here, "cases", k), v) for k, v in cases.items()]
            if route.get("default") is not None:
                out.append(self.target((*here, "default"), route["default"]))
        on_dtmf = node.get("on_dtmf")
        for key, dest in (on_dtmf.items() if isinstance(on_dtmf, dict) else ()):
            if len(key) != 1 or key not in _DTMF:
                self.error((*at, "on_dtmf", key), "must be one DTMF key: 0-9, * or #")
            out.append(self.target((*at, "on_dtmf", key), dest))
        goto: list[Any] = node["goto"] if isinstance(node.get("goto"), list) else []
        out += [self.target((*at, "goto", i), g) for i, g in enumerate(goto)]
        if node.get("end") is not None and node.get("transfer") is not None:
            self.error((*at, "transfer"), "a node either ends the call (`end`) or transfers it, not both")
        return out

    def graph(self) -> None:
        start = self.d.get("start_node")
        if not self.nodes:
            if isinstance(start, str):
                self.error(("start_node",), f"no node named '{start}' (the flow has no `nodes`)")
            return
        if start is None:
            self.error(("start_node",), "required when `nodes` are given", at=("nodes",))
        start = self.target(("start_node",), start)
        edges: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            if not isinstance(node, dict):
                continue
            edges[name] = [t for t in self.edges(name, node) if t is not None]
            leaves = any(node.get(k) for k in ("on_tool", "on_dtmf", "goto", "tools"))
            if not leaves and node.get("end") is None and node.get("transfer") is None:
                self.warn(("nodes", name), "dead end: no transitions, no tools and no `end` or `transfer`")
        if start is None:
            return
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        for name in self.nodes:
            if name not in seen:
                self.warn(("nodes", name), f"unreachable from start_node '{start}'")
