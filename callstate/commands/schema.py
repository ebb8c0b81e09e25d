"""`engine schema`: the flow format as JSON Schema, for editors (yaml-language-server, VS Code, PyCharm)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from callstate.fielddocs import classes, field_docs

HELP = "print the JSON Schema of flow files (for editor completion and checks)"

SCHEMA_ID = "urn:callstate:flow:v1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def describe(properties: dict[str, Any], docs: dict[str, str]) -> None:
    """Each property's description from its field's ``#:`` comment (callstate/fielddocs.py)."""
    for name, spec in properties.items():
        if name in docs and "description" not in spec:
            spec["description"] = docs[name]


def provider_schema(kind: str) -> dict[str, Any]:
    """One variant per provider of this kind (callstate/providers.py); only the default may omit its name."""
    from callstate.providers import DEFAULTS, PROVIDERS

    variants = []
    for (k, name), row in PROVIDERS.items():
        if k == kind:
            variant = row.options.model_json_schema()
            describe(variant.get("properties", {}), field_docs(row.options))
            default = name == DEFAULTS[kind]  # type: ignore[index]
            variant["properties"]["provider"] = {"enum": [name, None]} if default else {"const": name}
            variant["properties"]["provider"]["description"] = (
                f"The {kind} provider: {name}" + (" (the default)" if default else ""))
            if not default:
                variant["required"] = ["provider"]
            variants.append(variant)
    return {"oneOf": variants}


def flow_schema() -> dict[str, Any]:
    from callstate.providers import KINDS
    from engine import flow, policy
    from engine.flow import Flow

    schema = Flow.model_json_schema()
    describe(schema["properties"], field_docs(Flow))
    known = classes(flow, policy)
    for name, definition in schema.get("$defs", {}).items():
        if name in known:
            describe(definition.get("properties", {}), field_docs(known[name]))
    for kind in KINDS:
        described = {k: v for k, v in schema["properties"][kind].items() if k == "description"}
        schema["properties"][kind] = {**described, **provider_schema(kind)}
    schema.get("$defs", {}).pop("ProviderConfig", None)
    # $schema/$id first: editors read them to pick the draft and to cache the schema
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema, "title": "callstate flow",
            "description": "A phone agent: who it is, its tools and nodes, and how it takes turns."}


def run(args: argparse.Namespace) -> int:
    text = json.dumps(flow_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
