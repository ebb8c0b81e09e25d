"""`engine validate FLOW...`: check flow files; every problem as file:line:column key.path: message."""

from __future__ import annotations

import argparse

HELP = "check flow YAML files (all errors at once, with file:line:column)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flows", nargs="+", metavar="FLOW", help="flow YAML files")
    parser.add_argument("--strict", action="store_true", help="warnings fail validation too")


def run(args: argparse.Namespace) -> int:
    from callstate.flows import check_flow

    failed = False
    for path in args.flows:
        report = check_flow(path)
        for line in report.errors:
            print(line)
        for line in report.warnings:
            print(f"warning: {line}")
        if report.ok:
            print(f"ok  {path}")
        failed |= not report.ok or (args.strict and bool(report.warnings))
    return 1 if failed else 0
