"""`engine validate FILE...`: check flows and call scripts; every problem as file:line:column key.path: message."""

from __future__ import annotations

import argparse

HELP = "check flow and call-script YAML files (all errors at once, with file:line:column)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flows", nargs="+", metavar="FILE",
                        help="flow YAML files, or call scripts (*.call.yaml, or a file with `caller:`)")
    parser.add_argument("--strict", action="store_true", help="warnings fail validation too")


def _check(path: str):  # type: ignore[no-untyped-def]
    """A flow's report, or a call script's: the script itself, then its flow, then its tools against the flow."""
    from callstate.flows import FlowError, check_flow, resolve_flow
    from engine.flowload import Report
    from engine.textfile import TextFileError, read_text
    from sim.script import check_script, is_script, script_flow

    try:
        text: str | None = read_text(path)  # bounded: `engine validate /dev/zero` is one line, not a hang
    except TextFileError:
        text = None  # check_flow says why
    if not is_script(path, text):
        return check_flow(path), ""
    report = check_script(path)
    if not report.ok:
        return report, " (call script)"
    named = script_flow(path, report.value)
    try:
        flow = resolve_flow(named)
    except FlowError as exc:
        return Report(path, [f"{path}: its flow {named} does not validate:", *exc.errors]), " (call script)"
    report = check_script(path, flow)
    return report, f" (call script, flow {named or 'built-in'})"


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.flows:
        report, kind = _check(path)
        for line in report.errors:
            print(line)
        for line in report.warnings:
            print(f"warning: {line}")
        if report.ok:
            print(f"ok  {path}{kind}")
        failed |= not report.ok or (args.strict and bool(report.warnings))
    return 1 if failed else 0
