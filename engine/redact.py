"""Masking secrets in text bound for the log or the console: every known secret value becomes ``***``.

The log keeps flows with environment values masked at the source (engine/flowload.py); this is the second
line: whatever text reaches a stored row or a log line (a provider's error echoing a URL, a webhook's answer
echoing a header) is scanned for the values themselves, raw and JSON-escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MIN_CHARS = 6  # shorter values ("1", "en-US") are not secrets, and masking them would garble text
MASK = "***"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = set()
        for s in secrets:
            if len(s) >= MIN_CHARS:
                forms.add(s)
                forms.add(json.dumps(s, ensure_ascii=False)[1:-1])  # as it appears inside JSON text
                forms.add(json.dumps(s)[1:-1])
        alternatives = sorted(forms, key=len, reverse=True)  # the longest first: no half-masked value
        self._re = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def __bool__(self) -> bool:
        return self._re is not None

    def __call__(self, text: str) -> str:
        return self._re.sub(MASK, text) if self._re is not None else text
