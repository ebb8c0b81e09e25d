"""Console output that a caller cannot forge and that never shows a secret.

A CallSid, a mark name or a provider's error text reaches log lines; with newlines or ANSI escapes in it,
it would forge lines or repaint a terminal (issue 11). Every message is printed with control characters
escaped (``\\n``, ``\\x1b``), cut to ``MAX_LINE`` characters, and with known secrets masked.
"""

from __future__ import annotations

import logging
import re

from engine.redact import Redactor

MAX_LINE = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int = MAX_LINE) -> str:
    """``text`` with control characters escaped and cut to ``limit`` characters (an ellipsis says so)."""
    out = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return out if len(out) <= limit else out[:limit - 1] + "…"


class SafeFormatter(logging.Formatter):
    def __init__(self, fmt: str, redact: Redactor | None = None) -> None:
        super().__init__(fmt)
        self.redact = redact or Redactor()

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(self.redact(record.message))
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return self.redact(super().formatException(ei))


def setup(level: int = logging.INFO) -> SafeFormatter:
    """Log to stderr through a SafeFormatter (returned, so the caller can set its redactor later)."""
    formatter = SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that set up logging (pytest) keeps its own
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level)
    return formatter
