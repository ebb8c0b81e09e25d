"""Logging for every `engine` command: one level switch (`--log-level`, `-v`, `-q`) and text or JSON lines.

`transitions` logs a line per state change at INFO (a dozen per turn); those are the machine's business and
the call's log holds them anyway, so they show only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any `extra=` fields (e.g. call_id)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def level_of(log_level: str | None, verbose: int, quiet: int, default: str) -> int:
    """--log-level wins; else each -v goes one level down from the command's default, each -q one up."""
    if log_level:
        return getattr(logging, log_level.upper())
    index = LEVELS.index(default) - verbose + quiet
    return getattr(logging, LEVELS[max(0, min(index, len(LEVELS) - 1))].upper())


def configure(level: int, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_callstate", False)]:  # ours from an earlier main()
        root.removeHandler(old)
    handler._callstate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
