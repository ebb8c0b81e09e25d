"""`engine graph [FLOW]`: Mermaid diagrams of the call machine and of a flow's nodes.

The state diagrams are drawn from ``engine.machine.AGENT_TABLE`` and ``FLOOR_TABLE`` and nothing else, so
they can't drift from the machine; the flowchart is drawn from the flow's nodes and their transitions.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

HELP = "print a flow's node graph as a Mermaid diagram (no FLOW: the engine's call states)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow", nargs="?", metavar="FLOW", help="flow YAML file: draw its nodes")
    parser.add_argument("--only", choices=["states", "nodes", "all"],
                        help="which diagram: nodes (the default with a FLOW), states (the default without), "
                             "or all (the call states, then the flow's nodes)")
    parser.add_argument("--markdown", action="store_true", help="wrap each diagram in a ```mermaid fence")


def _states_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for s in [*sources, row.get("dest")]:
            if isinstance(s, str) and s != "*":
                seen.setdefault(s)
    return list(seen)


def render_states(transitions: list[Mapping[str, Any]], initial: str | None = None) -> str:
    """``stateDiagram-v2`` from a transitions table: source may be a state, a list, or "*" (every state)."""
    states = _states_of(transitions)
    lines = ["stateDiagram-v2"]
    if initial:
        lines.append(f"    [*] --> {initial}")
    leaving: set[str] = set()
    for row in transitions:
        dest = row.get("dest")
        source = row["source"]
        sources = [s for s in states if s != dest] if source == "*" else (
            source if isinstance(source, list) else [source])
        label = row["trigger"]
        conditions = row.get("conditions")
        if conditions:
            guards = conditions if isinstance(conditions, list) else [conditions]
            label += " [" + ", ".join(getattr(g, "__name__", str(g)) for g in guards) + "]"
        for s in sources:
            leaving.add(s)
            lines.append(f"    {s} --> {dest or s}: {label}")  # dest None is an internal transition
    lines += [f"    {s} --> [*]" for s in states if s not in leaving]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def render_nodes(flow: Any) -> str:
    """``flowchart TD`` of a flow's nodes: edges labelled by tool (and result case), DTMF key or goto."""
    ids = {name: f"n{i}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}" for i, name in enumerate(flow.nodes)}
    lines = ["flowchart TD", "    start((start))"]
    for name, nid in ids.items():
        lines.append(f"    {nid}[{_quote(name)}]")
    if flow.start_node in ids:
        lines.append(f"    start --> {ids[flow.start_node]}")

    def edge(src: str, label: str, dest: str) -> None:
        if dest in ids:
            lines.append(f"    {ids[src]} -->|{_quote(label)}| {ids[dest]}")

    for name, node in flow.nodes.items():
        for tool, route in node.on_tool.items():
            if isinstance(route, str):
                edge(name, tool, route)
                continue
            for case, dest in route.cases.items():
                edge(name, f"{tool}: {route.field} = {case}", dest)
            if route.default:
                edge(name, f"{tool}: default", route.default)
        for key, dest in node.on_dtmf.items():
            edge(name, f"DTMF {key}", dest)
        for dest in node.goto:
            edge(name, "goto", dest)
        if node.end is not None:
            lines.append(f"    {ids[name]} --> {ids[name]}_hangup((({_quote('hang up')})))")
        if node.transfer is not None:
            lines.append(f"    {ids[name]} --> {ids[name]}_transfer[/{_quote('transfer ' + node.transfer.to)}/]")
    return "\n".join(lines)


def _machine() -> tuple[list[Mapping[str, Any]], str | None]:
    """The agent's table and its initial state."""
    from engine import machine  # imported here: the machine module is the one source of the tables

    return machine.AGENT_TABLE, machine.CallState.LISTENING.value


def _floor() -> tuple[list[Mapping[str, Any]], str | None]:
    """The caller's floor: its table and its initial state."""
    from engine import machine

    return machine.FLOOR_TABLE, machine.Floor.SILENT.value


def render_flow(flow: Any) -> str:
    """The flow's own graph: its nodes, or for a flow without nodes the one conversation and its tools."""
    if flow.nodes:
        return render_nodes(flow)
    lines = ["flowchart TD", "    start((start))", f"    conv[{_quote(flow.name + ': one conversation')}]",
             "    start --> conv"]
    lines += [f"    conv -.->|{_quote('tool')}| t{i}[/{_quote(name)}/]" for i, name in enumerate(flow.tools)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    only = args.only or ("nodes" if args.flow else "states")
    diagrams: list[str] = []
    if only in ("states", "all"):
        try:
            halves = [_machine(), _floor()]
        except ImportError as exc:
            print(f"engine graph: can't import engine.machine ({exc})", file=sys.stderr)
            return 1
        diagrams += [render_states(transitions, initial) for transitions, initial in halves]
    if args.flow and only in ("nodes", "all"):
        from callstate.flows import FlowError, load_flow

        try:
            flow = load_flow(args.flow)
        except FlowError as exc:
            print("\n".join(exc.errors), file=sys.stderr)
            return 1
        diagrams.append(render_flow(flow))
    elif only in ("nodes", "all") and not args.flow:
        print(f"engine graph --only {only}: give a FLOW", file=sys.stderr)
        return 2
    for i, diagram in enumerate(diagrams):
        print("```mermaid\n" + diagram + "\n```" if args.markdown else diagram)
        if i < len(diagrams) - 1:
            print()
    return 0
