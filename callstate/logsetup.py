"""Logging for every `engine` command: one level switch (`--log-level`, `-v`, `-q`) and text or JSON lines.

`transitions` logs a line per state change at INFO (a dozen per turn); those are the machine's business and
the call's log holds them anyway, so they show only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from engine.redact import Redactor

LEVELS = ("debug", "info", "warning", "error")
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


MAX_LINE = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_redact = Redactor()  # the secrets of the running command (`engine serve` sets them): masked in every line


def mask(redactor: Redactor) -> None:
    """From now on, every log line masks these secrets."""
    global _redact
    _redact = redactor


def printable(text: str, limit: int = MAX_LINE) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``) and cut to ``limit`` characters: a
    CallSid or a provider's error text can neither forge log lines nor repaint a terminal (issue 11)."""
    out = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return out if len(out) <= limit else out[:limit - 1] + "…"


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message``, the message escaped, cut and with secrets masked."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(_redact(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any `extra=` fields (e.g. call_id)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name,
               "msg": _redact(record.getMessage())[:MAX_LINE]}
        out.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = _redact(self.formatException(record.exc_info))
        return _redact(json.dumps(out, default=str))


def level_of(log_level: str | None, verbose: int, quiet: int, default: str) -> int:
    """--log-level wins; else each -v goes one level down from the command's default, each -q one up."""
    if log_level:
        return logging.getLevelNamesMapping()[log_level.upper()]
    index = LEVELS.index(default) - verbose + quiet
    return logging.getLevelNamesMapping()[LEVELS[max(0, min(index, len(LEVELS) - 1))].upper()]


def configure(level: int, fmt: str = "text", tag: str = "") -> None:
    """``tag``: said after the logger's name on every text line (a worker's ``[worker N]``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(tag))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_callstate", False)]:  # ours from an earlier main()
        root.removeHandler(old)
    handler._callstate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
