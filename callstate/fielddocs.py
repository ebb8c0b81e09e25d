"""Field descriptions for `engine schema`, read from the ``#:`` comment block above each field.

``#:`` is Sphinx's convention for documenting an attribute, and already how this project explains its
fields (engine/policy.py, callstate/providers.py): one home for what a field means, which editors then show
from the schema. A field without one is caught by tests/test_newcomer.py.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType

_FIELD = re.compile(r"^    ([A-Za-z_]\w*)\s*:")  # an annotated attribute in a class body


def field_docs(cls: type) -> dict[str, str]:
    """{field: its ``#:`` comment}, base classes first so a subclass can say more about a field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # builtins, or no source shipped
            continue
        block: list[str] = []
        for line in lines[1:]:
            text = line.strip()
            if text.startswith("#:"):
                block.append(text[2:].strip())
                continue
            m = _FIELD.match(line)
            if m and block:
                docs[m[1]] = " ".join(block)
            block = []
    return docs


def classes(*modules: ModuleType) -> dict[str, type]:
    """Each module's classes by name: what pydantic names a ``$defs`` entry."""
    return {name: obj for m in modules for name, obj in vars(m).items()
            if inspect.isclass(obj) and obj.__module__ == m.__name__}
