"""Small wording helpers for the terminal views: counts with the right plural, columns that fit their data."""

from __future__ import annotations

from collections.abc import Iterable


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "turn")`` -> "1 turn"; ``plural(2, "turn")`` -> "2 turns"."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def width(header: str, values: Iterable[str], at_least: int = 0) -> int:
    """A column as wide as its header and its longest value (a Twilio CallSid is 34 characters)."""
    return max([len(header), at_least, *(len(v) for v in values)])
