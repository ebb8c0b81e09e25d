"""`engine`: one subcommand per module in callstate/commands (imported only when that command runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under callstate.commands (the module's HELP is shown in `engine --help`)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "serve": "serve",
    "talk": "talk",
    "call": "call",
    "replay": "replay",
    "calls": "calls",
    "check": "check",
    "stats": "stats",
    "export": "export",
    "validate": "validate",
    "schema": "schema",
    "graph": "graph",
}


def _load(name: str):
    return importlib.import_module(f"callstate.commands.{COMMANDS[name]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="engine", description="callstate: phone voice agents as state machines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen command's module is imported, so `engine validate` never loads aiohttp or the SDKs.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name in COMMANDS:
        mod = _load(name) if name == chosen else None
        p = sub.add_parser(name, help=getattr(mod, "HELP", None) if mod else None)
        if mod is not None:
            mod.configure(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `engine ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
