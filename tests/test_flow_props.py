"""Properties: a valid flow written as YAML loads back the same; any input gives errors, never a traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from callstate import providers as registry
from callstate.flows import check_text, load_flow
from engine import flow as flow_module
from engine import policy
from engine.flow import (
    DelayMessage,
    Fallback,
    Flow,
    LocalScript,
    Node,
    ProviderConfig,
    ScriptedReply,
    Tool,
    ToolMessages,
    ToolRoute,
    TransferAction,
    Webhook,
)
from engine.flowload import dump_flow

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
ms = st.integers(min_value=0, max_value=10**7)
digits = st.sampled_from("0123456789*#")


def texts(dollars: bool) -> st.SearchStrategy[str]:
    # awkward for YAML on purpose: quotes, colons, '#', spaces, newlines, non-ASCII, and "${" when allowed
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), max_codepoint=0x2FF)
    extra = ["\n", ": ", " #", "'", '"', "\u2014", "\u2019"]
    extra += ["${", "$${", "}", "$"] if dollars else []
    return st.lists(st.one_of(alphabet.filter(lambda c: dollars or c != "$"), st.sampled_from(extra)),
                    max_size=12).map("".join)


def turn_taking(text: st.SearchStrategy[str]) -> st.SearchStrategy[policy.TurnTaking]:
    words = st.lists(text, max_size=3).map(tuple)
    patterns = st.sampled_from([r"\bzip code\b", r"\d{3}$", "account number", r"^(yes|no)\b"])
    return st.builds(
        policy.TurnTaking,
        endpointing=st.builds(policy.Endpointing, on_punctuation_ms=ms, on_no_punctuation_ms=ms,
                              on_number_ms=ms, trailing_words=words,
                              rules=st.lists(st.builds(policy.EndpointRule, pattern=patterns, wait_ms=ms),
                                             max_size=2).map(tuple)),
        barge_in=st.builds(policy.BargeIn, min_speech_ms=ms, min_words=st.integers(0, 10),
                           acknowledgements=words, interruptions=words, false_interruption_ms=ms,
                           resume_false_interruption=st.booleans()),
        filler=st.builds(policy.Filler, after_ms=ms, enabled=st.booleans()),
        idle=st.builds(policy.Idle, reprompt_ms=ms, max_reprompts=st.integers(0, 9)),
        streaming=st.builds(policy.Streaming, first_clause=st.booleans(), min_clause_words=st.integers(0, 9)),
        preemptive_generation=st.booleans(), max_call_ms=ms)


def tool(text: st.SearchStrategy[str]) -> st.SearchStrategy[Tool]:
    webhook = st.builds(Webhook, url=names.map(lambda n: f"https://api.example.com/{n}"),
                        method=st.sampled_from(["POST", "GET"]), timeout_ms=st.integers(1, 60_000),
                        cache_ttl_s=st.integers(0, 3600), headers=st.dictionaries(names, text, max_size=2))
    params = st.dictionaries(names, st.fixed_dictionaries({"type": st.just("string"), "description": text}),
                             max_size=3).map(lambda p: {"type": "object", "properties": p})
    messages = st.builds(ToolMessages, on_start=st.none() | text, on_error=st.none() | text,
                         on_delay=st.lists(st.builds(DelayMessage, after_ms=st.integers(1, 10_000),
                                                     text=text), max_size=2))
    target = st.one_of(st.builds(lambda w: {"webhook": w}, webhook),
                       st.builds(lambda m, f: {"function": f"{m}.tools:{f}"}, names, names))
    return st.builds(lambda t, d, p, m: Tool(description=d, parameters=p, messages=m, **t),
                     target, text, params, messages)


tts_names = st.none() | st.sampled_from(registry.names("tts"))


def configs(*options: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[ProviderConfig]:
    return st.one_of(*options).map(lambda d: ProviderConfig(**d))


@st.composite
def flows(draw: st.DrawFn, dollars: bool = True) -> Flow:
    text = texts(dollars)
    tools = draw(st.dictionaries(names.filter(lambda n: n != "goto"), tool(text), max_size=3))
    node_names = draw(st.lists(names, max_size=5, unique=True))
    nodes: dict[str, Node] = {}
    for name in node_names:
        dest = st.sampled_from(node_names)
        offered = draw(st.lists(st.sampled_from(sorted(tools)), unique=True)) if tools else []
        on_tool: dict[str, str | ToolRoute] = {}
        for t in draw(st.lists(st.sampled_from(offered), unique=True)) if offered else []:
            on_tool[t] = draw(dest | st.builds(
                lambda f, c, d: ToolRoute(field=f, cases=c, default=d),
                names, st.dictionaries(text, dest, min_size=1, max_size=3), st.none() | dest))
        ending = draw(st.sampled_from(["none", "end", "transfer"]))
        nodes[name] = Node(
            instructions=draw(text), say=draw(st.none() | text), tools=offered, on_tool=on_tool,
            on_dtmf=draw(st.dictionaries(digits, dest, max_size=3)), goto=draw(st.lists(dest, max_size=3)),
            context=draw(st.sampled_from(["keep", "reset"])), summary=draw(st.none() | text),
            end=draw(text) if ending == "end" else None,
            transfer=TransferAction(to=draw(st.from_regex(r"\+1555\d{7}", fullmatch=True)),
                                    say=draw(st.none() | text)) if ending == "transfer" else None)
    replies = st.builds(ScriptedReply, text=st.none() | text,
                        tool=st.none() | st.sampled_from([*tools, "goto"]),
                        arguments=st.dictionaries(names, text | st.integers() | st.booleans(), max_size=2))
    fields: dict[str, Any] = {
        "greeting": st.none() | text, "system": text, "goodbye": text,
        "llm": configs(st.just({"provider": "local"}),
                       st.fixed_dictionaries({"provider": st.just("groq"), "model": text,
                                              "temperature": st.floats(0, 2), "max_tokens": st.integers(1, 4096)})),
        "stt": configs(st.fixed_dictionaries({"provider": st.just("local"), "finalize_on_vad_stop": st.booleans()}),
                       st.fixed_dictionaries({"provider": st.just("deepgram"), "keyterms": st.lists(text),
                                              "endpointing_ms": st.integers(10, 5000),
                                              "utterance_end_ms": st.integers(1000, 5000),
                                              "finalize_on_vad_stop": st.booleans()})),
        "tts": configs(st.fixed_dictionaries({"provider": st.just("local"), "fallback": tts_names}),
                       st.fixed_dictionaries({"provider": st.just("deepgram"), "voice": text, "fallback": tts_names}),
                       st.fixed_dictionaries({"provider": st.just("playht"), "voice": text,
                                              "speed": st.floats(0, 4, exclude_min=True), "fallback": tts_names})),
        "turn_taking": turn_taking(text),
        "fillers": st.lists(text, max_size=3), "reprompts": st.lists(text, max_size=3),
        "fallback": st.builds(Fallback, llm=text, tool=text),
        "local": st.builds(LocalScript, caller=st.lists(text, max_size=3),
                           replies=st.lists(replies, max_size=3)),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))  # a random subset of the fields
    extra = {k: draw(fields[k]) for k in chosen}
    if nodes:
        extra["start_node"] = draw(st.sampled_from(node_names))
    return Flow(name=draw(text), tools=tools, nodes=nodes, **extra)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props") / "flow.yaml"


@PROPS
@given(flow=flows())
def test_dump_flow_then_load_flow_gives_the_same_flow(scratch: Path, flow: Flow) -> None:
    scratch.write_text(dump_flow(flow), encoding="utf-8")
    assert load_flow(scratch) == flow


@PROPS
@given(flow=flows(dollars=False))
def test_plain_safe_dump_of_every_field_loads_back_unchanged(scratch: Path, flow: Flow) -> None:
    scratch.write_text(yaml.safe_dump(flow.model_dump(mode="json")), encoding="utf-8")
    assert load_flow(scratch) == flow


def _vocabulary() -> list[str]:
    """Every key the schema knows (and a few it doesn't), so generated documents reach the nested models."""
    classes = [c for m in (flow_module, policy, registry) for c in vars(m).values() if isinstance(c, type)]
    names = {n for c in classes if isinstance(c, type) and issubclass(c, BaseModel) for n in c.model_fields}
    names |= {f.name for c in classes if dataclasses.is_dataclass(c) for f in dataclasses.fields(c)}
    return sorted(names | {"webhook", "endpointng", "1", "12", "goto"})


KEYS = st.sampled_from(_vocabulary())
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), texts(True),
                    st.sampled_from(["groq", "https://x.example", "m:f", "${NOPE_CALLSTATE}", "a"]))


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5)


DOCS = st.recursive(SCALARS, _containers, max_leaves=30)


@PROPS
@given(doc=st.dictionaries(KEYS, DOCS, max_size=8))
def test_any_document_gives_a_report_with_positioned_lines(doc: dict[str, Any]) -> None:
    report = check_text(yaml.safe_dump(doc), "f.yaml", env={})
    assert all(line.startswith("f.yaml:") for line in report.errors + report.warnings)
    assert (report.flow is None) == bool(report.errors)


@PROPS
@given(text=st.text(max_size=200))
def test_any_text_gives_a_report_not_a_traceback(text: str) -> None:
    report = check_text(text, "f.yaml", env={})
    assert all(line.startswith("f.yaml") for line in report.errors)
