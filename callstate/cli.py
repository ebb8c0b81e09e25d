"""`engine`: one subcommand per module in callstate/commands (imported only when that command runs)."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from callstate import logsetup

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
    "db": "db",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"callstate.commands.{COMMANDS[name]}")


def _version() -> str:
    try:
        return version("callstate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=logsetup.LEVELS, help="log level (default: info for serve, else warning)")
    p.add_argument("-v", "--verbose", action="count", help="more log lines (repeatable)")
    p.add_argument("-q", "--quiet", action="count", help="fewer log lines (repeatable)")
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, but only where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="callstate: phone voice agents as state machines",
                                     epilog="`engine COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"callstate {_version()}")
    _logging_options(parser)
    # the same options after the command (`engine serve -v`); SUPPRESS keeps them from resetting the global ones
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _logging_options(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    # Only the chosen command's module is imported, so `engine validate` never loads aliases or the SDKs;
    # `engine --help` imports them all for their one-line descriptions.
    for name in COMMANDS:
        mod: ModuleType | None = None
        if chosen in (None, name):
            try:
                mod = _load(name)
            except ImportError as exc:
                if chosen == name:
                    raise
                sub.add_parser(name, help=f"(unavailable: {exc})")
                continue
        text = getattr(mod, "HELP", None)
        p = sub.add_parser(name, help=text, description=text, parents=[common], formatter_class=_Formatter)
        if mod is not None and chosen == name:
            mod.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    if chosen is None and "--version" in argv:
        print(f"callstate {_version()}")
        return 0
    try:
        parser = build_parser(chosen)
    except ImportError as exc:
        print(f"error: engine {chosen} cannot start: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    args.argv = argv  # as given: `engine serve --workers N` starts its workers with the same options
    if args.command is None:
        parser.print_help()
        return 2
    mod = _load(args.command)
    default = getattr(mod, "LOG_LEVEL", "warning")
    worker = getattr(args, "worker_dir", None) is not None  # one of `engine serve --workers N`'s processes
    logsetup.configure(logsetup.level_of(args.log_level, args.verbose or 0, args.quiet or 0, default),
                       args.log_format or "text", f" [worker {args.worker_index}]" if worker else "")
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `engine ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
