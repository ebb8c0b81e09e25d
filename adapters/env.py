"""Reading provider keys from the environment (names only in errors: a key's value never is)."""

from __future__ import annotations

from collections.abc import Mapping


def need(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise LookupError(f"{name} is not set")
    return value
