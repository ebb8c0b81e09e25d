"""`engine schema`: the flow format as JSON Schema, for editors (yaml-language-server, VS Code, PyCharm)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "print the JSON Schema of flow files (for editor completion and checks)"

SCHEMA_ID = "urn:callstate:flow:v1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def flow_schema() -> dict[str, Any]:
    from engine.flow import Flow

    schema = Flow.model_json_schema()
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
