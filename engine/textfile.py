"""Reading a user's text file (a flow, a call script) with a bound: `/dev/zero` or a 10 GB file is a clear
one-line error, never a MemoryError (issue 11)."""

from __future__ import annotations

import os

#: A flow or a call script is a few KB; a MiB is far past any real one.
MAX_BYTES = 1024 * 1024


class TextFileError(ValueError):
    """The file cannot be read as text; the message names it and says why."""


def read_text(path: str | os.PathLike[str], limit: int = MAX_BYTES) -> str:
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:  # "No such file or directory", "Is a directory", "Permission denied"
        raise TextFileError(f"{name}: cannot read ({exc.strerror})") from None
    if len(data) > limit:
        raise TextFileError(f"{name}: too large (over {limit // 1024} KiB); is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TextFileError(f"{name}: not UTF-8 text") from None
